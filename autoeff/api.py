"""The Python API: `autoeff.optimize(...)` does what `autoeff optimize` does, and takes loaded pipelines too.

    import autoeff
    result = autoeff.optimize("digits", budget="10%", trials=24, out="autoeff-out")
    result.best.recipe, result.best.measurement, result.pareto
    result.export("optimized/")
    pipe = autoeff.load("optimized/")
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

from autoeff.budget import Budget, parse_budget
from autoeff.distributed import normalize_storage_url
from autoeff.export import export_pipeline
from autoeff.measurement import Measurement
from autoeff.models.handle import ModelHandle
from autoeff.recipe import Recipe
from autoeff.search import (
    Objective,
    SearchError,
    SearchSettings,
    TrialRecord,
    context_for,
    create_or_load_study,
    default_storage,
    load_records,
    pareto_front,
    settings_to_dict,
    warm_start_params,
)
from autoeff.search_spaces.base import SpaceContext
from autoeff.search_spaces.space import SearchSpace


class NoFeasibleCandidateError(SearchError):
    """No measured candidate met the budget."""

    def __init__(self, message: str, fastest: TrialRecord | None) -> None:
        super().__init__(message)
        self.fastest = fastest


@dataclass
class Finalist:
    """A front candidate re-measured on a larger quality sample and re-timed before the winner is chosen."""

    record: TrialRecord
    final: Measurement

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.record.number, "proxy": self.record.measurement.to_dict(),
                "final": self.final.to_dict()}


@dataclass
class OptimizeResult:
    """What a search produced.

    Attributes:
        best: the chosen finalist (its trial and its re-measured figures), or `None` when nothing met the
            budget.
        pareto: the feasible Pareto front (latency vs proxy quality) of all completed trials.
        records: every completed trial.
        baseline: the baseline's measured figures (latency and quality, same sample spec).
        finalists: every re-measured finalist.
        budget_s: the budget in seconds.
        export_path: the exported folder, when one was written.
    """

    handle: ModelHandle
    settings: SearchSettings
    context: SpaceContext
    study: optuna.Study
    records: list[TrialRecord]
    pareto: list[TrialRecord]
    baseline: dict[str, Any]
    budget_s: float
    finalists: list[Finalist] = field(default_factory=list)
    best: Finalist | None = None
    export_path: Path | None = None
    failed: list[dict[str, Any]] = field(default_factory=list)
    proxy_final_tau: float | None = None
    recovery: dict[str, Any] | None = None
    recovered_denoiser: Any = None

    def export(self, path: str | Path, record: TrialRecord | None = None, *, report: bool = True) -> Path:
        """Write the frozen pipeline of `record` (default: the winner) to `path`."""
        chosen = record or (self.best.record if self.best else None)
        if chosen is None:
            raise SearchError("nothing to export: no candidate met the budget (export a trial by number)")
        is_best = self.best is not None and chosen.number == self.best.record.number
        final = self.best.final if is_best else next((f.final for f in self.finalists
                                                      if f.record.number == chosen.number), None)
        measured = {"trial": chosen.number, "proxy": chosen.measurement.to_dict(),
                    "batch_size": self.settings.batch_size, "seed": self.settings.seed,
                    "metric": self.settings.metric,
                    "final": final.to_dict() if final else None}
        denoiser = self.recovered_denoiser if is_best else None
        if is_best and self.recovery is not None:
            measured["recovery"] = self.recovery

        def writer(folder: Path) -> None:
            if report:
                from autoeff.report import write_report

                write_report(self, folder, chosen=chosen)

        self.export_path = export_pipeline(self.handle, chosen.recipe, self.context, path, measured=measured,
                                           baseline=self.baseline, device=self.settings.device,
                                           extra_writer=writer, pruned_denoiser=denoiser)
        return self.export_path

    def summary(self) -> dict[str, Any]:
        return {
            "settings": settings_to_dict(self.settings),
            "budget_s": self.budget_s,
            "baseline": self.baseline,
            "trials": len(self.records),
            "failed": len(self.failed),
            "pareto": [r.to_dict() for r in self.pareto],
            "finalists": [f.to_dict() for f in self.finalists],
            "proxy_final_kendall_tau": self.proxy_final_tau,
            "recovery": self.recovery,
            "best": self.best.to_dict() if self.best else None,
            "best_recipe": self.best.record.recipe.to_dict() if self.best else None,
            "export_path": str(self.export_path) if self.export_path else None,
        }


def resolve_model(model: str | Any, model_path: str | None = None, device: str = "cpu",
                  dtype: str | None = None) -> ModelHandle:
    """A spec string -> `load_model`; a ModelHandle as is; a loaded diffusers pipeline -> its handle."""
    from autoeff.models.registry import handle_from_pipeline, load_model

    if isinstance(model, str | Path):
        return load_model(str(model), model_path=model_path, device=device, dtype=dtype)
    handle = model if isinstance(model, ModelHandle) else handle_from_pipeline(model)
    param = next(handle.denoiser.parameters(), None)
    if param is not None:
        import torch

        if param.device.type != torch.device(device).type:
            from autoeff.devices import DeviceError

            raise DeviceError(f"the pipeline is on {param.device.type} but device={device!r}: latency would be "
                              f"measured on the wrong device; move it first (pipe.to({device!r})) or pass "
                              f"device={param.device.type!r}")
    return handle


def default_metric(handle: ModelHandle) -> str:
    from autoeff.evaluation import default_metric as _dm

    return _dm(handle)


def optimize(
    model: str | Any,
    *,
    budget: str | Budget,
    device: str = "cpu",
    out: str | Path = "autoeff-out",
    space: str | Sequence[str] = ("solver", "schedule", "cache"),
    metric: str | None = None,
    trials: int = 30,
    sampler: str = "nsga2",
    seed: int = 0,
    batch_size: int = 1,
    proxy_samples: int | None = None,
    final_samples: int | None = None,
    top_k: int = 3,
    size_objective: bool = False,
    storage: str | None = None,
    study_name: str = "autoeff",
    min_steps: int = 2,
    max_steps: int = 50,
    warm_start: bool = True,
    trial_timeout_s: float | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    model_path: str | None = None,
    export: bool = True,
    best_effort: bool = False,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    progress: Callable[[dict[str, Any]], None] | None = None,
    threads: int | None = None,
    join: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    recover_steps: int = 0,
) -> OptimizeResult:
    """Search `model`'s knobs for the best quality within `budget` on `device`, and export the winner.

    `model` is a spec (`digits`, `sdxl`, a folder), a ModelHandle, or an already-loaded diffusers pipeline.
    Running the same call again with the same `out`/`storage` resumes the study: a trial left running by a
    killed process is failed and retried at once (at most that one candidate is measured again). With a
    shared `storage` (`postgresql://...`) this process coordinates: `autoeff worker` processes on other
    machines (`join`) run trials of the same study, and this one waits for every running trial before it
    selects and exports. `join` refuses to create the study (it must exist). Every RDB storage has Optuna
    heartbeats (`heartbeat_interval` seconds, default 20; `grace_period`, default 3 intervals): a worker
    that stops heartbeating has its trial failed and retried. Raises `NoFeasibleCandidateError` when
    nothing meets the budget (after exporting the fastest candidate if `best_effort`). `recover_steps` > 0
    distils the winner's pruned denoiser towards the unpruned one for that many steps (`prune.recover`), re-
    measures it and keeps (and exports) the recovered weights when they score at least as well.
    """
    from autoeff.distributed import HEARTBEAT_ATTR, SETTINGS_ATTR, TARGET_ATTR, WorkerRegistry, open_storage

    budget = parse_budget(budget) if isinstance(budget, str) else budget
    if isinstance(recover_steps, bool) or not isinstance(recover_steps, int) or recover_steps < 0:
        raise ValueError(f"recover_steps must be a whole number >= 0 (got {recover_steps!r})")
    handle = resolve_model(model, model_path=model_path, device=device)
    metric = metric or default_metric(handle)
    settings = SearchSettings(
        model=handle.spec, budget=budget, device=device, space=list(space.split(",") if isinstance(space, str)
                                                                    else space),
        metric=metric, trials=trials, sampler=sampler, seed=seed, batch_size=batch_size,
        proxy_samples=proxy_samples or (128 if handle.family.startswith("digits") else 16),
        final_samples=final_samples or (1000 if handle.family.startswith("digits") else 64),
        top_k=top_k, size_objective=size_objective, min_steps=min_steps, max_steps=max_steps,
        warm_start=warm_start, trial_timeout_s=trial_timeout_s, options=options or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = normalize_storage_url(storage) if storage else default_storage(out)
    rdb = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    from autoeff.distributed import worker_id, worker_seed

    study = create_or_load_study(settings, rdb, study_name, handle.identity, create=not join,
                                 sampler_seed=worker_seed(settings.seed, worker_id()) if join else None)
    if not join:  # a joiner runs the coordinator's study as stored; it never rewrites its settings or target
        study.set_user_attr(SETTINGS_ATTR, settings_to_dict(settings))
        study.set_user_attr(TARGET_ATTR, settings.trials)
        study.set_user_attr(HEARTBEAT_ATTR, {"interval": rdb.heartbeat_interval, "grace": rdb.grace_period})
    with WorkerRegistry.for_storage(storage, study_name) as registry:
        return _optimize_in_study(study, registry, handle, settings, out, threads=threads, export=export,
                                  best_effort=best_effort, callbacks=callbacks, progress=progress,
                                  recover_steps=recover_steps)


def _optimize_in_study(study: optuna.Study, registry: Any, handle: ModelHandle, settings: SearchSettings, out: Path,
                       *, threads: int | None, export: bool, best_effort: bool,
                       callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]],
                       progress: Callable[[dict[str, Any]], None] | None,
                       recover_steps: int = 0) -> OptimizeResult:
    from autoeff.distributed import run_trials
    from autoeff.evaluation import Evaluator

    budget = settings.budget
    context = context_for(handle, settings)
    evaluator = Evaluator(handle, settings, threads=threads)

    baseline = study.user_attrs.get("baseline")
    if baseline is None:
        baseline = evaluator.baseline()
        study.set_user_attr("baseline", baseline)
    evaluator.noise_floor = _noise_floor(baseline)
    budget_s = budget.resolve(baseline["latency_s"])
    study.set_user_attr("budget_s", budget_s)
    _recover_interrupted(study, registry)
    # plain steps that fit: the baseline's per-step latency (its fixed overhead included) against the budget
    per_step_s = baseline["latency_s"] / max(1, handle.default_steps)
    fit_steps = int(budget_s / per_step_s) if per_step_s > 0 else None
    context = _cap_steps(context, fit_steps)
    study.set_user_attr("steps_searched", [context.min_steps, context.max_steps])
    if settings.warm_start and not study.user_attrs.get("warm_started"):
        for params in warm_start_params(settings.space, context, fit_steps=fit_steps):
            study.enqueue_trial(params, user_attrs={"warm_start": True}, skip_if_exists=True)
        study.set_user_attr("warm_started", True)

    space_obj = SearchSpace(handle, settings.space, context)
    objective = Objective(space_obj, evaluator, budget_s, settings)
    started = time.monotonic()

    def info(state: str, reason: str | None) -> dict[str, Any]:
        feas = [r for r in load_records(study) if r.feasible(budget_s) and r.score is not None]
        return {"done": _finished_count(study), "total": settings.trials, "feasible": len(feas),
                "best_score": max((r.score for r in feas), default=None),
                "elapsed_s": time.monotonic() - started, "last_state": state, "last_reason": reason}

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if progress is not None:
            progress(info(trial.state.name, trial.user_attrs.get("fail_reason")))

    def waiting(counts: Any, target: int) -> None:
        if progress is not None:
            progress(info("WAITING", f"waiting for {counts.running} trial(s) running on other workers"))

    from autoeff.search import CandidateFailed

    run_trials(study, objective, registry=registry, wait_for_running=True, catch=(CandidateFailed,),
               callbacks=[report, *callbacks], on_wait=waiting)

    records = load_records(study)
    failed = [{"number": t.number, "reason": t.user_attrs.get("fail_reason", "")}
              for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))]
    result = OptimizeResult(handle=handle, settings=settings, context=context, study=study, records=records,
                            pareto=pareto_front(records, budget_s), baseline=baseline, budget_s=budget_s,
                            failed=failed)
    _select(result, evaluator, space_obj)
    if recover_steps and result.best is not None:
        _recover_best(result, evaluator, space_obj, recover_steps)
    (out / "summary.json").write_text(json.dumps(result.summary(), indent=2, default=str) + "\n")
    if result.best is None:
        fastest = min(records, key=lambda r: r.latency_s, default=None)
        retimed = [f for f in result.finalists if f.final.score is not None]
        if retimed:  # every finalist met the budget in the search but not when re-timed
            quickest = min(retimed, key=lambda f: f.final.latency_s)
            if best_effort and export:
                result.best = max(retimed, key=lambda f: f.final.score)
                result.export(out / "optimized")
            raise NoFeasibleCandidateError(
                f"{len(retimed)} finalist(s) met the budget of {budget_s * 1000:.1f} ms in the search but not when "
                f"re-timed (the quickest, trial {quickest.record.number}, took {quickest.final.latency_s * 1000:.1f} "
                "ms); measure on a quiet machine, raise the budget, or pass --best-effort", quickest.record)
        if best_effort and fastest is not None:
            if export:
                result.export(out / "optimized", record=fastest)
        feasible = [r for r in records if r.score is not None and r.feasible(budget_s)]
        if feasible:
            raise SearchError(f"{len(feasible)} candidate(s) met the budget in the search, but every finalist "
                              "failed when re-measured on the final sample; see summary.json for the reasons")
        msg = "no candidate met the budget of " + f"{budget_s * 1000:.1f} ms"
        if fastest is not None:
            msg += (f"; the fastest found was trial {fastest.number} at {fastest.latency_s * 1000:.1f} ms "
                    f"({fastest.recipe.describe()})")
        raise NoFeasibleCandidateError(msg, fastest)
    if export:
        result.export(out / "optimized")
    return result


def _select(result: OptimizeResult, evaluator: Any, space: SearchSpace) -> None:
    """Re-measure the top-k feasible candidates on the final sample and re-time them; pick the winner.

    If none of them meets the budget when re-timed, the next best candidates are re-measured as well (up to
    2 x top_k in all) before the search gives up.

    Guards against the winner's curse: the proxy's best is often lucky. Finalists are stored in the study
    so a rerun does not measure them again.
    """
    settings = result.settings
    feasible = [r for r in result.records if r.score is not None and r.feasible(result.budget_s)]
    feasible.sort(key=lambda r: r.score, reverse=True)
    cache = result.study.user_attrs.get("finalists", {})
    # When every one of the top_k is re-timed over the budget (candidates at the budget's edge on a noisy
    # machine), the next best are re-measured too, up to 2 x top_k in all, until one meets it.
    for attempt, rec in enumerate(feasible[: 2 * settings.top_k]):
        if attempt >= settings.top_k and any(f.final.latency_s <= result.budget_s and f.final.score is not None
                                             for f in result.finalists):
            break
        key = str(rec.number)
        if key in cache and cache[key].get("final_samples") == settings.final_samples:
            if cache[key].get("failed"):
                continue
            final = Measurement.from_dict(cache[key]["measurement"])
        else:
            from autoeff.search import recipe_is_simulated

            try:
                final = evaluator.remeasure(space.build(rec.recipe), result.budget_s,
                                            simulated=recipe_is_simulated(rec.recipe))
            except KeyboardInterrupt:
                raise
            except Exception as e:  # a finalist that fails on the larger sample is dropped, not fatal
                cache[key] = {"final_samples": settings.final_samples, "failed": f"{type(e).__name__}: {e}"[:500]}
                result.study.set_user_attr("finalists", cache)
                result.failed.append({"number": rec.number, "reason": f"finalist: {cache[key]['failed']}"})
                continue
            cache[key] = {"final_samples": settings.final_samples, "measurement": final.to_dict()}
            result.study.set_user_attr("finalists", cache)
        result.finalists.append(Finalist(rec, final))
    ok = [f for f in result.finalists if f.final.latency_s <= result.budget_s and f.final.score is not None]
    if ok:
        result.best = max(ok, key=lambda f: f.final.score)
    if len(result.finalists) >= 2:  # does the proxy rank the finalists like the larger final sample does?
        from autoeff.evaluators.agreement import kendall_tau

        tau = kendall_tau([f.record.score for f in result.finalists], [f.final.score for f in result.finalists])
        result.proxy_final_tau = None if math.isnan(tau) else tau


def _noise_floor(baseline: dict[str, Any] | None) -> float | None:
    """The baseline's relative latency spread, stored with it; every measurement reports it."""
    return ((baseline or {}).get("latency") or {}).get("rel_spread")


# How many times more steps than fit the budget plainly the search still tries: the other knobs together
# (DeepCache N=5 ~2x, int8 and pruning 1.1-1.3x on the digits U-Net, BENCHMARKS.md) cannot buy back more.
STEP_HEADROOM = 3.0


def _cap_steps(context: SpaceContext, fit_steps: int | None) -> SpaceContext:
    """The context with the schedule's step range cut to what can meet the budget.

    Step counts far above `fit_steps` are over budget whatever else a candidate does; drawing them spends
    trials on certain failures (a 10 % budget of a 50-step baseline leaves ~5 steps, and a search over
    2..50 drew 28 and 31). Derived from the stored baseline and budget only, so a resumed run and every
    worker of a shared study cap the range the same way.
    """
    if fit_steps is None:
        return context
    cap = max(context.min_steps, min(context.max_steps, math.ceil(STEP_HEADROOM * max(1, fit_steps))))
    return replace(context, max_steps=cap)


def _recover_best(result: OptimizeResult, evaluator: Any, space: SearchSpace, steps: int) -> None:
    """Distil the winner's pruned denoiser towards the unpruned one, re-measure, keep it if not worse.

    Issue-3 contract: recovery is for the chosen candidate only (a search over recovered candidates would
    cost `steps` training steps per trial). The recovered pipeline is re-measured on the same final sample
    and re-timed; it replaces the winner's figures only when it still meets the budget and scores at least as
    well, so `--recover-steps` can never make the exported pipeline worse than the search's pick.
    """
    from autoeff.search import recipe_is_simulated
    from autoeff.search_spaces import knob_module

    best = result.best
    assert best is not None
    cfg = best.record.recipe.knobs.get("prune")
    if cfg is None or cfg.is_identity():
        result.recovery = {"steps": steps, "applied": False, "reason": "the chosen candidate prunes nothing"}
        return
    prune = knob_module("prune")
    base = result.handle.pipeline
    started = time.monotonic()
    try:
        pruned = prune.apply(base, cfg, result.context)  # a copy: the base is untouched
        recovered = prune.recover(pruned, base, result.context, steps=steps, seed=result.settings.seed)
        denoiser = getattr(recovered, result.context.denoiser)
        after = evaluator.remeasure(space.build(best.record.recipe, pruned_denoiser=denoiser), result.budget_s,
                                    simulated=recipe_is_simulated(best.record.recipe))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # recovery is an extra: its failure keeps the search's winner as measured
        result.recovery = {"steps": steps, "applied": False, "reason": f"{type(e).__name__}: {e}"[:500]}
        return
    kept = (after.score is not None and best.final.score is not None and after.score >= best.final.score
            and after.latency_s <= result.budget_s)
    result.recovery = {"steps": steps, "applied": True, "kept": kept, "wall_s": time.monotonic() - started,
                       "before": best.final.to_dict(), "after": after.to_dict()}
    if kept:
        result.best = Finalist(best.record, after)
        result.recovered_denoiser = denoiser


def _finished_count(study: optuna.Study) -> int:
    """Finished candidates, each once: a failed trial superseded by its retry is not counted."""
    from autoeff.distributed import trial_counts

    return trial_counts(study).done


def _recover_interrupted(study: optuna.Study, registry: Any) -> list[int]:
    """Resume: a trial left RUNNING by a process that is gone (killed, crashed) is marked FAIL with its
    reason and retried with the same params, so at most that one candidate is measured again. Trials of
    live processes (other workers) are never touched; those of other machines are left to the heartbeats
    (`autoeff.distributed`)."""
    from autoeff.distributed import recover_orphans

    return recover_orphans(study, registry)


def load_result(out: str | Path, storage: str | None = None, study_name: str = "autoeff") -> dict[str, Any]:
    """Read a study's records and baseline back from storage (for `autoeff show` / `export`)."""
    out = Path(out)
    storage = normalize_storage_url(storage) if storage else default_storage(out)
    study = optuna.load_study(study_name=study_name, storage=storage)
    return {"study": study, "records": load_records(study), "baseline": study.user_attrs.get("baseline"),
            "budget_s": study.user_attrs.get("budget_s")}


def join(
    storage: str,
    study_name: str = "autoeff",
    *,
    model_path: str | None = None,
    threads: int | None = None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
) -> dict[str, Any]:
    """Run trials of an existing study until it reaches its target trial count (`autoeff worker`).

    The study must have been created by `optimize` (on any machine) and hold its settings, budget and
    target; this process resolves the same model itself (refusing one whose identity differs), measures
    trials on the study's device, and stops once the study's finished count reaches the target. The
    heartbeat settings default to the ones the coordinator stored. Returns `{"ran": n, "done": d,
    "target": t}`.
    """
    from autoeff.distributed import (
        HEARTBEAT_ATTR,
        WorkerRegistry,
        open_storage,
        run_trials,
        study_settings,
        trial_counts,
        worker_id,
        worker_seed,
    )
    from autoeff.evaluation import Evaluator
    from autoeff.search import CandidateFailed

    plain = _load_existing(storage, study_name)
    settings, budget_s = study_settings(plain)
    stored_identity = plain.user_attrs["settings_identity"]
    beat = plain.user_attrs.get(HEARTBEAT_ATTR) or {}
    rdb = open_storage(storage, heartbeat_interval=heartbeat_interval or beat.get("interval"),
                       grace_period=grace_period or (None if heartbeat_interval else beat.get("grace")))
    from autoeff.devices import validate_device

    validate_device(settings.device)  # a one-line error on a machine without the study's device
    handle = resolve_model(settings.model, model_path=model_path, device=settings.device)
    if handle.identity != stored_identity.get("model_identity"):
        raise SearchError(f"model {settings.model!r} loaded here (identity {handle.identity}) differs from the one "
                          f"study {study_name!r} searches ({stored_identity.get('model_identity')}); pass "
                          "--model-path to the same weights")
    with WorkerRegistry.for_storage(storage, study_name) as registry:
        study = create_or_load_study(settings, rdb, study_name, handle.identity, create=False,
                                     sampler_seed=worker_seed(settings.seed, worker_id()))
        context = context_for(handle, settings)
        steps = study.user_attrs.get("steps_searched")  # the coordinator's cut of the step range (_cap_steps)
        if steps:
            context = replace(context, min_steps=int(steps[0]), max_steps=int(steps[1]))
        evaluator = Evaluator(handle, settings, threads=threads)
        evaluator.noise_floor = _noise_floor(study.user_attrs.get("baseline"))
        objective = Objective(SearchSpace(handle, settings.space, context), evaluator, budget_s, settings)
        ran = run_trials(study, objective, registry=registry, wait_for_running=False, catch=(CandidateFailed,),
                         callbacks=list(callbacks))
        counts = trial_counts(study)
    return {"ran": ran, "done": counts.done, "target": settings.trials, "worker": registry.token}


def _load_existing(storage: str, study_name: str) -> optuna.Study:
    """The study as stored (no sampler, no heartbeats), refusing a missing one with a one-line error."""
    from autoeff.distributed import mask_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise SearchError(f"no study named {study_name!r} in {mask_url(storage)}; create it first with "
                          f"`autoeff optimize --storage ... --study-name {study_name}`") from None
    except Exception as e:  # sqlalchemy errors: unreachable server, bad URL, missing driver
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SearchError(f"cannot open storage {mask_url(storage)!r}: {type(e).__name__}: {first}") from None


__all__ = ["optimize", "join", "OptimizeResult", "NoFeasibleCandidateError", "Recipe", "load_result"]
