"""What was measured, as typed records: a candidate's `Measurement` and the search's `Baseline`.

Both nest the evaluators' own records (`LatencyResult`, `QualityResult`; a compiled candidate also its
`CompileRecord`, kept apart from the per-call latency) and serialize to plain JSON (stored as
Optuna attributes through `autoeff.study`, and in an export's `autoeff.json`). Reading is strict, except that
the `score` a quality dict carried before autoeff 0.1's typed records is dropped (it is derived).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoeff.evaluators.latency import LatencyResult
from autoeff.evaluators.quality import QualityResult, score
from autoeff.records import JsonRecord

# Keys older autoeff releases stored beside the figures they were derived from.
_DERIVED = ("score", "final_score")


def _quality(data: Any) -> QualityResult | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("a quality record must be a JSON object")
    return QualityResult.from_dict({k: v for k, v in data.items() if k not in _DERIVED})


@dataclass
class CompileRecord(JsonRecord):
    """What compiling cost a candidate (`torch.compile`), measured before and apart from its timed calls.

    Attributes:
        seconds: wall seconds of the warm-up calls that compiled, less the time the same number of compiled
            calls takes (the median of the calls that compiled nothing): the time spent compiling.
        warmup_calls: pipeline calls until one compiled nothing (the last of them included).
        frames: code frames torch compiled during the warm-up (dynamo's `frames.total` counter).
        retimed: how often the timed calls were started again because something compiled inside them.
    """

    seconds: float
    warmup_calls: int
    frames: int
    retimed: int = 0
    version: int = 1


def _compile(data: Any) -> CompileRecord | None:
    return None if data is None else CompileRecord.from_dict(data)


def _latency(data: Any) -> LatencyResult | None:
    if data is None or data == {}:
        return None
    return LatencyResult.from_dict(data)


@dataclass
class Measurement(JsonRecord):
    """What one candidate measured.

    Attributes:
        latency_s: median end-to-end latency of one pipeline call (seconds).
        latency: the full latency record (median, spread, repeats, device, threads, wait policy).
        quality: the quality record (metric, value, sample count, spread), or `None` when it was not measured
            (over budget).
        score: quality as "larger is better" (e.g. -FID), or `None`.
        size_mb: the denoiser's weight storage in MB.
        simulated: latency came from a fake-quant (simulated) backend and must not be reported as a speedup.
        over_budget: during the search, latency exceeded the budget by more than the search's margin (10%),
            so quality was not spent on it; for a finalist's re-measurement, latency exceeded the budget.
        budget_s: the budget in seconds the candidate was judged against.
        noise_floor: the baseline's relative latency spread (half-width of the 95% CI of its median), the
            size of a latency difference that is indistinguishable from noise on this device.
        compile: what compiling cost (`None`: nothing was compiled); never part of `latency_s`.
    """

    latency_s: float
    latency: LatencyResult | None = None
    quality: QualityResult | None = None
    score: float | None = None
    size_mb: float | None = None
    simulated: bool = False
    over_budget: bool = False
    budget_s: float | None = None
    noise_floor: float | None = None
    compile: CompileRecord | None = None
    version: int = 1

    @property
    def compile_s(self) -> float:
        """Seconds spent compiling this candidate (0 when nothing was compiled)."""
        return 0.0 if self.compile is None else self.compile.seconds

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        if not isinstance(data, dict):
            raise ValueError("Measurement must be a JSON object")
        data = dict(data)
        data["latency"] = _latency(data.get("latency"))
        data["compile"] = _compile(data.get("compile"))
        data["quality"] = _quality(data.get("quality"))
        return super().from_dict(data)


@dataclass
class Baseline(JsonRecord):
    """The base pipeline as the user runs it today, measured like every candidate.

    Attributes:
        latency_s / latency: median seconds per call and the full latency record at the search's batch.
        quality: the metric on the proxy sample; final_quality: on the finalists' larger sample.
        size_mb: the denoiser's weight storage; steps: its step count; scheduler: its scheduler class.
    """

    latency_s: float
    latency: LatencyResult
    quality: QualityResult
    final_quality: QualityResult
    size_mb: float | None = None
    steps: int = 50
    scheduler: str = ""
    version: int = 1

    @property
    def score(self) -> float:
        return score(self.quality)

    @property
    def final_score(self) -> float:
        return score(self.final_quality)

    @property
    def noise_floor(self) -> float:
        """The relative latency spread (half-width of the 95% CI of the median) measured for the baseline."""
        return self.latency.rel_spread

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        if not isinstance(data, dict):
            raise ValueError("Baseline must be a JSON object")
        data = {k: v for k, v in data.items() if k not in _DERIVED}
        data["latency"] = LatencyResult.from_dict(data.get("latency"))  # type: ignore[arg-type]
        data["quality"] = _quality(data.get("quality"))
        data["final_quality"] = _quality(data.get("final_quality"))
        if data["quality"] is None or data["final_quality"] is None:
            raise ValueError("Baseline needs its quality and final_quality")
        return super().from_dict(data)
