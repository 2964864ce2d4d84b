"""autoeff: an automated efficiency optimizer for diffusion models.

    import autoeff
    handle = autoeff.load_model("digits")              # the built-in model, offline
    result = autoeff.optimize("digits", budget="10%")  # search, re-measure finalists, export
    pipe = autoeff.load("autoeff-out/optimized")       # the frozen pipeline, every knob applied
    autoeff.optimize_from_config("run.toml")           # the same, from the file a CLI run wrote

The three functions are the ones of `autoeff.models.registry`, `autoeff.api` and `autoeff.export`, with their
real signatures. They are imported on first use (PEP 562): `import autoeff` alone stays light and imports no
torch, so the CLI can set the environment torch reads at import (OMP_WAIT_POLICY) before anything loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from autoeff.api import optimize, optimize_from_config
    from autoeff.export import load
    from autoeff.models.registry import load_model

_LAZY = {"load_model": "autoeff.models.registry", "optimize": "autoeff.api",
         "optimize_from_config": "autoeff.api", "load": "autoeff.export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autoeff' has no attribute {name!r}")


__all__ = ["__version__", "load_model", "optimize", "optimize_from_config", "load"]
