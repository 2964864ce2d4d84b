"""diffusers' own cache hooks on any transformer denoiser whose blocks they support (diffusers/hooks/, 0.42.1).

Three methods, each diffusers' implementation applied to a copy of the denoiser (the base is never hooked):

* `fbc`: First Block Cache (ParaAttention; after TeaCache, Liu et al., 2024, "Timestep Embedding Tells: It's Time
  to Cache for Video Diffusion Model"): the first block always runs; when its residual changed by less than
  `threshold` (relative mean absolute difference) since the last full step, the other blocks' residual is
  reused. Needs blocks diffusers registers (`TransformerBlockRegistry`: DiT/PixArt's `BasicTransformerBlock`,
  Flux's blocks, ...) and a last block that returns the text states it is declared to return (SD3's last joint
  block returns none, which diffusers' tail hook then subtracts from: not supported).
* `taylorseer`: TaylorSeer (Liu et al., 2025, "From Reusing to Forecasting: Accelerating Diffusion Models with
  TaylorSeers"): every attention module of the blocks computes once every `interval` steps and is
  extrapolated by a first-order Taylor series between (one warm-up step, factors in float32).
* `pab`: Pyramid Attention Broadcast (Zhao et al., 2024, "Real-Time Video Generation with Pyramid Attention
  Broadcast"): each attention module's output is recomputed on one call of every `interval` and broadcast to
  the calls between, over the whole run (diffusers' default limits it to timesteps 100-800).

Not offered: FasterCache, which failed on every tiny model here (SD3, Flux, Sana, PixArt, DiT: `TypeError:
'NoneType' object is not subscriptable`; diffusers calls it experimental), and MagCache, which needs magnitude
ratios calibrated per model by a full sampling run (`MagCacheConfig.mag_ratios`).

How they run outside a `CacheMixin` pipeline. The hooks keep their state per *cache context*, which diffusers'
newer pipelines open around each denoiser call (`transformer.cache_context("cond")`); SD3, Sana, PixArt and DiT
neither open one nor have `CacheMixin`. `HookCache` wraps the hooked copy and sets the context itself around
each call (diffusers' `_set_cache_context`, what `CacheMixin.cache_context` calls), resetting the hooks' state
when a new run starts (the `CacheSchedule` run detection every cache wrapper uses).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
    apply_first_block_cache,
    apply_pyramid_attention_broadcast,
    apply_taylorseer_cache,
)
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS, _ATTENTION_CLASSES
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import CacheContext, _set_cache_context
from torch import nn

from autoeff.search_spaces.base import ConfigError, share_copy
from autoeff.search_spaces.cache.base import CachedDenoiser, Config

_CONTEXT = "autoeff"
# every attention module inside the block lists (diffusers' own default pattern only matches modules named
# exactly `attn`, missing the `attn1`/`attn2` of DiT, PixArt and Sana blocks)
_BLOCK_LISTS = tuple(sorted(_ALL_TRANSFORMER_BLOCK_IDENTIFIERS))
_ATTENTION_PATTERN = r"^(?:" + "|".join(_BLOCK_LISTS) + r")\.\d+\.attn\d*$"
_PAB_ALWAYS = (-1e9, 1e9)  # PAB's timestep window: every call


def _block_lists(denoiser: nn.Module) -> list[nn.ModuleList]:
    return [m for name, m in denoiser.named_children() if name in _BLOCK_LISTS and isinstance(m, nn.ModuleList)]


def _attention_modules(denoiser: nn.Module) -> list[nn.Module]:
    return [m for name, lst in denoiser.named_children() if name in _BLOCK_LISTS and isinstance(lst, nn.ModuleList)
            for m in lst.modules() if isinstance(m, _ATTENTION_CLASSES)]


def _fbc_supported(denoiser: nn.Module) -> bool:
    blocks = [b for lst in _block_lists(denoiser) for b in lst]
    if len(blocks) < 2:
        return False
    for block in blocks:
        try:
            TransformerBlockRegistry.get(type(block))
        except ValueError:
            return False
    return not getattr(blocks[-1], "context_pre_only", False)


def supported_methods(denoiser: nn.Module) -> list[str]:
    """The hook methods that run on `denoiser` (a transformer with block lists diffusers knows); U-Nets: none."""
    if not _block_lists(denoiser) or hasattr(denoiser, "down_blocks"):
        return []
    methods = ["fbc"] if _fbc_supported(denoiser) else []
    if _attention_modules(denoiser):
        methods += ["taylorseer", "pab"]
    return methods


def _strip_registries(tree: nn.Module) -> None:
    """Drop hook registries a copy inherited from its base (diffusers' pipelines create an empty one on a
    `CacheMixin` model at their first call; a copied one keeps a stale list of child registries)."""
    for m in tree.modules():
        registry = m.__dict__.get("_diffusers_hook")
        if registry is None:
            continue
        if registry.hooks:
            raise ConfigError(f"the {type(tree).__name__} already has diffusers hooks ({', '.join(registry.hooks)}); "
                              "disable its cache (`disable_cache()`) before giving it to autoeff")
        del m._diffusers_hook


class HookCache(CachedDenoiser):
    """A hooked copy of a transformer (`base`) called inside autoeff's own cache context (module docstring).

    `CachedDenoiser.stats` counts calls (all as full steps: the hooks decide inside what they skip).
    """

    def __init__(self, plain: nn.Module, config: Config, run_length: Callable[[], int | None] | None = None) -> None:
        hooked = share_copy(plain)
        _strip_registries(hooked)
        super().__init__(hooked, config, run_length)
        self.__dict__["_plain"] = plain  # kept outside the module tree: what a copy of this wrapper is built from
        self._timestep = 0.0
        if config.method == "fbc":
            apply_first_block_cache(hooked, FirstBlockCacheConfig(threshold=float(config.threshold or 0.0)))
        elif config.method == "taylorseer":
            apply_taylorseer_cache(hooked, TaylorSeerCacheConfig(
                cache_interval=config.interval, disable_cache_before_step=1, max_order=1,
                taylor_factors_dtype=torch.float32, cache_identifiers=[_ATTENTION_PATTERN]))
        elif config.method == "pab":
            apply_pyramid_attention_broadcast(hooked, PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=config.interval, spatial_attention_timestep_skip_range=_PAB_ALWAYS,
                current_timestep_callback=self._current_timestep))
        else:
            raise ConfigError(f"cache.method {config.method!r} is not a diffusers hook")

    def _current_timestep(self) -> float:
        return self._timestep

    def clear_cache(self) -> None:
        HookRegistry.check_if_exists_or_initialize(self.base).reset_stateful_hooks()

    def __deepcopy__(self, memo: dict[int, Any]) -> HookCache:
        # a hooked module's forward is a closure over that module: a plain deep copy would keep calling the
        # original, so a copy (another knob's `share_copy`) is hooked afresh from its own copy of the plain model
        plain = copy.deepcopy(self.__dict__["_plain"], memo)
        new = HookCache(plain, self.cache_config, self.schedule.run_length)
        memo[id(self)] = new
        return new

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        timestep = kwargs.get("timestep")
        if timestep is None:
            timestep = next((a for a in args[1:] if isinstance(a, torch.Tensor) and a.dim() <= 1), None)
        if timestep is None:
            raise RuntimeError("the hook cache found no timestep in the denoiser call")
        self.schedule.next_call(timestep)
        if self.schedule.step == 0:  # a new run: the hooks start from nothing
            self.clear_cache()
        step = self.schedule.step
        self._timestep = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        _set_cache_context(self.base, CacheContext(_CONTEXT, step_index=step))
        try:
            return self.base(*args, **kwargs)
        finally:
            _set_cache_context(self.base, None)


def wrap_hooks(denoiser: nn.Module, config: Config,
               run_length: Callable[[], int | None] | None = None) -> HookCache:
    """The hook cache of `config.method` around `denoiser` (which is copied, never hooked itself)."""
    methods = supported_methods(denoiser)
    if config.method not in methods:
        raise ConfigError(f"cache.method {config.method!r} does not run on {type(denoiser).__name__} (it supports "
                          f"{', '.join(methods) or 'none of the diffusers hooks'})")
    return HookCache(denoiser, config, run_length)
