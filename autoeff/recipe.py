"""The Recipe: everything a trial decided, as plain versioned data.

A Recipe holds one config per knob. It serializes to JSON (stored as an Optuna trial user attribute and in
an exported folder's `autoeff.json`) and loads strictly: an unknown field, an unknown knob or a newer schema
version is refused with a message that says what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from autoeff.search_spaces.base import ConfigError, config_from_dict, config_to_dict
from autoeff.search_spaces.registry import get_knob, knob_names

SCHEMA_VERSION = 1


@dataclass
class Recipe:
    """`model`: the model spec the recipe was searched for; `knobs`: knob name -> that knob's config."""

    model: str
    knobs: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        known = knob_names()
        unknown = [k for k in self.knobs if k not in known]
        if unknown:
            raise ConfigError(f"unknown knob(s) {unknown}; known knobs: {', '.join(known)}")

    def ordered(self) -> list[tuple[str, Any]]:
        """`(knob name, config)` in application order."""
        return [(k, self.knobs[k]) for k in knob_names() if k in self.knobs]

    def is_simulated(self) -> bool:
        """True when some knob's config has no real kernel (fake quantization): its latency is not a speed-up."""
        return any(get_knob(k).is_simulated(cfg) for k, cfg in self.knobs.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "knobs": {k: config_to_dict(cfg) for k, cfg in self.ordered()},
        }

    def to_json(self) -> str:
        # no sort_keys: the order of a quantize mapping matters (the first matching `re:` pattern wins)
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        if not isinstance(data, dict):
            raise ConfigError("a recipe must be a JSON object")
        unknown = set(data) - {"schema_version", "model", "knobs"}
        if unknown:
            raise ConfigError(f"recipe has unknown field(s) {sorted(unknown)}")
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ConfigError("recipe schema_version must be an integer")
        if version > SCHEMA_VERSION:
            raise ConfigError(f"recipe schema_version {version} is newer than this autoeff reads "
                              f"({SCHEMA_VERSION}); upgrade autoeff")
        if version < 1:
            raise ConfigError(f"recipe schema_version {version} is not valid")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise ConfigError("recipe model must be a non-empty string")
        knobs = data.get("knobs", {})
        if not isinstance(knobs, dict):
            raise ConfigError("recipe knobs must be an object")
        configs = {}
        known = knob_names()
        for name, payload in knobs.items():
            if name not in known:
                raise ConfigError(f"recipe has unknown knob {name!r}; known knobs: {', '.join(known)}")
            configs[name] = config_from_dict(get_knob(name).config, payload)
        return cls(model=model, knobs=configs, schema_version=version)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"recipe is not valid JSON: {e.msg} at line {e.lineno}") from None
        except (ValueError, RecursionError) as e:  # e.g. an integer too long to convert, nesting too deep
            raise ConfigError(f"recipe is not valid JSON ({type(e).__name__})") from None
        return cls.from_dict(data)

    def describe(self) -> str:
        """One line per knob, for tables and logs."""
        return "; ".join(f"{k}: {cfg.describe() if hasattr(cfg, 'describe') else cfg}" for k, cfg in self.ordered())
