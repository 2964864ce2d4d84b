"""The `cache` knob: reuse the expensive part of the denoiser across denoising steps.

Two techniques, one per file, behind one config:

- U-Nets (`UNet2DModel`, `UNet2DConditionModel`): DeepCache (Ma, Fang & Wang, 2024, "DeepCache: Accelerating
  Diffusion Models for Free"), in `_deepcache_unet.py`. The deep part of the U-Net runs on one step of every
  `interval`; the steps between rerun only the shallow branch and reuse the deep features.
- Transformers (`DiTTransformer2DModel`, `PixArtTransformer2DModel`): block-residual reuse in the spirit of
  FORA (Selvaraju et al., 2024) and Delta-DiT (Chen et al., 2024), in `_block_cache_transformer.py`. All
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

import math
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoeff.search_spaces.base import ConfigError, SpaceContext

NAME = "cache"
SCHEDULES: tuple[str, ...] = ("uniform", "nonuniform")
_OPTION_DEFAULTS: dict[str, Any] = {"max_interval": 5, "min_branch": None, "max_branch": None,
                                    "schedules": list(SCHEDULES), "max_power": 3.0}
# The number of down blocks (U-Net) or transformer blocks of the real models, used by `suggest` only when
# neither the options nor the context's block groups say how deep the denoiser is.
_FAMILY_DEPTH: dict[str, int] = {"digits": 3, "sd15": 4, "sdxl": 3, "digits-dit": 6, "pixart": 28}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Config:
    """Feature caching across steps.

    Attributes:
        interval: N >= 1; the deep part runs on one step of every N (1 = no caching).
        branch: depth recomputed on every step (U-Net: down/up blocks at each end; transformer: leading
            blocks). Its upper bound depends on the model and is checked by `apply`.
        schedule: `uniform` (steps 0, N, 2N, ...) or `nonuniform` (as many full steps, denser early).
        power: the nonuniform schedule's exponent (>= 1; 1 spreads the full steps evenly over the run).
    """

    interval: int = 1
    branch: int = 1
    schedule: str = "uniform"
    power: float = 1.0
    version: int = 1

    def __post_init__(self) -> None:
        if not _is_int(self.interval) or self.interval < 1:
            raise ConfigError(f"cache.interval={self.interval!r} is invalid; use an integer >= 1 "
                              "(1 computes every step, N > 1 the deep part on one step of every N)")
        if not _is_int(self.branch) or self.branch < 1:
            raise ConfigError(f"cache.branch={self.branch!r} is invalid; use an integer >= 1 (the number of "
                              "blocks recomputed on every step)")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"cache.schedule={self.schedule!r} is unknown; use one of {list(SCHEDULES)}")
        if isinstance(self.power, bool) or not isinstance(self.power, int | float) or not math.isfinite(
                self.power) or self.power < 1.0:
            raise ConfigError(f"cache.power={self.power!r} is invalid; use a number >= 1 (1 = evenly spaced)")
        self.power = float(self.power)
        if self.schedule == "uniform" and self.power != 1.0:
            raise ConfigError(f"cache.power={self.power} only applies to schedule='nonuniform'; leave it at "
                              "1.0 or set schedule='nonuniform'")
        if self.interval == 1 and (self.branch, self.schedule) != (1, "uniform"):
            raise ConfigError(f"cache.interval=1 caches nothing, so branch={self.branch} and "
                              f"schedule={self.schedule!r} have no effect; leave them at 1 and 'uniform'")

    def describe(self) -> str:
        if self.interval == 1:
            return "off"
        sched = "uniform" if self.schedule == "uniform" else f"nonuniform(p={self.power:g})"
        return f"N={self.interval} branch={self.branch} {sched}"


def full_step_indices(config: Config, num_steps: int) -> list[int]:
    """The indices (0-based, ascending) of the calls of a `num_steps`-call run that compute the deep part.

    Both schedules compute ceil(num_steps / interval) steps, always including step 0.
    """
    if not _is_int(num_steps) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    n = config.interval
    if config.schedule == "uniform":
        return list(range(0, num_steps, n))
    count = math.ceil(num_steps / n)
    steps: list[int] = []
    for i in range(count):
        s = math.floor(num_steps * (i / count) ** config.power)
        steps.append(max(s, steps[-1] + 1) if steps else s)
    # floor(k * (i/K)**p) <= k*i/K for p >= 1, so bumping collisions up never passes the last step.
    assert steps[-1] < num_steps
    return steps


@dataclass
class CacheStats:
    """Counts of denoiser calls since the wrapper was built (`runs` = pipeline calls detected)."""

    full_steps: int = 0
    shallow_steps: int = 0
    runs: int = 0


class CacheSchedule:
    """Decides, call by call, whether the denoiser computes its deep part, and counts the calls.

    `run_length` returns the number of denoiser calls of the current run (the pipeline scheduler's
    `len(timesteps)`) or `None` when unknown; the nonuniform schedule needs it, the uniform one does not.
    """

    def __init__(self, config: Config, run_length: Callable[[], int | None] | None = None) -> None:
        self.config = config
        self.run_length = run_length
        self.stats = CacheStats()
        self.reset()

    def reset(self) -> None:
        """Forget the current run: the next call is step 0 of a new run (a full step)."""
        self._step: int | None = None
        self._last_t: float | None = None
        self._length: int | None = None
        self._full: frozenset[int] | None = None

    @property
    def step(self) -> int | None:
        """Index of the last call within its run (`None` before the first call)."""
        return self._step

    def next_call(self, timestep: torch.Tensor | float | int) -> bool:
        """Register a denoiser call at `timestep`; True when this call must compute the deep part."""
        t = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        new_run = (self._step is None or self._last_t is None or t > self._last_t
                   or (self._length is not None and self._step + 1 >= self._length))
        if new_run:
            self._step = 0
            self._length = self.run_length() if self.run_length is not None else None
            self._full = None
            if self.config.schedule == "nonuniform":
                if self._length is None:
                    raise RuntimeError("the nonuniform cache schedule needs the run length; build the cached "
                                       "denoiser with cache.apply (which reads the pipeline scheduler's "
                                       "timesteps) or pass run_length")
                self._full = frozenset(full_step_indices(self.config, self._length))
            self.stats.runs += 1
        else:
            self._step += 1
        self._last_t = t
        full = self._step in self._full if self._full is not None else self._step % self.config.interval == 0
        if full:
            self.stats.full_steps += 1
        else:
            self.stats.shallow_steps += 1
        return full


class CachedDenoiser(nn.Module):
    """Base of the cache wrappers: holds the base denoiser (shared, never modified) and the step schedule.

    It looks like the base model to a pipeline: `config`, `dtype`, `device` and any other attribute the
    pipeline reads (e.g. SDXL's `unet.add_embedding`) are the base model's.
    """

    def __init__(self, base: nn.Module, config: Config,
                 run_length: Callable[[], int | None] | None = None) -> None:
        super().__init__()
        self.base = base
        self.cache_config = config
        self.schedule = CacheSchedule(config, run_length)

    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def stats(self) -> CacheStats:
        return self.schedule.stats

    @property
    def stores_cache(self) -> bool:
        """Whether full steps need to keep anything (interval 1 never reuses)."""
        return self.cache_config.interval > 1

    def reset(self) -> None:
        """Start a new run at the next call and drop the cached tensors."""
        self.schedule.reset()
        self.clear_cache()

    def clear_cache(self) -> None:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if base is None:
                raise
            return getattr(base, name)


def _block_counts(denoiser: nn.Module) -> tuple[str, int]:
    """`("unet", number of down blocks)` or `("transformer", number of blocks)` for a supported denoiser."""
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel, UNet2DModel

    if isinstance(denoiser, UNet2DModel | UNet2DConditionModel):
        return "unet", len(denoiser.down_blocks)
    if isinstance(denoiser, DiTTransformer2DModel | PixArtTransformer2DModel):
        return "transformer", len(denoiser.transformer_blocks)
    raise ConfigError(f"the cache knob does not support {type(denoiser).__name__}; supported: UNet2DModel, "
                      "UNet2DConditionModel (DeepCache), DiTTransformer2DModel, PixArtTransformer2DModel "
                      "(block caching); leave 'cache' out of the search space for this model")


def branch_range(denoiser: nn.Module) -> tuple[int, int]:
    """Valid `branch` values `(low, high)` for `denoiser` (U-Net: 1..D down blocks; transformer: 1..L-1)."""
    kind, n = _block_counts(denoiser)
    return (1, n) if kind == "unet" else (1, n - 1)


def _depth_from_context(context: SpaceContext) -> tuple[int, int] | None:
    """Branch range from `context.block_groups` (`groups.block_groups` names `down.<i>`, `blocks.<a>-<b>`)."""
    pattern = r"down\.(\d+)" if context.denoiser == "unet" else r"blocks\.(?:\d+-)?(\d+)"
    found = [int(m.group(1)) for g in context.block_groups if (m := re.fullmatch(pattern, str(g)))]
    if not found:
        return None
    n = max(found) + 1
    return (1, n) if context.denoiser == "unet" else (1, max(1, n - 1))


def _options(context: SpaceContext) -> dict[str, Any]:
    given = dict(context.options.get(NAME, {}) or {})
    unknown = set(given) - set(_OPTION_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown cache option(s) {sorted(unknown)}; known: {sorted(_OPTION_DEFAULTS)}")
    opts = {**_OPTION_DEFAULTS, **given}
    if not _is_int(opts["max_interval"]) or opts["max_interval"] < 1:
        raise ConfigError(f"cache option max_interval={opts['max_interval']!r} must be an integer >= 1")
    bad = [s for s in opts["schedules"] if s not in SCHEDULES]
    if bad or not opts["schedules"]:
        raise ConfigError(f"cache option schedules={opts['schedules']!r} must be a non-empty subset of "
                          f"{list(SCHEDULES)}")
    if not isinstance(opts["max_power"], int | float) or opts["max_power"] < 1.0:
        raise ConfigError(f"cache option max_power={opts['max_power']!r} must be a number >= 1")
    lo, hi = _depth_from_context(context) or _family_range(context)
    lo = opts["min_branch"] if opts["min_branch"] is not None else lo
    hi = opts["max_branch"] if opts["max_branch"] is not None else hi
    if not (_is_int(lo) and _is_int(hi) and 1 <= lo <= hi):
        raise ConfigError(f"cache branch range {lo!r}..{hi!r} is empty or invalid; set the options "
                          "min_branch/max_branch to integers with 1 <= min_branch <= max_branch")
    opts["branch_range"] = (lo, hi)
    return opts


def _family_range(context: SpaceContext) -> tuple[int, int]:
    depth = _FAMILY_DEPTH.get(context.family)
    if depth is None:
        raise ConfigError(f"cannot tell how deep the {context.family!r} denoiser is; set the cache options "
                          "min_branch/max_branch (see cache.branch_range(denoiser))")
    return (1, depth) if context.denoiser == "unet" else (1, max(1, depth - 1))


def suggest(trial: Any, context: SpaceContext) -> Config:
    """Draw a cache config; interval 1 (no caching) is always in the space.

    Options (`context.options["cache"]`): `max_interval` (default 5), `min_branch`/`max_branch` (default:
    the denoiser's depth from `context.block_groups`, else the real family's), `schedules` (default both),
    `max_power` (default 3.0).
    """
    opts = _options(context)
    interval = trial.suggest_int("cache_interval", 1, opts["max_interval"])
    if interval == 1:
        return Config()
    lo, hi = opts["branch_range"]
    branch = trial.suggest_int("cache_branch", lo, hi)
    schedule = trial.suggest_categorical("cache_schedule", list(opts["schedules"]))
    power = 1.0
    if schedule == "nonuniform":
        power = trial.suggest_float("cache_power", 1.0, float(opts["max_power"]))
    return Config(interval=interval, branch=branch, schedule=schedule, power=power)


def to_params(config: Config) -> dict[str, Any]:
    """The Optuna params that make `suggest(optuna.trial.FixedTrial(params), context)` return `config`."""
    params: dict[str, Any] = {"cache_interval": config.interval}
    if config.interval > 1:
        params["cache_branch"] = config.branch
        params["cache_schedule"] = config.schedule
        if config.schedule == "nonuniform":
            params["cache_power"] = config.power
    return params


def wrap_denoiser(denoiser: nn.Module, config: Config,
                  run_length: Callable[[], int | None] | None = None) -> CachedDenoiser:
    """A caching wrapper around `denoiser` (which is only referenced, never modified)."""
    # Imported here: the technique modules import CachedDenoiser/Config from this module.
    from autoeff.search_spaces._block_cache_transformer import wrap_transformer
    from autoeff.search_spaces._deepcache_unet import wrap_unet

    if isinstance(denoiser, CachedDenoiser):
        raise ConfigError("this denoiser is already cached; apply the cache knob once, to an uncached one")
    kind, count = _block_counts(denoiser)
    lo, hi = branch_range(denoiser)
    if not lo <= config.branch <= hi:
        what = "down blocks" if kind == "unet" else "transformer blocks"
        raise ConfigError(f"cache.branch={config.branch} is out of range for this {type(denoiser).__name__} "
                          f"({count} {what}); use {lo}..{hi}")
    return (wrap_unet if kind == "unet" else wrap_transformer)(denoiser, config, run_length)


def _scheduler_run_length(pipe: Any) -> Callable[[], int | None]:
    ref = weakref.ref(pipe)

    def run_length() -> int | None:
        p = ref()
        timesteps = getattr(getattr(p, "scheduler", None), "timesteps", None)
        return None if timesteps is None else len(timesteps)

    return run_length


def apply(pipe: Any, config: Config, context: SpaceContext) -> Any:
    """A new pipeline whose denoiser (`context.denoiser`) is the caching wrapper; `pipe` is not modified.

    Interval 1 returns a plain copy of the pipeline (no wrapper, no overhead).
    """
    components = dict(pipe.components)
    if context.denoiser not in components:
        raise ConfigError(f"the pipeline {type(pipe).__name__} has no {context.denoiser!r} component")
    if config.interval > 1:
        components[context.denoiser] = wrap_denoiser(components[context.denoiser], config)
    new = type(pipe)(**components)
    progress = getattr(pipe, "_progress_bar_config", None)
    if progress is not None:
        new.set_progress_bar_config(**progress)
    if config.interval > 1:
        components[context.denoiser].schedule.run_length = _scheduler_run_length(new)
    return new
