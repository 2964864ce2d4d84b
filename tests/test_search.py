"""The study's building blocks: warm starts, the Pareto front, settings identity."""

from __future__ import annotations

import optuna
import pytest

from autoeff.budget import parse_budget
from autoeff.errors import SearchError
from autoeff.latency_model import Prediction
from autoeff.measurement import Measurement
from autoeff.recipe import Recipe
from autoeff.search import context_for, decline_reason
from autoeff.search_spaces.space import SearchSpace
from autoeff.selection import pareto_front
from autoeff.settings import SearchSettings
from autoeff.study import TrialRecord
from autoeff.warm_start import warm_start_params

ALL = ["prune", "quantize", "solver", "schedule", "cache"]


def test_warm_starts_are_the_hand_picked_configurations_exactly(random_digits_handle):
    settings = SearchSettings(model="digits", budget=parse_budget("1s"), space=ALL, max_steps=20)
    ctx = context_for(random_digits_handle, settings)
    space = SearchSpace(random_digits_handle, ALL, ctx)
    picks = warm_start_params(ALL, ctx)
    trials = [optuna.trial.FixedTrial(p) for p in picks]
    recipes = [space.suggest(t) for t in trials]
    assert len(recipes) == 17
    # exactly the params a trial of the pick ends with: the loop knows a structure by them (the digits U-Net has
    # one cache method, so `cache_method` is never drawn; a pick that carried it was planned as an unknown structure)
    assert all(t.params == p for t, p in zip(trials, picks, strict=True))
    assert not any("cache_method" in p for p in picks)
    for r in recipes:
        assert set(r.knobs["prune"].ratios.values()) == {0.0}  # no pruning
        assert set(r.knobs["quantize"].mapping.values()) == {"skip"}  # no quantization
        assert r.knobs["solver"].name in ("dpmpp", "unipc")
    # second order at 5, 10 and 20 steps; first order only where many steps fit (10 and 20)
    first = [r for r in recipes if r.knobs["solver"].order == 1]
    assert {r.knobs["solver"].name for r in first} == {"dpmpp"}
    assert sorted({r.knobs["schedule"].steps for r in first}) == [10, 20] and len(first) == 4
    assert all(r.knobs["solver"].order == 2 for r in recipes if r.knobs["schedule"].steps <= 8)
    cached = [r for r in recipes if r.knobs["cache"].interval > 1]
    assert len(cached) == 1 and cached[0].knobs["schedule"].steps == 20  # DeepCache N=3 over 20 steps
    assert {r.knobs["schedule"].family for r in recipes} == {"uniform", "ays"}
    # a space without the weight knobs gets params only for its own knobs
    only = warm_start_params(["solver", "schedule"], ctx)
    assert all(not any(k.startswith(("prune", "quantize", "cache")) for k in p) for p in only)


def test_with_compile_in_the_space_the_first_pick_is_also_tried_compiled(random_digits_handle):
    space_names = [*ALL, "compile"]
    settings = SearchSettings(model="digits", budget=parse_budget("1s"), space=space_names, max_steps=20)
    ctx = context_for(random_digits_handle, settings)
    space = SearchSpace(random_digits_handle, space_names, ctx)
    picks = warm_start_params(space_names, ctx, fit_steps=4)
    recipes = [space.suggest(optuna.trial.FixedTrial(p)) for p in picks]
    compiled = [i for i, r in enumerate(recipes) if r.knobs["compile"].mode != "off"]
    assert compiled == [1]  # one compiled pick, right after the plain one it mirrors
    first, twin = recipes[0], recipes[1]
    assert twin.knobs["compile"].backend == "inductor" and twin.knobs["compile"].scope == "model"
    assert first.knobs["compile"].mode == "off"
    assert {k: v for k, v in twin.knobs.items() if k != "compile"} == {k: v for k, v in first.knobs.items()
                                                                       if k != "compile"}
    # the rest are the picks of the space without compile, compile off
    without = warm_start_params(ALL, ctx, fit_steps=4)
    assert [{k: v for k, v in p.items() if not k.startswith("compile")} for p in picks[:1] + picks[2:]] == without


def _rec(n: int, latency: float, score: float | None) -> TrialRecord:
    return TrialRecord(number=n, recipe=Recipe(model="digits"), params={},
                       measurement=Measurement(latency_s=latency, score=score))


def test_pareto_front_keeps_only_non_dominated_feasible_points():
    recs = [_rec(0, 0.01, -50), _rec(1, 0.02, -20), _rec(2, 0.03, -25), _rec(3, 0.05, -5), _rec(4, 0.5, None),
            _rec(5, 0.02, -30)]
    assert [r.number for r in pareto_front(recs)] == [0, 1, 3]
    assert [r.number for r in pareto_front(recs, budget_s=0.025)] == [0, 1]


def test_settings_refuse_bad_values_and_identity_ignores_budget():
    with pytest.raises(SearchError):
        SearchSettings(model="digits", budget=parse_budget("1s"), trials=0)
    with pytest.raises(SearchError):
        SearchSettings(model="digits", budget=parse_budget("1s"), sampler="bogus")
    a = SearchSettings(model="digits", budget=parse_budget("1s"))
    b = SearchSettings(model="digits", budget=parse_budget("20%"))
    c = SearchSettings(model="digits", budget=parse_budget("1s"), metric="kid")
    assert a.identity_hash("x") == b.identity_hash("x") != c.identity_hash("x")


def test_a_tight_budget_warm_starts_at_the_step_counts_that_fit(random_digits_handle):
    settings = SearchSettings(model="digits", budget=parse_budget("1s"), space=ALL, max_steps=50)
    ctx = context_for(random_digits_handle, settings)
    space = SearchSpace(random_digits_handle, ALL, ctx)
    assert warm_start_params(ALL, ctx, fit_steps=25) == warm_start_params(ALL, ctx)  # 5/10/20 all fit
    recipes = [space.suggest(optuna.trial.FixedTrial(p)) for p in warm_start_params(ALL, ctx, fit_steps=4)]
    plain = [r for r in recipes if r.knobs["cache"].interval == 1 and set(r.knobs["quantize"].mapping.values())
             == {"skip"}]
    # 4 steps fit: plain picks at 4 only (5, 10 and 20 are more than 1.2x over)
    assert sorted({r.knobs["schedule"].steps for r in plain}) == [4]
    assert len(plain) == 4  # two solvers x two schedule families; no first order at 4 steps
    cached = [r for r in recipes if r.knobs["cache"].interval > 1]
    assert [r.knobs["schedule"].steps for r in cached] == [6]  # DeepCache N=3 over 1.5x the steps
    int8 = [r for r in recipes if "int8" in r.knobs["quantize"].mapping.values()]
    assert len(int8) == 1 and int8[0].knobs["schedule"].steps == 5  # all block groups int8 at 1.3x
    assert set(int8[0].knobs["quantize"].mapping.values()) == {"int8", "skip"}  # groups int8; _default skip
    assert all(set(r.knobs["prune"].ratios.values()) == {0.0} for r in recipes)
    # fewer than min_steps fit: the picks run at min_steps
    lowest = warm_start_params(["solver", "schedule"], ctx, fit_steps=0)
    assert {p["schedule.steps"] for p in lowest if "schedule.steps" in p} == {ctx.min_steps}


def test_a_candidate_with_little_chance_to_fit_is_declined_unless_it_would_be_the_fastest():
    budget = 0.100

    def pred(ms: float, chance: float | None, rel_error: float = 0.2) -> Prediction:
        return Prediction(latency_s=ms / 1000, basis="similar", rel_error=rel_error, evals=1, chance=chance)

    # 98 ms: under the budget, but the model's past errors put it within the budget only 1 time in 10
    assert "little chance to fit" in (decline_reason(pred(98, 0.1), budget, fastest_s=0.090) or "")
    assert decline_reason(pred(98, 0.5), budget, fastest_s=0.090) is None
    assert decline_reason(pred(98, None), budget, fastest_s=0.090) is None  # too few errors to tell: built
    assert decline_reason(pred(98, 0.1), budget, fastest_s=None) is None  # nothing measured yet
    assert decline_reason(pred(98, 0.1), budget, fastest_s=0.099) is None  # faster than anything measured
    # the band rule stands beside it: even 20 % lower, 150 ms is more than 10 % over
    assert "clearly over" in (decline_reason(pred(150, None), budget, fastest_s=0.090) or "")
