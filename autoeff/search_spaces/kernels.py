"""The `kernels` knob: faster kernels for the same maths, from diffusers' and PyTorch's own switches (diffusers'
"speed up inference" guide: SDPA, fused QKV projections, channels-last).

* * `fuse_qkv`: diffusers' `fuse_qkv_projections()`, on the denoiser classes that have it (`UNet2DConditionModel` of
  SD1.5/SDXL, `PixArtTransformer2DModel`, SD3's and Flux's transformers: the `fuse_qkv` feature): one matmul for a
  self-attention's Q, K and V, one for a cross-attention's K and V (`FusedAttnProcessor2_0`). diffusers keeps the
  separate projections for `unfuse_qkv_projections`; nothing here unfuses, so the copy drops them: the weights are
  not held twice and the quantize knob (a later stage) sees only the layers that run.
* `channels_last`: convolution weights in channels-last (NHWC) memory format, as the guide's
  `unet.to(memory_format=torch.channels_last)`; convolutions then produce channels-last outputs.
* `sdpa`: the backend of `scaled_dot_product_attention` (`torch.nn.attention.sdpa_kernel`): `default` (torch
  chooses), `math`, `flash` (CPU and CUDA), `efficient`, `cudnn` (CUDA). Each attention module's processor is
  wrapped to run under `sdpa_kernel` (`SDPABackendProcessor`, written here: the processors these models use
  call SDPA directly, and diffusers 0.42.1's `set_attention_backend` dispatches only for its newer attention
  modules). A processor's extra `cross_attention_kwargs` are not passed through the wrapper.

The same maths in another order: fused and channels-last outputs differ from the plain ones by rounding only
(tests bound it); `sdpa` backends too. Applied at `Stage.KERNELS` (after pruning, before quantization and the
wrappers) to a copy sharing the weights that do not change (`_wrapped.share_copy`); `apply` never mutates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from autoeff.search_spaces._wrapped import bind_caches, share_copy, wrapper_chain
from autoeff.search_spaces.base import ConfigError, Knob, SpaceContext, Stage, copy_pipeline, features_of
from autoeff.search_spaces.registry import register

NAME = "kernels"
SDPA: dict[str, SDPBackend | None] = {"default": None, "math": SDPBackend.MATH,
                                      "flash": SDPBackend.FLASH_ATTENTION,
                                      "efficient": SDPBackend.EFFICIENT_ATTENTION,
                                      "cudnn": SDPBackend.CUDNN_ATTENTION}
CPU_SDPA: tuple[str, ...] = ("default", "math", "flash")
DEFAULT_SDPA: dict[str, tuple[str, ...]] = {"cpu": CPU_SDPA, "cuda": ("default", "flash", "efficient", "cudnn")}
# Whether the denoiser class has diffusers' `fuse_qkv_projections`, and whether it has attention at all (the
# built-in digits U-Net has none), are the context's `fuse_qkv` and `attention` features.


def _device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


@dataclass
class Config:
    """Kernel switches.

    Attributes:
        fuse_qkv: fused QKV (self-attention) / KV (cross-attention) projections.
        channels_last: convolution weights in channels-last memory format.
        sdpa: the scaled-dot-product-attention backend (`SDPA`).
    """

    fuse_qkv: bool = False
    channels_last: bool = False
    sdpa: str = "default"
    version: int = 1

    def __post_init__(self) -> None:
        for name in ("fuse_qkv", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"kernels.{name} must be true or false, got {getattr(self, name)!r}")
        if self.sdpa not in SDPA:
            raise ConfigError(f"kernels.sdpa {self.sdpa!r} is not known; use one of {', '.join(SDPA)}")

    @property
    def is_off(self) -> bool:
        return not self.fuse_qkv and not self.channels_last and self.sdpa == "default"

    def describe(self) -> str:
        """E.g. `off`, `fused QKV + channels-last + SDPA flash`."""
        parts = ["fused QKV"] * self.fuse_qkv + ["channels-last"] * self.channels_last
        parts += [] if self.sdpa == "default" else [f"SDPA {self.sdpa}"]
        return " + ".join(parts) or "off"


@dataclass
class Options:
    """Restrictions of the kernels space: `fuse_qkv`, `channels_last` (search them; default true), `sdpa` (the
    backends to try; default: `DEFAULT_SDPA` of the device)."""

    fuse_qkv: bool = True
    channels_last: bool = True
    sdpa: list[str] | None = None

    def __post_init__(self) -> None:
        for name in ("fuse_qkv", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"kernels option {name}={getattr(self, name)!r} must be true or false")
        if self.sdpa is not None and (not isinstance(self.sdpa, list | tuple) or not self.sdpa
                                      or any(b not in SDPA for b in self.sdpa)):
            raise ConfigError(f"kernels option sdpa={self.sdpa!r} must be a non-empty subset of {', '.join(SDPA)}")


def _sdpa_choices(context: SpaceContext, opts: Options) -> list[str]:
    kind = _device_kind(context.device)
    choices = list(opts.sdpa if opts.sdpa is not None else DEFAULT_SDPA[kind])
    if kind == "cpu" and any(b not in CPU_SDPA for b in choices):
        raise ConfigError(f"kernels option sdpa={choices!r}: only {', '.join(CPU_SDPA)} run on the CPU")
    return choices


def suggest(trial: Any, context: SpaceContext) -> Config:
    """`kernels.fuse_qkv` (models with `fuse_qkv_projections`), `kernels.channels_last`, `kernels.sdpa` (models
    with attention); what the options or the model rule out stays off."""
    opts: Options = KNOB.options_for(context)
    choices = _sdpa_choices(context, opts)
    features = features_of(context)
    fuse = opts.fuse_qkv and "fuse_qkv" in features and trial.suggest_categorical(
        f"{NAME}.fuse_qkv", [False, True])
    channels_last = opts.channels_last and trial.suggest_categorical(f"{NAME}.channels_last", [False, True])
    sdpa = "default"
    if "attention" in features:
        sdpa = trial.suggest_categorical(f"{NAME}.sdpa", choices) if len(choices) > 1 else choices[0]
    return Config(fuse_qkv=bool(fuse), channels_last=bool(channels_last), sdpa=sdpa)


def to_params(config: Config) -> dict[str, Any]:
    """The trial parameters `suggest` turns into `config` (for a family and options that draw them)."""
    return {f"{NAME}.fuse_qkv": config.fuse_qkv, f"{NAME}.channels_last": config.channels_last,
            f"{NAME}.sdpa": config.sdpa}


def off(context: SpaceContext) -> Config:
    """The model's own kernels."""
    return Config()


# --- applying ----------------------------------------------------------------------------------------------


class SDPABackendProcessor:
    """A diffusers attention processor run under `sdpa_kernel(backend)`."""

    def __init__(self, processor: Any, backend: SDPBackend) -> None:
        self.processor = processor
        self.backend = backend

    def __call__(self, attn: Any, *args: Any, **kwargs: Any) -> Any:
        # exactly what the attention module passes (positionally or by name: processors differ, Flux's takes
        # rotary embeddings fifth, Sana's linear-attention one has no `temb`)
        with sdpa_kernel(self.backend):
            return self.processor(attn, *args, **kwargs)


def _attention_modules(model: nn.Module) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


def _fuse(model: nn.Module) -> None:
    """diffusers' fused projections, then the separate ones the fused processor no longer calls removed."""
    fuse = getattr(model, "fuse_qkv_projections", None)
    if fuse is None:
        raise ConfigError(f"kernels.fuse_qkv: diffusers has no fuse_qkv_projections for {type(model).__name__}; "
                          "leave fuse_qkv false for this model")
    fuse()
    for attn in _attention_modules(model):
        if getattr(attn, "fused_projections", False):
            # each fused projection replaces the separate ones it concatenates
            unused = [*(("to_q", "to_k", "to_v") if getattr(attn, "to_qkv", None) is not None else ()),
                      *(("to_k", "to_v") if getattr(attn, "to_kv", None) is not None else ()),
                      *(("add_q_proj", "add_k_proj", "add_v_proj")
                        if getattr(attn, "to_added_qkv", None) is not None else ())]
            for name in unused:
                if isinstance(getattr(attn, name, None), nn.Module):
                    setattr(attn, name, None)


def _channels_last(model: nn.Module) -> None:
    """Every 4-D parameter replaced by a channels-last copy (new tensors: the shared originals are untouched)."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.dim() == 4:
                module._parameters[name] = nn.Parameter(p.detach().to(memory_format=torch.channels_last),
                                                        requires_grad=p.requires_grad)


def _with_sdpa(model: nn.Module, backend: str, device: str) -> None:
    if _device_kind(device) == "cpu" and backend not in CPU_SDPA:
        raise ConfigError(f"kernels.sdpa {backend!r} runs on CUDA only, not {device!r}; use one of "
                          f"{', '.join(CPU_SDPA)}")
    modules = _attention_modules(model)
    if not modules:
        raise ConfigError(f"kernels.sdpa {backend!r}: {type(model).__name__} has no attention; leave sdpa 'default'")
    chosen = SDPA[backend]
    assert chosen is not None  # only `default` maps to None
    for attn in modules:
        attn.set_processor(SDPABackendProcessor(attn.processor, chosen))


def apply(pipe: Any, config: Config, context: SpaceContext) -> Any:
    """A copy of `pipe` whose denoiser runs `config`'s kernels; `pipe` and its modules are untouched."""
    new = copy_pipeline(pipe)
    if config.is_off:
        return new
    denoiser = getattr(pipe, context.denoiser, None)
    if denoiser is None:
        raise ConfigError(f"the pipeline {type(pipe).__name__} has no {context.denoiser!r} component")
    tree = share_copy(denoiser)
    _, model = wrapper_chain(tree)
    if config.fuse_qkv:
        _fuse(model)
    if config.channels_last:
        _channels_last(model)
    if config.sdpa != "default":
        _with_sdpa(model, config.sdpa, context.device)
    new.register_modules(**{context.denoiser: tree})
    bind_caches(tree, new)
    return new


KNOB = register(Knob(
    name=NAME, stage=Stage.KERNELS, config=Config, options=Options, suggest=suggest, to_params=to_params,
    apply=apply, off=off, keeps_images=True,
    help="fused QKV projections, channels-last convolutions, the SDPA attention backend"))

__all__ = ["NAME", "KNOB", "Config", "Options", "SDPA", "SDPABackendProcessor", "suggest", "to_params", "off",
           "apply"]
