"""A search, stage by stage. `autoeff.optimize` (and `autoeff optimize`) is `optimize(preflight(...))`:

1. **open**: the storage (with heartbeats) and the study; a coordinator records its settings and target.
2. **baseline**: the base pipeline measured once (latency, proxy and final quality), stored in the study.
3. **budget**: the budget in seconds, resolved against the baseline (`10%`) and stored.
4. **reclaim**: trials left running by a dead process are failed and retried (`workers.reclaim_orphans`).
5. **step cap**: the schedule's step range cut to what can meet the budget (from the stored baseline only,
   so a resumed run and every worker cut it the same way).
6. **calibrate**: the pipeline timed at two step counts, one twice (the latency model's fixed and
   per-evaluation cost, and the machine's run-to-run noise; `latency_model.py`), once.
7. **warm start**: hand-picked configurations chosen once (`warm_start.py`).
8. **trials**: `workers.run_trials` until the study has its trial count (candidates skipped as predicted
   clearly over budget are not counted); the coordinator waits for trials other workers still run. With
   `--sampler fill` the budget-filling loop (`planner.py`) plans them.
9. **selection**: successive halving from the proxy sample to the final sample, candidates near the budget
   re-timed first, the winner chosen (`selection.py`).
10. **recovery** (optional): the winner's pruned denoiser distilled towards the unpruned one, kept if not worse.
11. **summary and export**: `summary.json` (with the latency model's measured errors and the halving's
    rungs), then the winner's frozen folder; when nothing met the budget, the result comes back with
    `best=None` and `infeasible` saying why (`--best-effort` exports the fastest).

`work` is the same loop for an `autoeff worker` joining a study someone else coordinates (stages 1, 5, 8).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock, Timeout

from autoeff.config_file import CONFIG_NAME, write_config
from autoeff.devices import validate_device
from autoeff.errors import SearchError
from autoeff.evaluators.latency import LatencyResult
from autoeff.evaluators.metric_names import HIGHER_IS_BETTER
from autoeff.latency_model import LatencyModel
from autoeff.log import logger
from autoeff.measure import EvaluationSpec, Evaluator, yardstick_steps
from autoeff.measurement import Baseline, Measurement
from autoeff.models.handle import ModelHandle
from autoeff.models.registry import resolve_model
from autoeff.planner import FillPlanner, FillSampler
from autoeff.preflight import Preflight
from autoeff.recipe import Recipe
from autoeff.result import OptimizeResult, Recovery
from autoeff.search import (
    CandidateFailed,
    Objective,
    context_for,
    directions,
    make_sampler,
    metric_names,
    over_budget_reason,
)
from autoeff.search_spaces import compile as compile_knob
from autoeff.search_spaces import prune, schedule
from autoeff.search_spaces.base import SpaceContext
from autoeff.search_spaces.space import SearchSpace, build_pipeline
from autoeff.selection import Finalist, pareto_front, select
from autoeff.settings import SearchSettings
from autoeff.study import (
    StoredStudy,
    TrialRecord,
    fail_reason,
    load_existing,
    measurement_of,
    open_study,
    recipe_of,
    skip_reason,
)
from autoeff.tracking import MlflowTracker
from autoeff.warm_start import warm_start_params
from autoeff.workers import (
    STORAGE_RETRY_S,
    TRANSIENT_STORAGE_ERRORS,
    CoordinatorLease,
    WorkerRegistry,
    open_storage,
    reclaim_orphans,
    run_trials,
    trial_counts,
    worker_id,
    worker_seed,
)

# How many times more steps than fit the budget plainly the search still tries: the other knobs together
# (DeepCache N=5 ~2x, int8 and pruning 1.1-1.3x on the digits U-Net, BENCHMARKS.md) cannot buy back more.
STEP_HEADROOM = 3.0
SUMMARY_JSON = "summary.json"
OWNER_LOCK = ".autoeff.lock"

TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass(frozen=True)
class Progress:
    """What a running search reports after every trial (and while it waits for other workers)."""

    done: int
    total: int
    feasible: int
    best_score: float | None
    elapsed_s: float
    last_state: str
    last_reason: str | None


# -- stages ---------------------------------------------------------------------------------------------
def warn_if_busy(what: str, latency: LatencyResult | None) -> None:
    """A warning (autoeff's logger) when other processes used a large share of the CPUs while timing `what`."""
    if latency is not None and latency.busy:
        logger.warning(f"other processes used {latency.other_cpu:.0%} of the CPUs while {what} was timed: its "
                       "latency may be inflated; measure on a quiet machine")


def _figures(m: Measurement) -> str:
    q = m.quality
    return f"{m.latency_s * 1000:.1f} ms" + ("" if q is None else f", {q.metric} {q.value:.4g} (n={q.n})")


def stage_baseline(stored: StoredStudy, evaluator: Evaluator) -> Baseline:
    """The stored baseline, or measure it once and store it (a baseline that fails is the user's pipeline
    failing: one line, not a traceback)."""
    baseline = stored.baseline
    if baseline is None:
        try:
            baseline = evaluator.baseline()
        except (KeyboardInterrupt, SearchError):
            raise
        except Exception as e:
            raise SearchError(f"the baseline (the pipeline as given) failed: {type(e).__name__}: "
                              f"{' '.join(str(e).split())[:300]}") from e
        stored.set_baseline(baseline)
        final = baseline.final_quality
        logger.info(f"measured the baseline: {baseline.latency_s * 1000:.1f} ms per call, {final.metric} "
                    f"{final.value:.4g} (n={final.n})")
        warn_if_busy("the baseline", baseline.latency)
    evaluator.follow(baseline)
    return baseline


def plain_steps_that_fit(baseline: Baseline, default_steps: int, budget_s: float) -> int:
    """Plain denoising steps that fit the budget, from the baseline's per-step latency (its fixed overhead
    included)."""
    per_step_s = baseline.latency_s / max(1, default_steps)
    return int(budget_s / per_step_s) if per_step_s > 0 else default_steps


def stage_step_cap(context: SpaceContext, fit_steps: int) -> SpaceContext:
    """The context with the schedule's step range cut to what can meet the budget.

    Step counts far above `fit_steps` are over budget whatever else a candidate does; drawing them spends
    trials on certain failures (a 10 % budget of a 50-step baseline leaves ~5 steps, and a search over
    2..50 drew 28 and 31).
    """
    cap = max(context.min_steps, min(context.max_steps, math.ceil(STEP_HEADROOM * max(1, fit_steps))))
    return dataclasses.replace(context, max_steps=cap)


def stage_calibrate(stored: StoredStudy, evaluator: Evaluator, handle: ModelHandle, settings: SearchSettings,
                    context: SpaceContext, fit_steps: int) -> None:
    """Time the pipeline as given, its schedule pinned to `min_steps` and to about the steps that fit (that one
    twice, apart), once per study: the latency model's fixed and per-evaluation cost, and the run-to-run noise.
    Without the schedule knob in the space the step count is not searched, and nothing is calibrated."""
    if stored.latency_calibration or schedule.NAME not in settings.space:
        return
    low = context.min_steps
    high = min(context.max_steps, max(low + 2, fit_steps))
    if high <= low:
        return
    points = []
    for k in (high, low, high):
        recipe = Recipe(model=handle.spec, knobs={schedule.NAME: schedule.Config(family="uniform", steps=k)})
        latency = evaluator.latency(build_pipeline(handle, recipe, context))
        points.append({"evals": k, "latency_s": latency.median_s, "rel_spread": latency.rel_spread})
    stored.set_latency_calibration(points)


def trial_loop(study: optuna.Study, stored: StoredStudy, settings: SearchSettings, handle: ModelHandle,
               context: SpaceContext, budget_s: float, baseline: Baseline | None, seed: int) -> Callable[[], object]:
    """The refill hook of the trial loop: the next hand-picked configuration, or with `--sampler fill` the
    budget-filling loop (which also wraps the study's sampler to fill in step counts)."""
    if settings.sampler != "fill":
        return stored.enqueue_next_warm_start
    planner = FillPlanner(stored, context, budget_s,
                          model=lambda: LatencyModel.from_study(stored, context.default_steps, baseline),
                          scheduler=handle.pipeline.scheduler, higher_is_better=HIGHER_IS_BETTER[settings.metric or ""],
                          seed=seed, space=settings.space)
    if not isinstance(study.sampler, FillSampler):
        study.sampler = FillSampler(study.sampler, planner)
    return planner.refill


def stage_warm_start(stored: StoredStudy, settings: SearchSettings, context: SpaceContext, fit_steps: int) -> None:
    """Choose the hand-picked configurations, once per study; the trial loop enqueues them one at a time."""
    if settings.warm_start and not stored.warm_started:
        stored.set_warm_starts(warm_start_params(settings.space, context, fit_steps=fit_steps))


def stage_recovery(result: OptimizeResult, evaluator: Evaluator, space: SearchSpace, steps: int) -> None:
    """Distil the winner's pruned denoiser towards the unpruned one, re-measure, keep it if not worse.

    Recovery is for the chosen candidate only (a search over recovered candidates would cost `steps` training
    steps per trial). The recovered pipeline is re-measured on the same final sample and re-timed; it replaces
    the winner's figures only when it still meets the budget and scores at least as well, so `--recover-steps`
    can never make the exported pipeline worse than the search's pick.
    """
    best = result.best
    assert best is not None
    cfg = best.record.recipe.knobs.get(prune.NAME)
    if cfg is None or cfg.is_identity():
        result.recovery = Recovery(steps=steps, applied=False, reason="the chosen candidate prunes nothing")
        return
    base = result.handle.pipeline
    started = time.monotonic()
    try:
        pruned = prune.apply(base, cfg, result.context)  # a copy: the base is untouched
        recovered = prune.recover(pruned, base, result.context, steps=steps, seed=result.settings.seed)
        denoiser = getattr(recovered, result.context.denoiser)
        after = evaluator.remeasure(space.build(best.record.recipe, weights=denoiser), result.budget_s,
                                    simulated=best.record.recipe.is_simulated())
    except KeyboardInterrupt:
        raise
    except Exception as e:  # recovery is an extra: its failure keeps the search's winner as measured
        result.recovery = Recovery(steps=steps, applied=False, reason=f"{type(e).__name__}: {e}"[:500])
        return
    kept = (after.score is not None and best.final.score is not None and after.score >= best.final.score
            and after.latency_s <= result.budget_s)
    result.recovery = Recovery(steps=steps, applied=True, kept=kept, wall_s=time.monotonic() - started,
                               before=best.final, after=after)
    if kept:
        result.best = Finalist(best.record, after)
        result.recovered_denoiser = denoiser


def no_feasible(result: OptimizeResult, out: Path, best_effort: bool, export: bool) -> str:
    """Why nothing met the budget, in one line (after `--best-effort`'s export of the fastest candidate)."""
    records, budget_s = result.records, result.budget_s
    fastest = min(records, key=lambda r: r.latency_s, default=None)
    retimed = [f for f in result.finalists if f.final.score is not None]
    if retimed:  # every finalist met the budget in the search but not when re-timed
        quickest = min(retimed, key=lambda f: f.final.latency_s)
        if best_effort and export:
            result.best = max(retimed, key=lambda f: f.final_score)
            result.export(out / "optimized")
            result.best = None
        return (f"{len(retimed)} finalist(s) met the budget of {budget_s * 1000:.1f} ms in the search but not when "
                f"re-timed (the quickest, trial {quickest.record.number}, took "
                f"{quickest.final.latency_s * 1000:.1f} ms); measure on a quiet machine, raise the budget, or pass "
                "--best-effort")
    if best_effort and fastest is not None and export:
        result.export(out / "optimized", record=fastest)
    feasible = [r for r in records if r.score is not None and r.feasible(budget_s)]
    if feasible:
        return (f"{len(feasible)} candidate(s) met the budget in the search, but every finalist failed when "
                "re-measured on the final sample; see summary.json for the reasons")
    msg = "no candidate met the budget of " + f"{budget_s * 1000:.1f} ms"
    if fastest is not None:
        msg += (f"; the fastest found was trial {fastest.number} at {fastest.latency_s * 1000:.1f} ms "
                f"({fastest.recipe.describe()})")
    return msg


# -- the whole run --------------------------------------------------------------------------------------
def optimize(pre: Preflight, *, callbacks: Sequence[TrialCallback] = (),
             progress: Callable[[Progress], None] | None = None) -> OptimizeResult:
    """Run every stage for a checked request (see the module docstring). What the run created (a new --out,
    a new SQLite file) is removed again if it fails before its first trial finished; never what existed."""
    finished = [0]

    def count(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finished[0] += 1

    pre.run.out.mkdir(parents=True, exist_ok=True)
    with owning(pre.run.out):  # one process per --out; a second is refused before it touches anything
        try:
            return _optimize(pre, callbacks=[count, *callbacks], progress=progress)
        except Exception as e:  # not KeyboardInterrupt: Ctrl-C keeps what was measured, for the rerun to resume
            if not finished[0] and not (pre.run.out / SUMMARY_JSON).exists():
                for p in pre.creates:
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    elif p.exists():
                        p.unlink()
            if isinstance(e, TRANSIENT_STORAGE_ERRORS):  # still failing after the storage's own retries
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise SearchError(f"the study's storage failed for {STORAGE_RETRY_S:.0f} s ({type(e).__name__}: "
                                  f"{first[:200]}); every trial it recorded is kept: run the same command again "
                                  "once it is reachable") from e
            raise


@contextlib.contextmanager
def owning(out: Path) -> Iterator[None]:
    """Hold `out/.autoeff.lock` for the run: a second `optimize` on the same --out gets one line naming this
    process. The OS drops the lock when its process dies (even by SIGKILL), so a stale one is taken over."""
    path = out / OWNER_LOCK
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = _read_owner(path)
        raise SearchError(f"--out {str(out)!r} is in use by another autoeff optimize ({owner}); wait for it to "
                          "finish or choose another --out") from None
    try:
        path.write_text(f"{worker_id()}\n")
        yield
    finally:
        lock.release()


def _read_owner(path: Path) -> str:
    try:
        return "process " + path.read_text().strip()[:200]
    except OSError:
        return "another process"


def _optimize(pre: Preflight, *, callbacks: Sequence[TrialCallback],
              progress: Callable[[Progress], None] | None) -> OptimizeResult:
    handle, settings, run = pre.handle, pre.settings, pre.run
    run.out.mkdir(parents=True, exist_ok=True)
    write_config(run.out / CONFIG_NAME, settings, run)  # `autoeff optimize --config OUT/run.toml` replays it
    compile_knob.use_cache_dir(run.out / "inductor-cache")  # a resumed search reuses what it compiled
    # 1. open
    rdb = open_storage(pre.storage_url, heartbeat_interval=run.heartbeat_interval, grace_period=run.grace_period)
    seed = worker_seed(settings.seed, worker_id()) if run.join else settings.seed
    study = open_study(rdb, run.study_name, settings, handle.identity, directions=directions(settings),
                       sampler=make_sampler(settings.sampler, seed), create=not run.join,
                       metric_names=metric_names(settings))
    stored = StoredStudy(study)
    assert rdb.heartbeat_interval is not None and rdb.grace_period is not None
    lease = (contextlib.nullcontext() if run.join else  # a joiner runs the coordinator's study as stored
             CoordinatorLease(study, worker_id(), rdb.heartbeat_interval, rdb.grace_period))
    tracker = None if run.mlflow_uri is None else MlflowTracker(run.mlflow_uri, run.study_name, settings)
    try:
        return _search(pre, study, stored, rdb, lease, tracker, seed, callbacks=callbacks, progress=progress)
    except BaseException:
        if tracker is not None:
            tracker.fail()
        raise


def _search(pre: Preflight, study: optuna.Study, stored: StoredStudy, rdb: Any, lease: Any,
            tracker: MlflowTracker | None, seed: int, *, callbacks: Sequence[TrialCallback],
            progress: Callable[[Progress], None] | None) -> OptimizeResult:
    handle, settings, run = pre.handle, pre.settings, pre.run
    with lease, WorkerRegistry.for_storage(pre.storage_url, run.study_name) as registry:
        if not run.join:
            stored.set_run(settings, rdb.heartbeat_interval, rdb.grace_period)
        evaluator = Evaluator(handle, EvaluationSpec.of(settings), threads=run.threads)
        if settings.budget.fraction is not None:  # a share of the baseline: time against a yardstick (measure.py)
            evaluator.use_yardstick(yardstick_steps(settings.budget.fraction, handle.default_steps))
        # 2-3. baseline, budget
        baseline = stage_baseline(stored, evaluator)
        budget_s = settings.budget.resolve(baseline.latency_s)
        stored.set_budget_s(budget_s)
        if tracker is not None:
            tracker.baseline(baseline, budget_s)
        # 4. reclaim
        reclaim_orphans(study, registry)
        # 5. step cap
        fit_steps = plain_steps_that_fit(baseline, handle.default_steps, budget_s)
        context = stage_step_cap(pre.context, fit_steps)
        stored.set_steps_searched(context.min_steps, context.max_steps)
        # 6. calibrate
        stage_calibrate(stored, evaluator, handle, settings, context, fit_steps)
        # 7. warm start
        stage_warm_start(stored, settings, context, fit_steps)
        # 8. trials
        space = SearchSpace(handle, settings.space, context)
        objective = Objective(space, evaluator, budget_s, settings, baseline)
        refill = trial_loop(study, stored, settings, handle, context, budget_s, baseline, seed)
        started = time.monotonic()

        def report(state: str, reason: str | None) -> None:
            if progress is None:
                return
            feasible = [r for r in stored.records() if r.feasible(budget_s) and r.score is not None]
            progress(Progress(done=trial_counts(study, free_skips=settings.trials).done, total=settings.trials,
                              feasible=len(feasible),
                              best_score=max((r.score for r in feasible if r.score is not None), default=None),
                              elapsed_s=time.monotonic() - started, last_state=state, last_reason=reason))

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            log_trial(trial, stored, budget_s)
            if tracker is not None:
                tracker.trial(trial, budget_s)
            report(trial.state.name, unscored_reason(trial, budget_s))

        run_trials(study, objective, registry=registry, wait_for_running=True, catch=(CandidateFailed,),
                   callbacks=[after_trial, *callbacks], refill=refill,
                   on_wait=lambda counts, target: report(
                       "WAITING", f"waiting for {counts.running} trial(s) running on other workers"))
    # 9. selection
    records = stored.records()
    model = LatencyModel.from_study(stored, context.default_steps, baseline)
    result = OptimizeResult(handle=handle, settings=settings, context=context, study=study, records=records,
                            pareto=pareto_front(records, budget_s), baseline=baseline, budget_s=budget_s,
                            failed=stored.failures(), skipped=stored.skipped(), out=run.out)

    def remeasure(rec: TrialRecord) -> Any:
        return evaluator.remeasure(space.build(rec.recipe), budget_s, simulated=rec.recipe.is_simulated())

    def measure_at(rec: TrialRecord, n: int) -> Any:
        return evaluator.quality_at(space.build(rec.recipe), n)

    def retime(rec: TrialRecord) -> Any:
        return evaluator.retime(space.build(rec.recipe), simulated=rec.recipe.is_simulated())

    chosen = select(records, budget_s, top_k=settings.top_k, final_samples=settings.final_n, remeasure=remeasure,
                    stored=stored, measure=measure_at, retime=retime, noise=model.margin)
    result.finalists, result.best, result.proxy_final_tau = chosen.finalists, chosen.best, chosen.proxy_final_tau
    result.failed.extend(chosen.failed)
    result.halving = chosen.to_dict()
    result.latency_model = LatencyModel.from_study(stored, context.default_steps, baseline).report()
    # 10. recovery
    if run.recover_steps and result.best is not None:
        stage_recovery(result, evaluator, space, run.recover_steps)
    # 11. summary and export
    write_summary(result, run.out)  # before exporting: nothing measured is lost if the export fails
    if result.best is None:
        result.infeasible = no_feasible(result, run.out, run.best_effort, run.export)
        logger.warning(result.infeasible)
    else:
        warn_if_busy(f"the chosen candidate (trial {result.best.record.number})", result.best.final.latency)
        logger.info(f"chosen: trial {result.best.record.number}, {_figures(result.best.final)} "
                    f"({result.best.record.recipe.describe()})")
        if run.export:
            result.export(run.out / "optimized")
    write_summary(result, run.out)  # again, with the export's path (or why nothing was exported)
    if tracker is not None:
        tracker.finish(result.summary(), result.export_path)
    return result


def log_trial(trial: optuna.trial.FrozenTrial, stored: StoredStudy, budget_s: float) -> None:
    """One line per finished trial (INFO): its number, state, figures, feasibility, recipe, and the best so far."""
    m, recipe = measurement_of(trial), recipe_of(trial)
    if trial.state.name != "COMPLETE" or m is None:
        logger.info(f"trial {trial.number} {trial.state.name}: {unscored_reason(trial, budget_s) or ''}")
        return
    best = max((r for r in stored.records() if r.score is not None and r.feasible(budget_s)),
               key=lambda r: r.score or 0.0, default=None)
    so_far = "none feasible yet" if best is None else f"best so far trial {best.number} ({_figures(best.measurement)})"
    logger.info(f"trial {trial.number} {trial.state.name}: {_figures(m)}, "
                f"{'feasible' if m.latency_s <= budget_s else 'over budget'}; {so_far} | "
                f"{recipe.describe() if recipe is not None else '-'}")


def unscored_reason(trial: optuna.trial.FrozenTrial, budget_s: float) -> str | None:
    """Why a finished trial has no quality: its failure, why it was not built, or its latency measured over the
    budget (that trial stores its measurement, not a reason)."""
    reason = fail_reason(trial) or skip_reason(trial)
    m = measurement_of(trial)
    if reason is None and m is not None and m.quality is None:
        return over_budget_reason(m.latency_s, budget_s)
    return reason


def write_summary(result: OptimizeResult, out: Path) -> None:
    (out / SUMMARY_JSON).write_text(json.dumps(result.summary(), indent=2, default=str) + "\n")


# -- a worker joining someone else's study ------------------------------------------------------------------
@dataclass(frozen=True)
class WorkResult:
    """What `work` did: trials this process ran, the study's finished count and target, this worker's name."""

    ran: int
    done: int
    target: int
    worker: str


def work(storage: str, study_name: str = "autoeff", *, model_path: str | None = None, threads: int | None = None,
         heartbeat_interval: int | None = None, grace_period: int | None = None,
         callbacks: Sequence[TrialCallback] = ()) -> WorkResult:
    """Run trials of an existing study until it reaches its target trial count (`autoeff worker`).

    The study must have been created by `optimize` (on any machine) and hold its settings, budget and target;
    this process resolves the same model itself (refusing one whose identity differs), measures trials on the
    study's device, and stops once the study's finished count reaches the target. The heartbeat settings
    default to the ones the coordinator stored.
    """
    plain = StoredStudy(load_existing(storage, study_name))
    settings = plain.settings()
    budget_s = plain.budget_s
    if budget_s is None:
        raise SearchError(f"study {study_name!r} has no budget yet: `autoeff optimize` is still measuring "
                          "the baseline; start workers once it shows trials running")
    stored_identity = plain.identity or {}
    interval, grace = plain.heartbeat
    rdb = open_storage(storage, heartbeat_interval=heartbeat_interval or interval,
                       grace_period=grace_period or (None if heartbeat_interval else grace))
    validate_device(settings.device)  # a one-line error on a machine without the study's device
    handle = resolve_model(settings.model, model_path=model_path, device=settings.device)
    if handle.identity != stored_identity.get("model_identity"):
        raise SearchError(f"model {settings.model!r} loaded here (identity {handle.identity}) differs from the one "
                          f"study {study_name!r} searches ({stored_identity.get('model_identity')}); pass "
                          "--model-path to the same weights")
    with WorkerRegistry.for_storage(storage, study_name) as registry:
        seed = worker_seed(settings.seed, worker_id())
        study = open_study(rdb, study_name, settings, handle.identity, directions=directions(settings),
                           sampler=make_sampler(settings.sampler, seed), create=False)
        stored = StoredStudy(study)
        context = context_for(handle, settings)
        steps = stored.steps_searched  # the coordinator's cut of the step range (stage 5)
        if steps is not None:
            context = dataclasses.replace(context, min_steps=steps[0], max_steps=steps[1])
        baseline = stored.baseline
        evaluator = Evaluator(handle, EvaluationSpec.of(settings), threads=threads)
        if baseline is not None:
            evaluator.follow(baseline)
        objective = Objective(SearchSpace(handle, settings.space, context), evaluator, budget_s, settings, baseline)
        refill = trial_loop(study, stored, settings, handle, context, budget_s, baseline, seed)
        ran = run_trials(study, objective, registry=registry, wait_for_running=False, catch=(CandidateFailed,),
                         callbacks=list(callbacks), refill=refill)
        counts = trial_counts(study, free_skips=settings.trials)
    return WorkResult(ran=ran, done=counts.done, target=settings.trials, worker=registry.token)


__all__ = ["optimize", "work", "Progress", "WorkResult", "STEP_HEADROOM", "plain_steps_that_fit", "stage_step_cap",
           "stage_calibrate", "trial_loop"]
