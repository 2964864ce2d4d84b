"""The budget-filling loop (`--sampler fill`): every structure at the step count that fills the budget, and at
few steps the positions of those steps searched.

A plain multi-objective sampler spends trials on step counts that leave most of the budget unused, or that
cannot fit, and treats "5 steps" and "15 steps with DeepCache" as unrelated points. Here the step count is not
searched: it follows from the latency model (`autoeff.latency_model`), as the most denoiser evaluations whose
predicted latency stays a noise margin under the budget. What is searched is the structure (solver, cache,
quantization, pruning, guidance, kernels, compile) and the schedule's shape. Trial by trial (this is
`workers.run_trials`' refill hook, called when no trial waits):

1. the hand-picked configurations (`warm_start.py`), each re-filled for its structure just before it runs
   (the model then knows every trial measured before it);
2. then, alternately,
   - *exploit*: the structure of the best candidate so far within budget (by the largest sample it was scored
     on: `selection.best_by_evidence`; the proxy alone is noisier than the differences it would rank) at its
     filled step count, first with the hand schedules it has not been measured with
     (`positions.STARTING_FAMILIES`; one that visits the same timesteps as a measured one, as every family does
     at one step, is passed over), then, at 2-8 steps, with timestep positions proposed by Bayesian
     optimisation over the ones measured (`positions.propose`; AutoDiffusion, Li et al., ICCV 2023, searches
     positions by evolution). Past 8 steps, where positions are not searched, a *descend*: the same structure
     at half the steps with each hand family (the best's first), since quality need not improve with steps --
     on the digits U-Net at batch 16 and 20 % the screening FID of UniPC-2 quadratic was 5.67 at 4 steps and
     8.67 at 10, DPM-Solver++ 2M AYS 6.28 at 4 and 8.72 at 10, and the loop, filling 10-17 steps, picked
     DPM-Solver++ 3M at 10 steps (FID 4.14 +- 0.04 at 2000 samples) against the hand's 4 steps (3.77 +- 0.14).
     The descent starts (`scout`) with the best structure and the best structure of each other solver order,
     each at half the steps it fills (without the knobs that trade images for speed where that fills more,
     `unbought`: it needs less speed there) with the family that scored best below a fill so far
     (`look_family`; the first look with its own), before the hand families at the fill: how quality turns with
     steps depends on the order (there, first-order solvers improved up to the fill, second-order ones were
     best at 4), and the re-searched 20 % descended only its first-order best and found nothing. Right after
     its look, a scouted structure's other hand families there are measured where it held up
     (`held_families`: within noise of the best on the largest sample both were scored on); then it is walked
     down one step at a time while each step scores better (`walk_down`), first with the family that led
     there, then with each other family that held up there (within noise, the lead says little). Once a
     structure scores better below its fill than at more steps with one family (`count_for`), it is refined at
     that step count: at 8 or fewer, first one step fewer at a time while that scores better (`step_below`, a
     line search that stops one step past the turn; then the same, `walk_down`, for each other family measured
     there within noise of it), then its hand families and positions; past 8 it descends again. Before those,
     when the best sits at the budget's edge (its measured latency within `selection.NEAR_BUDGET` noise floors
     of the budget), a *hedge*: the same candidate one step fewer; a *probe*: the best's structure one step past
     its fill where the prediction is within the noise floor of the budget, either side, once (`reach`: the
     margin is for a guess, and a step count whose timings have their median within the budget fills it,
     `LatencyModel.steps_that_fill`);
     then a *transfer*: the best's structure with a knob that keeps the images (`Knob.keeps_images`: compile,
     fused kernels) set otherwise, with the best's schedule family at the step count that structure fills (or
     reaches, as the probe) -- first its `typical` setting when that twin was never measured, then a measured
     twin whose speed leaves room for more steps (on the digits U-Net
     at 20 % the warm start's compiled pick ran 7 steps in 52.9 ms against 63.1 uncompiled, and the loop never
     tried the best's schedule there; with this step, on the digits DiT at 5 % it found a compiled 2-step
     candidate where only one uncompiled step fitted). Filling puts the best candidates at the
     edge, where the final re-time can put them over (on 2 CPU cores a re-time moved by 10-15 %); without a
     hedge the winner then fell back to a poorer structure (compare.py, digits, 10 %: FID 8.9 at 2 steps
     chosen while 4 steps of the best structure fitted);
   - *explore*: nothing is enqueued, so the study's sampler draws the next candidate: `FillSampler`, Optuna's
     TPE for the structure and schedule family, with the step count filled in from the model.

Everything the loop decides is rebuilt from the study's stored trials at each call (no state in the
process), so a resumed search and every worker of a distributed one plan from all that was measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from autoeff.evaluators.quality import score
from autoeff.latency_model import LatencyModel, evaluations, structure_key, structure_params
from autoeff.positions import MAX_FEW_STEPS, STARTING_FAMILIES, propose
from autoeff.search_spaces import schedule
from autoeff.search_spaces.base import SpaceContext
from autoeff.search_spaces.registry import get_knob
from autoeff.search_spaces.space import drawn_params
from autoeff.selection import NEAR_BUDGET, best_by_evidence, contends
from autoeff.study import StoredStudy, TrialRecord, is_warm_start, planned_as

EXPLOIT = ("hedge", "probe", "transfer", "schedule", "descend", "positions")


class FillPlanner:
    """Chooses the next candidate of the budget-filling loop (see the module docstring).

    `model` builds the latency model from the study; `scheduler` is the pipeline's own (its training schedule
    turns a recipe's family into timesteps); `higher_is_better` is the metric's direction."""

    def __init__(self, stored: StoredStudy, context: SpaceContext, budget_s: float, *,
                 model: Callable[[], LatencyModel], scheduler: Any, higher_is_better: bool, seed: int,
                 space: Sequence[str]) -> None:
        self.stored, self.context, self.budget_s = stored, context, budget_s
        self.model, self.scheduler, self.higher_is_better, self.seed = model, scheduler, higher_is_better, seed
        self.space = list(space)
        self.searches_steps = schedule.NAME in space
        self.image_keeping = [get_knob(n) for n in space if get_knob(n).keeps_images
                              and get_knob(n).applies_to(context)]
        self.families = list(schedule.KNOB.options_for(context).families) if self.searches_steps else []

    # -- the step count ---------------------------------------------------------------------------------
    def steps_for(self, params: dict[str, Any], model: LatencyModel | None = None) -> int | None:
        """The step count that fills the budget for the structure of `params` (None: not even the fewest
        fits)."""
        model = model or self.model()
        return model.steps_that_fill(params, self.budget_s, self.context.min_steps, self.context.max_steps)

    def filled(self, params: dict[str, Any], model: LatencyModel) -> dict[str, Any]:
        """`params` at the step count that fills the budget (as they are without a schedule knob). When the
        model says not even the fewest steps fit, the fewest: the objective measures it if nothing measured
        so far is faster, and skips it otherwise."""
        if schedule.STEPS_PARAM not in params or params.get(schedule.FAMILY_PARAM) == "free":
            return dict(params)
        k = self.steps_for(params, model)
        return {**params, schedule.STEPS_PARAM: self.context.min_steps if k is None else k}

    # -- the loop ---------------------------------------------------------------------------------------
    def refill(self) -> bool:
        """Enqueue the loop's next candidate when it is not the sampler's turn; True when one was enqueued."""
        model = self.model()
        while (pick := self.stored.pop_warm_start()) is not None:
            if self._enqueue(self.filled(pick, model), "warm start"):
                return True
        if not self._exploit_turn():
            return False
        planned = self.exploit(model)
        return planned is not None and self._enqueue(planned[1], planned[0])

    def _enqueue(self, params: dict[str, Any], kind: str) -> bool:
        """Enqueue unless an identical candidate exists (then False), with the params its trial will end with
        (`space.drawn_params`: the structure is then the one its measurement is stored under)."""
        waiting = len(self.stored.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        self.stored.enqueue(drawn_params(params, self.space, self.context), planned=kind)
        return len(self.stored.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > waiting

    def _exploit_turn(self) -> bool:
        trials = self.stored.study.get_trials(deepcopy=False)
        exploit = sum(1 for t in trials if planned_as(t) in EXPLOIT)
        explore = sum(1 for t in trials if planned_as(t) is None and not is_warm_start(t))
        return exploit <= explore

    def exploit(self, model: LatencyModel) -> tuple[str, dict[str, Any]] | None:
        """The best structure's next candidate: a hedge one step fewer at the budget's edge; at its fill a probe
        of the edge, below it (fewer scored better) one step fewer; a transfer to an image-keeping twin; past 8
        steps the best and each solver order's best at half their steps, then their other families there where
        they held up (`scout`); a hand family it lacks at its step count (`count_for`); at 2-8 steps positions
        proposed by Bayesian optimisation; `(kind, params)` or None."""
        if not self.searches_steps:
            return None
        records = self.stored.records()
        scored = [r for r in records if r.score is not None and r.feasible(self.budget_s)
                  and schedule.STEPS_PARAM in r.params]
        best = best_by_evidence(scored, self.budget_s)
        if best is None:
            return None
        structure = structure_params(best.params)
        family = self.hand_family(best, records)
        hedge = self.hedge(best, family, model)
        if hedge is not None:
            return "hedge", hedge
        k = self.steps_for(structure, model)
        if k is None:
            return None
        refine = self.count_for(best, k, records)
        if refine == k:  # at its fill: the budget's edge
            edge = self.reach(structure, model)
            if edge is not None and edge > k and family is not None:
                return "probe", {**structure, **schedule.to_params(schedule.Config(family=family, steps=edge))}
        elif refine <= MAX_FEW_STEPS:  # fewer steps scored better: one fewer, until it scores worse; then the
            lower = self.step_below(best, family, refine)  # same for each other family that held up there
            if lower is None:
                lower = next((walk for other in self.held_families(structure, refine, best, records)
                              if other != family
                              and (walk := self.walk_down(structure, refine, records, other)) is not None), None)
            if lower is not None:
                return "descend", lower
        if refine > -(-k // 2):  # twins that fill more steps; none once half the steps or fewer scored better
            transfer = self.transfer(best, family, k, model, records)
            if transfer is not None:
                return "transfer", transfer
        scout = self.scout(best, refine, scored, model, records)
        if scout is not None:
            return "descend", scout
        k = refine
        untried = self.untried_family(structure, k, records)
        if untried is not None:
            return "schedule", untried
        if k > MAX_FEW_STEPS or "free" not in self.families:
            return None
        observed = [(self.timesteps(r), r.measurement.quality.value) for r in self.scored_at(structure, k, records)
                    if r.measurement.quality]
        proposal = propose(observed, k, self.context.num_train_timesteps, higher_is_better=self.higher_is_better,
                           seed=self.seed + len(records))
        if proposal is None:
            return None
        cfg = schedule.Config(family="free", steps=k, timesteps=proposal)
        return "positions", {**structure, **schedule.to_params(cfg)}

    def count_for(self, best: TrialRecord, k: int, records: Sequence[TrialRecord]) -> int:
        """The step count to refine `best`'s structure at: `k`, the one that fills the budget, unless `best` has
        fewer and its structure scored better there than at more steps with one schedule family (both within the
        budget): then `best`'s own. Quality need not improve with steps (module docstring, *descend*); a family
        that beats another at fewer steps says nothing about steps (it is tried at `k`)."""
        steps = evaluations(best.params, self.context.default_steps)
        if steps >= k:
            return k
        key = structure_key(best.params)
        mine = [r for r in records if structure_key(r.params) == key and r.score is not None
                and r.feasible(self.budget_s)]
        for family in {r.params.get(schedule.FAMILY_PARAM) for r in mine}:
            here = [r.score for r in mine if r.params.get(schedule.FAMILY_PARAM) == family and r.score is not None
                    and evaluations(r.params, self.context.default_steps) == steps]
            more = [r.score for r in mine if r.params.get(schedule.FAMILY_PARAM) == family and r.score is not None
                    and evaluations(r.params, self.context.default_steps) > steps]
            if here and more and max(here) > max(more):
                return steps
        return k

    def step_below(self, best: TrialRecord, family: str | None, steps: int) -> dict[str, Any] | None:
        """`best`'s structure with `family` one step under `steps` (where it scored better than at more), unless
        tried there or under the fewest: a line search down the step count of a U-shaped quality, one trial a
        step, that stops where a step fewer scores worse (then `best` stays at `steps`)."""
        if family is None or steps - 1 < self.context.min_steps:
            return None
        if self.tried(best.params, family, steps - 1):
            return None
        return {**structure_params(best.params),
                **schedule.to_params(schedule.Config(family=family, steps=steps - 1))}

    def scout(self, best: TrialRecord, refine: int, scored: Sequence[TrialRecord], model: LatencyModel,
              records: Sequence[TrialRecord]) -> dict[str, Any] | None:
        """Past 8 steps, the best structure (at `refine`, its step count) and the best structure of each other
        solver order (by evidence, `best_by_evidence`; best-scored order first; at the step count it fills) at half
        those steps, each without the knobs that trade images for speed (`unbought`) where that fills more:
        each in turn, a look with the family of the best measured below its fill so far (`look_family`;
        the first with its `hand_family`), once, and where that held up (`held_families`), its other hand
        families there; then the walks down from there (`walk_down`), each held structure's leading family
        first, then its other families that held up. Quality need not improve with
        steps, how it turns depends on the solver's order, and at few steps the family matters more (module
        docstring, *descend*). On the digits U-Net at batch 16 and 20 % the best was first-order (DPM-Solver++
        1M, better with more steps) and the loop's descent of it found nothing, while the hand's best was UniPC-2
        quadratic at 4 steps, a structure the loop had measured only at its fill; scouted with its own family
        (uniform) at 5 steps, the second order scored FID 7.2 on 512 samples against the best's 6.2."""
        groups: dict[int | None, list[TrialRecord]] = {}
        for r in scored:
            solver = r.recipe.knobs.get("solver")
            groups.setdefault(getattr(solver, "order", None), []).append(r)
        leaders = [b for g in groups.values() if (b := best_by_evidence(g, self.budget_s)) is not None
                   and structure_key(b.params) != structure_key(best.params)]
        leaders.sort(key=lambda r: r.score if r.score is not None else float("-inf"), reverse=True)
        halves: list[tuple[dict[str, Any], int, str]] = []  # (structure, half its steps, its family)
        for leader in [best, *leaders]:
            count = refine if leader is best else self.steps_for(structure_params(leader.params), model)
            family = self.hand_family(leader, records)
            if count is not None and count > MAX_FEW_STEPS and family is not None:
                fewer = -(-count // 2)  # half the evaluations, rounded up
                structure = self.unbought(leader.params)  # without the knobs that trade images for speed,
                fits = self.steps_for(structure, model)  # where that is still below its own fill
                if fits is None or fits <= fewer:
                    structure = structure_params(leader.params)
                if fewer >= self.context.min_steps:
                    halves.append((structure, fewer, family))
        trials = self.stored.study.get_trials(deepcopy=False)
        held: list[tuple[dict[str, Any], int, list[str]]] = []  # (structure, its look's steps, families held up)
        for structure, fewer, family in halves:  # each in turn: a look at half the steps, once, then its other
            key = structure_key(structure)  # families there where it held up
            if not any(structure_key(t.params) == key and evaluations(t.params, self.context.default_steps) <= fewer
                       for t in trials):
                family = self.look_family(trials, records) or family
                return {**structure, **schedule.to_params(schedule.Config(family=family, steps=fewer))}
            families = self.held_families(structure, fewer, best, records)
            if families:
                if (untried := self.untried_family(structure, fewer, records, first=families[0])) is not None:
                    return untried
                held.append((structure, fewer, families))
        for rank in range(len(self.families)):  # then down from there while that scores better: the family that
            for structure, fewer, families in held:  # led at the look first, then each other that held up there
                if rank < len(families) and (lower := self.walk_down(structure, fewer, records,
                                                                     families[rank])) is not None:
                    return lower
        return None

    def look_family(self, trials: Sequence[FrozenTrial], records: Sequence[TrialRecord]) -> str | None:
        """The hand family of the best candidate (by evidence) measured below its fill so far (the scouts' looks
        and walks, planned `descend`), or None before there is one: what a look at few steps measures first. At
        few steps the family matters more than at the fill, and alike across solvers: on the digits U-Net at
        batch 16 the screening FID at 5 steps was 5.76 quadratic against 7.00 uniform for DPM-Solver++ 2M, 6.90
        against 7.91 for DDIM; at 4 steps UniPC-2 5.67 against 9.04. The loop had looked at 2M with its own
        family, uniform, at 5 steps (FID 7.22 on 512 samples against the best's 6.36), which did not hold up,
        after the first-order best's look had measured quadratic best of the four families at 6 steps."""
        below = {t.number for t in trials if planned_as(t) == "descend"}
        top = best_by_evidence([r for r in records if r.number in below
                                and r.params.get(schedule.FAMILY_PARAM) not in (None, "free")], self.budget_s)
        return None if top is None else str(top.params[schedule.FAMILY_PARAM])

    def unbought(self, params: dict[str, Any]) -> dict[str, Any]:
        """The structure of `params` with every knob that trades images for speed turned off (those with an `off`
        that do not keep the images: cache, quantization, pruning, guidance cut-off; compile and fused kernels
        stay). Below its fill a structure needs less speed than such knobs bought for its fill, and they cost
        quality most at few steps: on the digits U-Net at batch 16 and 20 % the loop looked at DPM-Solver++ 3M
        with DeepCache every 4th step at 5 steps (FID 62 on 128 samples, against 11.4 at 10) and at DPM-Solver++
        2M with DeepCache N=2 at 5 (15.6 against 12.0 at 10), while the screening FID of plain 2M quadratic is
        5.76 at 5 steps and 8.10 at 10 (500 samples)."""
        plain = dict(params)
        for name in self.space:
            knob = get_knob(name)
            if knob.off is not None and not knob.keeps_images and knob.applies_to(self.context):
                plain.update(knob.to_params(knob.off(self.context)))
        return structure_params(drawn_params(plain, self.space, self.context))

    def walk_down(self, structure: dict[str, Any], start: int, records: Sequence[TrialRecord], family: str
                  ) -> dict[str, Any] | None:
        """The next step of a line search down the step count of `structure` from `start` with hand `family`:
        one step fewer than the fewest measured, while each step scored better than the one above it (`better`);
        None once one did not, at the fewest steps, or when a step was tried and not scored. A structure within
        noise of the best at half its steps can be better still at fewer (the digits FID of UniPC-2 quadratic at
        batch 16: 6.24 at 5 steps, 5.67 at 4; 500 samples)."""
        top = best_by_evidence([r for r in self.scored_at(structure, start, records)
                                if r.params.get(schedule.FAMILY_PARAM) == family], self.budget_s)
        if top is None or family == "free":
            return None
        current, count = top, start
        while count - 1 >= self.context.min_steps:
            below = [r for r in self.scored_at(structure, count - 1, records)
                     if r.params.get(schedule.FAMILY_PARAM) == family and r.feasible(self.budget_s)]
            if not below:
                if self.tried(structure, family, count - 1):
                    return None
                return {**structure, **schedule.to_params(schedule.Config(family=family, steps=count - 1))}
            if not better(below[0], current):
                return None
            current, count = below[0], count - 1
        return None

    def held_families(self, structure: dict[str, Any], k: int, best: TrialRecord, records: Sequence[TrialRecord]
                      ) -> list[str]:
        """The hand families with which `structure` held up at `k` evaluations: scored within noise of `best`
        (`selection.contends`, the rule that sends a candidate to the halving's first rung) on the largest sample
        both were scored on (FID's bias depends on the sample: only like is compared with like); the best by
        evidence first. On the digits U-Net at batch 16 and 20 % the best, DPM-Solver++ 3M with DeepCache every
        4th step, scored FID 11.4 (128 samples) at 10 steps and 62 at 5, and the three other families at 5 steps
        then scored 198-433. Every family that held up is walked down, not only the leading one: within noise
        the lead says little, and at 6 steps DPM-Solver++ 2M with int8 led with the uniform family (512-sample
        FID 6.58 against quadratic's 6.70), which is worse with fewer steps, while quadratic is better (the
        screening FID of 2M quadratic: 6.42 at 6 steps, 5.76 at 5; uniform 6.34, 7.00)."""
        held: list[TrialRecord] = []
        for r in self.scored_at(structure, k, records):
            pairs = [(r.measurement.quality, best.measurement.quality)]
            if r.contender is not None and best.contender is not None and r.contender[0] == best.contender[0]:
                pairs.insert(0, (r.contender[1], best.contender[1]))
            q, b = next(((q, b) for q, b in pairs if q is not None and b is not None), (None, None))
            if q is not None and r.feasible(self.budget_s) and contends(q, b):
                held.append(r)
        families: list[str] = []
        while (top := best_by_evidence(held, self.budget_s)) is not None:
            family = top.params.get(schedule.FAMILY_PARAM)
            if isinstance(family, str) and family != "free" and family not in families:
                families.append(family)
            held.remove(top)
        return families

    def tried(self, params: dict[str, Any], family: str, steps: int) -> bool:
        """Whether the structure of `params` was tried (measured or not) with `family` at `steps`."""
        key = structure_key(params)
        return any(structure_key(t.params) == key and t.params.get(schedule.FAMILY_PARAM) == family
                   and t.params.get(schedule.STEPS_PARAM) == steps
                   for t in self.stored.study.get_trials(deepcopy=False))

    def scored_at(self, structure: dict[str, Any], k: int, records: Sequence[TrialRecord]) -> list[TrialRecord]:
        """The scored records of `structure`'s structure at `k` evaluations."""
        key = structure_key(structure)
        return [r for r in records if structure_key(r.params) == key and r.score is not None
                and evaluations(r.params, self.context.default_steps) == k]

    def untried_family(self, structure: dict[str, Any], k: int, records: Sequence[TrialRecord],
                       first: str | None = None) -> dict[str, Any] | None:
        """`structure` at `k` steps with the first hand family (`first`, then `STARTING_FAMILIES`) it was not
        measured with at `k`, passing over one that visits the timesteps of one measured (at 1-2 steps families
        can visit the same timesteps: the same images, nothing to learn); None when none is left."""
        same = self.scored_at(structure, k, records)
        tried = {r.params.get(schedule.FAMILY_PARAM) for r in same}
        visited = {tuple(self.timesteps(r)) for r in same}
        order = [first] if first is not None else []
        for family in [*order, *STARTING_FAMILIES]:
            if family in self.families and family not in tried:
                cfg = schedule.Config(family=family, steps=k)
                if tuple(self.timesteps_of(cfg)) in visited:
                    continue
                return {**structure, **schedule.to_params(cfg)}
        return None

    def hedge(self, best: TrialRecord, family: str | None, model: LatencyModel) -> dict[str, Any] | None:
        """`best` one step fewer when its measured latency is at the budget's edge (module docstring), unless
        tried already, with `family`, its `hand_family` (a `free` schedule's positions are for their own step
        count)."""
        steps = best.params.get(schedule.STEPS_PARAM)
        if not isinstance(steps, int) or steps - 1 < self.context.min_steps:
            return None
        if best.latency_s <= self.budget_s / (1.0 + NEAR_BUDGET * model.margin):
            return None
        if family is None or self.tried(best.params, family, steps - 1):
            return None
        return {**structure_params(best.params), **schedule.to_params(schedule.Config(family=family, steps=steps - 1))}

    def transfer(self, best: TrialRecord, family: str | None, k: int, model: LatencyModel,
                 records: Sequence[TrialRecord]) -> dict[str, Any] | None:
        """`best`'s twins, its structure with the image-keeping knobs (`Knob.keeps_images`) set otherwise, with
        `family`, its `hand_family`, at the step count each twin fills: first a knob's `typical` setting when no
        such twin was measured, then a measured twin the model fills with more steps than `k`, the best's; each
        once."""
        if family is None or not self.image_keeping:
            return None
        prefixes = tuple(f"{knob.name}." for knob in self.image_keeping)

        def core(params: dict[str, Any]) -> dict[str, Any]:  # the structure without the image-keeping knobs
            return {p: v for p, v in structure_params(params).items() if not p.startswith(prefixes)}

        best_core, best_key = core(best.params), structure_key(best.params)
        twins = {structure_key(r.params): structure_params(r.params) for r in records
                 if core(r.params) == best_core and structure_key(r.params) != best_key}
        # every candidate tried, measured or not (a twin the knobs refuse is not proposed again)
        tried = {(structure_key(t.params), t.params.get(schedule.FAMILY_PARAM), t.params.get(schedule.STEPS_PARAM))
                 for t in self.stored.study.get_trials(deepcopy=False)}
        tried_structures = {key for key, _, _ in tried}
        proposals: list[dict[str, Any]] = []
        for knob in self.image_keeping:
            if knob.typical is None:
                continue
            typical = knob.to_params(knob.typical(self.context))
            own = {p: v for p, v in structure_params(best.params).items() if not p.startswith(f"{knob.name}.")}
            if structure_key({**own, **typical}) not in tried_structures:
                proposals.append({**own, **typical})
        filled = [(structure, self.steps_for(structure, model)) for structure in proposals]
        filled += [(t, steps) for t in twins.values() if (steps := self.reach(t, model)) is not None and steps > k]
        for structure, steps in filled:
            if steps is not None and (structure_key(structure), family, steps) not in tried:
                return {**structure, **schedule.to_params(schedule.Config(family=family, steps=steps))}
        return None

    def reach(self, params: dict[str, Any], model: LatencyModel) -> int | None:
        """The step count to try the structure of `params` at: the one that fills the budget (`steps_for`), or
        the most whose prediction is within the noise floor of the budget either way (`LatencyModel.
        steps_within` of the budget plus the margin: a prediction that close cannot say which side it falls on)
        while the structure was never tried at that count -- each edge is measured once. Measured on the digits
        DiT at batch 16 and 5 %: a compiled twin timed once, at 1 step, was predicted for 3 steps at 104.7 ms
        against a 105.8 ms budget in one search and at 96.5 ms against 95.3 ms in another, so both ran 40 trials
        at 2 steps (FID 25.9) and never timed the compiled 3 steps, which the re-measure put at 4.7-4.8 % of the
        reference against the 5 % budget (the hand's compiled 3 steps scored 17.5)."""
        k = self.steps_for(params, model)
        edge = model.steps_within(params, self.budget_s * (1.0 + model.margin), self.context.min_steps,
                                  self.context.max_steps)
        if edge is None or (k is not None and edge <= k):
            return k
        key = structure_key(params)
        tried = any(structure_key(t.params) == key and t.params.get(schedule.STEPS_PARAM) == edge
                    for t in self.stored.study.get_trials(deepcopy=False))
        return k if tried else edge

    def hand_family(self, best: TrialRecord, records: Sequence[TrialRecord]) -> str | None:
        """`best`'s schedule family, or for a `free` schedule the best-scored hand family measured for its
        structure (None when there is none)."""
        family = best.params.get(schedule.FAMILY_PARAM)
        if family != "free":
            return family if isinstance(family, str) else None
        key = structure_key(best.params)
        hand = [r for r in records if structure_key(r.params) == key and r.score is not None
                and r.params.get(schedule.FAMILY_PARAM) not in (None, "free")]
        if not hand:
            return None
        chosen = max(hand, key=lambda r: r.score if r.score is not None else float("-inf"))
        return str(chosen.params[schedule.FAMILY_PARAM])

    def timesteps(self, record: TrialRecord) -> list[int]:
        return self.timesteps_of(record.recipe.knobs[schedule.NAME])

    def timesteps_of(self, config: schedule.Config) -> list[int]:
        """The timesteps a schedule config visits on this model."""
        return schedule.timesteps_for_scheduler(config, self.scheduler, self.context.family)


def better(a: TrialRecord, b: TrialRecord) -> bool:
    """Whether `a` scored better than `b` on the largest sample both were scored on (the halving's first rung
    when both were scored there, else the proxy): FID's bias depends on the sample, so only like is compared."""
    if a.contender is not None and b.contender is not None and a.contender[0] == b.contender[0] \
            and a.contender[1] is not None and b.contender[1] is not None:
        return score(a.contender[1]) > score(b.contender[1])
    return (a.score if a.score is not None else float("-inf")) > (b.score if b.score is not None else float("-inf"))


def quality_view(study: optuna.Study, higher_is_better: bool) -> optuna.Study:
    """The study's finished trials as a single-objective in-memory study of their quality (the second trial
    value), constraints kept; PRUNED trials (measured or predicted over budget) stay PRUNED.

    With every candidate filled to the budget, latency is no longer a goal, only a constraint: a multi-objective
    sampler would count a fast, broken candidate (DeepCache over 3 steps: FID in the hundreds at half the
    budget) as Pareto-optimal and draw more like it."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        view = optuna.create_study(direction="maximize" if higher_is_better else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        complete = t.state == TrialState.COMPLETE and t.values is not None and len(t.values) > 1
        view.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE if complete else TrialState.PRUNED,
            value=t.values[1] if complete and t.values is not None else None, params=t.params,
            distributions=t.distributions, constraints=t.constraints or None))
    return view


class FillSampler(optuna.samplers.BaseSampler):
    """Optuna's TPE (or any `base` sampler) for the structure and the schedule's family, with the step count
    filled in from the latency model (`FillPlanner.steps_for`) instead of sampled.

    `SearchSpace.suggest` draws the schedule after every other knob, so when `schedule.steps` is asked the
    trial already holds its structure. The step count and a `free` schedule's positions (whose number depends
    on it) are left out of the base sampler's joint (relative) space. The base sampler sees the study as
    `quality_view`: quality alone, under the budget constraint; it must not write to the study it is given
    (TPE without `constant_liar`)."""

    def __init__(self, base: optuna.samplers.BaseSampler, planner: FillPlanner) -> None:
        self.base, self.planner = base, planner
        self._view: tuple[int, optuna.Study] | None = None

    def view(self, study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
        """`quality_view` of `study`, built once per trial."""
        if self._view is None or self._view[0] != trial.number:
            self._view = (trial.number, quality_view(study, self.planner.higher_is_better))
        return self._view[1]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self.base.infer_relative_search_space(self.view(study, trial), trial)
        return {k: v for k, v in space.items()
                if k != schedule.STEPS_PARAM and not k.startswith(schedule.FREE_PREFIX)}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(self.view(study, trial), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name == schedule.STEPS_PARAM and isinstance(param_distribution, IntDistribution):
            k = self.planner.steps_for(dict(trial.params))
            # nothing fits: the fewest steps, which the objective then skips as predicted over budget
            return param_distribution.low if k is None else min(param_distribution.high,
                                                                max(param_distribution.low, k))
        return self.base.sample_independent(self.view(study, trial), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(self.view(study, trial), trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._view = None

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


__all__ = ["FillPlanner", "FillSampler", "quality_view", "EXPLOIT"]
