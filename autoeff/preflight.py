"""Every check a search makes before it writes anything, in one place for the CLI and the API.

`preflight(model, settings, run)` refuses, with one line: a device this machine lacks, an `--out` that is a
file, a storage URL that cannot hold a study (read-only check), a model that cannot be loaded, a metric that
does not fit the model, knob options that are unknown or out of range, a search space that cannot draw a
candidate for this model (a step range beyond its training timesteps, say), and a study of that name made for
another model, budget or space. It returns the `Preflight` a run (`autoeff.run.optimize`) starts from.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autoeff.devices import validate_device
from autoeff.errors import IncompatibleStudyError, SearchError, SettingsError
from autoeff.evaluators.quality import make_quality
from autoeff.manifest import export_containing
from autoeff.models.handle import ModelHandle
from autoeff.models.registry import resolve_model
from autoeff.search import context_for
from autoeff.search_spaces.base import ConfigError, SpaceContext
from autoeff.search_spaces.registry import get_knob
from autoeff.search_spaces.space import SearchSpace
from autoeff.settings import GRACE_FACTOR, HEARTBEAT_INTERVAL_S, RunOptions, SearchSettings
from autoeff.storage import check_storage, mask_url, open_rdb, sqlite_path, storage_url, unwritable
from autoeff.study import StoredStudy, incompatibility
from autoeff.tracking import check_uri
from autoeff.workers import coordinator_conflict, worker_id
from autoeff.workload import apply_workload


@dataclass
class Preflight:
    """A checked request: the loaded model, the settings resolved for it, how to run, and what it will create.

    `creates`: paths that do not exist yet and the run would create (a new --out, a new SQLite file); a run
    that fails before its first trial removes them again.
    """

    handle: ModelHandle
    settings: SearchSettings
    run: RunOptions
    storage_url: str
    context: SpaceContext
    creates: list[Path]
    searched: list[str]


def check_metric(metric: str, handle: ModelHandle, device: str, reference: str | None = None) -> None:
    """Build the metric once: it must fit the model (and the `--reference` folder), and its weights must be here."""
    try:
        make_quality(metric, handle, device=device, reference_dir=reference)
    except (ValueError, FileNotFoundError) as e:
        raise SettingsError(f"--metric {metric}: {' '.join(str(e).split())}") from None
    except ImportError as e:
        raise SettingsError(f"--metric {metric} needs {e.name or 'an optional package'}, which is not installed; "
                            "pip install 'autoeff[clip]'") from None


def check_space(handle: ModelHandle, settings: SearchSettings, context: SpaceContext) -> list[str]:
    """Every knob's options parse, and the space draws one candidate for this model (nothing is built); returns
    the knobs searched (those that apply to the model)."""
    for name in sorted(set(settings.space) | set(settings.options)):
        try:
            get_knob(name).options_for(context)
        except ConfigError as e:
            raise SettingsError(f"options: {e}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=settings.seed)).ask()
    try:
        space = SearchSpace(handle, settings.space, context)
        space.suggest(trial)
    except ConfigError as e:
        raise SettingsError(f"the search space cannot draw a candidate for this model: {e}") from None
    return space.knobs


def check_existing_study(url: str, run: RunOptions, settings: SearchSettings, model_identity: str) -> None:
    """Refuse to resume (or join) a study made for another model, budget or settings; reads only."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=run.study_name, storage=open_rdb(optuna.storages.RDBStorage, url))
    except KeyError:
        if run.join:
            raise SearchError(f"no study named {run.study_name!r} in {mask_url(url)}; create it first with "
                              f"`autoeff optimize --storage ... --study-name {run.study_name}`") from None
        return
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise SearchError(f"cannot open storage {mask_url(url)!r}: {type(e).__name__}: {first}") from None
    stored = StoredStudy(study)
    if stored.identity is None and not run.join:
        return  # a study nobody initialized yet (its creator stopped at once): this run initializes it
    why = incompatibility(stored, settings, model_identity, mask_url(url))
    if why is not None:
        raise IncompatibleStudyError(why)
    interval, grace = stored.heartbeat
    busy = None if run.join else coordinator_conflict(stored, worker_id(), float(grace or GRACE_FACTOR * (
        interval or HEARTBEAT_INTERVAL_S)))
    if busy is not None:
        raise SearchError(busy)


def writable_folder(path: Path, flag: str) -> None:
    """`path` is a folder this process can write into, or can be created where it can write."""
    if path.exists() and not path.is_dir():
        raise SettingsError(f"{flag} {str(path)!r} is a file; give a folder")
    why = unwritable(path)
    if why is not None:
        raise SettingsError(f"{flag} {str(path)!r} cannot be written: {why}; choose a folder you can write")


def check_threads(threads: int | None) -> None:
    cpus = os.cpu_count() or 1
    if threads is not None and threads > cpus:
        raise SettingsError(f"--threads {threads} is more than the {cpus} CPUs of this machine; give at most "
                            f"{cpus}")


def check_steps(settings: SearchSettings, handle: ModelHandle) -> None:
    """The step range must fit the model's training schedule."""
    n = handle.num_train_timesteps
    if settings.max_steps > n:
        raise SettingsError(f"--max-steps {settings.max_steps} is more than the {n} training timesteps of this "
                            f"model; give at most {n}")


def preflight(model: str | Path | ModelHandle | Any, settings: SearchSettings, run: RunOptions) -> Preflight:
    """Check a request (see the module docstring); nothing is created or written."""
    settings = dataclasses.replace(settings, device=validate_device(settings.device))
    check_threads(run.threads)
    writable_folder(run.out, "--out")
    inside = export_containing(run.out)
    if inside is not None:
        raise SettingsError(f"--out {str(run.out)!r} is inside the export {inside}; choose a folder outside it")
    url = storage_url(run.storage, run.out)
    has_studies = check_storage(url, "--storage" if run.storage else "the study in --out",
                                new_parent_must_exist=run.storage is not None)
    if run.mlflow_uri is not None:
        check_uri(run.mlflow_uri)
    if run.join and not has_studies:
        raise SearchError(f"no study named {run.study_name!r} in {mask_url(url)}; create it first with "
                          f"`autoeff optimize --storage ... --study-name {run.study_name}`")
    if settings.dtype is not None and not isinstance(model, str | Path):
        raise SettingsError("dtype applies to a model autoeff loads; cast a pipeline you pass yourself "
                            "(pipe.to(torch.float16)) and leave dtype unset")
    handle = resolve_model(model, model_path=run.model_path, device=settings.device,  # model errors before output
                           offline=run.offline or None, dtype=settings.dtype)
    handle = dataclasses.replace(handle)  # the workload is set on a copy: a handle passed in stays as it was
    apply_workload(handle, settings)
    if settings.metric is not None:
        check_metric(settings.metric, handle, settings.device, settings.reference)
    settings = settings.resolved(handle)
    check_steps(settings, handle)
    context = context_for(handle, settings)
    searched = check_space(handle, settings, context)
    if has_studies:
        check_existing_study(url, run, settings, handle.identity)
    db = sqlite_path(url)
    creates = [p for p in (run.out, db) if p is not None and not p.exists()]
    return Preflight(handle=handle, settings=settings, run=run, storage_url=url, context=context, creates=creates,
                     searched=searched)


__all__ = ["Preflight", "preflight", "check_metric", "check_space", "check_existing_study"]
