"""How the winner is chosen: successive halving from the search's proxy sample to the final sample.

A proxy score on a small sample is noisy (FID on 128 digits moved by 12.5-14.5 among the top five of one
search, more than the differences it ranked), so the winner is not the proxy's best, nor the best of a fixed
top k re-measured. Samples go where they decide, by successive halving (Jamieson & Talwalkar, 2016; the rungs
of Hyperband, Li et al., 2017) with a noise-aware cut:

1. Rung 0 is every candidate whose search latency met the budget, scored on the proxy sample.
2. From one rung to the next, a candidate is promoted when its score is within `NOISE_Z` standard errors of
   the difference from the rung's best (each score's own standard error: FID's from split halves,
   `evaluators.quality.standard_error`), at most half the rung (the halving) but never fewer than `top_k`
   when that many are within noise. A candidate the rung can tell apart from the best stops there.
   The first rung above the proxy is partly measured during the search (`contender_samples`): a candidate
   whose proxy score was within noise of the best so far is scored there at once (`search.Objective`), so
   the planner refines what the larger sample prefers (`best_by_evidence`); such a candidate takes part in
   that rung whatever its proxy rank (unless near the budget: those are re-timed first, below).
3. The rungs' sample counts grow `ETA`-fold (`sample_rungs`), on the first images of the final sample set
   (fresh seeds, the same for everyone), up to the final sample.
4. Before the first promotion, a candidate whose search latency lies within `NEAR_BUDGET` noise floors of the
   budget is re-timed as the finalists are; one over the budget then is dropped, and the next best takes its
   place.
5. The last rung re-times and scores the survivors on the whole final sample (`Finalist`); the winner is the
   best of those whose re-timed latency meets the budget, the fastest of them on a tie (a candidate and its
   twin with a knob that keeps the images, `Knob.keeps_images`, score the same by construction: on the digits
   U-Net at 5 % the eager 2-step pick re-timed at 29.9 ms beside its compiled twin's 24.1 ms, and won by list
   order). If none does, the next best of the rung before are brought in, up to twice as many finalists, before
   the search gives up.

Every measurement is stored in the study (`StoredStudy.rung`, `retime`, `finalist`), so a rerun does not
measure it again. Kendall's tau between proxy and final scores of the finalists says how far the proxy can be
trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoeff.evaluators.agreement import kendall_tau
from autoeff.evaluators.latency import LatencyResult
from autoeff.evaluators.quality import QualityResult, score, standard_error
from autoeff.measurement import Measurement
from autoeff.study import FinalistEntry, StoredStudy, TrialRecord

ETA = 4
NOISE_Z = 2.0
NEAR_BUDGET = 2.0


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


def sample_rungs(proxy_samples: int, final_samples: int, eta: int = ETA) -> list[int]:
    """Sample counts of the rungs: the proxy's, then `eta` times more each, then the final sample's."""
    rungs, n = [proxy_samples], proxy_samples
    while n * eta < final_samples:
        n *= eta
        rungs.append(n)
    rungs.append(final_samples)
    return rungs


def _proxy_score(record: TrialRecord) -> float:
    return -math.inf if record.score is None else record.score


def contender_samples(proxy_samples: int, final_samples: int) -> int | None:
    """The first rung above the proxy (`sample_rungs`), where a candidate within noise of the best is scored
    during the search already; None when that rung is the final sample (the finalists are re-timed too, so
    they are measured at selection only)."""
    rungs = sample_rungs(min(proxy_samples, final_samples), final_samples)
    return rungs[1] if len(rungs) > 2 else None


def contends(quality: QualityResult, best: QualityResult | None, z: float = NOISE_Z) -> bool:
    """Whether `quality` is within `z` standard errors of the difference from `best` (each its own standard
    error, `evaluators.quality.standard_error`); None: it is the first, so it is the best."""
    return best is None or score(best) - score(quality) <= z * math.hypot(standard_error(best),
                                                                          standard_error(quality))


def best_by_evidence(records: Sequence[TrialRecord], budget_s: float) -> TrialRecord | None:
    """The best candidate within the budget by the largest sample it was scored on: by its first-rung score
    among those scored there during the search (every candidate within noise of the best proxy score is), by
    the proxy score when none was. The proxy alone misleads: at 20 % on the digits U-Net the search refined a
    structure whose 128-sample FID led (11.8) and whose 2000-sample FID was 5.5, against 4.5 for a candidate it
    had measured in its first trials (BENCHMARKS.md)."""
    feasible = [r for r in records if r.score is not None and r.feasible(budget_s)]
    scored = [r for r in feasible if r.contender is not None]
    if scored:  # a tie (twins with the same images): the faster, which leaves the planner more room
        return max(scored, key=lambda r: (score(r.contender[1]) if r.contender is not None else -math.inf,
                                          -r.latency_s))
    return max(feasible, key=lambda r: (_proxy_score(r), -r.latency_s), default=None)


def within_noise(entries: Sequence[tuple[TrialRecord, QualityResult]], *, floor: int,
                 z: float = NOISE_Z) -> list[tuple[TrialRecord, QualityResult]]:
    """The entries a rung cannot tell apart from its best (best first): score within `z` standard errors of
    the difference; at most half of them (at least one), but `floor` when that many are within noise."""
    ranked = sorted(entries, key=lambda e: score(e[1]), reverse=True)
    if not ranked:
        return []
    keep = [e for e in ranked if contends(e[1], ranked[0][1], z)]
    cap = max(floor, math.ceil(len(ranked) / 2), 1)
    return keep[:cap]


@dataclass
class Finalist:
    """A candidate re-timed and re-measured on the whole final sample before the winner is chosen."""

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
    agreement, the candidates that failed on a larger sample (`(number, reason)`), what each rung measured and
    promoted, and the candidates dropped by the re-time before they became finalists."""

    finalists: list[Finalist] = field(default_factory=list)
    best: Finalist | None = None
    proxy_final_tau: float | None = None
    failed: list[tuple[int, str]] = field(default_factory=list)
    rungs: list[dict[str, Any]] = field(default_factory=list)
    retimed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rungs": self.rungs, "retimed": self.retimed,
                "finalists": [f.record.number for f in self.finalists]}


class _Halving:
    """One selection's measurements, each stored in the study and read back from it on a rerun."""

    def __init__(self, stored: StoredStudy, budget_s: float, final_samples: int,
                 measure: Callable[[TrialRecord, int], QualityResult], remeasure: Callable[[TrialRecord], Measurement],
                 retime: Callable[[TrialRecord], LatencyResult] | None, out: Selection) -> None:
        self.stored, self.budget_s, self.final_samples = stored, budget_s, final_samples
        self.measure, self.remeasure, self.retime_fn, self.out = measure, remeasure, retime, out

    def _failed(self, rec: TrialRecord, what: str, e: Exception) -> str:
        reason = f"{type(e).__name__}: {e}"[:500]
        self.out.failed.append((rec.number, f"{what}: {reason}"))
        return reason

    def quality(self, rec: TrialRecord, n: int) -> QualityResult | None:
        if rec.contender is not None and rec.contender[0] == n:  # scored there during the search
            return rec.contender[1]
        cached = self.stored.rung(rec.number, n)
        if cached is not None:
            return cached[0]
        try:
            q = self.measure(rec, n)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a candidate that fails on a larger sample is dropped, not fatal
            self.stored.set_rung(rec.number, n, None, failed=self._failed(rec, f"rung of {n} samples", e))
            return None
        self.stored.set_rung(rec.number, n, q)
        return q

    def retime(self, rec: TrialRecord) -> float | None:
        """The re-timed latency (seconds), or None when it failed."""
        cached = self.stored.retime(rec.number)
        if cached is None and self.retime_fn is not None:
            try:
                cached = self.retime_fn(rec)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                self._failed(rec, "re-time", e)
                return None
            self.stored.set_retime(rec.number, cached)
        return None if cached is None else cached.median_s

    def finalist(self, rec: TrialRecord) -> Finalist | None:
        entry = self.stored.finalist(rec.number)
        if entry is not None and entry.final_samples == self.final_samples:
            if entry.failed is not None or entry.measurement is None:
                return None
            return Finalist(rec, entry.measurement)
        try:
            final = self.remeasure(rec)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            reason = self._failed(rec, "finalist", e)
            self.stored.set_finalist(rec.number, FinalistEntry(self.final_samples, failed=reason))
            return None
        self.stored.set_finalist(rec.number, FinalistEntry(self.final_samples, measurement=final))
        return Finalist(rec, final)


def select(records: Sequence[TrialRecord], budget_s: float, *, top_k: int, final_samples: int,
           remeasure: Callable[[TrialRecord], Measurement], stored: StoredStudy,
           measure: Callable[[TrialRecord, int], QualityResult] | None = None,
           retime: Callable[[TrialRecord], LatencyResult] | None = None, noise: float = 0.0) -> Selection:
    """Successive halving from the proxy sample to `final_samples` (see the module docstring).

    `measure(record, n)`: its quality on the first n final-set images; `remeasure(record)`: re-timed and scored
    on the whole final sample; `retime(record)`: re-timed only; `noise`: the relative latency noise floor
    (candidates within `NEAR_BUDGET` of it below the budget are re-timed first). A candidate that raises is
    dropped (recorded in `failed`), never fatal.
    """
    out = Selection()
    feasible = sorted((r for r in records if r.score is not None and r.feasible(budget_s)
                       and r.measurement.quality is not None), key=_proxy_score, reverse=True)
    if not feasible:
        return out
    proxy_n = feasible[0].measurement.quality.n if feasible[0].measurement.quality else final_samples
    rungs = sample_rungs(min(proxy_n, final_samples), final_samples)
    run = _Halving(stored, budget_s, final_samples, measure or (lambda r, n: _never(r, n)), remeasure, retime, out)
    current: list[tuple[TrialRecord, QualityResult]] = [(r, r.measurement.quality) for r in feasible
                                                        if r.measurement.quality is not None]
    near = budget_s / (1.0 + NEAR_BUDGET * max(noise, 0.0))
    finalists: list[Finalist] = []
    for i, n in enumerate(rungs[1:], start=1):
        promoted = within_noise(current, floor=top_k)
        out.rungs.append({"samples": rungs[i - 1], "measured": [_entry(r, q) for r, q in current],
                          "promoted": [r.number for r, _ in promoted]})
        if i == 1:  # near the budget: re-timed as the finalists will be, before they become finalists
            promoted = _retime_near(run, promoted, current, near, budget_s, limit=2 * max(top_k, len(promoted)))
            # scored on this rung during the search already: measured, so they take part at no cost
            promoted += [(r, q) for r, q in current if r.contender is not None and r.contender[0] == n
                         and r.number not in {p.number for p, _ in promoted} and r.latency_s <= near]
        if n == final_samples and i == len(rungs) - 1:
            finalists = [f for f in (run.finalist(r) for r, _ in promoted) if f is not None]
            # none meets the budget when re-timed: the next best of this rung's candidates, up to twice as many
            rest = [r for r, _ in sorted(current, key=lambda e: score(e[1]), reverse=True)
                    if r.number not in {p.number for p, _ in promoted}]
            while rest and not any(f.meets(budget_s) for f in finalists) and len(finalists) < 2 * max(top_k, 1):
                f = run.finalist(rest.pop(0))
                if f is not None:
                    finalists.append(f)
            break
        current = [(r, q) for r, q in ((r, run.quality(r, n)) for r, _ in promoted) if q is not None]
        if not current:
            break
    out.finalists = finalists
    if finalists:
        out.rungs.append({"samples": final_samples, "measured": [
            {"number": f.record.number, "value": f.final.quality.value if f.final.quality else None,
             "stderr": standard_error(f.final.quality) if f.final.quality else None,
             "latency_s": f.final.latency_s} for f in finalists], "promoted": []})
    ok = [f for f in finalists if f.meets(budget_s)]
    if ok:
        out.best = max(ok, key=lambda f: (f.final_score, -f.final.latency_s))  # a tie: the faster
    if len(finalists) >= 2:  # does the proxy rank the finalists like the larger final sample does?
        tau = kendall_tau([_proxy_score(f.record) for f in finalists], [f.final_score for f in finalists])
        out.proxy_final_tau = None if math.isnan(tau) else tau
    return out


def _never(record: TrialRecord, n: int) -> QualityResult:
    raise RuntimeError(f"no measurement at {n} samples was given to select()")


def _entry(record: TrialRecord, q: QualityResult) -> dict[str, Any]:
    return {"number": record.number, "value": q.value, "stderr": standard_error(q), "latency_s": record.latency_s}


def _retime_near(run: _Halving, promoted: list[tuple[TrialRecord, QualityResult]],
                 ranked: Sequence[tuple[TrialRecord, QualityResult]], near_s: float, budget_s: float,
                 limit: int) -> list[tuple[TrialRecord, QualityResult]]:
    """`promoted` less the candidates near the budget that a re-time puts over it; each dropped one is replaced
    by the next best of `ranked` not promoted yet (re-timed too when near), at most `limit` re-times."""
    kept: list[tuple[TrialRecord, QualityResult]] = []
    queue = list(promoted)
    spare = [e for e in sorted(ranked, key=lambda e: score(e[1]), reverse=True)
             if e[0].number not in {r.number for r, _ in promoted}]
    retimes = 0
    while queue:
        rec, q = queue.pop(0)
        if rec.latency_s <= near_s:
            kept.append((rec, q))
            continue
        retimes += 1
        latency = run.retime(rec)
        run.out.retimed.append({"number": rec.number, "search_latency_s": rec.latency_s, "latency_s": latency,
                                "kept": latency is not None and latency <= budget_s})
        if latency is not None and latency <= budget_s:
            kept.append((rec, q))
        elif spare and retimes < limit:
            queue.append(spare.pop(0))
    return kept


__all__ = ["pareto_front", "sample_rungs", "within_noise", "contender_samples", "contends", "best_by_evidence",
           "Finalist", "Selection", "select", "ETA", "NOISE_Z",
           "NEAR_BUDGET"]
