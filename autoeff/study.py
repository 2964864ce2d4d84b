"""The study's stored schema: every attribute autoeff keeps in an Optuna study and its trials, typed.

No other module reads or writes a study or trial attribute by its string key (`tests/test_architecture.py`
checks it): they go through `StoredStudy` (the study's attributes) and the trial functions below. What is
stored:

| where | attribute | type | written by |
| --- | --- | --- | --- |
| study | `settings_identity` | settings fields that must match to resume, plus the model identity | creation |
| study | `budget` | the budget as the user wrote it (`10%`, `200ms`) | creation |
| study | `created` | creation time | creation |
| study | `objective` | `{version, names}`: what the trial values are (2: latency ms, raw metric, size MB) | creation |
| study | `settings` | `SearchSettings.to_dict()` of the coordinator's latest run | coordinator |
| study | `target_trials` | finished trials to reach (`--trials`) | coordinator |
| study | `heartbeat` | `{interval, grace}` seconds, the coordinator's | coordinator |
| study | `coordinator` | `{owner, beat}`: the process coordinating now and its last beat (unix time) | coordinator |
| study | `baseline` | `Baseline.to_dict()` | run, once |
| study | `budget_s` | the budget in seconds (resolved against the baseline) | run |
| study | `steps_searched` | `[min, max]` step range after the budget cut | run |
| study | `latency_calibration` | `[{evals, latency_s, rel_spread}]`: the pipeline at two step counts | run, once |
| study | `warm_started` | the hand-picked configurations were chosen | run, once |
| study | `warm_start_queue` | their trial params not enqueued yet (one enqueued when none waits) | run, workers |
| study | `finalists` | trial number -> re-measurement on the final sample (or why it failed) | selection |
| study | `rungs` | trial number -> {n -> quality on the first n final-set images (or why it failed)} | selection |
| study | `retimes` | trial number -> its latency re-timed before it became a finalist | selection |
| trial | `recipe` | `Recipe.to_dict()` | objective |
| trial | `measurement` | `Measurement.to_dict()` | objective |
| trial | `constraint` | latency minus budget, seconds (<= 0 is feasible) | objective |
| trial | `fail_reason` | why the trial failed | objective, workers |
| trial | `prediction` | the latency model's prediction before it was built (`latency_model.Prediction`) | objective |
| trial | `skipped` | why it was not built: predicted clearly over budget (PRUNED, no measurement) | objective |
| trial | `planned` | which step of the budget-filling loop enqueued it (`schedule`, `positions`, ...) | planner |
| trial | `worker` | the process that ran it (`host/pid-namespace/pid`) | workers |
| trial | `warm_start` | enqueued as a hand-picked configuration | warm start |
| trial | `contender` | `{samples, quality}` or `{samples, failed}`: its first-rung score (`selection`) | objective |

`recipe`, `measurement`, `constraint`, `fail_reason`, `prediction`, `skipped`, `contender` and `worker` describe one
attempt: a retry of a failed trial starts without them (`candidate_attrs`).

A study made before `objective` version 2 (trial values -FID, and a placeholder score for a candidate whose
quality was not measured) is refused with one line (`incompatibility`); its trials are not comparable.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from autoeff.budget import Budget, BudgetError, parse_budget
from autoeff.errors import IncompatibleStudyError, SearchError
from autoeff.evaluators.latency import LatencyResult
from autoeff.evaluators.quality import QualityResult
from autoeff.measurement import Baseline, Measurement
from autoeff.optuna_compat import storage_of, trial_id
from autoeff.recipe import Recipe
from autoeff.settings import SearchSettings
from autoeff.storage import mask_url, open_rdb

# -- keys (private: use the accessors) ---------------------------------------------------------------------
_IDENTITY = "settings_identity"
_BUDGET_TEXT = "budget"
_CREATED = "created"
_OBJECTIVE = "objective"
_CALIBRATION = "latency_calibration"
_RUNGS = "rungs"
_RETIMES = "retimes"
_PREDICTION = "prediction"
_SKIPPED = "skipped"
_PLANNED = "planned"
_SETTINGS = "settings"
_TARGET = "target_trials"
_HEARTBEAT = "heartbeat"
_COORDINATOR = "coordinator"
_BASELINE = "baseline"
_BUDGET_S = "budget_s"
_STEPS = "steps_searched"
_WARM_STARTED = "warm_started"
_WARM_QUEUE = "warm_start_queue"
_FINALISTS = "finalists"
_RECIPE = "recipe"
_MEASUREMENT = "measurement"
_CONSTRAINT = "constraint"
_FAIL_REASON = "fail_reason"
_WORKER = "worker"
_WARM_START = "warm_start"
_CONTENDER = "contender"
_ATTEMPT_ATTRS = frozenset({_FAIL_REASON, _WORKER, _RECIPE, _MEASUREMENT, _CONSTRAINT, _PREDICTION, _SKIPPED,
                            _CONTENDER})
_REASON_LIMIT = 2000
# What the trial values mean (the `objective` attribute's version): 2 = latency ms, the raw metric, size MB.
OBJECTIVE_VERSION = 2


@dataclass(frozen=True)
class FinalistEntry:
    """A finalist's re-measurement on `final_samples` images, or why it failed (`failed`)."""

    final_samples: int
    measurement: Measurement | None = None
    failed: str | None = None


@dataclass
class TrialRecord:
    """A measured trial as read back from storage: COMPLETE, or PRUNED after its latency was measured clearly
    over budget (its `score` is None: quality was not spent on it)."""

    number: int
    recipe: Recipe
    measurement: Measurement
    params: dict[str, Any]
    warm_start: bool = False
    # `(samples, quality)` on the first rung of the halving, measured during the search (`search.Objective`)
    contender: tuple[int, QualityResult] | None = None

    @property
    def latency_s(self) -> float:
        return self.measurement.latency_s

    @property
    def score(self) -> float | None:
        return self.measurement.score

    def feasible(self, budget_s: float) -> bool:
        return self.measurement.latency_s <= budget_s

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "recipe": self.recipe.to_dict(), "measurement": self.measurement.to_dict(),
                "params": self.params, "warm_start": self.warm_start,
                "contender": None if self.contender is None else {"samples": self.contender[0],
                                                                  "quality": self.contender[1].to_dict()}}


class StoredStudy:
    """Typed access to the attributes autoeff stores on an Optuna study (see the module docstring)."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    @property
    def name(self) -> str:
        return self.study.study_name

    def _get(self, key: str) -> Any:
        return self.study.user_attrs.get(key)

    # -- written once, at creation -----------------------------------------------------------------------
    @property
    def identity(self) -> dict[str, Any] | None:
        value = self._get(_IDENTITY)
        return value if isinstance(value, dict) else None

    @property
    def budget_text(self) -> str | None:
        value = self._get(_BUDGET_TEXT)
        return value if isinstance(value, str) else None

    def initialize(self, settings: SearchSettings, model_identity: str, metric_names: Sequence[str] = ()) -> None:
        """Mark a new study as autoeff's: what must match to resume it, its budget, when it was made, what its
        trial values are (also as Optuna's metric names, which the dashboard and plots show); its settings are
        the coordinator's (`set_run`)."""
        self.study.set_user_attr(_IDENTITY, settings.identity(model_identity))
        self.study.set_user_attr(_BUDGET_TEXT, settings.budget.text)
        self.study.set_user_attr(_CREATED, time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.study.set_user_attr(_OBJECTIVE, {"version": OBJECTIVE_VERSION, "names": list(metric_names)})
        if metric_names:
            with warnings.catch_warnings():  # experimental since Optuna 3.2, still in 5.0
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(list(metric_names))

    @property
    def objective_version(self) -> int:
        """What the trial values mean: `OBJECTIVE_VERSION`, or 1 for a study made before it was recorded."""
        value = self._get(_OBJECTIVE)
        return int(value.get("version", 1)) if isinstance(value, dict) else 1

    # -- the coordinator's settings ----------------------------------------------------------------------
    def set_run(self, settings: SearchSettings, heartbeat_interval: int, grace_period: int) -> None:
        """The coordinator's settings (a resume may change the non-identity ones), target and heartbeats."""
        self.study.set_user_attr(_SETTINGS, settings.to_dict())
        self.study.set_user_attr(_TARGET, settings.trials)
        self.study.set_user_attr(_HEARTBEAT, {"interval": heartbeat_interval, "grace": grace_period})

    def set_target_trials(self, target: int) -> None:
        self.study.set_user_attr(_TARGET, int(target))

    @property
    def target_trials(self) -> int:
        target = self._get(_TARGET)
        if not isinstance(target, int) or isinstance(target, bool) or target < 1:
            raise SearchError(f"study {self.name!r} has no target trial count; it was not created by "
                              "`autoeff optimize`")
        return target

    @property
    def coordinator(self) -> tuple[str, float] | None:
        """`(owner, last beat as unix time)` of the process coordinating the study, or None."""
        value = self._get(_COORDINATOR)
        if not isinstance(value, dict) or not isinstance(value.get("owner"), str):
            return None
        beat = value.get("beat")
        return value["owner"], float(beat) if isinstance(beat, int | float) else 0.0

    def set_coordinator(self, owner: str | None, beat: float | None = None) -> None:
        """Record (or, with None, release) the coordinating process and its beat."""
        self.study.set_user_attr(_COORDINATOR, None if owner is None else {"owner": owner, "beat": beat})

    @property
    def heartbeat(self) -> tuple[int | None, int | None]:
        """The coordinator's `(interval, grace)` seconds, or `(None, None)`."""
        beat = self._get(_HEARTBEAT)
        if not isinstance(beat, dict):
            return None, None
        return beat.get("interval"), beat.get("grace")

    def settings(self) -> SearchSettings:
        """The SearchSettings `autoeff optimize` stored (budget and trial count as stored beside them)."""
        missing = [k for k in (_IDENTITY, _SETTINGS, _BUDGET_TEXT, _TARGET) if self._get(k) is None]
        if missing:
            raise SearchError(f"study {self.name!r} lacks {', '.join(missing)}: it was not created by "
                              "`autoeff optimize` (or by an older autoeff); start it with `autoeff optimize "
                              "--storage ... --study-name ...`")
        stored = dict(self._get(_SETTINGS))
        stored["budget"] = self._get(_BUDGET_TEXT)
        stored["trials"] = self.target_trials
        return SearchSettings.from_dict(stored)

    # -- the run's figures --------------------------------------------------------------------------------
    @property
    def baseline(self) -> Baseline | None:
        value = self._get(_BASELINE)
        return None if value is None else Baseline.from_dict(value)

    def set_baseline(self, baseline: Baseline) -> None:
        self.study.set_user_attr(_BASELINE, baseline.to_dict())

    @property
    def budget_s(self) -> float | None:
        value = self._get(_BUDGET_S)
        return None if value is None else float(value)

    def set_budget_s(self, seconds: float) -> None:
        self.study.set_user_attr(_BUDGET_S, float(seconds))

    @property
    def steps_searched(self) -> tuple[int, int] | None:
        value = self._get(_STEPS)
        return None if not value else (int(value[0]), int(value[1]))

    def set_steps_searched(self, low: int, high: int) -> None:
        self.study.set_user_attr(_STEPS, [int(low), int(high)])

    @property
    def latency_calibration(self) -> list[dict[str, float]]:
        """The pipeline timed at a few step counts before the trials (`run.stage_calibrate`)."""
        value = self._get(_CALIBRATION)
        return [dict(p) for p in value] if isinstance(value, list) else []

    def set_latency_calibration(self, points: Sequence[dict[str, float]]) -> None:
        self.study.set_user_attr(_CALIBRATION, [dict(p) for p in points])

    @property
    def warm_started(self) -> bool:
        return bool(self._get(_WARM_STARTED))

    def set_warm_starts(self, picks: list[dict[str, Any]]) -> None:
        """Store the hand-picked configurations, to be enqueued one at a time (`enqueue_next_warm_start`)."""
        self.study.set_user_attr(_WARM_QUEUE, list(picks))
        self.study.set_user_attr(_WARM_STARTED, True)

    def enqueue_next_warm_start(self) -> bool:
        """Enqueue the next stored hand-picked configuration, if any is left; True when one was enqueued.

        One at a time, when no trial waits: a retry of an interrupted trial (enqueued when its process is found
        dead) then runs next, instead of after every hand-picked configuration still queued."""
        params = self.pop_warm_start()
        if params is None:
            return False
        self.enqueue(params)
        return True

    def pop_warm_start(self) -> dict[str, Any] | None:
        """Take the next stored hand-picked configuration off the queue (None when none is left)."""
        queue = list(self._get(_WARM_QUEUE) or [])
        if not queue:
            return None
        self.study.set_user_attr(_WARM_QUEUE, queue[1:])
        return dict(queue[0])

    def finalist(self, number: int) -> FinalistEntry | None:
        entry = (self._get(_FINALISTS) or {}).get(str(number))
        if not isinstance(entry, dict):
            return None
        m = entry.get("measurement")
        return FinalistEntry(final_samples=int(entry.get("final_samples", 0)),
                             measurement=None if m is None else Measurement.from_dict(m), failed=entry.get("failed"))

    def set_finalist(self, number: int, entry: FinalistEntry) -> None:
        cache = dict(self._get(_FINALISTS) or {})
        value: dict[str, Any] = {"final_samples": entry.final_samples}
        if entry.measurement is not None:
            value["measurement"] = entry.measurement.to_dict()
        if entry.failed is not None:
            value["failed"] = entry.failed[:500]
        cache[str(number)] = value
        self.study.set_user_attr(_FINALISTS, cache)

    def rung(self, number: int, samples: int) -> tuple[QualityResult | None, str | None] | None:
        """Trial `number`'s quality on the first `samples` images of the final sample set, as `(result,
        None)` or `(None, why it failed)`; None when it was not measured (successive halving, `selection`)."""
        entry = ((self._get(_RUNGS) or {}).get(str(number)) or {}).get(str(samples))
        if not isinstance(entry, dict):
            return None
        if "failed" in entry:
            return None, str(entry["failed"])
        return QualityResult.from_dict(entry), None

    def set_rung(self, number: int, samples: int, quality: QualityResult | None, failed: str | None = None) -> None:
        rungs = dict(self._get(_RUNGS) or {})
        entry = dict(rungs.get(str(number)) or {})
        entry[str(samples)] = {"failed": (failed or "")[:500]} if quality is None else quality.to_dict()
        rungs[str(number)] = entry
        self.study.set_user_attr(_RUNGS, rungs)

    def retime(self, number: int) -> LatencyResult | None:
        """Trial `number`'s latency re-timed (as the finalists are) before it became a finalist."""
        value = (self._get(_RETIMES) or {}).get(str(number))
        return None if not isinstance(value, dict) else LatencyResult.from_dict(value)

    def set_retime(self, number: int, latency: LatencyResult) -> None:
        retimes = dict(self._get(_RETIMES) or {})
        retimes[str(number)] = latency.to_dict()
        self.study.set_user_attr(_RETIMES, retimes)

    # -- trials -------------------------------------------------------------------------------------------
    def enqueue(self, params: dict[str, Any], planned: str | None = None) -> None:
        """Enqueue a configuration (not twice): a hand-picked one (marked as a warm start), or one the
        budget-filling loop chose (`planned`: which of its steps)."""
        attrs: dict[str, Any] = {_WARM_START: True} if planned is None or planned == "warm start" else {}
        if planned is not None:
            attrs[_PLANNED] = planned
        self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)

    def records(self) -> list[TrialRecord]:
        """Measured trials with their Recipe and Measurement, in trial order: every COMPLETE trial, and every
        PRUNED one whose latency was measured (over budget; no score)."""
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            recipe, measurement = recipe_of(t), measurement_of(t)
            if recipe is None or measurement is None:
                continue
            out.append(TrialRecord(number=t.number, recipe=recipe, measurement=measurement, params=dict(t.params),
                                   warm_start=is_warm_start(t), contender=contender_of(t)))
        return out

    def skipped(self) -> list[tuple[int, str]]:
        """`(number, reason)` of every trial not built because it was predicted clearly over budget."""
        return [(t.number, skip_reason(t) or "") for t in self.study.get_trials(deepcopy=False,
                                                                              states=(TrialState.PRUNED,))
                if skip_reason(t) is not None]

    def failures(self) -> list[tuple[int, str]]:
        """`(number, reason)` of every failed trial."""
        return [(t.number, fail_reason(t) or "")
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]


# -- trial attributes ----------------------------------------------------------------------------------------
def set_recipe(trial: optuna.Trial, recipe: Recipe) -> None:
    trial.set_user_attr(_RECIPE, recipe.to_dict())


def recipe_of(trial: FrozenTrial) -> Recipe | None:
    value = trial.user_attrs.get(_RECIPE)
    return None if value is None else Recipe.from_dict(value)


def recipe_dict_of(trial: FrozenTrial) -> dict[str, Any] | None:
    """The stored recipe as plain JSON (for reports and comparisons), without validating it."""
    value = trial.user_attrs.get(_RECIPE)
    return value if isinstance(value, dict) else None


def set_measurement(trial: optuna.Trial, measurement: Measurement, budget_s: float) -> None:
    trial.set_user_attr(_MEASUREMENT, measurement.to_dict())
    trial.set_user_attr(_CONSTRAINT, measurement.latency_s - budget_s)


def measurement_of(trial: FrozenTrial) -> Measurement | None:
    value = trial.user_attrs.get(_MEASUREMENT)
    return None if value is None else Measurement.from_dict(value)


def set_contender(trial: optuna.Trial, samples: int, quality: QualityResult | None, failed: str | None = None) -> None:
    """The candidate's quality on the first `samples` final-set images, measured during the search because its
    proxy score was within noise of the best (or why that failed: the trial itself stands)."""
    trial.set_user_attr(_CONTENDER, {"samples": int(samples), "failed": (failed or "")[:_REASON_LIMIT]}
                        if quality is None else {"samples": int(samples), "quality": quality.to_dict()})


def contender_of(trial: FrozenTrial) -> tuple[int, QualityResult] | None:
    """`(samples, quality)` as `set_contender` stored it; None when not measured or when it failed."""
    value = trial.user_attrs.get(_CONTENDER)
    if not isinstance(value, dict) or not isinstance(value.get("quality"), dict):
        return None
    return int(value["samples"]), QualityResult.from_dict(value["quality"])


def set_prediction(trial: optuna.Trial, prediction: dict[str, Any]) -> None:
    """The latency model's prediction for the trial's candidate, made before it was built."""
    trial.set_user_attr(_PREDICTION, dict(prediction))


def prediction_of(trial: FrozenTrial) -> dict[str, Any] | None:
    value = trial.user_attrs.get(_PREDICTION)
    return dict(value) if isinstance(value, dict) else None


def set_skipped(trial: optuna.Trial, reason: str) -> None:
    """Why the candidate was not built (declined as over budget, or a knob combination refused); the trial ends
    PRUNED."""
    trial.set_user_attr(_SKIPPED, reason[:_REASON_LIMIT])


def skip_reason(trial: FrozenTrial) -> str | None:
    value = trial.user_attrs.get(_SKIPPED)
    return None if value is None else str(value)


def planned_as(trial: FrozenTrial) -> str | None:
    """Which step of the budget-filling loop enqueued the trial (None: a sampler drew it)."""
    value = trial.user_attrs.get(_PLANNED)
    return None if value is None else str(value)


def set_fail_reason(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(_FAIL_REASON, reason[:_REASON_LIMIT])


def set_fail_reason_by_id(storage: BaseStorage, trial_id_: int, reason: str) -> None:
    """The failure reason of a trial this process does not hold (a stale or orphaned one)."""
    storage.set_trial_user_attr(trial_id_, _FAIL_REASON, reason[:_REASON_LIMIT])


def fail_reason(trial: FrozenTrial) -> str | None:
    value = trial.user_attrs.get(_FAIL_REASON)
    return None if value is None else str(value)


def set_worker(trial: optuna.Trial, token: str) -> None:
    trial.set_user_attr(_WORKER, token)


def worker_of(trial: FrozenTrial) -> str | None:
    value = trial.user_attrs.get(_WORKER)
    return None if value is None else str(value)


def is_warm_start(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(_WARM_START))


def candidate_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's user attributes that describe the candidate, not one attempt at it (a retry keeps them)."""
    return {k: v for k, v in trial.user_attrs.items() if k not in _ATTEMPT_ATTRS}


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a RUNNING trial of another process FAIL with `reason`; False when it finished first."""
    storage = storage_of(study)
    try:
        set_fail_reason_by_id(storage, trial_id(trial), reason)
        return bool(storage.set_trial_state_values(trial_id(trial), TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:  # its owner (or another process) finished it first
        return False


# -- opening a study ---------------------------------------------------------------------------------------
def incompatibility(stored: StoredStudy, settings: SearchSettings, model_identity: str, label: str) -> str | None:
    """Why `stored` cannot be resumed with `settings` (one line), or None when it can."""
    ident = stored.identity
    if ident is None:
        return (f"study {stored.name!r} in {label} was not created by `autoeff optimize` (it has no "
                f"{_IDENTITY}); use another --study-name")
    if stored.objective_version != OBJECTIVE_VERSION:
        return (f"study {stored.name!r} in {label} was made by an older autoeff, whose trial values were -FID and a "
                "placeholder for unmeasured quality; its trials cannot be mixed with this version's: use another "
                "--out or --study-name")
    mine = settings.identity(model_identity)
    diff = sorted(k for k in set(ident) | set(mine) if ident.get(k) != mine.get(k))
    if diff:
        return (f"study {stored.name!r} in {label} was made with different {', '.join(diff)} ("
                + ", ".join(f"{k}={ident.get(k)!r}, not {mine.get(k)!r}" for k in diff)
                + "); use another --study-name or --out")
    old = stored.budget_text
    if old is not None and not _same_budget(old, settings.budget):
        return (f"study {stored.name!r} in {label} was made for --budget {old}, not {settings.budget.text}; "
                f"resume with --budget {old}, or use another --study-name or --out")
    return None


def _same_budget(stored_text: str, budget: Budget) -> bool:
    try:
        return parse_budget(stored_text).same_as(budget)
    except BudgetError:
        return False


def open_study(storage: str | BaseStorage, study_name: str, settings: SearchSettings, model_identity: str, *,
               directions: Sequence[Literal["minimize", "maximize"]],
               sampler: optuna.samplers.BaseSampler | None = None, create: bool = True,
               metric_names: Sequence[str] = ()) -> optuna.Study:
    """Open the study (creating and initializing it if new, unless `create` is False) and refuse one made for
    another model, budget, metric or space, or by an older objective (`IncompatibleStudyError`). A new study
    gets `metric_names` as Optuna's metric names."""
    label = mask_url(storage if isinstance(storage, str) else str(getattr(storage, "url", storage)))
    if optuna.logging.get_verbosity() < optuna.logging.WARNING:  # Optuna's default INFO logs every trial
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if create:
            study = optuna.create_study(storage=storage, study_name=study_name, directions=list(directions),
                                        sampler=sampler, load_if_exists=True)
        else:
            study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler)
    except KeyError:
        raise SearchError(f"no study named {study_name!r} in {label}; create it first with `autoeff optimize "
                          f"--storage ... --study-name {study_name}`") from None
    except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as e:
        raise SearchError(f"cannot open storage {label!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # sqlalchemy errors: unreachable server, bad URL, foreign database
        raise SearchError(f"cannot open storage {label!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    stored = StoredStudy(study)
    if stored.identity is None and create:
        stored.initialize(settings, model_identity, metric_names)
        return study
    why = incompatibility(stored, settings, model_identity, label)
    if why is not None:
        raise IncompatibleStudyError(why)
    return study


def load_existing(storage: str, study_name: str) -> optuna.Study:
    """The study as stored (no sampler, no heartbeats, nothing written), or a one-line SearchError."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study_name, storage=open_rdb(optuna.storages.RDBStorage, storage))
    except KeyError:
        raise SearchError(f"no study named {study_name!r} in {mask_url(storage)}; create it first with "
                          f"`autoeff optimize --storage ... --study-name {study_name}`") from None
    except Exception as e:  # sqlalchemy errors: unreachable server, bad URL, missing driver
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SearchError(f"cannot open storage {mask_url(storage)!r}: {type(e).__name__}: {first}") from None


__all__ = ["StoredStudy", "TrialRecord", "FinalistEntry", "open_study", "load_existing", "incompatibility",
           "set_recipe", "recipe_of", "recipe_dict_of", "set_measurement", "measurement_of", "set_fail_reason",
           "set_prediction", "prediction_of", "set_skipped", "skip_reason", "planned_as", "OBJECTIVE_VERSION",
           "set_fail_reason_by_id", "fail_reason", "set_worker", "worker_of", "is_warm_start", "candidate_attrs",
           "fail_trial", "set_contender", "contender_of"]
