"""One search, many budgets: the best stored candidate under a new budget, re-timed here before it is exported.

A finished study holds every candidate it measured (its latency on the search's device and its proxy quality).
A second latency target needs no second search: `autoeff export --out RUN --budget 150ms --to FOLDER` takes the
stored candidates whose search latency meets the budget, best proxy quality first, re-times each on this
machine (the search's batch and seeds) until one still meets it, and exports that one. When no stored
candidate meets the budget, the refusal names the fastest stored latency.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoeff.budget import Budget, parse_budget
from autoeff.errors import SearchError
from autoeff.evaluators.latency import LatencyResult
from autoeff.measure import EvaluationSpec, Evaluator
from autoeff.measurement import Baseline
from autoeff.models.handle import ModelHandle
from autoeff.search import context_for
from autoeff.search_spaces.space import SearchSpace
from autoeff.settings import SearchSettings
from autoeff.study import StoredStudy, TrialRecord

MAX_RETIMED = 3  # candidates re-timed before giving up (each one is a real measurement)


@dataclass(frozen=True)
class Pick:
    """The chosen stored candidate and its latency re-timed here."""

    record: TrialRecord
    retimed: LatencyResult
    budget_s: float


def budget_seconds(budget: str | Budget, stored: StoredStudy) -> float:
    """An absolute budget, or a percentage of the study's stored baseline."""
    parsed = parse_budget(budget) if isinstance(budget, str) else budget
    if parsed.seconds is not None:
        return parsed.seconds
    baseline = stored.baseline
    if baseline is None:
        raise SearchError(f"--budget {parsed.text} is relative to the baseline, which study {stored.name!r} has not "
                          "measured; give an absolute budget such as 150ms")
    return parsed.resolve(baseline.latency_s)


def ranked_under(records: list[TrialRecord], budget_s: float) -> list[TrialRecord]:
    """The measured candidates whose search latency meets `budget_s`, best score first; on a tie (twins with the
    same images, e.g. compiled and eager) the faster first."""
    fits = [r for r in records if r.score is not None and r.latency_s <= budget_s]
    return sorted(fits, key=lambda r: (r.score or 0.0, -r.latency_s), reverse=True)


def pick_under_budget(records: list[TrialRecord], budget_s: float, handle: ModelHandle, settings: SearchSettings,
                      threads: int | None = None, baseline: Baseline | None = None) -> Pick:
    """The best stored candidate that meets `budget_s` when re-timed on this machine (see the module docstring).
    With the study's `baseline` (a budget relative to it), candidates are re-timed as it was: against its
    yardstick, when it had one (`Evaluator.follow`)."""
    fits = ranked_under(records, budget_s)
    if not fits:
        fastest = min(records, key=lambda r: r.latency_s, default=None)
        detail = ("it holds no completed trial" if fastest is None else
                  f"the fastest stored took {fastest.latency_s * 1000:.1f} ms (trial {fastest.number})")
        raise SearchError(f"no stored candidate meets {budget_s * 1000:.1f} ms: {detail}; search with that budget")
    space = SearchSpace(handle, settings.space, context_for(handle, settings))
    evaluator = Evaluator(handle, EvaluationSpec.of(settings), threads=threads)
    if baseline is not None:
        evaluator.follow(baseline)
    tried = []
    for record in fits[:MAX_RETIMED]:
        latency = evaluator.latency(space.build(record.recipe), budget_s=budget_s,
                                    simulated=record.recipe.is_simulated())
        if latency.median_s <= budget_s:
            return Pick(record=record, retimed=latency, budget_s=budget_s)
        tried.append(f"trial {record.number} {latency.median_s * 1000:.1f} ms")
    raise SearchError(f"the best stored candidates for {budget_s * 1000:.1f} ms took longer when re-timed here "
                      f"({', '.join(tried)}); measure on a quiet machine or raise the budget")


__all__ = ["Pick", "budget_seconds", "pick_under_budget", "ranked_under", "MAX_RETIMED"]
