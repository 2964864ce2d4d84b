"""The schedule knob: timestep families, the free-form family, pinning onto the pipelines' schedulers."""

from __future__ import annotations

import copy
import logging
import pickle

import numpy as np
import optuna
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from autoeff.recipe import Recipe
from autoeff.search_spaces import schedule, solver
from autoeff.search_spaces._pinned import (
    TimestepDDIMScheduler,
    TimestepUniPCMultistepScheduler,
    pin_timesteps,
    plain_scheduler,
)
from autoeff.search_spaces.base import ConfigError, SpaceContext, config_from_dict, config_to_dict
from autoeff.search_spaces.space import build_pipeline

optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("diffusers").setLevel(logging.ERROR)

N = 1000
SD15_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def _example_configs() -> list[schedule.Config]:
    return [
        schedule.Config("uniform", 20), schedule.Config("leading", 10), schedule.Config("linspace", 7),
        schedule.Config("quadratic", 5), schedule.Config("karras", 8, rho=5.5), schedule.Config("karras", 3),
        schedule.Config("ays", 12), schedule.Config("free", 3, timesteps=[980, 500, 12]),
    ]


def _ctx(handle, **kw) -> SpaceContext:
    return SpaceContext(family=handle.family, denoiser=handle.denoiser_name, **kw)


def _record(module: torch.nn.Module):
    """Timesteps the denoiser is called with (one entry per forward)."""
    seen: list[float] = []

    def hook(_m, args, kwargs):
        t = kwargs["timestep"] if "timestep" in kwargs else args[1]
        seen.append(float(torch.as_tensor(t).flatten()[0]))

    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


def _digits(pipe, steps: int = 50, n: int = 2) -> torch.Tensor:
    latents = torch.randn((n, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    out = pipe(class_labels=list(range(n)), latents=latents, num_inference_steps=steps, output_type="pt")
    return out.images


# ----- config -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", _example_configs(), ids=lambda c: c.describe())
def test_config_round_trip(config):
    payload = config_to_dict(config)
    assert payload["_type"] == "Config" and payload["_version"] == 1
    assert config_from_dict(schedule.Config, payload) == config


@pytest.mark.parametrize("kwargs, field", [
    ({"family": "cosine"}, "family"),
    ({"steps": 0}, "steps"),
    ({"steps": True}, "steps"),
    ({"family": "uniform", "rho": 7.0}, "rho"),
    ({"family": "karras", "rho": -1.0}, "rho"),
    ({"family": "free", "steps": 2}, "timesteps"),
    ({"family": "free", "steps": 2, "timesteps": [5, 5]}, "timesteps"),
    ({"family": "free", "steps": 3, "timesteps": [9, 5]}, "timesteps"),
    ({"family": "free", "steps": 2, "timesteps": [5, -1]}, "timesteps"),
    ({"family": "uniform", "steps": 2, "timesteps": [9, 5]}, "timesteps"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"schedule.{field}"):
        schedule.Config(**kwargs)


def test_karras_rho_default_and_describe():
    assert schedule.Config("karras", 8).rho == 7.0
    assert schedule.Config("karras", 8).describe() == "karras rho=7 k=8"
    assert schedule.Config("ays", 8).describe() == "AYS-loglinear k=8"
    assert schedule.Config("uniform", 20).describe() == "uniform k=20"


def test_out_of_range_is_refused_not_repaired():
    with pytest.raises(ConfigError, match="exceeds"):
        schedule.timesteps_for(schedule.Config("uniform", 11), 10, "digits")
    with pytest.raises(ConfigError, match=r"\[0, 99\]"):
        schedule.timesteps_for(schedule.Config("free", 2, timesteps=[100, 3]), 100, "digits")
    with pytest.raises(ValueError, match="alphas_cumprod"):
        schedule.timesteps_for(schedule.Config("karras", 4), N, "digits")


# ----- timesteps: properties --------------------------------------------------------------------------------

def _alphas(n: int, beta_schedule: str) -> torch.Tensor:
    kw = SD15_BETAS if beta_schedule == "scaled_linear" else {"beta_schedule": beta_schedule}
    return DDPMScheduler(num_train_timesteps=n, **kw).alphas_cumprod


@st.composite
def _configs(draw):
    n = draw(st.sampled_from([1000, 250, 37]))
    family = draw(st.sampled_from(schedule.FAMILIES))
    steps = draw(st.integers(1, n))
    rho, timesteps = None, None
    if family == "karras":
        rho = draw(st.floats(0.5, 20.0))
    if family == "free":
        timesteps = sorted(draw(st.sets(st.integers(0, n - 1), min_size=steps, max_size=steps)), reverse=True)
    return n, schedule.Config(family, steps, rho=rho, timesteps=timesteps)


@settings(max_examples=300, deadline=None)
@given(_configs(), st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
       st.sampled_from(["digits", "sd15", "sdxl", "pixart"]), st.integers(0, 1))
def test_every_config_gives_strictly_decreasing_ints_in_range(n_config, betas, family, offset):
    n, config = n_config
    ts = schedule.timesteps_for(config, n, family, alphas_cumprod=_alphas(n, betas), steps_offset=offset)
    assert len(ts) == config.steps
    assert all(type(t) is int for t in ts)
    assert all(a > b for a, b in zip(ts, ts[1:], strict=False))
    assert 0 <= ts[-1] and ts[0] <= n - 1
    if config.family == "free":
        assert ts == config.timesteps


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_repair_always_valid_and_keeps_valid_schedules(data):
    n = data.draw(st.integers(1, 60))
    k = data.draw(st.integers(1, n))
    values = data.draw(st.lists(st.floats(-50, 2 * n, allow_nan=False), min_size=k, max_size=k))
    out = schedule.repair(values, k, n)
    assert len(out) == k and out[0] <= n - 1 and out[-1] >= 0
    assert all(a > b for a, b in zip(out, out[1:], strict=False))
    assert schedule.repair(out, k, n) == out  # valid schedules are fixed points
    assert schedule.repair(values[::-1], k, n) == out  # order-free: free-form draws may come unsorted


def test_repair_spreads_duplicates_from_rounding():
    assert schedule.repair([3.2, 0.1, 0.0, -0.4], 4, N) == [3, 2, 1, 0]
    assert schedule.repair([999, 999, 999], 3, N) == [999, 998, 997]


# ----- timesteps: against diffusers and the papers ----------------------------------------------------------

SCHEDULERS = [DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler,
              EulerDiscreteScheduler]


@pytest.mark.parametrize("cls", SCHEDULERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("n", [1, 4, 10, 13, 50, 61, 999, 1000])
def test_uniform_is_diffusers_trailing(cls, n):
    s = cls(num_train_timesteps=N, timestep_spacing="trailing")
    s.set_timesteps(n)
    theirs = [int(t) for t in s.timesteps.tolist()]
    ours = schedule.timesteps_for(schedule.Config("uniform", n), N, "digits")
    # diffusers 0.42.1's float arange appends a spurious -1 for some n (61, 103, ...); the rest must match.
    assert ours == [t for t in theirs if t >= 0]
    assert len(theirs) in (n, n + 1)


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, PNDMScheduler],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("n", [1, 7, 10, 50, 999])
@pytest.mark.parametrize("offset", [0, 1])
def test_leading_is_diffusers_leading(cls, n, offset):
    extra = {"skip_prk_steps": True} if cls is PNDMScheduler else {}  # SD's PNDM: PLMS only
    s = cls(num_train_timesteps=N, timestep_spacing="leading", steps_offset=offset, **extra)
    s.set_timesteps(n)
    theirs = [int(t) for t in s.timesteps.tolist()]
    if cls is PNDMScheduler:  # PLMS visits its second timestep twice; the distinct timesteps are the schedule
        theirs = list(dict.fromkeys(theirs))
    assert schedule.timesteps_for(schedule.Config("leading", n), N, "digits", steps_offset=offset) == theirs


@pytest.mark.parametrize("cls", [DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("n", [2, 10, 13, 1000])
def test_linspace_is_diffusers_linspace(cls, n):
    s = cls(num_train_timesteps=N, timestep_spacing="linspace")
    s.set_timesteps(n)
    theirs = [round(float(t)) for t in s.timesteps.tolist()]  # Euler keeps float timesteps
    assert schedule.timesteps_for(schedule.Config("linspace", n), N, "digits") == theirs


@pytest.mark.parametrize("family, table", [("sd15", schedule.AYS_TIMESTEPS["sd15"]),
                                           ("sdxl", schedule.AYS_TIMESTEPS["sdxl"]),
                                           ("digits", schedule.AYS_TIMESTEPS["sd15"])])
def test_ays_reproduces_and_log_linearly_refines_the_published_schedule(family, table):
    ac = DDPMScheduler(**SD15_BETAS).alphas_cumprod
    at = {k: schedule.timesteps_for(schedule.Config("ays", k), N, family, alphas_cumprod=ac)
          for k in (10, 19, 5)}
    assert at[10] == list(table)
    assert at[19][::2] == list(table)  # linspace(0, 1, 19) holds linspace(0, 1, 10) at even positions
    # The new points sit at the geometric mean of their neighbours' sigmas (log-linear interpolation).
    sig = schedule.train_sigmas(ac)
    for i in range(1, 19, 2):
        mid = np.exp((np.log(sig[at[19][i - 1]]) + np.log(sig[at[19][i + 1]])) / 2)
        assert abs(schedule.sigma_to_t(np.array([mid]), sig)[0] - at[19][i]) <= 0.5
    assert schedule.timesteps_for(schedule.Config("ays", 1), N, family, alphas_cumprod=ac) == [table[0]]


def test_karras_follows_eq5_through_the_models_sigmas():
    ac = DDPMScheduler(beta_schedule="linear").alphas_cumprod
    sig = schedule.train_sigmas(ac)
    rho, k = 7.0, 12
    ts = schedule.timesteps_for(schedule.Config("karras", k, rho=rho), N, "digits", alphas_cumprod=ac)
    assert ts[0] == N - 1 and ts[-1] == 0
    ramp = np.linspace(0, 1, k)
    want = (sig[-1] ** (1 / rho) + ramp * (sig[0] ** (1 / rho) - sig[-1] ** (1 / rho))) ** rho
    got_t = schedule.sigma_to_t(want, sig)
    interior = [i for i in range(k) if abs(round(got_t[i]) - ts[i]) > 0]
    assert not interior, (ts, got_t.round().tolist())
    # A larger rho crowds the steps towards low noise.
    lo_rho = schedule.timesteps_for(schedule.Config("karras", k, rho=2.0), N, "digits", alphas_cumprod=ac)
    assert sum(t < 200 for t in ts) > sum(t < 200 for t in lo_rho)


def test_quadratic_is_dense_near_data():
    ts = schedule.timesteps_for(schedule.Config("quadratic", 10), N, "digits")
    gaps = -np.diff(ts)
    assert ts[0] == N - 1 and (np.diff(gaps) < 0).all()


# ----- suggest ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", _example_configs(), ids=lambda c: c.describe())
def test_fixed_trial_reproduces_config(random_digits_handle, config):
    ctx = _ctx(random_digits_handle, min_steps=1, max_steps=50)
    assert schedule.suggest(optuna.trial.FixedTrial(schedule.to_params(config)), ctx) == config


def test_enqueued_trial_reproduces_config(random_digits_handle):
    ctx = _ctx(random_digits_handle, min_steps=1, max_steps=50)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for config in _example_configs():
        study.enqueue_trial(schedule.to_params(config))
        trial = study.ask()
        assert schedule.suggest(trial, ctx) == config
        study.tell(trial, 0.0)


def test_real_trials_respect_the_context(random_digits_handle):
    ctx = _ctx(random_digits_handle, min_steps=2, max_steps=60,
               options={"schedule": {"families": ["karras", "free", "ays"], "rho": [2.0, 4.0]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        c = schedule.suggest(trial, ctx)
        seen.add(c.family)
        assert c.family in ("karras", "free", "ays") and 2 <= c.steps <= 60
        if c.family == "karras":
            assert 2.0 <= c.rho <= 4.0
        ts = schedule.timesteps_for_scheduler(c, random_digits_handle.pipeline.scheduler, "digits")
        assert len(ts) == c.steps
        study.tell(trial, float(c.steps))
    assert seen == {"karras", "free", "ays"}


def test_free_draws_are_sorted_and_repaired_deterministically(random_digits_handle):
    ctx = _ctx(random_digits_handle, min_steps=1, max_steps=8)
    params = {"schedule.family": "free", "schedule.steps": 4, "schedule.free.t0": 10,
              "schedule.free.t1": 700, "schedule.free.t2": 700, "schedule.free.t3": 999}
    c = schedule.suggest(optuna.trial.FixedTrial(params), ctx)
    assert c.timesteps == [999, 700, 699, 10]
    assert schedule.suggest(optuna.trial.FixedTrial(params), ctx) == c


@pytest.mark.parametrize("options, ctx_kw", [
    ({"schedule": {"families": ["cosine"]}}, {}),
    ({"schedule": {"families": []}}, {}),
    ({"schedule": {"steps": 3}}, {}),
    ({"schedule": {"rho": [5.0, 1.0]}}, {}),
    ({}, {"min_steps": 0}),
    ({}, {"min_steps": 9, "max_steps": 4}),
    ({}, {"max_steps": 1001}),
])
def test_bad_options_are_refused(random_digits_handle, options, ctx_kw):
    ctx = _ctx(random_digits_handle, options=options, **ctx_kw)
    with pytest.raises(ConfigError):
        schedule.suggest(optuna.create_study().ask(), ctx)


# ----- pinning ----------------------------------------------------------------------------------------------

def test_pinned_scheduler_ignores_the_count_and_keeps_the_config():
    base = EulerDiscreteScheduler(**SD15_BETAS, use_karras_sigmas=True, timestep_spacing="leading")
    before = dict(base.config)
    pinned = pin_timesteps(base, [999, 600, 10])
    assert isinstance(pinned, EulerDiscreteScheduler) and pinned.pinned_timesteps == (999, 600, 10)
    assert dict(base.config) == before and type(base) is EulerDiscreteScheduler
    # The only config change: the sigma spacing flag that forbids custom timesteps.
    assert {k: v for k, v in pinned.config.items() if before.get(k) != v} == {"use_karras_sigmas": False}
    for n in (1, 50, 1000):
        pinned.set_timesteps(n, device="cpu")
        assert pinned.timesteps.tolist() == [999.0, 600.0, 10.0]
    # Timesteps are set on creation: the initial noise scale is the pinned schedule's, not the training one's.
    assert float(pinned.init_noise_sigma) == pytest.approx(float((pinned.sigmas[0] ** 2 + 1) ** 0.5))
    assert type(plain_scheduler(pinned)) is EulerDiscreteScheduler
    for clone in (pickle.loads(pickle.dumps(pinned)), copy.deepcopy(pinned)):
        clone.set_timesteps(7)
        assert type(clone) is type(pinned) and clone.timesteps.tolist() == [999.0, 600.0, 10.0]


@pytest.mark.parametrize("base, expected", [
    (DDPMScheduler(), DDPMScheduler),
    (DDIMScheduler(), TimestepDDIMScheduler),
    (UniPCMultistepScheduler(), TimestepUniPCMultistepScheduler),
    (PNDMScheduler(skip_prk_steps=True), DPMSolverMultistepScheduler),
    (DPMSolverMultistepScheduler(use_karras_sigmas=True), DPMSolverMultistepScheduler),
], ids=lambda x: type(x).__name__ if not isinstance(x, type) else x.__name__)
def test_pinning_converts_only_schedulers_without_custom_timesteps(base, expected):
    pinned = pin_timesteps(base, [900, 400, 3])
    assert type(pinned).__mro__[2] is expected  # Pinned<expected> -> _PinnedMixin -> expected
    assert pinned.timesteps.tolist() == [900, 400, 3]
    assert torch.equal(pinned.alphas_cumprod, base.alphas_cumprod)


@pytest.mark.parametrize("handle_name", ["random_digits_handle", "random_digits_dit_handle"])
def test_apply_pins_what_the_denoiser_visits_and_leaves_the_base(request, handle_name):
    handle = request.getfixturevalue(handle_name)
    base = handle.pipeline
    base_sched, before = base.scheduler, dict(base.scheduler.config)
    config = schedule.Config("free", 3, timesteps=[950, 431, 17])
    pipe = schedule.apply(base, config, _ctx(handle))
    assert pipe is not base and pipe.scheduler is not base_sched
    assert base.scheduler is base_sched and type(base_sched) is DDPMScheduler
    assert dict(base_sched.config) == before
    assert isinstance(pipe.scheduler, DDPMScheduler) and pipe.scheduler.pinned_timesteps == (950, 431, 17)
    seen, hook = _record(getattr(pipe, handle.denoiser_name))
    try:
        images = _digits(pipe, steps=50)
    finally:
        hook.remove()
    assert seen == [950.0, 431.0, 17.0] and torch.isfinite(images).all()
    base_sched.set_timesteps(10)
    assert base_sched.timesteps.tolist() == list(range(900, -1, -100))  # the base still does its own spacing


def test_schedule_alone_changes_the_images(random_digits_handle):
    ctx = _ctx(random_digits_handle)
    a = _digits(schedule.apply(random_digits_handle.pipeline, schedule.Config("uniform", 5), ctx))
    b = _digits(schedule.apply(random_digits_handle.pipeline, schedule.Config("ays", 5), ctx))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("order", [("solver", "schedule"), ("schedule", "solver")])
def test_solver_and_schedule_compose(random_digits_handle, order):
    ctx = _ctx(random_digits_handle)
    recipe = Recipe(model="digits", knobs={"schedule": schedule.Config("karras", 4),
                                          "solver": solver.Config("dpmpp", 2)})
    pipe = build_pipeline(random_digits_handle, recipe, ctx)  # KNOB_ORDER: solver, then schedule
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler) and pipe.scheduler.config.solver_order == 2
    want = list(pipe.scheduler.pinned_timesteps)
    # Applying by hand in either order: the schedule survives only when it comes last (as KNOB_ORDER does).
    manual = random_digits_handle.pipeline
    for name in order:
        manual = (solver if name == "solver" else schedule).apply(manual, recipe.knobs[name], ctx)
    seen, hook = _record(pipe.unet)
    try:
        _digits(pipe, steps=30)
    finally:
        hook.remove()
    assert seen == [float(t) for t in want] and len(want) == 4
    assert hasattr(manual.scheduler, "pinned_timesteps") == (order[-1] == "schedule")


def test_pinned_stock_schedule_equals_the_stock_scheduler(random_digits_handle):
    """Pinning the scheduler's own timesteps changes nothing (DDPM's ancestral sampler, same noise)."""
    base = random_digits_handle.pipeline
    base.scheduler.set_timesteps(6)
    stock_ts = base.scheduler.timesteps.tolist()
    pinned = schedule.apply(base, schedule.Config("free", 6, timesteps=stock_ts), _ctx(random_digits_handle))
    gen = [torch.Generator().manual_seed(3) for _ in range(2)]
    lat = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    a = base(class_labels=[1, 2], latents=lat, generator=gen[0], num_inference_steps=6, output_type="pt")
    b = pinned(class_labels=[1, 2], latents=lat, generator=gen[1], num_inference_steps=99, output_type="pt")
    a, b = a.images, b.images
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ----- every combination the search can propose -------------------------------------------------------------

def _every_solver() -> list[solver.Config]:
    out = []
    for name in solver.NOISE_SOLVERS["ddpm"]:
        for order in range(1, solver.MAX_ORDER[name] + 1):
            out.append(solver.Config(name, order))
    return out


def _config_for(family: str, k: int) -> schedule.Config:
    free = [N - 1 - (N // k) * i for i in range(k)] if family == "free" else None
    return schedule.Config(family, k, timesteps=free)


def _run_combo(handle, solver_config, family, k):
    ctx = _ctx(handle)
    pipe = schedule.apply(solver.apply(handle.pipeline, solver_config, ctx), _config_for(family, k), ctx)
    seen, hook = _record(handle.denoiser)
    try:
        images = _digits(pipe, steps=50, n=1)
    finally:
        hook.remove()
    assert torch.isfinite(images).all()
    assert seen == [float(t) for t in pipe.scheduler.pinned_timesteps] and len(seen) == k


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("family", schedule.FAMILIES)
@pytest.mark.parametrize("solver_config", _every_solver(), ids=lambda c: c.describe().replace(" ", "_"))
def test_every_solver_family_and_few_steps_runs(random_digits_handle, solver_config, family, k):
    _run_combo(random_digits_handle, solver_config, family, k)


@pytest.mark.slow
@pytest.mark.parametrize("k", [20, 51])
@pytest.mark.parametrize("family", schedule.FAMILIES)
@pytest.mark.parametrize("name", solver.NOISE_SOLVERS["ddpm"])
def test_every_solver_family_and_many_steps_runs(random_digits_handle, name, family, k):
    _run_combo(random_digits_handle, solver.Config(name, solver.MAX_ORDER[name]), family, k)


# ----- text-to-image pipelines (tiny, random weights) -------------------------------------------------------

@pytest.fixture(scope="module", params=["sd15", "sdxl", "pixart"])
def tiny_handle(request):
    from autoeff.models import tiny

    return getattr(tiny, f"build_tiny_{request.param}")()


def _text(handle, pipe, steps: int = 9):
    return pipe(prompt=["a red cube"], num_inference_steps=steps, output_type="np", height=handle.resolution,
                width=handle.resolution, guidance_scale=handle.guidance_scale,
                generator=torch.Generator().manual_seed(0), **handle.extra).images


@pytest.mark.parametrize("config", [schedule.Config("ays", 3), schedule.Config("karras", 2),
                                    schedule.Config("free", 2, timesteps=[700, 90])],
                         ids=lambda c: c.describe())
def test_text_to_image_pipelines_visit_the_pinned_schedule(tiny_handle, config):
    base = tiny_handle.pipeline
    base_sched, before = base.scheduler, dict(base.scheduler.config)
    pipe = schedule.apply(base, config, _ctx(tiny_handle))
    seen, hook = _record(getattr(pipe, tiny_handle.denoiser_name))
    try:
        images = _text(tiny_handle, pipe)  # the pipelines call set_timesteps(9) through retrieve_timesteps
    finally:
        hook.remove()
    assert seen == [float(t) for t in pipe.scheduler.pinned_timesteps] and len(seen) == config.steps
    assert np.isfinite(images).all()
    assert base.scheduler is base_sched and dict(base_sched.config) == before
    if isinstance(base_sched, PNDMScheduler):  # SD1.5's PLMS takes no custom timesteps: converted (docs)
        assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    else:
        assert isinstance(pipe.scheduler, type(base_sched))
