"""The latency model: fixed + per-evaluation cost per structure, learned from timed calls (`autoeff.latency_model`)."""

from __future__ import annotations

import pytest

from autoeff.latency_model import CALIBRATION_KEY, LatencyModel, LatencyPoint, features, structure_key


def _pt(params: dict, evals: int, ms: float) -> LatencyPoint:
    return LatencyPoint(structure_key(params), tuple(features(params)), evals, ms / 1000)


CALIB = [LatencyPoint(CALIBRATION_KEY, (), 6, 0.070), LatencyPoint(CALIBRATION_KEY, (), 2, 0.030),
         LatencyPoint(CALIBRATION_KEY, (), 6, 0.070)]
PLAIN = {"solver.name": "dpmpp", "cache_interval": 1}
CACHED = {"solver.name": "dpmpp", "cache_interval": 3}


def test_the_calibration_separates_the_fixed_cost_and_a_structure_gets_its_own_per_step_cost():
    model = LatencyModel.fit([*CALIB, _pt({**PLAIN, "schedule.steps": 4}, 4, 90.0)], default_per_eval_s=1.0)
    assert model.fixed_s == pytest.approx(0.010) and model.per_eval_s == pytest.approx(0.010)
    p = model.predict({**PLAIN, "schedule.steps": 3, "schedule.family": "ays"}, 3)  # schedule params: same structure
    assert p.basis == "measured" and p.latency_s == pytest.approx(0.010 + 3 * 0.020)
    # an unmeasured knob setting with no regression data: the calibration's cost
    assert LatencyModel.fit(CALIB, default_per_eval_s=1.0).predict(CACHED, 3).basis == "calibration"


def test_a_structure_timed_at_two_step_counts_gets_its_own_fixed_cost():
    model = LatencyModel.fit([*CALIB, _pt(PLAIN, 2, 60.0), _pt(PLAIN, 6, 140.0)], default_per_eval_s=1.0)
    assert model.predict(PLAIN, 4).latency_s == pytest.approx(0.100)  # 20 ms fixed + 20 ms per step, not 10 + ...


def test_a_knob_settings_measured_effect_carries_over_to_an_unseen_structure():
    points = [*CALIB, _pt(PLAIN, 4, 90.0), _pt(CACHED, 4, 50.0),  # cache N=3: 20 -> 10 ms per step
              _pt({"solver.name": "unipc", "cache_interval": 1}, 4, 130.0)]  # unipc: 30 ms per step
    model = LatencyModel.fit(points, default_per_eval_s=1.0)
    unseen = model.predict({"solver.name": "unipc", "cache_interval": 3}, 4)
    uncached = model.predict({"solver.name": "unipc", "cache_interval": 1}, 4)
    assert unseen.basis == "similar" and unseen.latency_s < 0.8 * uncached.latency_s


def test_the_step_count_that_fills_the_budget_leaves_the_noise_margin():
    points = [*CALIB, _pt(PLAIN, 4, 90.0)]  # 10 ms + 20 ms per step
    quiet = LatencyModel.fit(points, default_per_eval_s=1.0, noise=0.0)
    noisy = LatencyModel.fit(points, default_per_eval_s=1.0, noise=0.10)
    assert quiet.steps_that_fill(PLAIN, 0.115, 2, 50) == 5  # predicted 110 ms under 115 / 1.02
    assert noisy.steps_that_fill(PLAIN, 0.115, 2, 50) == 4  # 110 ms over 115 / 1.10: one step fewer
    assert noisy.steps_that_fill(PLAIN, 0.115, 2, 3) == 3
    assert noisy.steps_that_fill(PLAIN, 0.040, 2, 50) is None  # not even 2 steps fit


def test_a_step_count_timed_within_the_budget_fills_it_whatever_the_margin():
    """The margin is for predictions: 4 steps were timed at 90 ms, within a 95 ms budget, so a 10 % noise floor
    (95 / 1.10 = 86 ms) does not take the structure down to 3; timings there whose median is over the budget do,
    one timing over among timings within does not (run-to-run noise at the budget's edge)."""
    noisy = LatencyModel.fit([*CALIB, _pt(PLAIN, 4, 90.0)], default_per_eval_s=1.0, noise=0.10)
    assert noisy.steps_that_fill(PLAIN, 0.095, 2, 50) == 4
    assert noisy.steps_that_fill(PLAIN, 0.089, 2, 50) == 3  # timed over this budget: the margin decides
    over = LatencyModel.fit([*CALIB, _pt(PLAIN, 4, 90.0), _pt(PLAIN, 4, 96.0), _pt(PLAIN, 4, 97.0)],
                            default_per_eval_s=1.0, noise=0.10)
    assert over.steps_that_fill(PLAIN, 0.095, 2, 50) == 3
    once = LatencyModel.fit([*CALIB, _pt(PLAIN, 4, 90.0), _pt(PLAIN, 4, 96.0), _pt(PLAIN, 4, 91.0)],
                            default_per_eval_s=1.0, noise=0.10)
    assert once.steps_that_fill(PLAIN, 0.095, 2, 50) == 4
    # a structure never timed (predicted from the others) keeps its basis's margin
    other = {"solver.name": "unipc", "cache_interval": 1}
    k = noisy.steps_that_fill(other, 0.095, 2, 50)
    target = 0.095 / (1 + max(noisy.margin, noisy.rel_error("similar")))
    assert k is not None and noisy.predict(other, k).basis == "similar"
    assert noisy.predict(other, k).latency_s <= target < noisy.predict(other, k + 1).latency_s


def test_measured_errors_set_how_far_the_model_is_trusted_and_are_reported():
    errors = {"measured": [0.25, -0.25, 0.3, 0.2], "similar": [1.0]}
    model = LatencyModel.fit([*CALIB, _pt(PLAIN, 4, 90.0)], default_per_eval_s=1.0, errors=errors)
    assert model.rel_error("measured") == pytest.approx(0.3)  # 80th percentile of |error|
    assert model.rel_error("similar") == 0.3  # too few of its own: the default
    assert model.margin == pytest.approx(0.25)  # the typical error of timed structures
    report = model.report()
    assert report["errors"]["measured"]["n"] == 4 and report["errors"]["measured"]["bias"] == pytest.approx(0.125)
    assert report["fixed_ms"] == pytest.approx(10.0)


def test_the_chance_to_fit_reads_the_sign_of_past_errors_not_only_their_size():
    points = [*CALIB, _pt(PLAIN, 4, 90.0)]
    low = LatencyModel.fit(points, default_per_eval_s=1.0, errors={"similar": [0.06, 0.1, 0.15, 0.2]})
    both = LatencyModel.fit(points, default_per_eval_s=1.0, errors={"similar": [-0.06, -0.1, 0.15, 0.2]})
    # the same |errors|: predicted 5 % under the budget, a model that always erred low gives it no chance
    assert low.chance_within("similar", 0.095, 0.100) == 0.0
    assert both.chance_within("similar", 0.095, 0.100) == 0.5
    assert low.rel_error("similar") == both.rel_error("similar")
    assert low.chance_within("measured", 0.095, 0.100) is None  # no errors of its own yet
    unseen = low.predict(CACHED, 4, budget_s=0.100)
    assert unseen.basis == "similar" and unseen.chance is not None
    assert low.predict(CACHED, 4).chance is None  # no budget, no chance
    assert type(unseen).from_dict(unseen.to_dict()) == unseen
