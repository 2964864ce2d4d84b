"""How the winner is chosen: the feasible Pareto front, then finalists re-measured on the larger sample.

1. Every completed trial whose quality was measured and whose search latency met the budget is a candidate.
2. The `top_k` best by proxy score are re-timed and scored on the final sample set (fresh seeds): the
   proxy's best is often lucky (the winner's curse), and a candidate near the budget may miss it when
   re-timed. If none of them meets the budget when re-timed, the next best are re-measured too, up to
   2 x `top_k` in all, before the search gives up.
3. The winner is the finalist with the best final score among those whose re-timed latency meets the budget.

Finalists' re-measurements are stored in the study (`StoredStudy.finalist`), so a rerun does not measure them
again. Kendall's tau between proxy and final scores of the finalists says how far the proxy can be trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoeff.evaluators.agreement import kendall_tau
from autoeff.measurement import Measurement
from autoeff.study import FinalistEntry, StoredStudy, TrialRecord


def pareto_front(records: Sequence[TrialRecord], budget_s: float | None = None) -> list[TrialRecord]:
    """Trials with measured quality that no other trial beats on both latency and score (budget-feasible
    only, when `budget_s` is given), sorted by latency."""
    pts = [(r, r.score) for r in records if r.score is not None and (budget_s is None or r.feasible(budget_s))]
    front = []
    for r, s in pts:
        dominated = any((o.latency_s <= r.latency_s and os_ >= s) and (o.latency_s < r.latency_s or os_ > s)
                        for o, os_ in pts)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.latency_s)


def _proxy_score(record: TrialRecord) -> float:
    return -math.inf if record.score is None else record.score


@dataclass
class Finalist:
    """A front candidate re-measured on a larger quality sample and re-timed before the winner is chosen."""

    record: TrialRecord
    final: Measurement

    @property
    def final_score(self) -> float:
        return -math.inf if self.final.score is None else self.final.score

    def meets(self, budget_s: float) -> bool:
        return self.final.latency_s <= budget_s and self.final.score is not None

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.record.number, "proxy": self.record.measurement.to_dict(),
                "final": self.final.to_dict()}


@dataclass
class Selection:
    """The finalists, the winner (None when no finalist met the budget when re-timed), the proxy/final rank
    agreement, and the finalists that failed on the final sample (`(number, reason)`)."""

    finalists: list[Finalist] = field(default_factory=list)
    best: Finalist | None = None
    proxy_final_tau: float | None = None
    failed: list[tuple[int, str]] = field(default_factory=list)


def select(records: Sequence[TrialRecord], budget_s: float, *, top_k: int, final_samples: int,
           remeasure: Callable[[TrialRecord], Measurement], stored: StoredStudy) -> Selection:
    """Re-measure the best feasible candidates on the final sample (see the module docstring); pick the winner.

    `remeasure(record)` builds the record's pipeline and returns its final-sample Measurement; a finalist that
    raises is dropped (recorded in `failed`), never fatal.
    """
    feasible = sorted((r for r in records if r.score is not None and r.feasible(budget_s)), key=_proxy_score,
                      reverse=True)
    out = Selection()
    for attempt, rec in enumerate(feasible[: 2 * top_k]):
        if attempt >= top_k and any(f.meets(budget_s) for f in out.finalists):
            break
        entry = stored.finalist(rec.number)
        if entry is not None and entry.final_samples == final_samples:
            if entry.failed is not None or entry.measurement is None:
                continue
            final = entry.measurement
        else:
            try:
                final = remeasure(rec)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a finalist that fails on the larger sample is dropped, not fatal
                reason = f"{type(e).__name__}: {e}"[:500]
                stored.set_finalist(rec.number, FinalistEntry(final_samples, failed=reason))
                out.failed.append((rec.number, f"finalist: {reason}"))
                continue
            stored.set_finalist(rec.number, FinalistEntry(final_samples, measurement=final))
        out.finalists.append(Finalist(rec, final))
    ok = [f for f in out.finalists if f.meets(budget_s)]
    if ok:
        out.best = max(ok, key=lambda f: f.final_score)
    if len(out.finalists) >= 2:  # does the proxy rank the finalists like the larger final sample does?
        tau = kendall_tau([_proxy_score(f.record) for f in out.finalists], [f.final_score for f in out.finalists])
        out.proxy_final_tau = None if math.isnan(tau) else tau
    return out


__all__ = ["pareto_front", "Finalist", "Selection", "select"]
