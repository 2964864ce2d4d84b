"""What the knobs that change a (possibly wrapped) denoiser share, so none of them mutates what it is given.

* `share_copy` (defined in `base`, the bottom of the package, re-exported here): a structural copy of a module
  tree (new module objects) whose parameters and buffers are the very same tensors, so a knob may swap
  submodules, set attention processors or compile regions of the copy at no weight memory, and the base
  pipeline every candidate is built from stays untouched.
* `wrapper_chain`: the wrappers around a denoiser (a wrapper holds the module it wraps as its `base`
  submodule: the cache wrappers, guidance's wrapper, a plugin's) and the model inside them.
* `bind_caches`: a cache wrapper reads the run length from the pipeline the cache knob built (a weak
  reference, `CachedDenoiser.bind_pipeline`); a later knob that builds a new pipeline around a copied wrapper
  points it at the new pipeline's scheduler, else the reference dies with the intermediate pipeline
  (`base.copy_pipeline` does the same for the wrappers a plain copy keeps).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from autoeff.search_spaces.base import share_copy
from autoeff.search_spaces.cache.base import CachedDenoiser, scheduler_run_length


def wrapper_chain(module: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """`(wrappers from the outside in, the wrapped model)`; `([], module)` for a plain model."""
    chain: list[nn.Module] = []
    while isinstance(module._modules.get("base"), nn.Module):
        chain.append(module)
        module = module._modules["base"]  # type: ignore[assignment]  # checked on the line above
    return chain, module


def bind_caches(tree: nn.Module, pipe: Any) -> None:
    """Point every cache wrapper in `tree` (a copy this knob owns) at `pipe`'s scheduler."""
    for m in tree.modules():
        if isinstance(m, CachedDenoiser):
            m.bind_pipeline(pipe)


def caches_in(tree: nn.Module) -> list[CachedDenoiser]:
    """The cache wrappers in `tree` that reuse features (interval > 1)."""
    return [m for m in tree.modules() if isinstance(m, CachedDenoiser) and m.stores_cache]


__all__ = ["share_copy", "wrapper_chain", "scheduler_run_length", "bind_caches", "caches_in"]
