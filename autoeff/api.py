"""The Python API: `autoeff.optimize(...)` does what `autoeff optimize` does, and takes loaded pipelines too.

    import autoeff
    result = autoeff.optimize("digits", budget="10%", trials=24, out="autoeff-out")
    result.best.recipe, result.best.final, result.pareto
    result.export("optimized/")
    pipe = autoeff.load("optimized/")

A facade: the settings schema is `autoeff.settings`, the checks `autoeff.preflight`, the stages `autoeff.run`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autoeff.budget import Budget, parse_budget
from autoeff.config_file import read_config
from autoeff.errors import IncompatibleStudyError, NoFeasibleCandidateError, SearchError, SettingsError
from autoeff.models.handle import ModelHandle
from autoeff.preflight import preflight
from autoeff.recipe import Recipe
from autoeff.result import OptimizeResult
from autoeff.run import Progress, TrialCallback, WorkResult, work
from autoeff.run import optimize as run_optimize
from autoeff.settings import DEFAULT_SPACE, RunOptions, SearchSettings
from autoeff.storage import storage_url
from autoeff.study import StoredStudy, TrialRecord, load_existing


def optimize(
    model: str | Path | ModelHandle | Any,
    *,
    budget: str | Budget,
    device: str = "cpu",
    space: str | Sequence[str] = DEFAULT_SPACE,
    metric: str | None = None,
    trials: int = 30,
    sampler: str = "fill",
    seed: int = 0,
    batch_size: int = 1,
    proxy_samples: int | None = None,
    final_samples: int | None = None,
    top_k: int = 3,
    size_objective: bool = False,
    min_steps: int = 2,
    max_steps: int = 50,
    warm_start: bool = True,
    trial_timeout_s: float | None = None,
    compile_budget_s: float | None = None,
    prompts: str | Path | Sequence[str] | None = None,
    negative_prompt: str | None = None,
    labels: str | Sequence[int] | None = None,
    resolution: int | None = None,
    guidance_scale: float | None = None,
    steps: int | None = None,
    dtype: str | None = None,
    reference: str | Path | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    out: str | Path = "autoeff-out",
    storage: str | None = None,
    study_name: str = "autoeff",
    model_path: str | None = None,
    offline: bool = False,
    threads: int | None = None,
    join: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    best_effort: bool = False,
    mlflow_uri: str | None = None,
    recover_steps: int = 0,
    export: bool = True,
    callbacks: Sequence[TrialCallback] = (),
    progress: Callable[[Progress], None] | None = None,
) -> OptimizeResult:
    """Search `model`'s knobs for the best quality within `budget` on `device`, and export the winner.

    `model` is a spec (`digits`, `sdxl`, a folder), a ModelHandle, or an already-loaded diffusers pipeline.
    The keywords are the fields of `autoeff.settings.SearchSettings` (what defines the search) and
    `RunOptions` (how this process runs it); the CLI's `autoeff optimize` flags are the same fields. Every value
    is checked before anything is loaded or written (`SettingsError`), and the model, storage, metric and
    space before anything is written (`autoeff.preflight`).

    Running the same call again with the same `out`/`storage` resumes the study: a trial left running by a
    killed process is failed and retried at once (at most that one candidate is measured again). With a
    shared `storage` (`postgresql://...`) this process coordinates: `autoeff worker` processes on other
    machines run trials of the same study, and this one waits for every running trial before it selects and
    exports. `join` refuses to create the study (it must exist). Every RDB storage has Optuna heartbeats
    (`heartbeat_interval` seconds, default 20; `grace_period`, default 3 intervals): a worker that stops
    heartbeating has its trial failed and retried. When nothing meets the budget the result comes back with
    `best=None` and `infeasible` saying why (the fastest candidate exported if `best_effort`);
    `result.raise_if_infeasible()` raises `NoFeasibleCandidateError` carrying it. A hub id not in the local
    cache is downloaded like diffusers' `from_pretrained` unless `offline` (or `HF_HUB_OFFLINE=1`).
    `recover_steps` > 0 distils the winner's pruned denoiser towards the unpruned one for that many steps,
    re-measures it and keeps (and exports) the recovered weights when they score at least as well.

    The workload, as on the command line: `prompts` (a text file, one prompt per line, or a list), a
    `negative_prompt`, class `labels`, the `resolution`, `guidance_scale` and `steps` of the baseline, the
    weights' `dtype` (for a model autoeff loads), and `reference`, a folder of real images to score FID/KID
    against (the default metric then).
    """
    settings = SearchSettings(
        model=str(model) if isinstance(model, str | Path) else "<pipeline>",
        budget=parse_budget(budget) if isinstance(budget, str) else budget,
        device=device, space=list(space.split(",")) if isinstance(space, str) else list(space), metric=metric,
        trials=trials, sampler=sampler, seed=seed, batch_size=batch_size, proxy_samples=proxy_samples,
        final_samples=final_samples, top_k=top_k, size_objective=size_objective, min_steps=min_steps,
        max_steps=max_steps, warm_start=warm_start, trial_timeout_s=trial_timeout_s,
        compile_budget_s=compile_budget_s,
        prompts=prompts if prompts is None or isinstance(prompts, str | Path) else list(prompts),  # type: ignore[arg-type]
        negative_prompt=negative_prompt,
        labels=labels if labels is None or isinstance(labels, str) else list(labels),  # type: ignore[arg-type]
        resolution=resolution, guidance_scale=guidance_scale, steps=steps, dtype=dtype,
        reference=None if reference is None else str(reference), options=dict(options or {}))
    run = RunOptions(out=Path(out), storage=storage, study_name=study_name, model_path=model_path, offline=offline,
                     threads=threads, join=join, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                     best_effort=best_effort, mlflow_uri=mlflow_uri, recover_steps=recover_steps, export=export)
    return run_optimize(preflight(model, settings, run), callbacks=callbacks, progress=progress)


def optimize_from_config(config: str | Path, model: str | Path | ModelHandle | Any = None,
                         **overrides: Any) -> OptimizeResult:
    """`optimize` with the settings of a run configuration file (TOML or YAML, the CLI's flag names; every run
    writes its own as `OUT/run.toml`); `model` and keyword `overrides` win over the file."""
    values = {**read_config(config), **overrides}
    from_file = values.pop("model", None)
    model = model if model is not None else from_file
    if model is None:
        raise SettingsError(f"{config} names no model; add `model = \"...\"` to it or pass model=")
    return optimize(model, **values)


def join(storage: str, study_name: str = "autoeff", *, model_path: str | None = None, threads: int | None = None,
         heartbeat_interval: int | None = None, grace_period: int | None = None,
         callbacks: Sequence[TrialCallback] = ()) -> WorkResult:
    """Run trials of an existing study until it reaches its target trial count (`autoeff worker`); see
    `autoeff.run.work`."""
    return work(storage, study_name, model_path=model_path, threads=threads, heartbeat_interval=heartbeat_interval,
                grace_period=grace_period, callbacks=callbacks)


def load_result(out: str | Path, storage: str | None = None, study_name: str = "autoeff"
                ) -> tuple[StoredStudy, list[TrialRecord]]:
    """A finished (or running) study and its completed trials, read back from storage (`autoeff show`)."""
    stored = StoredStudy(load_existing(storage_url(storage, Path(out)), study_name))
    return stored, stored.records()


__all__ = ["optimize", "optimize_from_config", "join", "load_result", "OptimizeResult", "Progress", "WorkResult",
           "Recipe", "NoFeasibleCandidateError", "SearchError", "SettingsError", "IncompatibleStudyError"]
