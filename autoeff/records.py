"""`JsonRecord`: strict JSON round-trips for the measurement dataclasses (latency, quality, trial).

Unknown fields and other versions are refused, so a record written by another tool or a newer autoeff never
loads silently wrong.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

T = TypeVar("T", bound="JsonRecord")


class JsonRecord:
    """Mixin for `@dataclass` records with a `version: int = 1` field."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        name = cls.__name__
        if not isinstance(data, dict):
            raise ValueError(f"{name} must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{name} has no field(s) {sorted(unknown)}; known: {sorted(names)}")
        known = next(f.default for f in dataclasses.fields(cls) if f.name == "version")  # type: ignore[arg-type]
        if data.get("version", known) != known:
            raise ValueError(f"{name} version {data['version']!r} is not {known}; upgrade autoeff")
        return cls(**data)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))
