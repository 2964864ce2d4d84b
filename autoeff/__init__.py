"""autoeff: an automated efficiency optimizer for diffusion models.

    import autoeff
    handle = autoeff.load_model("digits")              # the built-in model, offline
    result = autoeff.optimize("digits", budget="10%")  # search, re-measure finalists, export
    pipe = autoeff.load("autoeff-out/optimized")       # the frozen pipeline, every knob applied
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_model(spec: str, model_path: str | None = None, device: str = "cpu", dtype: str | None = None) -> Any:
    """Resolve a model spec (`digits`, `sdxl`, a folder, ...) into a ModelHandle (`.pipeline` is ready)."""
    from autoeff.models.registry import load_model as _load_model

    return _load_model(spec, model_path=model_path, device=device, dtype=dtype)


def optimize(model: Any, **kwargs: Any) -> Any:
    """See `autoeff.api.optimize`."""
    from autoeff.api import optimize as _optimize

    return _optimize(model, **kwargs)


def load(path: str, device: str = "cpu", dtype: str | None = None) -> Any:
    """Load an exported folder as a ready pipeline (see `autoeff.export.load`)."""
    from autoeff.export import load as _load

    return _load(path, device=device, dtype=dtype)


__all__ = ["__version__", "load_model", "optimize", "load"]
