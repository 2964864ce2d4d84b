"""The knobs autoeff searches, one module each, and the `SearchSpace` that composes them.

Knobs are applied in `KNOB_ORDER`: weights first (prune, then quantize the pruned weights), then the
sampler (solver, then the schedule it visits), then the runtime cache around the denoiser.
"""

from __future__ import annotations

import importlib
from types import ModuleType

KNOB_ORDER: tuple[str, ...] = ("prune", "quantize", "solver", "schedule", "cache")


def knob_module(name: str) -> ModuleType:
    """The module implementing knob `name` (an allowlist: only `KNOB_ORDER` names are importable)."""
    if name not in KNOB_ORDER:
        raise ValueError(f"unknown knob {name!r}; known knobs: {', '.join(KNOB_ORDER)}")
    return importlib.import_module(f"autoeff.search_spaces.{name}")


__all__ = ["KNOB_ORDER", "knob_module"]
