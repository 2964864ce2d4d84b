"""The solver knob: configured diffusers schedulers, equal to the stock ones where they should be."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import optuna
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from autoeff.models.digits.pipeline import DigitsPipeline
from autoeff.search_spaces import schedule, solver
from autoeff.search_spaces.base import ConfigError, SpaceContext, config_from_dict, config_to_dict

optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("diffusers").setLevel(logging.ERROR)


def _every_config() -> list[solver.Config]:
    """Every configuration of the DDPM-family solvers (the flow ones are tested in test_flow_knobs.py)."""
    out = []
    for name in solver.NOISE_SOLVERS["ddpm"]:
        for order in range(1, solver.MAX_ORDER[name] + 1):
            lofs = [True, False] if order > 1 else [True]
            variants = solver.VARIANTS[name] if solver._variant_applies(name, order) else (None,)
            out += [solver.Config(name, order, lof, v) for lof, v in itertools.product(lofs, variants)]
    return out


ALL = _every_config()


def _ctx(handle, **kw) -> SpaceContext:
    return SpaceContext(family=handle.family, denoiser=handle.denoiser_name, **kw)


def _digits(pipe, steps: int, n: int = 2) -> torch.Tensor:
    latents = torch.randn((n, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    out = pipe(class_labels=list(range(n)), latents=latents, num_inference_steps=steps, output_type="pt")
    return out.images


def _count_calls(module: torch.nn.Module):
    seen: list[int] = []
    hook = module.register_forward_pre_hook(lambda _m, _a: seen.append(1))
    return seen, hook


# ----- config -----------------------------------------------------------------------------------------------

def test_the_space_has_every_solver_order_and_variant():
    assert len(ALL) == len({config_to_dict(c)["_data"].__repr__() for c in ALL})
    assert {c.name for c in ALL} == set(solver.NOISE_SOLVERS["ddpm"])
    assert sum(c.name == "dpmpp" for c in ALL) == 1 + 2 * 2 * 2  # order 1; orders 2-3 x lof x variant


@pytest.mark.parametrize("config", ALL, ids=lambda c: c.describe().replace(" ", "_"))
def test_config_round_trip(config):
    assert config_from_dict(solver.Config, config_to_dict(config)) == config


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "lms"}, "name"),
    ({"name": "ddim", "order": 2}, "order"),
    ({"name": "dpmpp", "order": 4}, "order"),
    ({"name": "unipc", "order": True}, "order"),
    ({"name": "dpmpp", "order": 1, "lower_order_final": False}, "lower_order_final"),
    ({"name": "dpmpp", "order": 2, "lower_order_final": "yes"}, "lower_order_final"),
    ({"name": "dpmpp", "order": 2, "variant": "bh2"}, "variant"),
    ({"name": "dpmpp", "order": 1, "variant": "heun"}, "variant"),
    ({"name": "euler", "order": 1, "variant": "midpoint"}, "variant"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"solver.{field}"):
        solver.Config(**kwargs)


def test_variant_defaults_to_diffusers_and_describe():
    assert solver.Config("dpmpp", 2).variant == "midpoint"
    assert solver.Config("unipc", 1).variant == "bh2"
    assert solver.Config("dpmpp", 1).variant is None
    assert solver.Config("dpmpp", 2).describe() == "DPM-Solver++ 2M (midpoint)"
    assert solver.Config("dpmpp_single", 3, variant="heun").describe() == "DPM-Solver++ 3S (heun)"
    assert solver.Config("unipc", 2, False, "bh1").describe() == "UniPC-2 (bh1) no-lower-order-final"
    assert solver.Config("ddim", 1).describe() == "DDIM"
    assert solver.Config("euler", 1).describe() == "Euler"


# ----- suggest ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", ALL, ids=lambda c: c.describe().replace(" ", "_"))
def test_fixed_trial_reproduces_config(random_digits_handle, config):
    trial = optuna.trial.FixedTrial(solver.to_params(config))
    assert solver.suggest(trial, _ctx(random_digits_handle)) == config


def test_enqueued_warm_start_reproduces_config(random_digits_handle):
    ctx = _ctx(random_digits_handle)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    warm = [solver.Config("dpmpp", 2), solver.Config("unipc", 3, False, "bh1"), solver.Config("ddim", 1)]
    for config in warm:
        study.enqueue_trial(solver.to_params(config))
    for config in warm:
        trial = study.ask()
        assert solver.suggest(trial, ctx) == config
        study.tell(trial, 0.0)


def test_real_trials_cover_the_space_and_respect_options(random_digits_handle):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {solver.suggest(study.ask(), _ctx(random_digits_handle)).describe() for _ in range(300)}
    assert len(drawn) >= 0.9 * len(ALL)
    ctx = _ctx(random_digits_handle, options={"solver": {"names": ["dpmpp", "euler"], "max_order": 2}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))  # options fix the space
    for _ in range(40):
        c = solver.suggest(study.ask(), ctx)
        assert c.name in ("dpmpp", "euler") and c.order <= 2


@pytest.mark.parametrize("options", [{"names": ["heun"]}, {"names": []}, {"max_order": 4}, {"order": 2}])
def test_bad_options_are_refused(random_digits_handle, options):
    with pytest.raises(ConfigError):
        solver.suggest(optuna.create_study().ask(), _ctx(random_digits_handle, options={"solver": options}))


# ----- apply ------------------------------------------------------------------------------------------------

CLASSES = {"ddim": DDIMScheduler, "dpmpp": DPMSolverMultistepScheduler,
           "dpmpp_single": DPMSolverSinglestepScheduler, "unipc": UniPCMultistepScheduler,
           "euler": EulerDiscreteScheduler}


@pytest.mark.parametrize("config", [c for c in ALL if c.lower_order_final], ids=lambda c: c.describe())
def test_apply_builds_the_named_scheduler_and_leaves_the_base(random_digits_handle, config):
    base = random_digits_handle.pipeline
    base_sched, before = base.scheduler, dict(base.scheduler.config)
    pipe = solver.apply(base, config, _ctx(random_digits_handle))
    s = pipe.scheduler
    assert pipe is not base and s is not base_sched and pipe.unet is base.unet
    assert base.scheduler is base_sched and type(base_sched) is DDPMScheduler
    assert dict(base_sched.config) == before
    assert isinstance(s, CLASSES[config.name])
    assert torch.equal(s.alphas_cumprod, base_sched.alphas_cumprod)  # training betas carried over
    assert s.config.prediction_type == "epsilon"
    if config.name in ("dpmpp", "dpmpp_single", "unipc"):
        assert s.config.solver_order == config.order
        assert s.config.solver_type == (config.variant or "midpoint")
        assert not s.config.use_karras_sigmas
    if config.name in ("dpmpp", "dpmpp_single"):
        assert s.config.algorithm_type == "dpmsolver++"


def test_clip_sample_carries_over_as_exact_x0_clipping(random_digits_handle):
    base = random_digits_handle.pipeline.scheduler  # DDPM, clip_sample=True
    x0 = torch.randn(3, 1, 16, 16) * 4
    for name in ("dpmpp", "dpmpp_single", "unipc"):
        s = solver.build_scheduler(solver.Config(name, 2), base)
        assert s.config.thresholding
        torch.testing.assert_close(s._threshold_sample(x0), x0.clamp(-1, 1), rtol=0, atol=0)
    assert solver.build_scheduler(solver.Config("ddim", 1), base).config.clip_sample
    unclipped = DDPMScheduler.from_config(base.config, clip_sample=False)
    assert not solver.build_scheduler(solver.Config("dpmpp", 2), unclipped).config.thresholding
    assert not solver.build_scheduler(solver.Config("ddim", 1), unclipped).config.clip_sample


def test_ddim_equals_stock_ddim_on_its_own_schedule(random_digits_handle):
    """`ddim` alone, and `ddim` + the same timesteps pinned, are stock DDIMScheduler (with clip_sample)."""
    base = random_digits_handle.pipeline
    ctx = _ctx(random_digits_handle)
    stock = DigitsPipeline(unet=base.unet, scheduler=DDIMScheduler.from_config(base.scheduler.config))
    stock.set_progress_bar_config(disable=True)
    assert stock.scheduler.config.clip_sample and stock.scheduler.config.timestep_spacing == "leading"
    want = _digits(stock, steps=10)
    ours = solver.apply(base, solver.Config("ddim", 1), ctx)
    torch.testing.assert_close(_digits(ours, steps=10), want, rtol=0, atol=0)
    pinned = schedule.apply(ours, schedule.Config("leading", 10), ctx)
    torch.testing.assert_close(_digits(pinned, steps=3), want, rtol=0, atol=0)
    assert (want - _digits(stock, steps=5)).abs().max() > 1e-3  # the comparison can tell schedules apart


def test_ddim_on_custom_timesteps_is_dpm_solver_pp_order_1(random_digits_handle):
    """Lu et al. (2022): DPM-Solver++ of order 1 is DDIM; on uneven timesteps this checks the DDIM adapter."""
    base = random_digits_handle.pipeline
    unclipped = DigitsPipeline(unet=base.unet, scheduler=DDPMScheduler.from_config(base.scheduler.config,
                                                                                    clip_sample=False))
    unclipped.set_progress_bar_config(disable=True)
    ctx = _ctx(random_digits_handle)
    sched = schedule.Config("free", 5, timesteps=[990, 613, 250, 71, 6])
    images = [_digits(schedule.apply(solver.apply(unclipped, solver.Config(name, 1), ctx), sched, ctx), 5)
              for name in ("ddim", "dpmpp")]
    torch.testing.assert_close(images[0], images[1], rtol=0, atol=1e-5)  # measured 7e-7
    assert images[0].std() > 0.01


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_on_custom_timesteps_equals_stock_unipc(random_digits_handle, order):
    """The UniPC adapter given UniPC's own timesteps reproduces stock UniPC bit for bit."""
    ctx = _ctx(random_digits_handle)
    ours = solver.apply(random_digits_handle.pipeline, solver.Config("unipc", order), ctx)
    assert type(ours.scheduler).__mro__[1] is UniPCMultistepScheduler  # no custom timesteps: stock code path
    ref = UniPCMultistepScheduler.from_config(ours.scheduler.config)
    ref.set_timesteps(7)
    stock = DigitsPipeline(unet=ours.unet, scheduler=ref)
    stock.set_progress_bar_config(disable=True)
    pinned = schedule.apply(ours, schedule.Config("free", 7, timesteps=ref.timesteps.tolist()), ctx)
    torch.testing.assert_close(_digits(pinned, steps=50), _digits(stock, steps=7), rtol=0, atol=0)


@pytest.mark.parametrize("handle_name", ["random_digits_handle", "random_digits_dit_handle"])
@pytest.mark.parametrize("config", [c for c in ALL if c.lower_order_final and c.variant in (None, "midpoint",
                                                                                               "bh2")],
                         ids=lambda c: c.describe().replace(" ", "_"))
def test_solver_alone_runs_the_pipelines_step_count(request, handle_name, config):
    handle = request.getfixturevalue(handle_name)
    pipe = solver.apply(handle.pipeline, config, _ctx(handle))
    calls, hook = _count_calls(handle.denoiser)
    try:
        images = _digits(pipe, steps=4)
    finally:
        hook.remove()
    assert len(calls) == 4 and torch.isfinite(images).all()


@pytest.mark.parametrize("config", ALL, ids=lambda c: c.describe().replace(" ", "_"))
@pytest.mark.parametrize("steps", [2, 5])
def test_every_configuration_gives_finite_images(random_digits_handle, config, steps):
    """UniPC with bh1, or order >= 2 without lower_order_final, and diffusers' zero final sigma made every
    image NaN (h = inf at the last step); those now end at sigma_min, the others keep diffusers' default."""
    pipe = solver.apply(random_digits_handle.pipeline, config, _ctx(random_digits_handle))
    pinned = schedule.apply(pipe, schedule.Config("uniform", steps), _ctx(random_digits_handle))
    if config.name == "unipc":
        needs = config.variant == "bh1" or (config.order > 1 and not config.lower_order_final)
        assert pinned.scheduler.config.final_sigmas_type == ("sigma_min" if needs else "zero")
    assert torch.isfinite(_digits(pinned, steps=50)).all()


# ----- text-to-image pipelines (tiny, random weights) -------------------------------------------------------

@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def tiny_handle(request):
    from autoeff.models import tiny

    return getattr(tiny, f"build_tiny_{request.param}")()


@pytest.mark.parametrize("name", solver.NOISE_SOLVERS["ddpm"])
def test_every_solver_runs_on_sd_pipelines(tiny_handle, name):
    base = tiny_handle.pipeline
    base_sched, before = base.scheduler, dict(base.scheduler.config)
    config = solver.Config(name, min(2, solver.MAX_ORDER[name]))
    pipe = solver.apply(base, config, _ctx(tiny_handle))
    assert isinstance(pipe.scheduler, CLASSES[name])
    if name == "ddim":  # latents are not in [-1, 1]: DDIM must not inherit DDIMScheduler's clip_sample=True
        assert not pipe.scheduler.config.clip_sample
    if name in ("dpmpp", "unipc"):
        assert not pipe.scheduler.config.thresholding
    size = tiny_handle.resolution
    images = pipe(prompt=["a red cube"], num_inference_steps=2, output_type="np", height=size, width=size,
                  guidance_scale=tiny_handle.guidance_scale, generator=torch.Generator().manual_seed(0),
                  **tiny_handle.extra).images
    assert np.isfinite(images).all()
    assert base.scheduler is base_sched and dict(base_sched.config) == before
