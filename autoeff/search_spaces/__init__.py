"""The knobs autoeff searches, one module (or package) each, registered in `registry`.

Importing this package imports every knob module in it (`KNOB_MODULES`: every public module except the
infrastructure below), and each ends with `KNOB = register(Knob(...))`: adding a built-in knob is adding its file
(and its tests), nothing else. `registry.knob_names()` lists the registered knobs in application order
(`base.Stage`): the denoiser's structure (prune), its kernels (kernels), its precision (quantize), the
scheduler (solver), its timesteps (schedule), wrappers around the denoiser (cache, guidance), then compiling
(compile). A knob defined elsewhere (a plugin, a test) calls `registry.register` itself.
"""

from __future__ import annotations

import importlib
import pkgutil

from autoeff.search_spaces.registry import get_knob, knob_names, register

# Modules of this package that are not knobs: the protocol, the registry, block groups (shared by knobs), what
# a model can do (`capabilities`, which asks the knobs' techniques), and the search space, which composes knobs
# into recipes (it imports `autoeff.recipe`, so it must not be imported
# while the registry is being filled).
INFRASTRUCTURE = frozenset({"base", "registry", "groups", "space", "capabilities"})
KNOB_MODULES: tuple[str, ...] = tuple(
    f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)
    if not m.name.startswith("_") and m.name not in INFRASTRUCTURE)

for _name in KNOB_MODULES:
    importlib.import_module(_name)

__all__ = ["KNOB_MODULES", "get_knob", "knob_names", "register"]
