"""The guidance knob on the tiny SD1.5 / SDXL / PixArt pipelines: guidance on every step reproduces the guided
images bit for bit; a cut-off halves the denoiser batch of exactly the cut steps (calls counted) and reproduces
diffusers' own CFG cut-off callbacks bit for bit; a limited interval guides only its middle steps; it is not in the
digits space; it refuses a caching cache, lets compile inside, and `autoeff.load` re-applies it."""

from __future__ import annotations

import optuna
import pytest
import torch
from diffusers.callbacks import SDCFGCutoffCallback, SDXLCFGCutoffCallback

from autoeff.export import export_pipeline, load
from autoeff.models.tiny import build_tiny_pixart, build_tiny_sd15, build_tiny_sdxl
from autoeff.recipe import Recipe
from autoeff.search import context_for
from autoeff.search_spaces import cache, compile, guidance
from autoeff.search_spaces.base import ConfigError, SpaceContext
from autoeff.search_spaces.space import SearchSpace
from autoeff.settings import SearchSettings

PROMPTS = ["a red cube", "two apples"]
BUILDERS = {"sd15": build_tiny_sd15, "sdxl": build_tiny_sdxl, "pixart": build_tiny_pixart}


@pytest.fixture(scope="module")
def handles():
    return {name: build() for name, build in BUILDERS.items()}


def _ctx(handle) -> SpaceContext:
    return SpaceContext(family=handle.family, denoiser=handle.denoiser_name)


def _run(handle, pipe, n=2, **kwargs):
    latents = torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    return pipe(prompt=PROMPTS[:n], latents=latents, num_inference_steps=4, output_type="pt", height=32, width=32,
                **handle.extra, **kwargs).images


def _batches(pipe, handle) -> list[int]:
    """Record the batch of every call of the denoiser inside the guidance wrapper."""
    sizes: list[int] = []
    getattr(pipe, handle.denoiser_name).base.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    return sizes


@pytest.mark.parametrize("family", list(BUILDERS))
def test_a_cut_off_halves_the_batch_of_exactly_the_cut_steps_and_every_step_changes_nothing(handles, family):
    h = handles[family]
    guided = _run(h, h.pipeline)
    assert torch.equal(_run(h, guidance.apply(h.pipeline, guidance.Config(), _ctx(h))), guided)
    # the wrapper in place, its interval covering every step: still the guided images, bit for bit
    everywhere = guidance.apply(h.pipeline, guidance.Config(start=0.0, end=0.99), _ctx(h))
    assert torch.equal(_run(h, everywhere), guided)
    cut = guidance.apply(h.pipeline, guidance.Config(start=0.0, end=0.5), _ctx(h))
    sizes = _batches(cut, h)
    images = _run(h, cut)
    n = len(cut.scheduler.timesteps)  # PNDM (SD1.5) calls the U-Net 5 times for 4 steps
    assert sizes == [4 if i / n < 0.5 else 2 for i in range(n)] and torch.isfinite(images).all()
    assert getattr(cut, h.denoiser_name).stats.conditional == sizes.count(2) > 0
    assert not torch.equal(images, guided) and type(cut).__name__ == type(h.pipeline).__name__
    assert type(h.pipeline).__call__ is not type(cut).__call__  # the base pipeline's class is untouched


@pytest.mark.parametrize("family, callback", [("sd15", SDCFGCutoffCallback), ("sdxl", SDXLCFGCutoffCallback)])
def test_a_cut_off_reproduces_diffusers_cfg_cutoff_callback_bit_for_bit(handles, family, callback):
    """diffusers' callbacks keep `prompt_embeds[-1:]`, so they are compared at one prompt; `cutoff_step_index=k`
    guides steps 0..k, which is `end = (k + 1) / n` here."""
    h = handles[family]
    cb = callback(cutoff_step_ratio=None, cutoff_step_index=1)
    theirs = _run(h, h.pipeline, n=1, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=cb.tensor_inputs)
    n = len(h.pipeline.scheduler.timesteps)
    ours = _run(h, guidance.apply(h.pipeline, guidance.Config(start=0.0, end=2 / n), _ctx(h)), n=1)
    assert torch.equal(ours, theirs)


def test_a_limited_interval_guides_only_its_middle_steps_and_no_guidance_passes_through(handles):
    h = handles["pixart"]
    pipe = guidance.apply(h.pipeline, guidance.Config(start=0.25, end=0.75), _ctx(h))
    sizes = _batches(pipe, h)
    _run(h, pipe)
    assert sizes == [2, 4, 4, 2]
    sizes.clear()  # without guidance (scale 1) the pipeline batches nothing and the wrapper passes every call on
    assert torch.equal(_run(h, pipe, guidance_scale=1.0), _run(h, h.pipeline, guidance_scale=1.0))
    assert sizes == [2, 2, 2, 2] and getattr(pipe, h.denoiser_name).stats.plain == 4


def test_a_searched_scale_replaces_the_callers_scale(handles):
    h = handles["sd15"]
    pipe = guidance.apply(h.pipeline, guidance.Config(scale=3.0), _ctx(h))
    assert torch.equal(_run(h, pipe, guidance_scale=7.5), _run(h, h.pipeline, guidance_scale=3.0))


def test_it_is_left_out_of_a_space_without_guidance_and_refuses_a_caching_cache(random_digits_handle, handles):
    ctx = context_for(random_digits_handle, SearchSettings(model="digits", budget="1s"))
    space = SearchSpace(random_digits_handle, ["solver", "guidance"], ctx)
    assert space.knobs == ["solver"] and space.left_out == ["guidance"]
    with pytest.raises(ConfigError, match="no knob of the search space \\(guidance\\) applies to the digits model"):
        SearchSpace(random_digits_handle, ["guidance"], ctx)
    with pytest.raises(ConfigError, match="does not apply to the digits model"):
        guidance.apply(random_digits_handle.pipeline, guidance.Config(end=0.5), ctx)
    h = handles["sd15"]
    cached = cache.apply(h.pipeline, cache.Config(interval=2), _ctx(h))
    with pytest.raises(ConfigError, match="with the cache knob: cached features have the guided batch"):
        guidance.apply(cached, guidance.Config(end=0.5), _ctx(h))


def test_config_options_and_trial_params_round_trip():
    ctx = SpaceContext(family="sdxl", denoiser="unet", options={"guidance": {"max_start": 0.2, "scales": [3, 5]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [guidance.suggest(study.ask(), ctx) for _ in range(20)]
    assert all(c.start <= 0.2 and c.end >= 0.4 and c.scale in (3.0, 5.0) for c in drawn)
    for c in drawn:
        assert guidance.suggest(optuna.trial.FixedTrial(guidance.to_params(c)), ctx) == c
    assert guidance.Config(end=0.5).describe() == "cut-off after 50%"
    assert guidance.Config(start=0.2, end=0.8, scale=4).describe() == "steps 20%-80%, scale 4"
    with pytest.raises(ConfigError, match="0 <= start < end <= 1"):
        guidance.Config(start=0.6, end=0.5)
    with pytest.raises(ConfigError, match="max_start < min_end"):
        guidance.KNOB.options_for(SpaceContext(family="sd15", denoiser="unet",
                                               options={"guidance": {"max_start": 0.5, "min_end": 0.5}}))


def test_compile_goes_inside_the_wrapper_and_load_reapplies_the_cut_off(handles, tmp_path):
    h = handles["sd15"]
    ctx = context_for(h, SearchSettings(model="sd15", budget="1s", space=["guidance"]))
    recipe = Recipe(model=h.spec, knobs={"guidance": guidance.Config(end=0.5),
                                         "compile": compile.Config(mode="default", backend="eager",
                                                                   scope="blocks")})
    searched = SearchSpace(h, ["guidance", "compile"], ctx).build(recipe)
    cut = _run(h, guidance.apply(h.pipeline, guidance.Config(end=0.5), ctx))
    assert torch.equal(_run(h, searched), cut)  # static graphs for batch 4 and 2, inside the eager wrapper
    assert isinstance(searched.unet, guidance.GuidanceInterval) and searched.unet.stats.conditional == 2
    pipe = load(export_pipeline(h, recipe, ctx, tmp_path / "exported"))
    assert isinstance(pipe.unet, guidance.GuidanceInterval) and torch.equal(_run(h, pipe), cut)
