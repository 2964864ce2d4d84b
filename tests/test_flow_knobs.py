"""The knobs on flow-matching models (SD3, Flux, Sana; tiny random weights, 3 steps): every flow solver runs on a
copy and leaves the base alone; DDPM-family solvers are refused on them; the schedule knob pins sigmas and its
shift moves them (refused on Flux's resolution-dependent shift); diffusers' own cache hooks (First Block Cache,
TaylorSeer, PAB) run where the transformer supports them, on a copy; the kernels knob keeps the images."""

from __future__ import annotations

import logging

import optuna
import pytest
import torch

from autoeff.models import tiny
from autoeff.models.generate import default_spec, generate
from autoeff.recipe import Recipe
from autoeff.search import context_for
from autoeff.search_spaces import cache, kernels, quantize, schedule, solver
from autoeff.search_spaces.base import ConfigError
from autoeff.search_spaces.cache.diffusers_hooks import supported_methods
from autoeff.search_spaces.space import build_pipeline
from autoeff.settings import SearchSettings

logging.getLogger("diffusers").setLevel(logging.ERROR)

FLOW = ["sd3", "flux", "sana"]
FLOW_SOLVERS = [solver.Config("euler", 1), solver.Config("heun", 1), solver.Config("dpmpp", 1),
                solver.Config("dpmpp", 2), solver.Config("dpmpp", 3), solver.Config("unipc", 1),
                solver.Config("dpmpp", 3, False, "heun"), solver.Config("unipc", 2), solver.Config("unipc", 2, False),
                solver.Config("unipc", 3, variant="bh1")]


@pytest.fixture(scope="module")
def flow() -> dict:
    out = {}
    for name in FLOW:
        handle = tiny.BUILDERS[name]()
        handle.default_steps = 3
        spec = default_spec(handle, 2, batch_size=2)
        out[name] = (handle, spec, generate(handle, handle.pipeline, spec))
    return out


def _ctx(handle, space=("solver", "schedule", "cache", "kernels")):
    return context_for(handle, SearchSettings(model=handle.spec, budget="1s", space=list(space), max_steps=6))


def _run(handle, spec, knobs):
    return generate(handle, build_pipeline(handle, Recipe(model=handle.spec, knobs=knobs), _ctx(handle)), spec)


def _calls(module: torch.nn.Module) -> list[int]:
    count = [0]
    module.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


@pytest.mark.parametrize("name", FLOW)
@pytest.mark.parametrize("config", FLOW_SOLVERS, ids=lambda c: c.describe().replace(" ", "_"))
def test_every_flow_solver_runs_on_a_copy(flow, name, config):
    handle, spec, stock = flow[name]
    before = dict(handle.pipeline.scheduler.config)
    images = _run(handle, spec, {"solver": config})
    assert images.shape == stock.shape and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1
    assert dict(handle.pipeline.scheduler.config) == before  # the base scheduler is untouched
    assert torch.equal(generate(handle, handle.pipeline, spec), stock)


def test_heun_calls_the_transformer_twice_per_step_but_the_last(flow):
    handle, spec, _ = flow["sd3"]
    counts = {}
    for config in (solver.Config("euler", 1), solver.Config("heun", 1)):
        pipe = build_pipeline(handle, Recipe(model=handle.spec, knobs={"solver": config}), _ctx(handle))
        count = _calls(pipe.transformer)
        generate(handle, pipe, default_spec(handle, 1, batch_size=1))
        counts[config.name] = count[0]
    assert counts["euler"] == 3 and counts["heun"] == 2 * 3 - 1  # Karras et al., 2022, Algorithm 1


@pytest.mark.parametrize("name", ["ddim", "dpmpp_single"])
def test_ddpm_solvers_are_refused_on_flow_models(flow, name):
    handle, _, _ = flow["sd3"]
    with pytest.raises(ConfigError, match="has no flow-matching variant"):
        solver.build_scheduler(solver.Config(name, 1), handle.pipeline.scheduler)
    ctx = _ctx(handle)
    ctx.options = {"solver": {"names": [name]}}
    with pytest.raises(ConfigError, match="do\\(es\\) not run on a flow model"):
        solver.suggest(optuna.create_study().ask(), ctx)
    drawn = {solver.suggest(optuna.create_study().ask(), _ctx(handle)).name for _ in range(12)}
    assert drawn <= set(solver.NOISE_SOLVERS["flow"])


def test_the_schedule_pins_sigmas_and_its_shift_moves_them(flow):
    handle, spec, stock = flow["sd3"]
    seen: list[float] = []
    pipe = build_pipeline(handle, Recipe(model=handle.spec, knobs={"schedule": schedule.Config("karras", 3)}),
                          _ctx(handle))
    pipe.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(float(kw["timestep"].flatten()[0])), with_kwargs=True)
    generate(handle, pipe, default_spec(handle, 1, batch_size=1))
    sigmas = schedule.flow_sigmas_for(schedule.Config("karras", 3), 1000)
    shifted = [3.0 * s / (1 + 2.0 * s) * 1000 for s in sigmas]  # SD3's static shift 3 (Esser et al., 2024)
    assert seen == pytest.approx(shifted, rel=1e-5)
    moved = _run(handle, spec, {"schedule": schedule.Config("linspace", 3, shift=6.0)})
    assert not torch.equal(moved, stock)


def test_a_shift_is_refused_on_a_resolution_dependent_shift(flow):
    handle, _, _ = flow["flux"]
    with pytest.raises(ConfigError, match="dynamic shifting"):
        schedule.apply(handle.pipeline, schedule.Config("uniform", 3, shift=2.0), _ctx(handle))
    ctx = _ctx(handle)
    assert ctx.flow_shift is None
    trial = optuna.create_study().ask()
    schedule.suggest(trial, ctx)
    assert "schedule.shift" not in trial.params  # not drawn where it cannot apply


@pytest.mark.parametrize("name", FLOW)
def test_diffusers_cache_hooks_run_on_a_copy_where_supported(flow, name):
    handle, spec, stock = flow[name]
    methods = supported_methods(handle.denoiser)
    assert {"taylorseer", "pab"} <= set(methods)
    assert ("fbc" in methods) == (name == "flux")  # SD3's last joint block returns no text states; Sana's blocks
    for method in methods:
        config = (cache.Config(method="fbc", threshold=0.5) if method == "fbc"
                  else cache.Config(interval=2, method=method))
        pipe = build_pipeline(handle, Recipe(model=handle.spec, knobs={"cache": config}), _ctx(handle))
        images = generate(handle, pipe, spec)
        assert torch.isfinite(images).all() and images.shape == stock.shape
        assert not getattr(handle.denoiser, "_diffusers_hook", None) or not handle.denoiser._diffusers_hook.hooks
        assert torch.equal(generate(handle, handle.pipeline, spec), stock)  # the base is not hooked


@pytest.mark.parametrize("name", FLOW)
def test_kernels_keep_the_images_on_flow_transformers(flow, name):
    handle, spec, stock = flow[name]
    images = _run(handle, spec, {"kernels": kernels.Config(fuse_qkv=True, sdpa="math")})
    assert (images - stock).abs().max() < 1e-4  # the same maths in another order (test_kernels.TOLERANCE)


@pytest.mark.parametrize("name", FLOW)
def test_int8_quantization_runs_on_flow_transformers_on_a_copy(flow, name):
    """CPU dynamic int8 on every Linear of the transformer (the quantize knob's `_default` level): the images stay
    close to the stock ones (random tiny weights: a loose bound) and the base keeps its float weights."""
    handle, spec, stock = flow[name]
    config = quantize.Config(mapping={quantize.DEFAULT_KEY: "int8"})
    pipe = build_pipeline(handle, Recipe(model=handle.spec, knobs={"quantize": config}), _ctx(handle))
    quantized = [m for m in pipe.transformer.modules() if "quantized" in type(m).__module__]
    assert quantized and not [m for m in handle.denoiser.modules() if "quantized" in type(m).__module__]
    images = generate(handle, pipe, spec)
    assert torch.isfinite(images).all() and (images - stock).abs().mean() < 0.1
