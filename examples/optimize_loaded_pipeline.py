"""Optimize a pipeline that is already loaded inside a larger Python job, and log the result.

MLOps use: the job owns the pipeline object (loaded from its own registry, fine-tuned, ...). autoeff takes
the object as is, searches it, and the job logs every trial through Optuna callbacks — to MLflow when it is
installed (`optuna-integration[mlflow]`), otherwise to a JSON-lines file.

    python examples/optimize_loaded_pipeline.py --budget 20% --trials 12 --out job-out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna

import autoeff
from autoeff.study import fail_reason, measurement_of, recipe_dict_of


def json_logger(path: Path):
    """An Optuna callback writing one JSON line per finished trial (recipe, measurement, state)."""

    def log(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with open(path, "a") as f:
            m = measurement_of(trial)
            f.write(json.dumps({"number": trial.number, "state": trial.state.name, "values": trial.values,
                                "recipe": recipe_dict_of(trial), "measurement": None if m is None else m.to_dict(),
                                "fail_reason": fail_reason(trial)}) + "\n")

    return log


def make_callbacks(out: Path) -> list:
    try:  # MLflow through Optuna's own integration, if the job has it
        from optuna_integration.mlflow import MLflowCallback

        return [MLflowCallback(metric_name=["latency_ms", "quality_score"])]
    except ImportError:
        return [json_logger(out / "trials.jsonl")]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--budget", default="20%")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--out", default="job-out")
    p.add_argument("--proxy-samples", type=int, default=None)
    p.add_argument("--final-samples", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps you run today: the baseline (default: 50)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    # ... somewhere earlier in the job, a pipeline was loaded (here: the built-in one) ...
    pipe = autoeff.load_model("digits").pipeline

    result = autoeff.optimize(pipe, budget=a.budget, trials=a.trials, out=out, callbacks=make_callbacks(out),
                              proxy_samples=a.proxy_samples, final_samples=a.final_samples, steps=a.steps)
    if result.best is None:  # nothing met the budget when re-timed: keep what was measured, say why
        summary = {"speedup": None, "infeasible": result.infeasible, "export": None}
    else:
        summary = {"speedup": result.baseline.latency_s / result.best.final.latency_s,
                   "recipe": result.best.record.recipe.to_dict(), "export": str(result.export_path)}
    (out / "job_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
