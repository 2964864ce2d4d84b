"""The cache knob's shared parts: its Config, which steps are full, and the base of the caching wrappers.

The bottom of the `cache` package: the technique files (`deepcache_unet.py`, `block_cache_transformer.py`)
and the knob (`__init__.py`) import from here, never the other way round. See the package docstring for
the techniques and the step schedules.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel, UNet2DModel
from torch import nn

from autoeff.search_spaces.base import ConfigError

SCHEDULES: tuple[str, ...] = ("uniform", "nonuniform")
# `reuse`: autoeff's own wrappers (DeepCache on U-Nets, block-residual reuse on DiT/PixArt); the others are
# diffusers' cache hooks (`diffusers_hooks.py`): first-block cache, TaylorSeer, Pyramid Attention Broadcast.
METHODS: tuple[str, ...] = ("reuse", "fbc", "taylorseer", "pab")
HOOK_METHODS: tuple[str, ...] = METHODS[1:]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Config:
    """Feature caching across steps.

    Attributes:
        interval: N >= 1; `reuse`: the deep part runs on one step of every N (1 = no caching); `taylorseer`: a
            full computation every N steps, Taylor-extrapolated features between; `pab`: attention recomputed on
            one call of every N, broadcast between.
        branch: `reuse` only: depth recomputed on every step (U-Net: down/up blocks at each end; transformer:
            leading blocks). Its upper bound depends on the model and is checked by `apply`.
        schedule: `reuse` only: `uniform` (steps 0, N, 2N, ...) or `nonuniform` (as many full steps, denser early).
        power: the nonuniform schedule's exponent (>= 1; 1 spreads the full steps evenly over the run).
        method: one of `METHODS` (`reuse` unless a diffusers hook is chosen).
        threshold: `fbc` only: the relative change of the first block's residual below which the other blocks'
            residual is reused (diffusers' `FirstBlockCacheConfig.threshold`).
    """

    interval: int = 1
    branch: int = 1
    schedule: str = "uniform"
    power: float = 1.0
    version: int = 1
    method: str = "reuse"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"cache.method={self.method!r} is unknown; use one of {list(METHODS)}")
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
        if self.method != "reuse" and (self.branch, self.schedule) != (1, "uniform"):
            raise ConfigError(f"cache.branch and cache.schedule belong to method 'reuse', not {self.method!r}; "
                              "leave them at 1 and 'uniform'")
        if self.method == "fbc":
            t = self.threshold
            if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 1:
                raise ConfigError(f"cache.threshold={t!r} is invalid for method 'fbc'; use a number in (0, 1]")
            self.threshold = float(t)
            if self.interval != 1:
                raise ConfigError("cache.interval has no effect with method 'fbc' (it decides by its threshold); "
                                  "leave it at 1")
        elif self.threshold is not None:
            raise ConfigError(f"cache.threshold belongs to method 'fbc', not {self.method!r}; leave it null")
        if self.method in ("taylorseer", "pab") and self.interval < 2:
            raise ConfigError(f"cache.interval={self.interval} with method {self.method!r} caches nothing; use an "
                              "interval >= 2, or method 'reuse' with interval 1 for no caching")

    @property
    def is_off(self) -> bool:
        """No caching (method `reuse` at interval 1)."""
        return self.method == "reuse" and self.interval == 1

    def describe(self) -> str:
        if self.method == "fbc":
            return f"first-block cache threshold={self.threshold:g}"
        if self.method == "taylorseer":
            return f"TaylorSeer N={self.interval}"
        if self.method == "pab":
            return f"PAB N={self.interval}"
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
            assert self._step is not None  # not a new run, so a previous call set it
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

    # The wrapped diffusers model: its blocks and config are dynamic attributes mypy cannot see.
    base: Any

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
        return not self.cache_config.is_off

    def reset(self) -> None:
        """Start a new run at the next call and drop the cached tensors."""
        self.schedule.reset()
        self.clear_cache()

    def bind_pipeline(self, pipe: Any) -> None:
        """Read the run length (the pipeline scheduler's `len(timesteps)`) from `pipe`, through a weak reference;
        every knob that builds a new pipeline around this wrapper re-binds it (`base.copy_pipeline`)."""
        self.schedule.run_length = scheduler_run_length(pipe)

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


def scheduler_run_length(pipe: Any) -> Callable[[], int | None]:
    """`len(pipe.scheduler.timesteps)`, read at each call through a weak reference to `pipe`."""
    ref = weakref.ref(pipe)

    def run_length() -> int | None:
        timesteps = getattr(getattr(ref(), "scheduler", None), "timesteps", None)
        return None if timesteps is None else len(timesteps)

    return run_length


def _block_counts(denoiser: nn.Module) -> tuple[str, int]:
    """`("unet", number of down blocks)` or `("transformer", number of blocks)` for a supported denoiser."""
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
