"""The Measurement: everything a trial measured, as plain JSON-able data (stored as a trial user attribute)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autoeff.records import JsonRecord


@dataclass
class Measurement(JsonRecord):
    """What one candidate measured.

    Attributes:
        latency_s: median end-to-end latency of one pipeline call (seconds).
        latency: the full latency record (median, spread, repeats, device, threads, wait policy).
        quality: the quality record (metric, value, sample count, spread) or `None` when it was not
            measured (over budget).
        score: quality as "larger is better" (e.g. -FID), or `None`.
        size_mb: the denoiser's weight storage in MB.
        simulated: latency came from a fake-quant (simulated) backend and must not be reported as a speedup.
        over_budget: during the search, latency exceeded the budget by more than the search's margin (10%),
            so quality was not spent on it; for a finalist's re-measurement, latency exceeded the budget.
        noise_floor: the baseline's relative latency spread (half-width of the 95% CI of its median), the
            size of a latency difference that is indistinguishable from noise on this device.
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
    noise_floor: float | None = None
    version: int = 1
