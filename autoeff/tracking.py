"""Experiment tracking: a search logged to MLflow (`--mlflow-uri URI`, or `mlflow_uri=` in the API).

One MLflow run per search, in the experiment named after the study: its parameters are the search settings
and the baseline's figures; every finished trial is a nested run with the trial's parameters, its latency,
its quality, whether it met the budget and why it failed; at the end the chosen figures, `summary.json` and
the exported folder (as an artifact, `optimized/`) are logged. Uses MLflow's client API (`mlflow-skinny`, the
`[mlflow]` extra); Optuna's own `MLflowCallback` logs trials only, not the settings, baseline or export.
Weights & Biases can follow the same shape (a `Tracker` with these four methods).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import optuna

from autoeff.errors import SettingsError
from autoeff.measurement import Baseline
from autoeff.settings import SearchSettings
from autoeff.storage import sqlite_path, unwritable
from autoeff.study import fail_reason, measurement_of

INSTALL = "pip install 'autoeff[mlflow]' (or: pip install mlflow-skinny)"


def _mlflow() -> Any:
    try:
        import mlflow  # lazy: an optional extra, and heavy
    except ImportError:
        raise SettingsError(f"--mlflow-uri needs MLflow, which is not installed: {INSTALL}") from None
    return mlflow


def check_uri(uri: str) -> None:
    """Refuse a tracking URI MLflow cannot write, before a search starts (one line): a local database or
    folder whose folder cannot be written, or a server MLflow cannot reach."""
    mlflow = _mlflow()
    local = sqlite_path(uri) if uri.startswith("sqlite") else (
        Path(uri.removeprefix("file://")) if uri.startswith("file:") or "://" not in uri else None)
    if local is not None:
        why = unwritable(local.parent if uri.startswith("sqlite") else local)
        if why is not None:
            raise SettingsError(f"--mlflow-uri {uri!r} cannot be written: {why}")
    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.CRITICAL)  # MLflow logs each of its connection retries; the one line below says it
    try:
        client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as e:  # MlflowException, OSError, sqlalchemy errors: any reason it cannot be used
        if "MLFLOW_ALLOW_FILE_STORE" in str(e):  # MLflow >= 3.7 refuses folder stores unless told otherwise
            why = ("MLflow 3 refuses folder stores (in maintenance mode); use a database such as "
                   "sqlite:///mlflow.db, or set MLFLOW_ALLOW_FILE_STORE=true")
            raise SettingsError(f"--mlflow-uri {uri!r}: {why}") from None
        first = " ".join(str(e).split())[:200]
        raise SettingsError(f"--mlflow-uri {uri!r} cannot be used: {type(e).__name__}: {first}") from None
    finally:
        mlflow_log.setLevel(level)


class MlflowTracker:
    """Logs one search to MLflow (see the module docstring)."""

    def __init__(self, uri: str, experiment: str, settings: SearchSettings) -> None:
        mlflow = _mlflow()
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        run = self.client.create_run(self.experiment_id, run_name=f"autoeff {settings.model}",
                                     tags={"autoeff.model": settings.model, "autoeff.budget": settings.budget.text})
        self.run_id = run.info.run_id
        params = {k: v for k, v in settings.to_dict().items() if k != "options"}
        params["options"] = settings.options
        for key, value in params.items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def baseline(self, baseline: Baseline, budget_s: float) -> None:
        self.client.log_metric(self.run_id, "baseline_latency_ms", baseline.latency_s * 1000)
        self.client.log_metric(self.run_id, f"baseline_{baseline.final_quality.metric}", baseline.final_quality.value)
        self.client.log_metric(self.run_id, "budget_ms", budget_s * 1000)

    def trial(self, trial: optuna.trial.FrozenTrial, budget_s: float) -> None:
        """A nested run for a finished trial: its parameters and what it measured (or why it failed)."""
        child = self.client.create_run(self.experiment_id, run_name=f"trial {trial.number}",
                                       tags={"mlflow.parentRunId": self.run_id, "autoeff.state": trial.state.name})
        for key, value in trial.params.items():
            self.client.log_param(child.info.run_id, key, str(value)[:500])
        m = measurement_of(trial)
        if m is not None:
            self.client.log_metric(child.info.run_id, "latency_ms", m.latency_s * 1000)
            self.client.log_metric(child.info.run_id, "feasible", float(m.latency_s <= budget_s))
            if m.quality is not None and math.isfinite(m.quality.value):
                self.client.log_metric(child.info.run_id, m.quality.metric, m.quality.value)
        reason = fail_reason(trial)
        if reason:
            self.client.set_tag(child.info.run_id, "autoeff.fail_reason", reason[:500])
        self.client.set_terminated(child.info.run_id, status="FINISHED" if trial.state.name == "COMPLETE"
                                   else "FAILED")

    def finish(self, summary: dict[str, Any], export_path: Path | None) -> None:
        """The chosen figures, summary.json and the exported folder; the run ends."""
        best = summary.get("best") or {}
        final = best.get("final") or {}
        if final:
            self.client.log_metric(self.run_id, "chosen_latency_ms", float(final["latency_s"]) * 1000)
            quality = final.get("quality") or {}
            if quality:
                self.client.log_metric(self.run_id, f"chosen_{quality['metric']}", float(quality["value"]))
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "summary.json"
            path.write_text(json.dumps(summary, indent=2, default=str))
            self.client.log_artifact(self.run_id, str(path))
        if export_path is not None:
            self.client.log_artifacts(self.run_id, str(export_path), artifact_path="optimized")
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self) -> None:
        with contextlib.suppress(Exception):
            self.client.set_terminated(self.run_id, status="FAILED")


__all__ = ["MlflowTracker", "check_uri", "INSTALL"]
