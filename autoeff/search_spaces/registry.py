"""The one registry of knobs: name -> `Knob`, in application order.

The built-in knobs register themselves when `autoeff.search_spaces` is imported (its `__init__` imports their
modules); a knob defined anywhere else (a plugin, a test) calls `register` and from then on takes part in
search, warm starts, recipes, export and `autoeff.load` like the built-in ones. Recipes and exports resolve
knob names only through this registry, never by importing a module a file names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from autoeff.search_spaces.base import ConfigError, Knob

_KNOBS: dict[str, Knob[Any, Any]] = {}


def register(knob: Knob[Any, Any]) -> Knob[Any, Any]:
    """Add `knob` to the registry (once per name) and return it."""
    existing = _KNOBS.get(knob.name)
    if existing is not None and existing is not knob:
        raise ValueError(f"a knob named {knob.name!r} is already registered; choose another name")
    _KNOBS[knob.name] = knob
    return knob


def unregister(name: str) -> None:
    """Remove the knob `name` (for plugins and tests that register knobs of their own)."""
    _KNOBS.pop(name, None)


def knob_names() -> tuple[str, ...]:
    """Every registered knob's name, in application order (stage, then name)."""
    return tuple(k.name for k in sorted(_KNOBS.values(), key=lambda k: (int(k.stage), k.name)))


def get_knob(name: str) -> Knob[Any, Any]:
    """The knob `name`; an unknown name raises ConfigError listing the known ones."""
    knob = _KNOBS.get(name)
    if knob is None:
        raise ConfigError(f"unknown knob {name!r}; known knobs: {', '.join(knob_names())}")
    return knob


def ordered(names: Iterable[str]) -> list[Knob[Any, Any]]:
    """The knobs `names` (each must be registered), in application order."""
    wanted = set(names)
    for name in sorted(wanted - set(_KNOBS)):
        get_knob(name)  # raises, naming the known knobs
    return [_KNOBS[n] for n in knob_names() if n in wanted]


def help_lines(detail: bool = False) -> list[str]:
    """`name: help` for every knob (for `--space` help); with `detail`, its stage, why, and how it is exported
    (for the docs)."""
    out = []
    for name in knob_names():
        k = _KNOBS[name]
        line = f"{name}: {k.help}"
        if detail:
            line += f" (stage {k.stage.name.lower()}: {k.stage.reason}; {k.exported})"
        out.append(line)
    return out


__all__ = ["register", "unregister", "knob_names", "get_knob", "ordered", "help_lines"]
