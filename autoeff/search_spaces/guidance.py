"""The `guidance` knob: apply classifier-free guidance (Ho & Salimans, 2022) only on an interval of the steps.

Kynkäänniemi et al., 2024, "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality
in Diffusion Models", show that guidance harms the highest noise levels, is unnecessary at the lowest, and
that limiting it to the middle holds or improves quality; diffusers ships the plain "cut-off after x%" case
as `SDCFGCutoffCallback` / `SDXLCFGCutoffCallback` / `SD3CFGCutoffCallback`. A guided step runs the denoiser
on a batch of 2B (the unconditional and the conditional halves); outside the interval only the conditional
half runs, so a step outside costs half the denoiser batch: up to 2x on the denoiser.

Config: `start`, `end` (fractions of the pipeline's denoiser calls: call `i` of `n` is guided when
`start <= i / n < end`; `(0, 1)` guides every step, `(0, x)` is the cut-off after the first x of the steps),
and `scale` (`None`: the guidance scale the pipeline is called with; an option searches it).

Models: text-to-image pipelines that batch `[unconditional, conditional]` in one denoiser call and combine them
as `uncond + s * (cond - uncond)` (the `guidance:batched` feature, `models.kinds`: SD1.5, SDXL, PixArt, SD3,
Sana, ...). The knob does not apply to the digits models (no guidance), to a distilled-guidance model (Flux.1),
to pipelines that run the two halves as separate calls, nor to DiT's class-conditional guidance (its batch is
`[conditional, null class]`), so it is not in their search space (`Knob.applies_to`).

How. The denoiser is wrapped (`GuidanceInterval`, its own module held as `base`) and the pipeline's class is
subclassed once per class (same name, same signature) so that each call tells the wrapper whether it is
guided and which step it is at (a context variable). At a step outside the interval the wrapper passes the
conditional half of every batched input to the denoiser and returns its output twice, so the pipeline's
combination gives exactly the conditional prediction: the same images as the pipeline run without guidance
from that step on, bit for bit (tests compare with diffusers' callback).

Why not diffusers' callbacks directly: in diffusers 0.42.1 they keep `prompt_embeds[-1:]`, the last row, which
is right for one prompt only (with two prompts the U-Net call fails: "The size of tensor a (512) must match
the size of tensor b (256)", measured on the tiny SD1.5 pipeline), while the search calls pipelines with a
batch of prompts; a callback can only turn guidance off, never on, so an interval that starts after the first
step cannot be expressed; and PixArt's pipeline takes no `callback_on_step_end`. The wrapper covers all three
families with one mechanism, and for the cut-off it reproduces the callbacks' images exactly (diffusers'
`cutoff_step_index = k` is `end = (k + 1) / n` here).

Composition: the cache knob's wrappers keep features at the batch of the step that computed them, and a cut
changes the batch in the middle of a run, so an interval other than every step with a caching `cache` is
refused (the trial fails with that reason). Compile goes inside the wrapper: two static graphs, 2B and B.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoeff.search_spaces._wrapped import bind_caches, caches_in, share_copy
from autoeff.search_spaces.base import ConfigError, Knob, SpaceContext, Stage, copy_pipeline, features_of
from autoeff.search_spaces.registry import register

NAME = "guidance"
GUIDED_FAMILIES: tuple[str, ...] = ("sd15", "sdxl", "pixart")  # the named families among them
STEP = 0.05  # the grid `suggest` draws start and end on


def _fraction(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= 1


@dataclass
class Config:
    """Where guidance is applied.

    Attributes:
        start / end: fractions of the denoiser calls; call `i` of `n` is guided when `start <= i / n < end`.
        scale: the guidance scale; `None` keeps the one the pipeline is called with.
    """

    start: float = 0.0
    end: float = 1.0
    scale: float | None = None
    version: int = 1

    def __post_init__(self) -> None:
        if not _fraction(self.start) or not _fraction(self.end) or not self.start < self.end:
            raise ConfigError(f"guidance interval [{self.start!r}, {self.end!r}) is invalid; use fractions of the "
                              "steps with 0 <= start < end <= 1 (0 and 1: every step)")
        self.start, self.end = float(self.start), float(self.end)
        if self.scale is not None and (isinstance(self.scale, bool) or not isinstance(self.scale, int | float)
                                       or not 1.0 <= self.scale < math.inf):
            raise ConfigError(f"guidance.scale {self.scale!r} is invalid; use a number >= 1 or null (the "
                              "pipeline's own scale)")

    @property
    def every_step(self) -> bool:
        return self.start == 0.0 and self.end == 1.0

    def guided(self, i: int, n: int) -> bool:
        """Whether call `i` (0-based) of a run of `n` denoiser calls is guided."""
        return self.start <= i / n < self.end

    def describe(self) -> str:
        """E.g. `every step`, `cut-off after 50%`, `steps 20%-80%`, with `, scale 5` when it is set."""
        if self.every_step:
            text = "every step"
        elif self.start == 0.0:
            text = f"cut-off after {self.end:.0%}"
        else:
            text = f"steps {self.start:.0%}-{self.end:.0%}"
        return text + ("" if self.scale is None else f", scale {self.scale:g}")


@dataclass
class Options:
    """Restrictions of the guidance space: `max_start` (latest start drawn, default 0.3; 0: cut-offs only),
    `min_end` (earliest end drawn, default 0.4), multiples of 0.05 with `max_start < min_end`; `scales`
    (guidance scales to search; default none: the pipeline's own scale)."""

    max_start: float = 0.3
    min_end: float = 0.4
    scales: list[float] | None = None

    def __post_init__(self) -> None:
        for name in ("max_start", "min_end"):
            value = getattr(self, name)
            if not _fraction(value) or abs(value / STEP - round(value / STEP)) > 1e-9:
                raise ConfigError(f"guidance option {name}={value!r} must be a multiple of {STEP} in [0, 1]")
        if not self.max_start < self.min_end:
            raise ConfigError(f"guidance options max_start={self.max_start} and min_end={self.min_end}: the interval "
                              "would be empty; use max_start < min_end")
        if self.scales is not None and (not isinstance(self.scales, list | tuple) or not self.scales or any(
                isinstance(s, bool) or not isinstance(s, int | float) or not 1 <= s < math.inf for s in self.scales)):
            raise ConfigError(f"guidance option scales={self.scales!r} must be a non-empty list of numbers >= 1")


def _pct(fraction: float) -> int:
    return int(round(fraction * 100))


def suggest(trial: Any, context: SpaceContext) -> Config:
    """`guidance.start_pct` and `guidance.end_pct` on a 5% grid (0 and 100: every step), and `guidance.scale`
    when the options list scales."""
    opts: Options = KNOB.options_for(context)
    step = _pct(STEP)
    start = trial.suggest_int(f"{NAME}.start_pct", 0, _pct(opts.max_start), step=step)
    end = trial.suggest_int(f"{NAME}.end_pct", _pct(opts.min_end), 100, step=step)
    scale = None if opts.scales is None else float(trial.suggest_categorical(f"{NAME}.scale", list(opts.scales)))
    return Config(start=start / 100, end=end / 100, scale=scale)


def to_params(config: Config) -> dict[str, Any]:
    """The trial parameters `suggest` turns into `config` (`scale` only when the options search it)."""
    params: dict[str, Any] = {f"{NAME}.start_pct": _pct(config.start), f"{NAME}.end_pct": _pct(config.end)}
    if config.scale is not None:
        params[f"{NAME}.scale"] = config.scale
    return params


def off(context: SpaceContext) -> Config:
    """Guidance on every step, at the pipeline's own scale."""
    return Config()


def applies_to(context: SpaceContext) -> bool:
    """Models with batched classifier-free guidance (the `guidance:batched` feature)."""
    return "guidance:batched" in features_of(context)


# --- the wrapper --------------------------------------------------------------------------------------------


@dataclass
class _Call:
    """One pipeline call, as the guided pipeline class tells its wrapper."""

    pipe: Any
    scale: float | None
    calls: int = 0

    def guided(self) -> bool:
        """The pipeline's own rule: its `do_classifier_free_guidance` (SD, SDXL), else `scale > 1` (PixArt's
        local rule)."""
        if isinstance(getattr(type(self.pipe), "do_classifier_free_guidance", None), property):
            return bool(self.pipe.do_classifier_free_guidance)
        return self.scale is not None and self.scale > 1.0

    def run_length(self) -> int:
        return len(self.pipe.scheduler.timesteps)


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("autoeff_guidance_call", default=None)


@dataclass
class GuidanceStats:
    """Denoiser calls through the wrapper: `guided` (both halves), `conditional` (half the batch), `plain`
    (outside a guided call, passed through)."""

    guided: int = 0
    conditional: int = 0
    plain: int = 0


def _half(value: Any, batch: int) -> Any:
    """The conditional (second) half of every tensor batched at `batch`, in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return value[batch // 2:] if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: _half(v, batch) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_half(v, batch) for v in value)
    return value


def _twice(value: Any) -> Any:
    """Every output tensor repeated along the batch (the conditional prediction stands for both halves)."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value, value])
    if isinstance(value, tuple):
        return tuple(_twice(v) for v in value)
    if isinstance(value, dict):  # diffusers' BaseOutput dataclasses are ordered dicts
        return type(value)(**{k: _twice(v) for k, v in value.items()})
    return value


class GuidanceInterval(nn.Module):
    """Runs the wrapped denoiser (`base`, not modified) on the conditional half of the batch at the steps outside
    the guidance interval; it looks like the base model to the pipeline."""

    base: Any  # a diffusers model (or another wrapper): its config and blocks are attributes mypy cannot see

    def __init__(self, base: nn.Module, config: Config) -> None:
        super().__init__()
        self.base = base
        self.guidance = config
        self.stats = GuidanceStats()

    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        call = _CALL.get()
        if call is None or not call.guided():
            self.stats.plain += 1
            return self.base(*args, **kwargs)
        i = call.calls
        call.calls += 1
        if self.guidance.guided(i, call.run_length()):
            self.stats.guided += 1
            return self.base(*args, **kwargs)
        # the latents: the first positional argument, or the keyword diffusers' denoisers name them by
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        if not isinstance(sample, torch.Tensor) or sample.shape[0] % 2:
            raise RuntimeError("guidance: a guided call must batch [unconditional, conditional] latents, got "
                               f"{type(sample).__name__} {tuple(getattr(sample, 'shape', ()))}")
        batch = sample.shape[0]
        self.stats.conditional += 1
        return _twice(self.base(*_half(args, batch), **_half(kwargs, batch)))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if base is None:
                raise
            return getattr(base, name)


# --- the guided pipeline class ------------------------------------------------------------------------------

_GUIDED_CLASSES: dict[type, type] = {}


def _wrapper_of(pipe: Any) -> GuidanceInterval | None:
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            for m in component.modules():
                if isinstance(m, GuidanceInterval):
                    return m
    return None


def guided_class(cls: type) -> type:
    """`cls` with a `__call__` that tells the guidance wrapper about each call (built once per class; the same
    name and signature, so diffusers, `save_pretrained` and autoeff's family detection see `cls`)."""
    if getattr(cls, "_autoeff_guided", False):
        return cls
    sub = _GUIDED_CLASSES.get(cls)
    if sub is not None:
        return sub
    base_call = cls.__call__
    signature = inspect.signature(base_call)

    @functools.wraps(base_call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        wrapper = _wrapper_of(self)
        if wrapper is not None and wrapper.guidance.scale is not None:
            bound.arguments["guidance_scale"] = wrapper.guidance.scale
        scale = bound.arguments.get("guidance_scale", signature.parameters.get("guidance_scale", None))
        if isinstance(scale, inspect.Parameter):
            scale = scale.default
        token = _CALL.set(_Call(pipe=self, scale=scale))
        try:
            return base_call(*bound.args, **bound.kwargs)
        finally:
            _CALL.reset(token)

    sub = type(cls.__name__, (cls,), {"__call__": __call__, "_autoeff_guided": True, "__module__": cls.__module__,
                                      "__qualname__": cls.__qualname__})
    _GUIDED_CLASSES[cls] = sub
    return sub


def apply(pipe: Any, config: Config, context: SpaceContext) -> Any:
    """A copy of `pipe` guided on `config`'s interval only; `pipe` and its modules are untouched. Every step
    at the pipeline's own scale returns a plain copy."""
    new = copy_pipeline(pipe)
    if config.every_step and config.scale is None:
        return new
    if not applies_to(context):
        raise ConfigError(f"the guidance knob does not apply to the {context.family} model (it has no batched "
                          f"classifier-free guidance); leave guidance out of its search space (it applies to "
                          f"{', '.join(GUIDED_FAMILIES)} and other pipelines that batch guidance in one call)")
    denoiser = getattr(pipe, context.denoiser, None)
    if denoiser is None:
        raise ConfigError(f"the pipeline {type(pipe).__name__} has no {context.denoiser!r} component")
    tree = share_copy(denoiser)
    if not config.every_step and caches_in(tree):
        raise ConfigError(f"guidance {config.describe()} with the cache knob: cached features have the guided batch "
                          "and a cut step runs half of it; use cache interval 1 or guidance on every step")
    new.__class__ = guided_class(type(pipe))
    wrapper = GuidanceInterval(tree, config)
    new.register_modules(**{context.denoiser: wrapper})
    bind_caches(wrapper, new)
    return new


KNOB = register(Knob(
    name=NAME, stage=Stage.WRAP, config=Config, options=Options, suggest=suggest, to_params=to_params,
    apply=apply, off=off, applies_to=applies_to,
    help="classifier-free guidance on an interval of the steps only (cut-off / limited interval)"))

__all__ = ["NAME", "KNOB", "Config", "Options", "GuidanceInterval", "GuidanceStats", "GUIDED_FAMILIES",
           "guided_class", "suggest", "to_params", "off", "apply", "applies_to"]
