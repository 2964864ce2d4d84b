"""The budget-filling loop (`autoeff.planner`) and the timestep-position search (`autoeff.positions`), on a
synthetic objective: latency = 10 ms + a per-step cost that the cache halves, FID from the schedule's shape and
step count."""

from __future__ import annotations

import optuna
import pytest

from autoeff.budget import parse_budget
from autoeff.evaluators.quality import QualityResult, score
from autoeff.latency_model import LatencyModel, structure_params
from autoeff.measurement import Measurement
from autoeff.planner import FillPlanner, FillSampler
from autoeff.positions import MAX_FEW_STEPS, STARTING_FAMILIES, from_unit, propose, to_unit
from autoeff.search import context_for
from autoeff.search_spaces import schedule
from autoeff.search_spaces.space import SearchSpace
from autoeff.settings import SearchSettings
from autoeff.study import StoredStudy, planned_as, recipe_of, set_contender, set_measurement, set_recipe
from autoeff.warm_start import warm_start_params

BUDGET = 0.100
SPACE = ["solver", "schedule", "cache"]


def test_positions_round_trip_and_a_proposal_is_a_new_valid_schedule():
    for ts in ([999, 500, 20], [687, 367, 90], [999, 850, 736, 645, 545, 455, 343, 233]):
        assert from_unit(to_unit(ts, 1000), 1000) == ts
    assert from_unit([0.0, 0.0, 0.0], 1000) == [400, 1, 0]  # any point of the cube is a valid schedule
    seen = [([999, 666, 333], 13.0), ([999, 574, 128], 11.0), ([999, 444, 111], 9.5)]
    proposal = propose(seen, 3, 1000, higher_is_better=False, seed=0)
    assert proposal is not None and len(proposal) == 3 and proposal not in [ts for ts, _ in seen]
    assert all(a > b for a, b in zip(proposal, proposal[1:], strict=False)) and 0 <= proposal[-1] < proposal[0] <= 999
    assert propose(seen, 3, 1000, higher_is_better=False, seed=0) == proposal  # seeded


# `lead`: a higher-order solver's FID by schedule family and step count alone, as the digits U-Net at batch 16
# (2M int8 at 6 steps: uniform 6.58 and quadratic 6.70 on 512 samples; the screening FID of 2M quadratic 6.42 at
# 6 steps and 5.76 at 5, uniform 6.34 and 7.00): at 6 steps AYS leads, a little, and uniform follows, both worse
# with fewer steps; the other families are better with fewer, best of all at 4. Found positions: 0.5 worse.
LEAD_AT_6 = {"ays": 7.2, "quadratic": 7.25, "uniform": 7.35, "karras": 7.4, "leading": 7.45}


def _lead(family: str, k: int) -> float:
    if family in ("ays", "uniform"):
        return LEAD_AT_6[family] + 0.5 * abs(k - 6)
    return LEAD_AT_6.get(family, LEAD_AT_6["quadratic"] + 0.5) - 2.4 + 1.2 * abs(k - 4)


def _fid(timesteps: list[int], cached: bool, steps: str, order: int = 1, family: str = "uniform") -> float:
    """Best when the steps sit at (1 - (i + 0.5) / k)^1.5 of the range; DeepCache costs 3. `steps`: how the step
    count itself counts: better with more (`more`), best at 4 (`u`), or by the solver's `order` (`order`: a
    first-order solver better with more, a higher-order one best at 4 and better there than any first-order one,
    as the digits FID: at 6 steps a little worse than the first order at 12, within the noise; `lead`: a
    first-order solver as `order`, a higher-order one by `_lead`)."""
    k = len(timesteps)
    if steps == "lead" and order > 1:
        return _lead(family, k) + (3.0 if cached else 0.0)
    if steps == "lead":
        steps = "more"
    ideal = [999 * (1 - (i + 0.5) / k) ** 1.5 for i in range(k)]
    shape = steps if steps != "order" else ("more" if order == 1 else "u-low")
    by_count = {"more": 12.0 / k, "u": 0.6 * abs(k - 4), "u-low": 0.8 * abs(k - 4) - 0.4}[shape]
    return (4.0 + sum(abs(t - g) for t, g in zip(timesteps, ideal, strict=True)) / (50 * k) + (3.0 if cached else 0.0)
            + by_count)


def _planner(handle, budget_s: float, space_names: list[str] = SPACE, min_steps: int = 2):
    """A budget-filling loop at `budget_s` over `space_names` (2-20 steps or `min_steps`-20) on a new in-memory
    study whose calibration says 10 ms + 20 ms per step: `(study, stored, context, planner, search space)`."""
    study = optuna.create_study(directions=["minimize", "minimize"])
    stored = StoredStudy(study)
    stored.set_latency_calibration([{"evals": 6, "latency_s": 0.130}, {"evals": 2, "latency_s": 0.050},
                                    {"evals": 6, "latency_s": 0.130}])  # 10 ms + 20 ms per step
    ctx = context_for(handle, SearchSettings(model="digits", budget=parse_budget(f"{budget_s * 1000:g}ms"),
                                             space=space_names, metric="fid", min_steps=min_steps, max_steps=20))
    planner = FillPlanner(stored, ctx, budget_s, model=lambda: LatencyModel.from_study(stored, ctx.default_steps),
                          scheduler=handle.pipeline.scheduler, higher_is_better=False, seed=0, space=space_names)
    return study, stored, ctx, planner, SearchSpace(handle, space_names, ctx)


@pytest.fixture
def loop(random_digits_handle, request):
    param = getattr(request, "param", BUDGET)
    budget, min_steps, steps_shape = (*param, "more")[:3] if isinstance(param, tuple) else (param, 2, "more")
    study, stored, ctx, planner, space = _planner(random_digits_handle, budget, min_steps=min_steps)
    stored.set_warm_starts(warm_start_params(SPACE, ctx, fit_steps=9))
    study.sampler = FillSampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=4, constant_liar=False), planner)
    drawn: list[tuple[int, int | None]] = []  # sampler-drawn trials: (steps used, steps the model fills)

    def objective(trial: optuna.Trial) -> list[float]:
        enqueued = bool(trial.user_attrs)
        recipe = space.suggest(trial)
        if not enqueued:  # the sampler drew it: its step count is the model's for its structure
            drawn.append((recipe.knobs["schedule"].steps, planner.steps_for(structure_params(trial.params))))
        cfg = recipe.knobs["schedule"]
        cached = recipe.knobs["cache"].interval > 1
        latency = 0.010 + cfg.steps * (0.010 if cached else 0.020)  # the cache halves a step
        q = QualityResult("fid", _fid(planner.timesteps_of(cfg), cached, steps_shape, recipe.knobs["solver"].order,
                                      cfg.family), False, 32, stderr=0.3)
        set_recipe(trial, recipe)
        set_measurement(trial, Measurement(latency_s=latency, quality=q, score=score(q)), budget)
        trial.set_constraint("latency", latency - budget)
        return [latency * 1000, q.value]

    def run(n: int) -> None:
        for _ in range(n):
            planner.refill()
            study.optimize(objective, n_trials=1)

    return planner, study, run, drawn


def test_the_loop_fills_the_budget_then_searches_the_best_structures_schedules(loop):
    planner, study, run, drawn = loop
    run(18)
    trials = study.get_trials()
    warm = [t for t in trials if planned_as(t) == "warm start"]
    assert warm and warm[0].params[schedule.STEPS_PARAM] == 4  # 10 + 4 x 20 = 90 ms: the most under 100 / 1.02
    assert all(t.params[schedule.STEPS_PARAM] != 9 for t in warm)  # re-filled, not the picks' own step counts
    # the cache's measured cost fills its structure: 10 + 9 x 10 = 100 ms is over the margin, 8 steps fit
    assert planner.steps_for({**structure_params(warm[0].params), "cache_interval": 3, "cache_branch": 1,
                              "cache_schedule": "uniform"}) == 8
    # exploit: the best structure with the hand families it lacked at its step count, then positions
    kinds = [planned_as(t) for t in trials]
    assert "schedule" in kinds and "positions" in kinds
    exploit = [t for t in trials if planned_as(t) in ("schedule", "positions")]
    families = [t.params[schedule.FAMILY_PARAM] for t in exploit if planned_as(t) == "schedule"]
    assert set(families) <= set(STARTING_FAMILIES)
    free = [t for t in trials if planned_as(t) == "positions"]
    assert all(t.params[schedule.FAMILY_PARAM] == "free" for t in free)
    steps = {t.params[schedule.STEPS_PARAM] for t in free}
    assert len(steps) == 1 and steps <= set(range(2, MAX_FEW_STEPS + 1))
    # explore: the sampler's structures at the step count the model fills for them
    assert drawn and all(used == expected for used, expected in drawn if expected is not None)
    # few candidates over budget: only where the model extrapolated to a structure it had not timed
    over = [t for t in trials if t.values[0] > BUDGET * 1000]
    assert len(over) <= 0.2 * len(trials)


@pytest.mark.parametrize("loop", [0.092], indirect=True)
def test_a_best_candidate_at_the_budgets_edge_is_hedged_one_step_fewer(loop):
    # 92 ms: the fill gives 4 steps (10 + 4 x 20 = 90 ms, under 92 / 1.02), within 2 noise floors of the budget,
    # where a re-time can put it over; the loop also measures the best candidate at 3 steps, once
    planner, study, run, _ = loop
    run(14)
    trials = study.get_trials()
    hedges = [t for t in trials if planned_as(t) == "hedge"]
    assert hedges
    for h in hedges:
        edge = [t for t in trials if t.number < h.number and structure_params(t.params) == structure_params(h.params)
                and t.params[schedule.STEPS_PARAM] == h.params[schedule.STEPS_PARAM] + 1]
        assert edge and all(t.values[0] > 92 / (1 + 2 * 0.02) for t in edge)
    keys = [(tuple(sorted(structure_params(h.params).items())), h.params[schedule.FAMILY_PARAM],
             h.params[schedule.STEPS_PARAM]) for h in hedges]
    assert len(keys) == len(set(keys))  # never the same hedge twice


def _probed(loop, trials_to_run: int):
    """Run the loop; its probes (each edge once), the first probe's structure and the exploit trials of that
    structure after it."""
    planner, study, run, _ = loop
    run(trials_to_run)
    trials = study.get_trials()
    probes = [t for t in trials if planned_as(t) == "probe"]
    assert probes
    keys = [(tuple(sorted(structure_params(t.params).items())), t.params[schedule.STEPS_PARAM]) for t in probes]
    assert len(keys) == len(set(keys))  # each edge once
    structure = structure_params(probes[0].params)
    later = [t for t in trials if t.number > probes[0].number and planned_as(t) in ("schedule", "positions")
             and structure_params(t.params) == structure]
    return planner, trials, probes, structure, later


@pytest.mark.parametrize("loop", [0.111], indirect=True)
def test_the_budgets_edge_is_probed_once_and_a_step_count_timed_within_it_is_filled(loop):
    # 111 ms: the margin (111 / 1.02 = 108.8 ms) fills 4 steps (90 ms), the prediction alone says 5 fit (110 ms).
    # The loop measures the best structure at 5 steps once; timed within the budget, 5 is then its step count.
    planner, trials, probes, structure, later = _probed(loop, 16)
    assert all(t.values[0] <= 111 for t in probes)
    assert probes[0].params[schedule.STEPS_PARAM] == 5 and planner.steps_for(structure) == 5
    assert later and all(t.params[schedule.STEPS_PARAM] == 5 for t in later)
    assert len([t for t in trials if t.values[0] > 111]) <= 0.2 * len(trials)


@pytest.mark.parametrize("loop", [0.1085], indirect=True)
def test_an_edge_probed_over_the_budget_leaves_the_margins_step_count(loop):
    # 108.5 ms: 5 steps are predicted at 110 ms, within the noise floor (2 %) of the budget but over it: probed
    # once, timed over, and the structure stays at the 4 steps the margin gives
    planner, _, probes, structure, later = _probed(loop, 16)
    assert all(t.params[schedule.STEPS_PARAM] == 5 and t.values[0] > 108.5 for t in probes)
    assert planner.steps_for(structure) == 4
    assert len([t for t in probes if structure_params(t.params) == structure]) == 1
    assert later and all(t.params[schedule.STEPS_PARAM] == 4 for t in later)


def _descended(study: optuna.Study) -> tuple[list[optuna.trial.FrozenTrial], list[tuple]]:
    """The trials the loop planned as `descend`, and each one's (structure, family, step count)."""
    descended = [t for t in study.get_trials() if planned_as(t) == "descend"]
    return descended, [(tuple(sorted(structure_params(t.params).items())), t.params[schedule.FAMILY_PARAM],
                        t.params[schedule.STEPS_PARAM]) for t in descended]


@pytest.mark.parametrize("loop", [(0.250, 2, "u")], indirect=True)
def test_past_eight_steps_the_loop_measures_half_the_steps_then_walks_down_while_fewer_score_better(loop):
    # 250 ms fills 11-12 plain steps (10 + 12 x 20 = 250 ms); quality is best at 4 steps and worse by 0.6 a step
    # away from it (as the digits FID: 5.67 at 4 steps, 8.67 at 10). Filling alone never measures fewer steps.
    planner, study, run, _ = loop
    run(30)
    trials = study.get_trials()
    fill = max(t.params[schedule.STEPS_PARAM] for t in trials if t.values[0] <= 250 and t.params["cache_interval"] == 1)
    descended, keys = _descended(study)
    assert descended and len(keys) == len(set(keys))  # each step count of a structure and family once
    # a look at half the steps that held up (within noise of the best) is followed by the other families there
    looks = [(k[0], k[2]) for k in keys if k[2] >= 4]
    assert len(looks) > len(set(looks))
    assert descended[0].params[schedule.STEPS_PARAM] <= -(-fill // 2)  # first half its steps, rounded up
    best = min((t for t in trials if t.values[0] <= 250), key=lambda t: t.values[1])
    assert best.params[schedule.STEPS_PARAM] == 4 < fill  # walked down to where quality turns
    mine = [t for t in descended if structure_params(t.params) == structure_params(best.params)]
    assert {3, 4, 5} <= {t.params[schedule.STEPS_PARAM] for t in mine}  # one step at a time, one past the best
    # refined where it scored best: its hand families there
    found = min(t.number for t in trials if structure_params(t.params) == structure_params(best.params)
                and t.params[schedule.STEPS_PARAM] == 4)
    later = [t for t in trials if t.number > found and planned_as(t) in ("schedule", "positions")]
    assert later and all(t.params[schedule.STEPS_PARAM] == 4 for t in later)


@pytest.mark.parametrize("loop", [(0.250, 2, "more")], indirect=True)
def test_when_more_steps_score_better_the_descent_is_measured_once_and_the_fill_kept(loop):
    planner, study, run, _ = loop
    run(30)
    trials = study.get_trials()
    descended, keys = _descended(study)
    assert descended  # one look below the fill per structure, never deeper
    assert len(keys) == len(set(keys)) and {k[2] for k in keys} <= {6, 10}  # half of 11 plain, of 20 cached
    # each look scored clearly worse than the best at the fill (beyond its noise): no other family is tried there
    looks = [(k[0], k[2]) for k in keys]
    assert len(looks) == len(set(looks))
    best = min((t for t in trials if t.values[0] <= 250), key=lambda t: t.values[1])
    assert best.params[schedule.STEPS_PARAM] >= 11
    assert not [t for t in trials if planned_as(t) == "positions"]  # past 8 steps: none


@pytest.mark.parametrize("loop", [(0.250, 2, "order")], indirect=True)
def test_past_eight_steps_each_solver_orders_best_is_measured_at_half_its_fill_and_walked_down_while_better(loop):
    # 250 ms fills 11-12 plain steps. A first-order solver scores best there (better with more steps, as
    # DPM-Solver++ 1M on the digits U-Net); a higher-order one is worse there but best of all at 4 steps (as
    # UniPC-2: 5.67 at 4, 8.67 at 10). Descending only the best structure finds nothing: the loop must measure the
    # higher order's best structure below its fill, then walk its step count down while a step fewer scores better.
    planner, study, run, _ = loop
    run(40)
    trials = study.get_trials()

    def order(t: optuna.trial.FrozenTrial) -> int:
        return recipe_of(t).knobs["solver"].order

    descended = [t for t in trials if planned_as(t) == "descend"]
    assert {order(t) == 1 for t in descended} == {True, False}  # the best's order and another
    best = min((t for t in trials if t.values[0] <= 250), key=lambda t: t.values[1])
    assert order(best) > 1 and best.params[schedule.STEPS_PARAM] == 4
    walked = [(t.params[schedule.FAMILY_PARAM], t.params[schedule.STEPS_PARAM]) for t in descended
              if structure_params(t.params) == structure_params(best.params)]
    assert max(k for _, k in walked) >= 6 and 3 in {k for _, k in walked}  # from half its fill, one past the best
    assert len(walked) == len(set(walked))  # each step count of a family once
    found = min(t.number for t in trials if structure_params(t.params) == structure_params(best.params)
                and t.params[schedule.STEPS_PARAM] == 4)
    later = [t for t in trials if t.number > found and planned_as(t) in ("schedule", "positions")
             and structure_params(t.params) == structure_params(best.params)]
    assert later and all(t.params[schedule.STEPS_PARAM] == 4 for t in later)  # refined where it is best


@pytest.mark.parametrize("loop", [(0.250, 2, "lead")], indirect=True)
def test_each_family_that_held_up_at_half_the_fill_is_walked_down_not_only_the_one_that_led(loop):
    # 250 ms fills 11-12 plain steps, where a first-order solver scores best (6.9). A higher-order one at 6 steps
    # scores 7.2 with AYS and 7.25-7.45 with the other families, all within noise of that; AYS and uniform are
    # worse with fewer steps, the others better, best of all at 4 (`_lead`). Walking down only the family that
    # led at the look stops at once.
    planner, study, run, _ = loop
    run(40)
    trials = study.get_trials()
    best = min((t for t in trials if t.values[0] <= 250), key=lambda t: t.values[1])
    assert recipe_of(best).knobs["solver"].order > 1
    assert best.params[schedule.STEPS_PARAM] == 4 and best.params[schedule.FAMILY_PARAM] not in ("ays", "uniform")
    descended, keys = _descended(study)
    assert len(keys) == len(set(keys))  # each step count of a structure and family once
    mine = [(k[1], k[2]) for k in keys if k[0] == tuple(sorted(structure_params(best.params).items()))]
    assert ("ays", 6) in mine and ("ays", 5) in mine and ("ays", 4) not in mine  # led, walked, stopped
    family = best.params[schedule.FAMILY_PARAM]  # did not lead at the look, measured there, walked down from it
    assert any(t.params[schedule.FAMILY_PARAM] == family and t.params[schedule.STEPS_PARAM] == 6
               and structure_params(t.params) == structure_params(best.params) for t in trials)
    assert {5, 3} <= {k for f, k in mine if f == family}  # one step at a time, one past the best


def _by_hand(handle, fid):
    """A loop at 250 ms (plain steps cost 20 ms, cached ones 10) whose candidates are measured as they are
    planned: `fid(order, cached, family, k)`. Returns `measure(params)`, `exploit(n)`, which measures up to `n`
    of the loop's exploit candidates and returns them as `(kind, params)`, and the warm starts' params."""
    study, stored, ctx, planner, space = _planner(handle, 0.250)

    def measure(params: dict, planned: str | None = None) -> None:
        if planned is None:
            study.enqueue_trial(params)
        else:  # as the loop enqueues it (`FillPlanner._enqueue`): what it planned is stored with it
            stored.enqueue(params, planned=planned)

        def objective(trial: optuna.Trial) -> list[float]:
            recipe = space.suggest(trial)
            cfg, cached = recipe.knobs["schedule"], recipe.knobs["cache"].interval > 1
            latency = 0.010 + cfg.steps * (0.010 if cached else 0.020)
            q = QualityResult("fid", fid(recipe.knobs["solver"].order, cached, cfg.family, cfg.steps), False, 32,
                              stderr=0.3)
            set_recipe(trial, recipe)
            set_measurement(trial, Measurement(latency_s=latency, quality=q, score=score(q)), 0.250)
            return [latency * 1000, q.value]

        study.optimize(objective, n_trials=1)

    def exploit(n: int) -> list[tuple[str, dict]]:
        planned_ones = []
        for _ in range(n):
            planned = planner.exploit(planner.model())
            if planned is None:
                break
            planned_ones.append(planned)
            measure(planned[1], planned[0])
        return planned_ones

    warm = warm_start_params(SPACE, ctx)
    return measure, exploit, warm


def test_a_look_below_the_fill_leaves_out_the_knobs_that_trade_images_for_speed(random_digits_handle):
    # The best is first-order at its fill (11 steps, 5.85); the second order's best is cached at 20 steps (5.9),
    # within noise of it. Half of 20 steps needs no cache (10 plain steps fit), and the cache costs most at few
    # steps: the second order's look at fewer steps is its structure without the cache. The first-order look (at
    # 6 steps) measured quadratic best of the families there: the second order's look is with quadratic, not
    # with its own uniform.
    def fid(order: int, cached: bool, family: str, k: int) -> float:
        if order == 1:
            return 5.0 + 6.0 / k + (0.0 if family == "quadratic" else 0.3)
        return 5.9 + 0.01 * abs(20 - k) + (3.0 if k < 10 else 0.0) if cached else 5.2 + 0.1 * abs(k - 5)

    measure, exploit, warm = _by_hand(random_digits_handle, fid)
    first = next(p for p in warm if p["solver.name"] == "dpmpp" and p.get("solver.dpmpp.order") == 1)
    cached = next(p for p in warm if p.get("cache_interval", 1) > 1)
    assert cached.get("solver.dpmpp.order") == 2 and cached[schedule.FAMILY_PARAM] == "uniform"
    measure({**first, schedule.STEPS_PARAM: 11})
    measure({**cached, schedule.STEPS_PARAM: 20})
    planned = exploit(30)
    looks = [params for kind, params in planned if kind == "descend"]
    firsts = [p for p in looks if p.get("solver.dpmpp.order") == 1]
    assert {p[schedule.FAMILY_PARAM] for p in firsts if p[schedule.STEPS_PARAM] == 6} >= {"uniform", "quadratic"}
    second = [p for p in looks if p.get("solver.dpmpp.order") == 2]
    assert second and all(p["cache_interval"] == 1 for p in second)
    assert second[0][schedule.STEPS_PARAM] == 10  # half of 20, which 10 + 10 x 20 ms fits without the cache
    assert second[0][schedule.FAMILY_PARAM] == "quadratic"  # the family that scored best below a fill
    assert {p[schedule.STEPS_PARAM] for p in second} >= {5, 4}  # and on down to where it is best, one past


def test_at_the_bests_own_count_each_family_within_noise_of_it_is_walked_down(random_digits_handle):
    # DPM-Solver++ 2M scores best with AYS at 5 steps (5.0; 7.5 at 10, 5.5 at 4); quadratic there is within
    # noise (5.3) and better with fewer steps (4.7 at 4). Walking down only the best's own family stops at 5.
    def fid(order: int, cached: bool, family: str, k: int) -> float:
        if order == 1:
            return 6.0 + 6.0 / k
        if family == "ays":
            return 5.0 + 0.5 * abs(k - 5)
        return 4.7 + 0.6 * abs(k - 4) + (0.0 if family == "quadratic" else 2.0)

    measure, exploit, warm = _by_hand(random_digits_handle, fid)
    ays = next(p for p in warm if p.get("solver.dpmpp.order") == 2 and p[schedule.FAMILY_PARAM] == "ays"
               and p.get("cache_interval", 1) == 1)
    first = next(p for p in warm if p["solver.name"] == "dpmpp" and p.get("solver.dpmpp.order") == 1)
    measure({**first, schedule.STEPS_PARAM: 11})
    measure({**ays, schedule.STEPS_PARAM: 10})
    measure({**ays, schedule.STEPS_PARAM: 5})
    planned = exploit(20)
    mine = [(p[schedule.FAMILY_PARAM], p[schedule.STEPS_PARAM]) for kind, p in planned
            if kind == "descend" and p.get("solver.dpmpp.order") == 2]
    assert ("ays", 4) in mine  # its own family, one step fewer: worse, the walk stops
    assert ("quadratic", 4) in mine and ("quadratic", 3) in mine  # measured at 5 within noise, walked down
    assert ("ays", 2) not in mine  # AYS at 4 was within noise of the best there: walked, and it stopped at 3


def test_no_hedge_when_the_best_is_well_inside_the_budget(loop):
    planner, study, run, _ = loop  # 100 ms: 4 steps take 90 ms, more than 2 noise floors under the budget
    run(14)
    assert not [t for t in study.get_trials() if planned_as(t) == "hedge"]


def test_exploit_refines_the_structure_the_larger_sample_prefers(loop, random_digits_handle):
    # the cached structure leads on the proxy (noisy), the plain one on the first rung: the plain one is refined
    planner, study, _, _ = loop
    space = SearchSpace(random_digits_handle, SPACE, planner.context)
    warm = warm_start_params(SPACE, planner.context, fit_steps=9)
    plain = next(p for p in warm if p.get("cache_interval", 1) == 1)
    cached = next(p for p in warm if p.get("cache_interval", 1) > 1)
    for params, proxy, rung in ((plain, 12.0, 5.0), (cached, 10.0, 8.0)):
        study.enqueue_trial(params)

        def objective(trial: optuna.Trial, proxy: float = proxy, rung: float = rung) -> list[float]:
            recipe = space.suggest(trial)
            q = QualityResult("fid", proxy, False, 16, stderr=2.0)
            set_recipe(trial, recipe)
            set_measurement(trial, Measurement(latency_s=0.05, quality=q, score=score(q)), BUDGET)
            set_contender(trial, 64, QualityResult("fid", rung, False, 64, stderr=0.5))
            return [50.0, proxy]

        study.optimize(objective, n_trials=1)
    planned = planner.exploit(planner.model())
    assert planned is not None and planned[0] == "schedule"
    assert structure_params(planned[1]) == structure_params(study.get_trials()[0].params)  # the plain one's
    assert structure_params(planned[1]) != structure_params(study.get_trials()[1].params)


@pytest.mark.parametrize("loop", [(0.035, 1)], indirect=True)
def test_exploit_skips_hand_schedules_that_visit_the_timesteps_already_measured(loop):
    # 35 ms: one step fits (10 + 20 ms); at one step the hand families visit the same timestep, so the loop does
    # not measure the same images again under another family's name: it goes on to the positions
    planner, study, run, _ = loop
    run(12)
    trials = study.get_trials()

    def timesteps(t: optuna.trial.FrozenTrial) -> list[int]:
        recipe = recipe_of(t)
        assert recipe is not None
        return planner.timesteps_of(recipe.knobs["schedule"])

    for t in (t for t in trials if planned_as(t) == "schedule"):
        same = [u for u in trials if u.number < t.number and structure_params(u.params) == structure_params(t.params)
                and u.params.get(schedule.STEPS_PARAM) == t.params.get(schedule.STEPS_PARAM)]
        assert all(timesteps(u) != timesteps(t) for u in same)
    assert any(planned_as(t) == "positions" for t in trials)


def test_exploit_gives_the_best_schedule_the_steps_a_knob_that_keeps_the_images_makes_room_for(random_digits_handle):
    # the best so far: plain DPM-Solver++ 2M at 4 steps (10 + 4 x 20 ms). Compiling keeps its images: the loop
    # measures the compiled twin, and once it is timed at 14 ms a step (the same score, so it is the best now),
    # runs the best's schedule there at the 6 steps it fills (10 + 6 x 14 = 94 ms, under 100 / 1.02)
    names = [*SPACE, "compile"]
    study, _, ctx, planner, space = _planner(random_digits_handle, BUDGET, names)

    def measure(params: dict, per_step: float) -> None:
        study.enqueue_trial(params)

        def objective(trial: optuna.Trial) -> list[float]:
            recipe = space.suggest(trial)
            latency = 0.010 + recipe.knobs["schedule"].steps * per_step
            q = QualityResult("fid", 5.0, False, 16, stderr=0.2)  # the same images either way
            set_recipe(trial, recipe)
            set_measurement(trial, Measurement(latency_s=latency, quality=q, score=score(q)), BUDGET)
            return [latency * 1000, 5.0]

        study.optimize(objective, n_trials=1)

    plain = next(p for p in warm_start_params(names, ctx, fit_steps=4) if p.get("compile.mode") == "off")
    measure({**plain, schedule.STEPS_PARAM: 4}, 0.020)
    first = planner.exploit(planner.model())
    assert first is not None and first[0] == "transfer"
    assert first[1]["compile.mode"] == "default" and first[1]["compile.scope"] == "model"
    assert {k: v for k, v in structure_params(first[1]).items() if not k.startswith("compile.")} == \
        {k: v for k, v in structure_params(study.trials[0].params).items() if not k.startswith("compile.")}
    assert first[1][schedule.FAMILY_PARAM] == plain[schedule.FAMILY_PARAM]
    measure(first[1], 0.014)
    second = planner.exploit(planner.model())
    # the compiled twin scores the same (the same images) and is faster, so it is the best now (a tie goes to the
    # faster, `selection.best_by_evidence`): its own structure at the steps its speed makes room for
    assert second is not None and second[0] == "schedule"
    assert structure_params(second[1]) == structure_params(study.trials[1].params)
    assert second[1][schedule.STEPS_PARAM] == 6 and second[1][schedule.FAMILY_PARAM] == plain[schedule.FAMILY_PARAM]
    measure(second[1], 0.014)
    # nothing left to carry over: back to the best structure's own schedules
    third = planner.exploit(planner.model())
    assert third is not None and third[0] != "transfer"
