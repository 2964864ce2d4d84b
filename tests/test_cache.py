"""The cache knob: DeepCache on U-Nets, block-residual caching on transformers."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoeff.models.generate import SampleSpec, generate
from autoeff.search_spaces import cache
from autoeff.search_spaces.base import ConfigError, SpaceContext, config_from_dict, config_to_dict

STEPS = 10


def _ctx(handle, **options) -> SpaceContext:
    return SpaceContext(family=handle.family, denoiser=handle.denoiser_name, options={"cache": options})


def _digits_call(pipe, steps: int = STEPS) -> torch.Tensor:
    """One class-conditional call on fixed noise; DDPM's step noise comes from a fixed generator too."""
    latents = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    return pipe(class_labels=[3, 7], latents=latents, generator=torch.Generator().manual_seed(2),
                num_inference_steps=steps, output_type="pt").images


def _text_call(handle, pipe, steps: int) -> torch.Tensor:
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    return pipe(prompt=["a red cube"], latents=latents, height=handle.resolution, width=handle.resolution,
                num_inference_steps=steps, guidance_scale=handle.guidance_scale, output_type="pt",
                **handle.extra).images


def _with_denoiser(pipe, name: str, module):
    new = type(pipe)(**{**pipe.components, name: module})
    new.set_progress_bar_config(disable=True)
    return new


def _count_calls(module: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    return calls, module.register_forward_hook(hook)


@pytest.fixture(scope="module")
def tiny_sdxl():
    from autoeff.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl()


@pytest.fixture(scope="module")
def tiny_sd15():
    from autoeff.models.tiny import build_tiny_sd15

    return build_tiny_sd15()


@pytest.fixture(scope="module")
def tiny_pixart():
    from autoeff.models.tiny import build_tiny_pixart

    return build_tiny_pixart()


# --- config, schedule, search space -------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    ({"interval": 0}, "interval"), ({"interval": 2.0}, "interval"), ({"interval": True}, "interval"),
    ({"interval": 2, "branch": 0}, "branch"), ({"interval": 2, "schedule": "cosine"}, "schedule"),
    ({"interval": 2, "schedule": "nonuniform", "power": 0.5}, "power"),
    ({"interval": 2, "schedule": "nonuniform", "power": float("nan")}, "power"),
    ({"interval": 2, "power": 2.0}, "power"), ({"interval": 1, "branch": 2}, "interval=1"),
])
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"cache.{field}"):
        cache.Config(**kwargs)


@pytest.mark.parametrize("cfg", [cache.Config(), cache.Config(interval=3),
                                 cache.Config(interval=4, branch=2, schedule="nonuniform", power=1.7)])
def test_config_json_round_trip(cfg):
    assert config_from_dict(cache.Config, config_to_dict(cfg)) == cfg


def test_describe():
    assert cache.Config().describe() == "off"
    assert cache.Config(interval=3, branch=2, schedule="nonuniform", power=1.5).describe() == \
        "N=3 branch=2 nonuniform(p=1.5)"


@settings(max_examples=300, deadline=None)
@given(k=st.integers(1, 200), n=st.integers(2, 10), p=st.floats(1.0, 4.0), uniform=st.booleans())
def test_full_steps_count_and_range(k, n, p, uniform):
    schedule, power = ("uniform", 1.0) if uniform else ("nonuniform", p)
    cfg = cache.Config(interval=n, schedule=schedule, power=power)
    steps = cache.full_step_indices(cfg, k)
    assert len(steps) == math.ceil(k / n)
    assert steps[0] == 0 and steps[-1] < k
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False))
    if uniform:
        assert steps == [i * n for i in range(len(steps))]


def test_nonuniform_is_denser_early():
    steps = cache.full_step_indices(cache.Config(interval=3, schedule="nonuniform", power=2.0), 50)
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert gaps[0] < gaps[-1]
    assert sum(s < 25 for s in steps) > sum(s >= 25 for s in steps)


@pytest.mark.parametrize("cfg", [cache.Config(), cache.Config(interval=3), cache.Config(interval=5, branch=2),
                                 cache.Config(interval=2, branch=3, schedule="nonuniform", power=2.25)])
def test_to_params_makes_suggest_return_the_config(random_digits_handle, cfg):
    ctx = _ctx(random_digits_handle)
    assert cache.suggest(optuna.trial.FixedTrial(cache.to_params(cfg)), ctx) == cfg


def test_suggest_respects_options_and_includes_no_caching(random_digits_handle):
    ctx = _ctx(random_digits_handle, max_interval=3, max_branch=2, schedules=["uniform"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(40):
        trial = study.ask()
        configs.append(cache.suggest(trial, ctx))
        study.tell(trial, 0.0)
    assert {c.interval for c in configs} == {1, 2, 3}
    assert {c.branch for c in configs if c.interval > 1} <= {1, 2}
    assert {c.schedule for c in configs} == {"uniform"}
    with pytest.raises(ConfigError, match="unknown cache option"):
        cache.suggest(optuna.trial.FixedTrial({"cache_interval": 1}), _ctx(random_digits_handle, max_step=3))


def _branches(ctx: SpaceContext, n: int = 40) -> set[int]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = set()
    for _ in range(n):
        trial = study.ask()
        cfg = cache.suggest(trial, ctx)
        study.tell(trial, 0.0)
        if cfg.interval > 1:
            out.add(cfg.branch)
    return out


def test_branch_range_from_block_groups_then_family(tiny_sdxl, tiny_pixart, random_digits_dit_handle):
    from autoeff.search_spaces.groups import block_groups

    sdxl = SpaceContext(family="sdxl", denoiser="unet", block_groups=list(block_groups(tiny_sdxl.denoiser)))
    assert _branches(sdxl) == {1, 2}  # the tiny SDXL U-Net has 2 down blocks
    assert _branches(SpaceContext(family="sdxl", denoiser="unet")) == {1, 2, 3}  # the real one has 3
    dit = random_digits_dit_handle.denoiser
    ctx = SpaceContext(family="digits-dit", denoiser="transformer", block_groups=list(block_groups(dit)))
    assert max(_branches(ctx)) == cache.branch_range(dit)[1] == 5
    pixart = SpaceContext(family="pixart", denoiser="transformer",
                          block_groups=list(block_groups(tiny_pixart.denoiser)))
    assert _branches(pixart) == {1}  # 2 blocks; the real PixArt has 28


def test_schedule_detects_runs():
    sched = cache.CacheSchedule(cache.Config(interval=2))
    # PNDM visits one timestep twice: equal timesteps stay in the run; a higher timestep starts a new one.
    assert [sched.next_call(t) for t in (901, 801, 801, 701)] == [True, False, True, False]
    assert [sched.next_call(torch.tensor([t, t])) for t in (901, 801)] == [True, False]
    sched.reset()
    assert sched.next_call(801) is True
    assert sched.stats == cache.CacheStats(full_steps=4, shallow_steps=3, runs=3)
    # A known run length ends the run even when the next run starts at the same timestep.
    sched = cache.CacheSchedule(cache.Config(interval=3), run_length=lambda: 1)
    assert [sched.next_call(999) for _ in range(3)] == [True, True, True]


def test_nonuniform_needs_run_length(random_digits_handle):
    wrapper = cache.wrap_denoiser(random_digits_handle.pipeline.unet,
                                  cache.Config(interval=2, schedule="nonuniform", power=2.0))
    with pytest.raises(RuntimeError, match="run length"):
        wrapper(torch.randn(1, 1, 16, 16), torch.tensor([999]), class_labels=torch.tensor([0]))


# --- DeepCache on the digits U-Net ----------------------------------------------------------------------


def test_unet_interval_1_is_bit_identical(random_digits_handle):
    pipe = random_digits_handle.pipeline
    wrapper = cache.wrap_denoiser(pipe.unet, cache.Config())
    assert torch.equal(_digits_call(_with_denoiser(pipe, "unet", wrapper)), _digits_call(pipe))
    assert wrapper.stats == cache.CacheStats(full_steps=STEPS, shallow_steps=0, runs=1)


@pytest.mark.parametrize("branch", [1, 2, 3])
def test_unet_shallow_step_on_same_input_reproduces_full_step(random_digits_handle, branch):
    """A shallow step fed the input of the full step must give its output exactly (skip bookkeeping)."""
    unet = random_digits_handle.pipeline.unet
    wrapper = cache.wrap_denoiser(unet, cache.Config(interval=2, branch=branch))
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([500, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        full = wrapper(x, t, class_labels=y).sample
        shallow = wrapper(x, t, class_labels=y).sample
        reference = unet(x, t, class_labels=y).sample
    assert wrapper.stats.full_steps == 1 and wrapper.stats.shallow_steps == 1
    assert torch.equal(full, reference) and torch.equal(shallow, reference)


@pytest.mark.parametrize("cfg", [cache.Config(interval=3, branch=1), cache.Config(interval=2, branch=2),
                                 cache.Config(interval=4, branch=1, schedule="nonuniform", power=2.0)])
def test_unet_cached_pipeline(random_digits_handle, cfg):
    handle = random_digits_handle
    pipe, unet = handle.pipeline, handle.pipeline.unet
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    before = _digits_call(pipe)
    cached = cache.apply(pipe, cfg, _ctx(handle))
    assert cached.unet is not unet and cached.unet.base is unet and pipe.unet is unet

    deep_calls, hook = _count_calls(unet.mid_block)
    first = _digits_call(cached)
    hook.remove()
    expected = math.ceil(STEPS / cfg.interval)
    assert cached.unet.stats == cache.CacheStats(full_steps=expected, shallow_steps=STEPS - expected, runs=1)
    assert deep_calls[0] == expected
    assert torch.isfinite(first).all() and not torch.equal(first, before)
    assert torch.equal(_digits_call(cached), first)  # the second call starts a fresh run
    # The base pipeline and its U-Net are untouched.
    assert torch.equal(_digits_call(pipe), before)
    assert "forward" not in vars(unet) and not unet._forward_hooks and not unet._forward_pre_hooks
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())


def test_apply_interval_1_and_errors(random_digits_handle):
    handle = random_digits_handle
    plain = cache.apply(handle.pipeline, cache.Config(), _ctx(handle))
    assert plain is not handle.pipeline and plain.unet is handle.pipeline.unet
    with pytest.raises(ConfigError, match="branch=4 is out of range.*1..3"):
        cache.apply(handle.pipeline, cache.Config(interval=2, branch=4), _ctx(handle))
    cached = cache.apply(handle.pipeline, cache.Config(interval=2), _ctx(handle))
    with pytest.raises(ConfigError, match="already cached"):
        cache.apply(cached, cache.Config(interval=2), _ctx(handle))
    with pytest.raises(ConfigError, match="does not support Linear"):
        cache.wrap_denoiser(torch.nn.Linear(2, 2), cache.Config(interval=2))


def test_cached_pipeline_works_with_generate(random_digits_handle):
    handle = random_digits_handle
    cached = cache.apply(handle.pipeline, cache.Config(interval=2), _ctx(handle))
    spec = SampleSpec(seeds=(0, 1, 2), labels=(0, 1, 2), batch_size=2)
    images = generate(handle, cached, spec)
    assert images.shape == (3, 1, 16, 16) and torch.isfinite(images).all()
    assert cached.unet.stats.runs == 2


# --- block caching on the digits DiT --------------------------------------------------------------------


def test_dit_interval_1_is_bit_identical(random_digits_dit_handle):
    pipe = random_digits_dit_handle.pipeline
    wrapper = cache.wrap_denoiser(pipe.transformer, cache.Config())
    assert torch.equal(_digits_call(_with_denoiser(pipe, "transformer", wrapper)), _digits_call(pipe))
    assert wrapper.stats.full_steps == STEPS


@pytest.mark.parametrize("branch", [1, 3, 5])
def test_dit_cached_step_on_same_input_matches_full_step(random_digits_dit_handle, branch):
    dit = random_digits_dit_handle.pipeline.transformer
    wrapper = cache.wrap_denoiser(dit, cache.Config(interval=2, branch=branch))
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([500, 500]), torch.tensor([1, 2])
    calls, hook = _count_calls(dit.transformer_blocks[branch])
    with torch.no_grad():
        full = wrapper(x, timestep=t, class_labels=y).sample
        cached = wrapper(x, timestep=t, class_labels=y).sample
    hook.remove()
    assert calls[0] == 1  # the first cached block ran on the full step only
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [cache.Config(interval=3, branch=1), cache.Config(interval=2, branch=4),
                                 cache.Config(interval=3, branch=2, schedule="nonuniform", power=1.5)])
def test_dit_cached_pipeline(random_digits_dit_handle, cfg):
    handle = random_digits_dit_handle
    pipe, dit = handle.pipeline, handle.pipeline.transformer
    before = _digits_call(pipe)
    cached = cache.apply(pipe, cfg, _ctx(handle))
    calls, hook = _count_calls(dit.transformer_blocks[-1])
    first = _digits_call(cached)
    hook.remove()
    expected = math.ceil(STEPS / cfg.interval)
    assert cached.transformer.stats.full_steps == expected == calls[0]
    assert torch.isfinite(first).all() and not torch.equal(first, before)
    assert torch.equal(_digits_call(cached), first)
    assert torch.equal(_digits_call(pipe), before) and pipe.transformer is dit and "forward" not in vars(dit)


def test_dit_branch_range(random_digits_dit_handle):
    dit = random_digits_dit_handle.pipeline.transformer
    assert cache.branch_range(dit) == (1, len(dit.transformer_blocks) - 1)
    with pytest.raises(ConfigError, match="out of range"):
        cache.wrap_denoiser(dit, cache.Config(interval=2, branch=len(dit.transformer_blocks)))


# --- tiny SD1.5 / SDXL / PixArt -------------------------------------------------------------------------


def test_sdxl_interval_1_bit_identical_and_cached_counts(tiny_sdxl):
    handle = tiny_sdxl
    pipe, unet = handle.pipeline, handle.pipeline.unet
    before = _text_call(handle, pipe, 4)
    wrapper = cache.wrap_denoiser(unet, cache.Config())
    assert torch.equal(_text_call(handle, _with_denoiser(pipe, "unet", wrapper), 4), before)

    cached = cache.apply(pipe, cache.Config(interval=2, branch=1), _ctx(handle))
    deep_calls, hook = _count_calls(unet.mid_block)
    first = _text_call(handle, cached, 4)
    hook.remove()
    assert cached.unet.stats == cache.CacheStats(full_steps=2, shallow_steps=2, runs=1) and deep_calls[0] == 2
    assert torch.isfinite(first).all() and not torch.equal(first, before)
    assert torch.equal(_text_call(handle, pipe, 4), before)


def test_sd15_pndm_counts_every_model_call(tiny_sd15):
    """PNDM makes k + 1 model calls for k steps (one timestep twice); all of them are counted."""
    handle = tiny_sd15
    cached = cache.apply(handle.pipeline, cache.Config(interval=2, branch=2), _ctx(handle))
    out = _text_call(handle, cached, 4)
    calls = len(cached.scheduler.timesteps)
    assert calls == 5
    assert cached.unet.stats == cache.CacheStats(full_steps=3, shallow_steps=2, runs=1)
    assert torch.isfinite(out).all()


def test_controlnet_residuals_are_refused(tiny_sd15):
    wrapper = cache.wrap_denoiser(tiny_sd15.pipeline.unet, cache.Config(interval=2))
    with pytest.raises(NotImplementedError, match="ControlNet"):
        wrapper(torch.randn(1, 4, 16, 16), 999, torch.randn(1, 77, 32),
                mid_block_additional_residual=torch.zeros(1))


def test_pixart_interval_1_bit_identical_and_cached_counts(tiny_pixart):
    handle = tiny_pixart
    pipe, transformer = handle.pipeline, handle.pipeline.transformer
    before = _text_call(handle, pipe, 4)
    wrapper = cache.wrap_denoiser(transformer, cache.Config())
    assert torch.equal(_text_call(handle, _with_denoiser(pipe, "transformer", wrapper), 4), before)

    cached = cache.apply(pipe, cache.Config(interval=3, branch=1), _ctx(handle))
    first = _text_call(handle, cached, 4)
    assert cached.transformer.stats == cache.CacheStats(full_steps=2, shallow_steps=2, runs=1)
    assert torch.isfinite(first).all() and not torch.equal(first, before)
    assert torch.equal(_text_call(handle, cached, 4), first)
    assert torch.equal(_text_call(handle, pipe, 4), before)
