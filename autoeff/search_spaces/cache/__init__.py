"""The `cache` knob: reuse the expensive part of the denoiser across denoising steps.

Methods (`Config.method`), one technique per file, behind one config:

- `reuse` (autoeff's wrappers, below) on U-Nets, DiT and PixArt;
- diffusers' own cache hooks on any transformer whose blocks they support (`diffusers_hooks.py`): `fbc`
  (first-block cache, decided by a threshold), `taylorseer` (TaylorSeer forecasting) and `pab` (Pyramid
  Attention Broadcast); these run on the flow-matching transformers too (SD3, Flux, Sana) where `reuse` has no
  wrapper. Which methods a model has is its context's `cache:<method>` features (`search_spaces.capabilities`).

`reuse` is two techniques:

- U-Nets (`UNet2DModel`, `UNet2DConditionModel`): DeepCache (Ma, Fang & Wang, 2024, "DeepCache: Accelerating
  Diffusion Models for Free"), in `deepcache_unet.py`. The deep part of the U-Net runs on one step of every
  `interval`; the steps between rerun only the shallow branch and reuse the deep features.
- Transformers (`DiTTransformer2DModel`, `PixArtTransformer2DModel`): block-residual reuse in the spirit of
  FORA (Selvaraju et al., 2024) and Delta-DiT (Chen et al., 2024), in `block_cache_transformer.py`. All
  blocks run on one step of every `interval`; between, the first `branch` blocks run and the residual that
  the remaining blocks added on the last full step is added again.

`branch` is the depth of the part recomputed on every step:

- U-Net with D down blocks: `1 <= branch <= D`. The shallow branch is conv_in, the first `branch` down blocks,
  the last `branch` up blocks and conv_out (plus the time/class/text embeddings). The cached tensor is the
  input of up block `D - branch` (for `branch == D`, the mid block's output). `branch=1` saves the most.
- Transformer with L blocks: `1 <= branch <= L - 1`. Blocks `0..branch-1` run on every step, the residual of
  blocks `branch..L-1` is reused; patch embedding and the output layer always see the new timestep.

Which steps are full (`full_step_indices`): `uniform` computes steps 0, N, 2N, ...; `nonuniform` computes as
many steps, ceil(k / N) of k, placed at `floor(k * (i / K) ** power)`, denser at the start of sampling (high
noise), where the features change fastest. DeepCache's own non-uniform 1:N strategy samples full steps
quadratically around a center step; the one-parameter power law here is a simpler shape of the same idea.
Interval 1 is "no caching": `apply` then returns the pipeline uncached.

Step counting is done inside the wrapper (`CacheSchedule`): a call whose timestep is higher than the previous
call's, or the call after a complete run (the pipeline scheduler's `len(timesteps)` calls), starts a new run.
Equal timesteps stay in the run (PNDM and Heun call the model twice at one timestep). `wrapper.reset()` forces
a new run; `wrapper.stats` counts full and shallow calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from autoeff.search_spaces.base import ConfigError, Knob, SpaceContext, Stage, copy_pipeline, features_of
from autoeff.search_spaces.cache.base import (
    HOOK_METHODS,
    METHODS,
    SCHEDULES,
    CachedDenoiser,
    CacheSchedule,
    CacheStats,
    Config,
    _block_counts,
    _is_int,
    branch_range,
    full_step_indices,
)
from autoeff.search_spaces.cache.block_cache_transformer import wrap_transformer
from autoeff.search_spaces.cache.deepcache_unet import wrap_unet
from autoeff.search_spaces.cache.diffusers_hooks import supported_methods, wrap_hooks
from autoeff.search_spaces.registry import register

NAME = "cache"
# The number of down blocks (U-Net) or transformer blocks of the real models, used by `suggest` only when
# neither the options nor the context's block groups say how deep the denoiser is.
_FAMILY_DEPTH: dict[str, int] = {"digits": 3, "sd15": 4, "sdxl": 3, "digits-dit": 6, "pixart": 28}


def _depth_from_context(context: SpaceContext) -> tuple[int, int] | None:
    """Branch range from `context.block_groups` (`groups.block_groups` names `down.<i>`, `blocks.<a>-<b>`)."""
    pattern = r"down\.(\d+)" if context.denoiser == "unet" else r"blocks\.(?:\d+-)?(\d+)"
    found = [int(m.group(1)) for g in context.block_groups if (m := re.fullmatch(pattern, str(g)))]
    if not found:
        return None
    n = max(found) + 1
    return (1, n) if context.denoiser == "unet" else (1, max(1, n - 1))


@dataclass
class Options:
    """Restrictions of the cache space: `max_interval` (default 5), `min_branch`/`max_branch` (default: the
    denoiser's depth), `schedules` (default both), `max_power` (the nonuniform exponent's upper bound),
    `methods` (default: every method the model has), `thresholds` ([low, high] of the first-block cache's
    threshold, default [0.05, 0.4])."""

    max_interval: int = 5
    min_branch: int | None = None
    max_branch: int | None = None
    schedules: list[str] = field(default_factory=lambda: list(SCHEDULES))
    max_power: float = 3.0
    methods: list[str] | None = None
    thresholds: list[float] = field(default_factory=lambda: [0.05, 0.4])

    def __post_init__(self) -> None:
        if self.methods is not None and (not isinstance(self.methods, list | tuple) or not self.methods
                                         or any(m not in METHODS for m in self.methods)):
            raise ConfigError(f"cache option methods={self.methods!r} must be a non-empty subset of {list(METHODS)}")
        t = self.thresholds
        if (not isinstance(t, list | tuple) or len(t) != 2 or any(isinstance(v, bool) or not isinstance(v, int | float)
                                                                 for v in t) or not 0 < t[0] <= t[1] <= 1):
            raise ConfigError(f"cache option thresholds={t!r} must be [low, high] with 0 < low <= high <= 1")
        self.thresholds = [float(t[0]), float(t[1])]
        if not _is_int(self.max_interval) or self.max_interval < 1:
            raise ConfigError(f"cache option max_interval={self.max_interval!r} must be an integer >= 1")
        bad = [s for s in self.schedules if s not in SCHEDULES] if isinstance(self.schedules, list | tuple) else [1]
        if bad or not self.schedules:
            raise ConfigError(f"cache option schedules={self.schedules!r} must be a non-empty subset of "
                              f"{list(SCHEDULES)}")
        self.schedules = list(self.schedules)
        if isinstance(self.max_power, bool) or not isinstance(self.max_power, int | float) or self.max_power < 1.0:
            raise ConfigError(f"cache option max_power={self.max_power!r} must be a number >= 1")
        for name in ("min_branch", "max_branch"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"cache option {name}={value!r} must be an integer >= 1")


def _branch_range(context: SpaceContext, opts: Options) -> tuple[int, int]:
    """The branch values `suggest` draws from: the options', else the denoiser's depth."""
    lo, hi = _depth_from_context(context) or _family_range(context)
    lo = opts.min_branch if opts.min_branch is not None else lo
    hi = opts.max_branch if opts.max_branch is not None else hi
    if not 1 <= lo <= hi:
        raise ConfigError(f"cache branch range {lo!r}..{hi!r} is empty or invalid; set the options "
                          "min_branch/max_branch to integers with 1 <= min_branch <= max_branch")
    return lo, hi


def _family_range(context: SpaceContext) -> tuple[int, int]:
    depth = _FAMILY_DEPTH.get(context.family)
    if depth is None:
        raise ConfigError(f"cannot tell how deep the {context.family!r} denoiser is; set the cache options "
                          "min_branch/max_branch (see cache.branch_range(denoiser))")
    return (1, depth) if context.denoiser == "unet" else (1, max(1, depth - 1))


def available_methods(context: SpaceContext) -> list[str]:
    """The cache methods the model has (its `cache:<method>` features), in `METHODS` order."""
    features = features_of(context)
    return [m for m in METHODS if f"cache:{m}" in features]


def _methods(context: SpaceContext, opts: Options) -> list[str]:
    have = available_methods(context)
    if opts.methods is None:
        return have
    missing = [m for m in opts.methods if m not in have]
    if missing:
        raise ConfigError(f"cache option methods={opts.methods!r}: this model has no {', '.join(missing)} (it has "
                          f"{', '.join(have) or 'no cache method'})")
    return list(opts.methods)


def applies_to(context: SpaceContext) -> bool:
    """Models with at least one cache method."""
    return bool(available_methods(context))


def suggest(trial: Any, context: SpaceContext) -> Config:
    """Draw a cache config; no caching is always in the space.

    A model whose only method is `reuse` (the digits models, SD1.5, SDXL) draws `cache_interval` (1: no caching)
    and then `cache_branch`, `cache_schedule`, `cache_power`, as before the other methods existed. A model with
    several draws `cache_method` first, `off` among them; then `reuse` draws `cache_interval` from 2 up, `fbc`
    `cache_fbc.threshold` (log-uniform) and `taylorseer` / `pab` `cache_<method>.interval` (2..max_interval).

    Options (`context.options["cache"]`): `max_interval` (default 5), `min_branch`/`max_branch` (default:
    the denoiser's depth from `context.block_groups`, else the real family's), `schedules` (default both),
    `max_power` (default 3.0), `methods`, `thresholds`.
    """
    opts: Options = KNOB.options_for(context)
    methods = _methods(context, opts)
    lo, hi = _branch_range(context, opts) if "reuse" in methods else (1, 1)  # checked on every draw
    if methods == ["reuse"]:  # one method: the interval alone (1: no caching)
        interval = trial.suggest_int("cache_interval", 1, opts.max_interval)
    else:
        choices = ["off", *(m for m in methods if m == "fbc" or opts.max_interval >= 2)]
        method = trial.suggest_categorical("cache_method", choices)
        if method == "off":
            return Config()
        if method == "fbc":
            t_lo, t_hi = opts.thresholds
            return Config(method="fbc", threshold=trial.suggest_float("cache_fbc.threshold", t_lo, t_hi, log=True))
        if method != "reuse":
            return Config(method=method, interval=trial.suggest_int(f"cache_{method}.interval", 2, opts.max_interval))
        interval = trial.suggest_int("cache_interval", 2, opts.max_interval)
    if interval == 1:
        return Config()
    branch = trial.suggest_int("cache_branch", lo, hi)
    schedule = trial.suggest_categorical("cache_schedule", list(opts.schedules))
    power = 1.0
    if schedule == "nonuniform":
        power = trial.suggest_float("cache_power", 1.0, float(opts.max_power))
    return Config(interval=interval, branch=branch, schedule=schedule, power=power)


def off(context: SpaceContext) -> Config:
    """Interval 1: every step computes the whole denoiser."""
    return Config()


def typical(context: SpaceContext) -> Config:
    """A cache a user would try first on this model (warm starts): DeepCache / block reuse every 3rd step where
    the model has `reuse`, else TaylorSeer, PAB or the first-block cache."""
    methods = available_methods(context)
    if "reuse" in methods or not methods:
        return Config(interval=3)
    if "taylorseer" in methods:
        return Config(method="taylorseer", interval=3)
    if "pab" in methods:
        return Config(method="pab", interval=2)
    return Config(method="fbc", threshold=0.1)


def to_params(config: Config) -> dict[str, Any]:
    """The Optuna params that make `suggest(optuna.trial.FixedTrial(params), context)` return `config`
    (`cache_method` is only read by a model with several methods)."""
    if config.method == "fbc":
        return {"cache_method": "fbc", "cache_fbc.threshold": config.threshold}
    if config.method in HOOK_METHODS:
        return {"cache_method": config.method, f"cache_{config.method}.interval": config.interval}
    params: dict[str, Any] = {"cache_method": "off" if config.is_off else "reuse", "cache_interval": config.interval}
    if config.interval > 1:
        params["cache_branch"] = config.branch
        params["cache_schedule"] = config.schedule
        if config.schedule == "nonuniform":
            params["cache_power"] = config.power
    return params


def wrap_denoiser(denoiser: nn.Module, config: Config,
                  run_length: Callable[[], int | None] | None = None) -> CachedDenoiser:
    """A caching wrapper around `denoiser` (which is only referenced, never modified)."""
    if isinstance(denoiser, CachedDenoiser):
        raise ConfigError("this denoiser is already cached; apply the cache knob once, to an uncached one")
    if config.method != "reuse":
        return wrap_hooks(denoiser, config, run_length)
    kind, count = _block_counts(denoiser)
    lo, hi = branch_range(denoiser)
    if not lo <= config.branch <= hi:
        what = "down blocks" if kind == "unet" else "transformer blocks"
        raise ConfigError(f"cache.branch={config.branch} is out of range for this {type(denoiser).__name__} "
                          f"({count} {what}); use {lo}..{hi}")
    return (wrap_unet if kind == "unet" else wrap_transformer)(denoiser, config, run_length)


def apply(pipe: Any, config: Config, context: SpaceContext) -> Any:
    """A new pipeline whose denoiser (`context.denoiser`) is the caching wrapper; `pipe` is not modified.

    Interval 1 returns a plain copy of the pipeline (no wrapper, no overhead).
    """
    denoiser = getattr(pipe, context.denoiser, None)
    if denoiser is None or context.denoiser not in pipe.components:
        raise ConfigError(f"the pipeline {type(pipe).__name__} has no {context.denoiser!r} component")
    if config.is_off:
        return copy_pipeline(pipe)
    return copy_pipeline(pipe, **{context.denoiser: wrap_denoiser(denoiser, config)})  # binds the wrapper to it


KNOB = register(Knob(
    name=NAME, stage=Stage.WRAP, config=Config, options=Options, suggest=suggest, to_params=to_params,
    apply=apply, off=off, applies_to=applies_to,
    help="reuse features across steps (DeepCache on U-Nets, block caching on DiTs; diffusers' first-block cache, "
         "TaylorSeer and PAB on transformers)"))

__all__ = ["NAME", "KNOB", "Config", "Options", "SCHEDULES", "METHODS", "CachedDenoiser", "CacheSchedule",
           "CacheStats", "branch_range", "full_step_indices", "suggest", "to_params", "off", "typical", "apply",
           "applies_to", "available_methods", "supported_methods", "wrap_denoiser"]
