"""The latency model replayed on finished studies: how well would it have predicted each trial, and which
candidates would it have declined to build?

    python benchmarks/latency_replay.py                       # every study under .cache/bench
    python benchmarks/latency_replay.py path/to/study.db ...  # these studies
    python benchmarks/latency_replay.py --model-file /tmp/latency_model_old.py   # another revision of the model

For each study, trial by trial in the order they ran, the model (`autoeff.latency_model`, or the module in
`--model-file`, e.g. `git show <rev>:autoeff/latency_model.py`) is fitted on the study's calibration and the
trials measured before it, with the errors of its own earlier replayed predictions, and predicts the trial's
latency; the error is measured against the trial's stored latency. Only trials that were measured can be
scored this way (a trial the search skipped has no latency), and the replay cannot say what the search would
have drawn instead of a candidate the model declines, so the "declined" counts are of *these* trials. No
timing happens here: it reads the studies and fits, in seconds, and may run beside anything.

Per study: the predictions by basis (n, median |error|, bias), the trials measured over the budget, and of
those the ones the search's decline rule (`search.decline_reason`, with `--min-chance`) would not have built;
and the trials that fitted the budget but would have been declined (the cost of the rule). A revision of the
model without `Prediction.chance` is replayed with the band rule alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402

import autoeff.search as search  # noqa: E402
from autoeff.latency_model import Prediction, study_calibration  # noqa: E402
from autoeff.search_spaces.schedule import STEPS_PARAM  # noqa: E402
from autoeff.study import StoredStudy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_model_module(path: Path | None) -> ModuleType:
    if path is None:
        import autoeff.latency_model as lm

        return lm
    spec = importlib.util.spec_from_file_location("replayed_latency_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def replay(path: Path, lm: ModuleType, min_chance: float) -> dict[str, Any]:
    storage = f"sqlite:///{path}"
    name = optuna.get_all_study_summaries(storage)[0].study_name
    stored = StoredStudy(optuna.load_study(study_name=name, storage=storage))
    budget = stored.budget_s
    baseline = stored.baseline
    assert budget is not None
    default_steps = baseline.steps if baseline is not None else 50
    # the study's calibration, noise floor and default cost as the search reads them; the trials' points with the
    # replayed revision's own features
    calib, noise, default_per_eval = study_calibration(stored, default_steps, baseline)
    records = sorted(stored.records(), key=lambda r: r.number)
    points: list[Any] = []
    errors: dict[str, list[float]] = {}
    rows = []
    for r in records:
        evals = lm.evaluations(r.params, default_steps)
        model = lm.LatencyModel.fit([*calib, *points], default_per_eval_s=default_per_eval, noise=noise,
                                    errors=errors)
        model.fastest_s = min((p.latency_s for p in points), default=None)
        try:
            pred = model.predict(r.params, evals, budget_s=budget)
        except TypeError:  # a revision without the budget argument
            pred = model.predict(r.params, evals)
        error = r.latency_s / pred.latency_s - 1.0
        errors.setdefault(pred.basis, []).append(error)
        current = Prediction.from_dict(pred.to_dict())  # a revision's own Prediction may lack `chance`
        declined = search.decline_reason(current, budget, model.fastest_s, min_chance) is not None
        rows.append({"basis": pred.basis, "error": error, "over": r.latency_s > budget, "declined": declined,
                     "steps": r.params.get(STEPS_PARAM)})
        points.append(lm.LatencyPoint(lm.structure_key(r.params), tuple(lm.features(r.params)), evals, r.latency_s))
    return {"study": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path), "rows": rows}


def summarize(result: dict[str, Any]) -> str:
    rows = result["rows"]
    parts = []
    for basis in ("measured", "similar", "calibration"):
        errs = [x["error"] for x in rows if x["basis"] == basis]
        if errs:
            parts.append(f"{basis} n={len(errs)} |err| {statistics.median(abs(e) for e in errs):.1%} "
                         f"bias {statistics.median(errs):+.1%}")
    over = [x for x in rows if x["over"]]
    fit = [x for x in rows if not x["over"]]
    return (f"{result['study']}: {len(rows)} measured; " + "; ".join(parts)
            + f"; over {len(over)}, declined {sum(x['declined'] for x in over)}; "
            f"fitting declined {sum(x['declined'] for x in fit)}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="*", type=Path)
    p.add_argument("--model-file", type=Path, default=None, help="a latency_model.py to replay instead")
    p.add_argument("--min-chance", type=float, default=search.MIN_FIT_CHANCE, help="the decline rule's threshold")
    p.add_argument("--json", type=Path, default=None, help="also write every replayed row here")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lm = load_model_module(args.model_file)
    paths = args.studies or sorted((ROOT / ".cache" / "bench").rglob("study.db"))
    results = [replay(path, lm, args.min_chance) for path in paths]
    for res in results:
        print(summarize(res))
    rows = [x for res in results for x in res["rows"]]
    print(summarize({"study": "all", "rows": rows}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
