"""The kernels knob: off changes nothing; fused QKV, channels-last and each CPU SDPA backend give the same images up
to rounding (documented tolerance) on the tiny SD1.5 and PixArt pipelines and the digits DiT, on a copy that
leaves the base alone; fused projections replace the separate ones (no weight held twice); what a family lacks
is not drawn; it composes with quantize, cache and compile."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

from autoeff.models.generate import default_spec, generate
from autoeff.models.tiny import build_tiny_pixart, build_tiny_sd15
from autoeff.recipe import Recipe
from autoeff.search import context_for
from autoeff.search_spaces import cache, compile, kernels, quantize
from autoeff.search_spaces.base import ConfigError, SpaceContext
from autoeff.search_spaces.space import build_pipeline
from autoeff.settings import SearchSettings

# The same maths in another order: the images (in [0, 1]) move by rounding only. Measured on these models:
# at most 2e-6; the bound leaves room for other CPUs' kernels.
TOLERANCE = 1e-4
CONFIGS = [kernels.Config(fuse_qkv=True), kernels.Config(channels_last=True), kernels.Config(sdpa="math"),
           kernels.Config(sdpa="flash"), kernels.Config(fuse_qkv=True, channels_last=True, sdpa="flash")]


@pytest.fixture(scope="module")
def tiny():
    return {"sd15": build_tiny_sd15(), "pixart": build_tiny_pixart()}


def _ctx(handle) -> SpaceContext:
    return context_for(handle, SearchSettings(model=handle.spec, budget="1s", space=["kernels"]))


def _images(handle, pipe):
    return generate(handle, pipe, default_spec(handle, 2, seed=0, batch_size=2))


@pytest.mark.parametrize("family", ["sd15", "pixart"])
def test_every_switch_gives_the_same_images_up_to_rounding_and_leaves_the_base_alone(tiny, family):
    h = tiny[family]
    ctx = _ctx(h)
    den = getattr(h.pipeline, h.denoiser_name)
    before = {n: p for n, p in den.named_parameters()}
    base = _images(h, h.pipeline)
    assert torch.equal(_images(h, kernels.apply(h.pipeline, kernels.Config(), ctx)), base)
    for config in CONFIGS:
        pipe = kernels.apply(h.pipeline, config, ctx)
        assert (_images(h, pipe) - base).abs().max() <= TOLERANCE, config.describe()
    # the base denoiser: the same parameter objects, contiguous, its own unfused processors
    assert {n: p for n, p in den.named_parameters()} == before
    assert all(p.is_contiguous() for p in den.parameters())
    assert all(type(p) is AttnProcessor2_0 for p in den.attn_processors.values())


def test_fused_projections_replace_the_separate_ones(tiny):
    h = tiny["sd15"]
    pipe = kernels.apply(h.pipeline, kernels.Config(fuse_qkv=True, channels_last=True, sdpa="math"), _ctx(h))
    attn = [m for m in pipe.unet.modules() if hasattr(m, "fused_projections")]
    assert attn and all(m.fused_projections for m in attn)
    for m in attn:
        assert isinstance(m.processor, kernels.SDPABackendProcessor)
        assert isinstance(m.processor.processor, FusedAttnProcessor2_0)
        assert m.to_k is None and m.to_v is None and (m.to_q is None) == (not m.is_cross_attention)
    count = sum(p.numel() for p in pipe.unet.parameters())
    assert count == sum(p.numel() for p in h.pipeline.unet.parameters())  # the same weights, fused, not doubled
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv is not h.pipeline.unet.conv_in.weight


def test_the_space_draws_what_the_family_has(random_digits_handle, random_digits_dit_handle):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    # the digits U-Net's mid block has one attention module (SDPA applies there too)
    for handle, drawn in ((random_digits_handle, {"kernels.channels_last", "kernels.sdpa"}),
                          (random_digits_dit_handle, {"kernels.channels_last", "kernels.sdpa"})):
        ctx = _ctx(handle)
        for _ in range(6):
            trial = study.ask()
            config = kernels.suggest(trial, ctx)
            assert set(trial.params) == drawn and not config.fuse_qkv
            assert kernels.suggest(optuna.trial.FixedTrial(kernels.to_params(config)), ctx) == config
    sd = SpaceContext(family="sdxl", denoiser="unet", device="cuda")
    trial = optuna.create_study().ask()  # a study searches one device: the CUDA backends are another space
    kernels.suggest(trial, sd)
    assert set(trial.params) == {"kernels.fuse_qkv", "kernels.channels_last", "kernels.sdpa"}
    with pytest.raises(ConfigError, match="only default, math, flash run on the CPU"):
        kernels.suggest(study.ask(), dataclasses.replace(_ctx(random_digits_dit_handle),
                                                         options={"kernels": {"sdpa": ["cudnn"]}}))
    with pytest.raises(ConfigError, match="runs on CUDA only"):
        kernels.apply(random_digits_dit_handle.pipeline, kernels.Config(sdpa="efficient"),
                      _ctx(random_digits_dit_handle))
    with pytest.raises(ConfigError, match="diffusers has no fuse_qkv_projections for DiTTransformer2DModel"):
        kernels.apply(random_digits_dit_handle.pipeline, kernels.Config(fuse_qkv=True), _ctx(random_digits_dit_handle))


def test_it_composes_with_quantize_cache_and_compile(random_digits_dit_handle):
    h = random_digits_dit_handle
    h.default_steps = 4
    ctx = _ctx(h)
    plain = {"cache": cache.Config(interval=2, branch=2),
             "quantize": quantize.Config(mapping={"re:transformer_blocks\\..*": "int8", "_default": "skip"},
                                         backend="fake")}
    switched = {**plain, "kernels": kernels.Config(channels_last=True, sdpa="math"),
                "compile": compile.Config(mode="default", backend="eager", scope="blocks")}
    reference = _images(h, build_pipeline(h, Recipe(model=h.spec, knobs=plain), ctx))
    pipe = build_pipeline(h, Recipe(model=h.spec, knobs=switched), ctx)
    assert (_images(h, pipe) - reference).abs().max() <= TOLERANCE
    assert pipe.transformer.stats.shallow_steps == 2  # the cache wrapper, around the switched, compiled blocks
