"""The Measurement: everything a trial measured, as plain JSON-able data (stored as a trial user attribute)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Measurement:
    """What one candidate measured.

    Attributes:
        latency_s: median end-to-end latency of one pipeline call (seconds).
        latency: the full latency record (median, spread, repeats, device, threads, wait policy).
        quality: the quality record (metric, value, sample count, spread) or `None` when it was not
            measured (over budget).
        score: quality as "larger is better" (e.g. -FID), or `None`.
        size_mb: the denoiser's weight storage in MB.
        simulated: latency came from a fake-quant (simulated) backend and must not be reported as a speedup.
        over_budget: latency exceeded the budget, so quality was not spent on it.
        budget_s: the budget in seconds the candidate was judged against.
    """

    latency_s: float
    latency: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] | None = None
    score: float | None = None
    size_mb: float | None = None
    simulated: bool = False
    over_budget: bool = False
    budget_s: float | None = None
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        names = set(cls.__dataclass_fields__)
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"measurement has unknown field(s) {sorted(unknown)}")
        return cls(**data)
