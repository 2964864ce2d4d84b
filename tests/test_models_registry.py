"""`load_model` / `handle_from_pipeline`: family detection, offline loading, errors that say what to do."""

from __future__ import annotations

import json

import pytest
import torch

from autoeff.models.registry import (
    DEFAULT_PROMPTS,
    HUB_ALIASES,
    ModelNotAvailableError,
    UnsupportedModelError,
    handle_from_pipeline,
    hub_cache_dir,
    load_model,
    parse_dtype,
    pipeline_identity,
)
from autoeff.models.tiny import build_tiny_pixart, build_tiny_sd15, build_tiny_sdxl


@pytest.fixture
def empty_hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return home


def _latents(handle, n=1):
    c = handle.denoiser.config.in_channels
    side = handle.resolution // handle.pipeline.vae_scale_factor
    return torch.randn((n, c, side, side), generator=torch.Generator().manual_seed(7))


def _images(handle, latents):
    return handle.pipeline(prompt=["a red cube"] * len(latents), latents=latents, num_inference_steps=2,
                           output_type="np", guidance_scale=handle.guidance_scale, height=handle.resolution,
                           width=handle.resolution, **handle.extra).images


def _fake_hub_cache(cache, repo_id, pipe=None):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    if pipe is not None:
        pipe.save_pretrained(snapshot)
    return snapshot


@pytest.mark.parametrize("alias", list(HUB_ALIASES))
def test_missing_hub_model_names_id_cache_and_fix(alias, empty_hf_home):
    with pytest.raises(ModelNotAvailableError) as info:
        load_model(alias)
    msg = str(info.value)
    assert HUB_ALIASES[alias][0] in msg
    assert str(empty_hf_home / "hub") in msg
    assert "--model-path" in msg and "download" in msg
    assert "\n" not in msg


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    assert hub_cache_dir() == tmp_path / "hub_cache"


def test_sdxl_round_trip_through_folder(tmp_path):
    tiny = build_tiny_sdxl()
    tiny.pipeline.save_pretrained(tmp_path / "sdxl")
    loaded = load_model(str(tmp_path / "sdxl"))
    assert loaded.family == "sdxl"
    assert loaded.spec == str((tmp_path / "sdxl").resolve())
    assert loaded.resolution == tiny.resolution
    assert loaded.identity == tiny.identity
    latents = _latents(tiny)
    loaded.guidance_scale = tiny.guidance_scale
    torch.testing.assert_close(torch.from_numpy(_images(loaded, latents)),
                               torch.from_numpy(_images(tiny, latents)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("build", [build_tiny_sd15, build_tiny_pixart])
def test_other_families_round_trip(build, tmp_path):
    tiny = build()
    tiny.pipeline.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.family == tiny.family
    assert loaded.identity == tiny.identity
    expected = {"sd15": (50, 7.5), "pixart": (20, 4.5)}[tiny.family]  # the pipelines' own defaults
    assert (loaded.default_steps, loaded.guidance_scale) == expected


def test_alias_loads_from_the_hub_cache(empty_hf_home):
    tiny = build_tiny_sdxl()
    _fake_hub_cache(empty_hf_home / "hub", HUB_ALIASES["sdxl"][0], tiny.pipeline)
    loaded = load_model("sdxl")
    assert loaded.spec == "sdxl" and loaded.family == "sdxl"
    assert loaded.identity == tiny.identity


def test_cached_hub_id_loads_by_name(empty_hf_home):
    tiny = build_tiny_pixart()
    _fake_hub_cache(empty_hf_home / "hub", "someone/tiny-pixart", tiny.pipeline)
    assert load_model("someone/tiny-pixart").family == "pixart"


def test_partial_cache_is_reported(empty_hf_home):
    snapshot = _fake_hub_cache(empty_hf_home / "hub", HUB_ALIASES["sdxl"][0])
    build_tiny_sdxl().pipeline.save_pretrained(snapshot)
    for weights in (snapshot / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelNotAvailableError, match="stabilityai/stable-diffusion-xl-base-1.0") as info:
        load_model("sdxl")
    assert "\n" not in str(info.value)


def test_model_path_with_alias(tmp_path):
    build_tiny_sdxl().pipeline.save_pretrained(tmp_path / "sdxl")
    assert load_model("sdxl", model_path=str(tmp_path / "sdxl")).family == "sdxl"
    with pytest.raises(ModelNotAvailableError, match="holds a sdxl model"):
        load_model("pixart", model_path=str(tmp_path / "sdxl"))
    with pytest.raises(ModelNotAvailableError, match="not a folder"):
        load_model("sdxl", model_path=str(tmp_path / "missing"))


def test_pickled_weights_are_refused(tmp_path):
    build_tiny_sd15().pipeline.save_pretrained(tmp_path / "bin", safe_serialization=False)
    with pytest.raises(ModelNotAvailableError, match="safetensors") as info:
        load_model(str(tmp_path / "bin"))
    assert str(tmp_path / "bin") in str(info.value)


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotAvailableError, match="model_index.json") as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_a_folder_without_a_denoiser_names_what_is_missing(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(UnsupportedModelError, match="FluxPipeline") as info:
        load_model(str(tmp_path))
    assert "no unet or transformer component" in str(info.value) and str(tmp_path) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_folder_naming_a_class_outside_diffusers_is_refused_before_loading(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "os.system"}))
    with pytest.raises(UnsupportedModelError, match="not a diffusers pipeline class"):
        load_model(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["my_package", "EvilUNet"],
         "scheduler": ["diffusers", "DDPMScheduler"]}))
    with pytest.raises(UnsupportedModelError, match="'my_package'.*diffusers and transformers only"):
        load_model(str(tmp_path))


def test_unknown_spec_lists_aliases():
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("no-such-model")
    for alias in ("digits", "digits-dit", "sd15", "sd21", "sdxl", "pixart"):
        assert alias in str(info.value)


def test_handle_from_pipeline_detects_families(random_digits_handle, random_digits_dit_handle):
    cases = [(random_digits_handle.pipeline, "digits"), (random_digits_dit_handle.pipeline, "digits-dit"),
             (build_tiny_sd15().pipeline, "sd15"), (build_tiny_sdxl().pipeline, "sdxl"),
             (build_tiny_pixart().pipeline, "pixart")]
    for pipe, family in cases:
        handle = handle_from_pipeline(pipe)
        assert handle.family == family
        assert handle.spec == "<pipeline>"
    digits = handle_from_pipeline(random_digits_handle.pipeline)
    assert (digits.resolution, digits.num_classes, digits.prompts) == (16, 10, None)


def test_handle_defaults_and_overrides():
    pipe = build_tiny_sd15().pipeline
    handle = handle_from_pipeline(pipe)
    assert handle.resolution == pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert (handle.default_steps, handle.guidance_scale, handle.prompts) == (50, 7.5, DEFAULT_PROMPTS)
    assert handle_from_pipeline(pipe, default_steps=7).default_steps == 7
    with pytest.raises(TypeError, match="stepz"):
        handle_from_pipeline(pipe, stepz=3)


def test_unsupported_pipeline_object():
    """A score-SDE (variance-exploding) pipeline is neither DDPM-family nor flow matching: refused, saying so."""
    from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, block_out_channels=(32, 32), down_block_types=("DownBlock2D",) * 2,
                       up_block_types=("UpBlock2D",) * 2, layers_per_block=1)
    with pytest.raises(UnsupportedModelError, match="ScoreSdeVePipeline") as info:
        handle_from_pipeline(ScoreSdeVePipeline(unet=unet, scheduler=ScoreSdeVeScheduler()))
    assert "neither a DDPM-family scheduler" in str(info.value) and "flow-matching" in str(info.value)


def test_identity_tracks_weights_and_dtype():
    pipe = build_tiny_pixart().pipeline
    before = pipeline_identity(pipe)
    with torch.no_grad():
        pipe.transformer.proj_out.weight.add_(1e-3)
    changed = pipeline_identity(pipe)
    assert changed != before
    pipe.to(torch.bfloat16)
    assert pipeline_identity(pipe) not in (before, changed)


def test_identity_is_stable_across_calls():
    handle = build_tiny_sdxl()
    _images(handle, _latents(handle))  # tokenizers keep padding/truncation state after a call
    assert pipeline_identity(handle.pipeline) == handle.identity


def test_dtype_choice(tmp_path):
    assert parse_dtype("fp16", "cpu", "sdxl") is torch.float16
    assert parse_dtype("bfloat16", "cpu", "sdxl") is torch.bfloat16
    assert parse_dtype(None, "cuda", "sdxl") is torch.float16
    assert parse_dtype(None, "cuda", "digits") is torch.float32
    assert parse_dtype(None, "cpu", "sdxl") is torch.float32
    with pytest.raises(ValueError, match="int3"):
        parse_dtype("int3", "cpu", "sdxl")
    build_tiny_pixart().pipeline.save_pretrained(tmp_path / "p")
    pipe = load_model(str(tmp_path / "p"), dtype="bf16").pipeline
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch.bfloat16


def test_missing_builtin_weights_are_reported(tmp_path, monkeypatch):
    from autoeff.models import builtin

    monkeypatch.setattr(builtin, "WEIGHTS", tmp_path)
    with pytest.raises(ModelNotAvailableError, match="autoeff.models.digits.train"):
        load_model("digits")


def test_load_builtin_digits():
    handle = load_model("digits")
    assert handle.family == "digits" and handle.resolution == 16 and handle.num_classes == 10
    images = handle.pipeline(class_labels=[3], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 1)
