"""What a model can do, for the knobs' `applies_to` and `suggest`: `SpaceContext.features`, read from the model.

Each feature is found by asking the technique that needs it, on the actual denoiser and pipeline, so a model
autoeff has no table for gets every knob whose technique runs on it:

| feature | meaning | found by |
| --- | --- | --- |
| `attention` | the denoiser has attention modules (the SDPA backend applies) | diffusers' attention classes in it |
| `fuse_qkv` | diffusers' fused QKV projections exist for it | its `fuse_qkv_projections` |
| `groups` | its layers split into block groups (per-group quantize / prune) | `groups.block_groups` |
| `example_inputs` | autoeff can make inputs for one forward pass (calibration, tracing) | `groups.example_inputs` |
| `prune` | structured pruning has channels to remove | `prune.prunable` |
| `guidance:batched` | classifier-free guidance in one batched call | the kind (`models.kinds`) |
| `cache:<method>` | that cache method runs on it | `cache` (`reuse`: its wrappers; hooks: `diffusers_hooks`) |

A context stored before features existed has `features=None` and is read through its named family
(`base.features_of`).
"""

from __future__ import annotations

from typing import Any

from diffusers.hooks._common import _ATTENTION_CLASSES
from torch import nn

from autoeff.models.kinds import ModelKind
from autoeff.search_spaces.base import ConfigError
from autoeff.search_spaces.cache.base import _block_counts
from autoeff.search_spaces.cache.diffusers_hooks import supported_methods
from autoeff.search_spaces.groups import block_groups, has_example_inputs
from autoeff.search_spaces.prune import prunable


def cache_methods(denoiser: nn.Module) -> list[str]:
    """The cache methods that run on `denoiser`: `reuse` (autoeff's wrappers) and diffusers' hooks."""
    methods = []
    try:
        _block_counts(denoiser)
        methods.append("reuse")
    except ConfigError:
        pass
    return methods + supported_methods(denoiser)


def denoiser_features(pipe: Any, kind: ModelKind, trace_prune: bool = False) -> list[str]:
    """The features (module docstring) of `pipe`, a pipeline of kind `kind`, sorted. `prune` is read from the
    denoiser's structure; with `trace_prune` (when the search includes the prune knob) torch-pruning's dependency
    graph is built once to confirm it (`prune.prunable`)."""
    denoiser = getattr(pipe, kind.denoiser)
    features = {f"cache:{m}" for m in cache_methods(denoiser)}
    if any(isinstance(m, _ATTENTION_CLASSES) for m in denoiser.modules()):
        features.add("attention")
    if callable(getattr(denoiser, "fuse_qkv_projections", None)):
        features.add("fuse_qkv")
    try:
        block_groups(denoiser)
        features.add("groups")
    except ConfigError:
        pass
    if has_example_inputs(denoiser):
        features.add("example_inputs")
        if "groups" in features and prunable(denoiser, trace=trace_prune):
            features.add("prune")
    if kind.guidance == "batched":
        features.add("guidance:batched")
    return sorted(features)


__all__ = ["denoiser_features", "cache_methods"]
