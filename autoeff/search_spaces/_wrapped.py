"""What the knobs that change a (possibly wrapped) denoiser share, so none of them mutates what it is given.

* `share_copy`: a structural copy of a module tree (new module objects) whose parameters and buffers are the
  very same tensors, so a knob may swap submodules, set attention processors or compile regions of the copy
  at no weight memory, and the base pipeline every candidate is built from stays untouched.
* `wrapper_chain`: the wrappers around a denoiser (a wrapper holds the module it wraps as its `base`
  submodule: the cache wrappers, guidance's wrapper, a plugin's) and the model inside them.
* `bind_caches`: a cache wrapper reads the run length from the pipeline the cache knob built (a weak
  reference, `cache.apply`); a later knob that builds a new pipeline around a copied wrapper points it at
  the new pipeline's scheduler, else the reference dies with the intermediate pipeline.
"""

from __future__ import annotations

import copy
import itertools
import weakref
from collections.abc import Callable
from typing import Any

from torch import nn

from autoeff.search_spaces.cache.base import CachedDenoiser


def share_copy(module: nn.Module) -> nn.Module:
    """A copy of `module`'s tree sharing its parameters and buffers; regions compiled in place
    (`Module.compile()`) are dropped from the copy, since their compiled function calls the original module."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    new = copy.deepcopy(module, memo)
    for m in new.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    return new


def wrapper_chain(module: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """`(wrappers from the outside in, the wrapped model)`; `([], module)` for a plain model."""
    chain: list[nn.Module] = []
    while isinstance(module._modules.get("base"), nn.Module):
        chain.append(module)
        module = module._modules["base"]  # type: ignore[assignment]  # checked on the line above
    return chain, module


def scheduler_run_length(pipe: Any) -> Callable[[], int | None]:
    """`len(pipe.scheduler.timesteps)`, read at each call through a weak reference to `pipe` (as the cache
    knob's own `cache.apply` does)."""
    ref = weakref.ref(pipe)

    def run_length() -> int | None:
        timesteps = getattr(getattr(ref(), "scheduler", None), "timesteps", None)
        return None if timesteps is None else len(timesteps)

    return run_length


def bind_caches(tree: nn.Module, pipe: Any) -> None:
    """Point every cache wrapper in `tree` (a copy this knob owns) at `pipe`'s scheduler."""
    for m in tree.modules():
        if isinstance(m, CachedDenoiser):
            m.schedule.run_length = scheduler_run_length(pipe)


def caches_in(tree: nn.Module) -> list[CachedDenoiser]:
    """The cache wrappers in `tree` that reuse features (interval > 1)."""
    return [m for m in tree.modules() if isinstance(m, CachedDenoiser) and m.stores_cache]


__all__ = ["share_copy", "wrapper_chain", "scheduler_run_length", "bind_caches", "caches_in"]
