"""`OptimizeResult`: what a search produced (returned by `autoeff.optimize`), and `Recovery`, what the optional
distillation of a pruned winner did."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from autoeff.errors import NoFeasibleCandidateError, SearchError
from autoeff.export import claim, export_pipeline
from autoeff.measurement import Baseline, Measurement
from autoeff.models.handle import ModelHandle
from autoeff.report import write_report
from autoeff.search_spaces.base import SpaceContext
from autoeff.selection import Finalist
from autoeff.settings import SearchSettings
from autoeff.study import TrialRecord


@dataclass
class Recovery:
    """The winner's pruned denoiser distilled towards the unpruned one (`--recover-steps`).

    `applied` False: nothing was distilled (`reason` says why). Otherwise `before`/`after` are the final-sample
    measurements and `kept` whether the recovered weights replaced the winner's (never worse, within budget).
    """

    steps: int
    applied: bool
    reason: str | None = None
    kept: bool = False
    wall_s: float | None = None
    before: Measurement | None = None
    after: Measurement | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": self.steps, "applied": self.applied}
        if not self.applied:
            out["reason"] = self.reason
            return out
        out.update(kept=self.kept, wall_s=self.wall_s, before=None if self.before is None else self.before.to_dict(),
                   after=None if self.after is None else self.after.to_dict())
        return out


@dataclass
class OptimizeResult:
    """What a search produced.

    Attributes:
        best: the chosen finalist (its trial and its re-measured figures), or `None` when nothing met the
            budget.
        pareto: the feasible Pareto front (latency vs proxy quality) of all completed trials.
        records: every completed trial.
        baseline: the baseline's measured figures (latency and quality, same sample sets).
        finalists: every re-measured finalist.
        budget_s: the budget in seconds.
        failed: `(trial number, reason)` of every failed trial and finalist.
        skipped: `(trial number, reason)` of every candidate not built (declined as over budget, or a knob
            combination refused).
        halving: what each rung of the selection measured and promoted (`Selection.to_dict`).
        latency_model: the latency model's fitted figures and its measured errors (`LatencyModel.report`).
        export_path: the exported folder, when one was written.
        infeasible: when nothing met the budget (`best` is None), why, in one line.
        out: the run's output folder (study, summary.json, run.toml, the export).
    """

    handle: ModelHandle
    settings: SearchSettings
    context: SpaceContext
    study: optuna.Study
    records: list[TrialRecord]
    pareto: list[TrialRecord]
    baseline: Baseline
    budget_s: float
    finalists: list[Finalist] = field(default_factory=list)
    best: Finalist | None = None
    export_path: Path | None = None
    failed: list[tuple[int, str]] = field(default_factory=list)
    proxy_final_tau: float | None = None
    recovery: Recovery | None = None
    recovered_denoiser: Any = None
    infeasible: str | None = None
    out: Path | None = None
    skipped: list[tuple[int, str]] = field(default_factory=list)
    halving: dict[str, Any] | None = None
    latency_model: dict[str, Any] | None = None

    def raise_if_infeasible(self) -> OptimizeResult:
        """This result, or `NoFeasibleCandidateError` (carrying it) when nothing met the budget."""
        if self.best is None:
            fastest = min(self.records, key=lambda r: r.latency_s, default=None)
            raise NoFeasibleCandidateError(self.infeasible or "no candidate met the budget", fastest, self)
        return self

    def export(self, path: str | Path, record: TrialRecord | None = None, *, report: bool = True) -> Path:
        """Write the frozen pipeline of `record` (default: the winner) to `path`."""
        chosen = record or (self.best.record if self.best else None)
        if chosen is None:
            raise SearchError("nothing to export: no candidate met the budget (export a trial by number)")
        is_best = self.best is not None and chosen.number == self.best.record.number
        final = (self.best.final if is_best and self.best is not None
                 else next((f.final for f in self.finalists if f.record.number == chosen.number), None))
        recovery = self.recovery.to_dict() if is_best and self.recovery is not None else None
        measured = claim(chosen.number, chosen.measurement, final, self.settings, recovery)

        def writer(folder: Path) -> None:
            if report:
                write_report(self, folder, chosen=chosen, final_folder=Path(path).resolve())

        self.export_path = export_pipeline(self.handle, chosen.recipe, self.context, path, measured=measured,
                                           baseline=self.baseline.to_dict(), device=self.settings.device,
                                           extra_writer=writer,
                                           weights=self.recovered_denoiser if is_best else None)
        return self.export_path

    def summary(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "budget_s": self.budget_s,
            "baseline": self.baseline.to_dict(),
            "trials": len(self.records),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "over_budget": sum(1 for r in self.records if r.latency_s > self.budget_s),
            "latency_model": self.latency_model,
            "halving": self.halving,
            "pareto": [r.to_dict() for r in self.pareto],
            "finalists": [f.to_dict() for f in self.finalists],
            "proxy_final_kendall_tau": self.proxy_final_tau,
            "recovery": None if self.recovery is None else self.recovery.to_dict(),
            "best": self.best.to_dict() if self.best else None,
            "best_recipe": self.best.record.recipe.to_dict() if self.best else None,
            "infeasible": self.infeasible,
            "export_path": str(self.export_path) if self.export_path else None,
        }


__all__ = ["OptimizeResult", "Recovery"]
