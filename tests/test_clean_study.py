"""What the study holds: named objectives with the raw metric in its direction, no placeholder for a quality that
was not measured (the trial is PRUNED, its latency and constraint kept), candidates predicted clearly over
budget not built; and the budget-filling loop end to end on the trained digits model."""

from __future__ import annotations

import math

import optuna
import pytest

import autoeff
from autoeff.api import optimize
from autoeff.evaluators.quality import standard_error
from autoeff.measure import EvaluationSpec, Evaluator
from autoeff.run import unscored_reason
from autoeff.search import Objective, context_for, directions, metric_names
from autoeff.search_spaces.space import SearchSpace
from autoeff.settings import SearchSettings
from autoeff.study import StoredStudy, measurement_of, planned_as, prediction_of, skip_reason


@pytest.fixture
def digits10():
    h = autoeff.load_model("digits")
    h.default_steps = 10
    return h


def test_over_budget_candidates_end_pruned_with_their_latency_and_the_next_is_not_built(digits10):
    settings = SearchSettings(model="digits", budget="1ms", space=["solver", "schedule"], proxy_samples=2,
                              final_samples=2, min_steps=8, max_steps=10).resolved(digits10)
    assert directions(settings) == ["minimize", "minimize"] and metric_names(settings) == ["latency_ms", "fid"]
    ctx = context_for(digits10, settings)
    objective = Objective(SearchSpace(digits10, settings.space, ctx), Evaluator(digits10, EvaluationSpec.of(settings)),
                          1e-4, settings)  # 0.1 ms: nothing fits
    study = optuna.create_study(directions=directions(settings), sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=2)
    first, second = study.get_trials()
    # measured, clearly over: PRUNED, no values, its latency and the violated constraint stored
    assert first.state == optuna.trial.TrialState.PRUNED and first.values is None
    m = measurement_of(first)
    assert m is not None and m.quality is None and m.latency_s > 1e-4
    assert first.constraints["latency_minus_budget_s"] > 0
    # the progress line and the log say why it has no quality (they said "trial 0 PRUNED: " with nothing after)
    assert f"measured {m.latency_s * 1000:.1f} ms" in (unscored_reason(first, 1e-4) or "")
    assert unscored_reason(second, 1e-4) == skip_reason(second)
    # the model, having timed the first, predicts the second clearly over: not built, the prediction and why kept
    assert second.state == optuna.trial.TrialState.PRUNED and measurement_of(second) is None
    assert "clearly over, not built" in (skip_reason(second) or "")
    assert prediction_of(second)["latency_s"] > 1e-3 and second.constraints["latency_minus_budget_s"] > 0
    assert len(StoredStudy(study).records()) == 1 and StoredStudy(study).skipped()[0][0] == second.number


def test_the_budget_filling_loop_end_to_end_stores_a_clean_study(digits10, tmp_path):
    res = optimize(digits10, budget="50%", trials=5, out=tmp_path / "fill", space="solver,schedule,cache",
                   proxy_samples=8, final_samples=48, max_steps=10, min_steps=2, sampler="fill", export=False)
    study = res.study
    assert study.metric_names == ["latency_ms", "fid"]
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        m = measurement_of(t)
        assert t.values[1] == pytest.approx(m.quality.value) and t.values[1] > 0  # raw FID, not -FID
        assert prediction_of(t) is not None  # every candidate predicted before it was built
    assert any(planned_as(t) == "warm start" for t in study.get_trials())
    summary = res.summary()
    model = summary["latency_model"]
    assert model["fixed_ms"] >= 0 and sum(e["n"] for e in model["errors"].values()) >= 4
    assert summary["halving"]["rungs"][0]["samples"] == 8 and summary["halving"]["finalists"]
    assert res.best is not None and res.best.final.quality.n == 48
    # rungs 8 -> 32 -> 48: a candidate within the proxy's noise of the best before it was scored on 32 samples
    # during the search (the first always), one clearly worse was not; the selection reused those scores
    stored, best = StoredStudy(study), None
    contenders = 0
    for r in stored.records():
        if r.score is None or not r.feasible(res.budget_s):
            assert r.contender is None
            continue
        se = standard_error(r.measurement.quality)
        within = best is None or r.score >= best[0] - 2 * math.hypot(se, best[1])
        assert (r.contender is not None) == within, r.number
        if r.contender is not None:
            contenders += 1
            assert r.contender[0] == 32 and r.contender[1].n == 32
            assert stored.rung(r.number, 32) is None  # not measured again by the selection
        if best is None or r.score > best[0]:
            best = (r.score, se)
    assert contenders >= 1
