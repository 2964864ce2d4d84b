"""The processes that run a study's trials: one on a single machine, or many sharing one RDB storage.

Every run goes through `run_trials`, a single-machine `autoeff optimize` too: it is the coordinator and the
only worker. With `--storage postgresql://... --study-name NAME`, `autoeff worker` processes on other machines
run trials of the same study; the study's stored attributes (`autoeff.study`) hold what a worker needs to
rebuild the search, and Optuna's RDB storage is the only coordination (no queue of our own).

Crashes. Every storage is opened with Optuna's heartbeats (`open_storage`; Optuna's "Heartbeat monitoring"
tutorial): a process records a heartbeat for its running trial every interval, and a trial whose heartbeat is
older than the grace period is failed by `optuna.storages.fail_stale_trials` (which every process calls before
each trial) and re-enqueued with the same parameters (`RetryStaleTrial`). A dead process on the same machine
is noticed at once, without waiting for the grace period: with SQLite through a registry of per-process lock
files next to the database, with any storage through the owner's process id recorded on the trial
(`reclaim_orphans`). So a rerun right after `kill -9` resumes at once, and a live worker's trial is never
failed.

Counting. A failed trial that was retried is the same candidate as its retry; the finished count (the target
`--trials`) counts COMPLETE, PRUNED and FAIL trials, minus the FAIL trials some retry supersedes (Optuna's
`retry_history`), so no candidate is counted twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from filelock import FileLock, Timeout
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from autoeff.errors import SearchError
from autoeff.optuna_compat import StaleTrialsStorage, has_heartbeat, storage_of, trial_id
from autoeff.settings import GRACE_FACTOR, HEARTBEAT_INTERVAL_S
from autoeff.storage import mask_url, normalize_storage_url, open_rdb, sqlite_path
from autoeff.study import (
    StoredStudy,
    candidate_attrs,
    fail_trial,
    set_fail_reason,
    set_fail_reason_by_id,
    set_worker,
    skip_reason,
    worker_of,
)

__all__ = [
    "MAX_RETRY", "STORAGE_RETRY_S", "TRANSIENT_STORAGE_ERRORS", "STALE_REASON", "HeartbeatStorage",
    "RetryStaleTrial", "TrialCounts", "WorkerRegistry", "CoordinatorLease", "coordinator_conflict",
    "fail_stale_trials", "open_storage", "reclaim_orphans", "retry_trial", "run_trials", "trial_counts",
    "worker_id", "worker_seed",
]

MAX_RETRY = 3
STALE_REASON = "stale: worker stopped heartbeating"
INTERRUPTED_REASON = "interrupted: process {owner} stopped mid-trial"
CTRL_C_REASON = "interrupted: stopped by the user (Ctrl-C) mid-trial"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# -- retries ----------------------------------------------------------------------------------------------
class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial (a new WAITING trial with the same params and `retry_history`), except
    that the retry does not inherit the failed attempt's own attributes (its reason, owner, measurement)."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        retry_trial(study, trial, self._max_retry)


def retry_trial(study: optuna.Study, trial: FrozenTrial, max_retry: int | None = MAX_RETRY) -> bool:
    """Enqueue a retry of the failed `trial`, in the layout of `RetryHeartbeatStaleTrialCallback`
    (`failed_trial`, `retry_history` system attributes). False when `max_retry` retries were already made."""
    system_attrs: dict[str, Any] = {"failed_trial": trial.number, **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs.get("retry_history", []), trial.number]
    if max_retry is not None and len(system_attrs["retry_history"]) > max_retry:
        return False
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, user_attrs=candidate_attrs(trial),
                                        system_attrs=system_attrs))
    return True


# -- the storage every process opens ----------------------------------------------------------------------
# How long a storage call is retried while the database is unreachable (a PostgreSQL server restarting, a
# dropped connection) before the error reaches the run. SQLAlchemy's pool_pre_ping replaces dead connections on
# the next checkout; the retry covers the calls made while the server is down.
STORAGE_RETRY_S = 120.0
_RETRY_PAUSE_S = 2.0
TRANSIENT_STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError,
              sqlalchemy.exc.InterfaceError)
_RETRIED = ("create_new_study", "create_new_trial", "get_all_studies", "get_all_trials", "get_n_trials",
            "get_study_directions", "get_study_id_from_name", "get_study_name_from_id", "get_study_system_attrs",
            "get_study_user_attrs", "get_trial", "get_trial_id_from_study_id_trial_number",
            "get_trial_number_from_id", "get_trial_param", "get_trial_params", "get_trial_system_attrs",
            "get_trial_user_attrs", "set_study_system_attr", "set_study_user_attr", "set_trial_intermediate_value",
            "set_trial_param", "set_trial_state_values", "set_trial_system_attr", "set_trial_user_attr",
            "record_heartbeat")


def _retrying(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: HeartbeatStorage, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return method(self, *args, **kwargs)
            except TRANSIENT_STORAGE_ERRORS:
                if time.monotonic() + _RETRY_PAUSE_S > deadline:
                    raise
                time.sleep(_RETRY_PAUSE_S)

    call.__name__ = name
    call.__doc__ = method.__doc__
    return call


class HeartbeatStorage(StaleTrialsStorage):
    """Optuna's RDBStorage, with two additions to its stale-trial detection:

    - a stale trial gets its fail reason ("stale: worker stopped heartbeating") before `fail_stale_trials`
      marks it FAIL (a finished trial's attributes cannot be set any more);
    - a RUNNING trial that never recorded a heartbeat (its process died between taking the trial and
      starting the heartbeat thread), started longer than the grace period ago, is stale too; Optuna skips
      those and they would stay RUNNING forever. Its start time is the asking machine's clock.
    """

    retry_s: float = STORAGE_RETRY_S

    def more_stale_trials(self, study_id: int, stale: list[int]) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period or 2 * self.heartbeat_interval
        cutoff = datetime.now() - timedelta(seconds=grace)
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            tid = trial_id(t)
            if (tid not in stale and t.datetime_start is not None and t.datetime_start < cutoff
                    and not has_heartbeat(self, tid)):
                stale.append(tid)
        for tid in stale:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                set_fail_reason_by_id(self, tid, STALE_REASON)
        return stale


for _name in _RETRIED:  # every storage call retries a transient database failure (a server restart) for a while
    setattr(HeartbeatStorage, _name, _retrying(_name, getattr(StaleTrialsStorage, _name)))


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int | None = MAX_RETRY) -> HeartbeatStorage:
    """An RDB storage for `url` (sqlite:///..., postgresql://...) with heartbeats and stale-trial retries.

    `heartbeat_interval` defaults to 20 s and `grace_period` to 3 intervals. Raises SearchError naming the
    URL (password hidden) when the storage cannot be opened.
    """
    url = normalize_storage_url(url)
    interval = HEARTBEAT_INTERVAL_S if heartbeat_interval is None else int(heartbeat_interval)
    if interval < 1:
        raise SearchError(f"--heartbeat-interval {heartbeat_interval} must be at least 1 (seconds)")
    grace = GRACE_FACTOR * interval if grace_period is None else int(grace_period)
    if grace <= interval:
        raise SearchError(f"--grace-period {grace_period} must be longer than the heartbeat interval ({interval} s); "
                          f"e.g. {GRACE_FACTOR * interval}")
    # SQLite: the heartbeat thread and the trial write from two threads; wait for the file lock, do not fail.
    engine_kwargs: dict[str, Any] = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
                                     else {"pool_pre_ping": True})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return open_rdb(HeartbeatStorage, url, engine_kwargs=engine_kwargs, heartbeat_interval=interval,
                            grace_period=grace, heartbeat_stale_trial_callback=RetryStaleTrial(max_retry))
    except Exception as e:  # sqlalchemy errors: unreachable server, bad URL, missing driver, foreign database
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SearchError(f"cannot open storage {mask_url(url)!r}: {type(e).__name__}: {first}") from None


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's `fail_stale_trials` (it is also run before every trial by `Study.optimize`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


# -- counting -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialCounts:
    """Trials of a study, each candidate counted once.

    done: finished candidates (COMPLETE, PRUNED, and FAIL not superseded by a retry), less the skipped ones
    that `free_skips` lets go uncounted; running: RUNNING trials; waiting: WAITING trials (enqueued
    configurations and pending retries); retried: FAIL trials superseded by a retry (not in `done`); skipped:
    PRUNED trials never built (predicted clearly over budget, `study.skip_reason`).
    """

    done: int
    running: int
    waiting: int
    retried: int
    skipped: int = 0


def trial_counts(study: optuna.Study, free_skips: int = 0) -> TrialCounts:
    """The study's trials counted; up to `free_skips` skipped candidates (not built: predicted clearly over
    budget, which costs no measurement) are left out of `done`, so `--trials` counts measured candidates while
    a sampler that keeps proposing impossible ones still comes to an end."""
    trials = study.get_trials(deepcopy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    done = sum(1 for t in trials if t.state in _FINISHED and t.number not in retried)
    skipped = sum(1 for t in trials if t.state == TrialState.PRUNED and skip_reason(t) is not None)
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    return TrialCounts(done=done - min(skipped, free_skips), running=running, waiting=waiting,
                       retried=sum(1 for t in trials if t.number in retried), skipped=skipped)


# -- who is alive -----------------------------------------------------------------------------------------
def _pid_namespace() -> str:
    try:
        return re.sub(r"\D", "", os.readlink("/proc/self/ns/pid")) or "0"
    except OSError:
        return "0"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname() or "localhost")


def worker_id() -> str:
    """This process's name on the trials it runs: `host/pid-namespace/pid`, or `$AUTOEFF_WORKER_ID`.

    With the default name, a trial whose process is gone from this machine is failed (and retried) at once;
    a custom name (unique per process) leaves that to the heartbeats, as for a trial of another machine.
    """
    return os.environ.get("AUTOEFF_WORKER_ID") or f"{_host()}/{_pid_namespace()}/{os.getpid()}"


def worker_seed(seed: int, token: str) -> int:
    """A sampler seed per worker: the study's seed shifted by a hash of the worker's name, so that workers
    sampling at the same moment do not propose the same candidates."""
    return (seed + 1 + int(hashlib.sha256(token.encode()).hexdigest()[:8], 16)) % (2**31)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _dead_here(owner: str) -> bool:
    """True when `owner` names a process of this machine (same host and pid namespace) that is gone."""
    parts = owner.split("/")
    if len(parts) != 3 or parts[0] != _host() or parts[1] != _pid_namespace() or not parts[2].isdigit():
        return False
    return not _pid_alive(int(parts[2]))


def _safe(token: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", token)


class WorkerRegistry:
    """The processes of this machine that use a SQLite study: one `filelock.FileLock` file each, held for the
    process's lifetime in `<database>.workers/<study>/`. The OS drops a dead process's lock (even after
    SIGKILL), so whether another process is alive is known at once. For other storages the registry has no
    folder and only `token` is used.

        with WorkerRegistry.for_storage(url, study_name) as reg: ...
    """

    def __init__(self, folder: Path | None, token: str | None = None) -> None:
        self.folder = folder
        self.token = token or worker_id()
        self._lock: FileLock | None = None

    @classmethod
    def for_storage(cls, url: str, study_name: str) -> WorkerRegistry:
        db = sqlite_path(url)
        folder = None if db is None else db.resolve().with_name(db.name + ".workers") / _safe(study_name)
        return cls(folder)

    def __enter__(self) -> WorkerRegistry:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.folder / f"{_safe(self.token)}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise SearchError(f"another process already runs as worker {self.token!r} on this study; give "
                                  "each process its own AUTOEFF_WORKER_ID") from None
            self._lock = lock
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
            with contextlib.suppress(OSError):
                Path(self._lock.lock_file).unlink()
            self._lock = None

    def others_alive(self) -> set[str] | None:
        """Safe names of the other live registered processes (dead ones' files are removed); None without
        a registry folder."""
        if self.folder is None:
            return None
        live: set[str] = set()
        for path in self.folder.glob("*.lock"):
            if path.stem == _safe(self.token):
                continue
            probe = FileLock(str(path))
            try:
                probe.acquire(timeout=0)
            except Timeout:
                live.add(path.stem)
                continue
            probe.release()
            with contextlib.suppress(OSError):
                path.unlink()
        return live


def reclaim_orphans(study: optuna.Study, registry: WorkerRegistry, max_retry: int | None = MAX_RETRY) -> list[int]:
    """Fail, and retry with the same params, trials left RUNNING by processes that are gone, without waiting
    for the heartbeat grace period. Returns their numbers.

    With SQLite (a registry folder): a trial whose owner holds no lock in the registry, or one with no owner
    yet when no other process is registered. With any storage: a trial owned by a process of this machine
    that no longer exists. A trial of a live process, or of another machine, is left to the heartbeats.
    """
    others = registry.others_alive()  # also removes the lock files of dead processes, orphans or not
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    failed = []
    for t in running:
        owner = worker_of(t)
        if owner == registry.token:
            continue
        if others is not None:
            dead = (not others) if owner is None else _safe(owner) not in others
        else:
            dead = owner is not None and _dead_here(owner)
        if dead and fail_trial(study, t, INTERRUPTED_REASON.format(owner=owner or "unknown")):
            retry_trial(study, storage_of(study).get_trial(trial_id(t)), max_retry)
            failed.append(t.number)
    return failed


# -- one coordinator per study -----------------------------------------------------------------------------
def coordinator_conflict(stored: StoredStudy, token: str, grace: float) -> str | None:
    """Why process `token` may not coordinate the study now (another one beat less than `grace` s ago)."""
    current = stored.coordinator
    if current is None or current[0] == token:
        return None
    owner, beat = current
    age = time.time() - beat
    if age < grace and not _dead_here(owner):
        return (f"study {stored.name!r} is already coordinated by {owner} (it beat {age:.0f} s ago); add trials "
                "to it with `autoeff worker`, or wait for it to finish")
    return None


class CoordinatorLease:
    """The study's single coordinator, recorded in the study and renewed by a thread every `interval` seconds.

    A second `autoeff optimize` on the same study (not `--join`, not a worker) is refused while the recorded
    coordinator beats: two coordinators would each measure a baseline, resolve the budget against their own,
    and select and export on their own. A coordinator that stopped beating for `grace` seconds (crashed, on any
    machine), or a dead process of this machine, is taken over. Two that start within a second of each other:
    both write, wait, and read back; the one whose record stands goes on.

        with CoordinatorLease(study, token, interval, grace): ...
    """

    SETTLE_S = 0.2

    def __init__(self, study: optuna.Study, token: str, interval: float, grace: float) -> None:
        self.stored = StoredStudy(study)
        self.token, self.interval, self.grace = token, interval, grace
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _refuse_if_taken(self) -> None:
        why = coordinator_conflict(self.stored, self.token, self.grace)
        if why is not None:
            raise SearchError(why)

    def __enter__(self) -> CoordinatorLease:
        self._refuse_if_taken()
        self.stored.set_coordinator(self.token, time.time())
        time.sleep(self.SETTLE_S)  # a rival that read before this write has written its own by now
        current = self.stored.coordinator
        if current is not None and current[0] != self.token:
            self._refuse_if_taken()
        self._thread = threading.Thread(target=self._beat, name="autoeff-coordinator-beat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat is harmless: the next one, or the grace, covers it
                self.stored.set_coordinator(self.token, time.time())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            current = self.stored.coordinator
            if current is not None and current[0] == self.token:
                self.stored.set_coordinator(None)


# -- the loop every process runs --------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_heartbeat_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    registry: WorkerRegistry,
    wait_for_running: bool,
    catch: tuple[type[Exception], ...] = (),
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    on_wait: Callable[[TrialCounts, int], None] | None = None,
    max_retry: int | None = MAX_RETRY,
    poll_s: float | None = None,
    refill: Callable[[], object] | None = None,
) -> int:
    """Run trials of `study` until its finished count reaches the target stored in the study; return how
    many this process ran.

    Before each trial: fail orphaned and heartbeat-stale trials (they are retried), call `refill` when no trial
    waits (it may enqueue one: the next hand-picked configuration, or the budget-filling loop's next
    candidate), then take a trial only while
    finished + running < target, so a few processes overshoot the target by at most one trial each
    when they ask at the same moment. A worker stops once the target is reached; the coordinator
    (`wait_for_running`) also waits for the trials still running elsewhere, which finish, or go stale and
    are retried (possibly by this process), so that selection sees every trial.
    """
    token = registry.token
    stored = StoredStudy(study)
    interrupted: list[int] = []

    def owned(trial: optuna.Trial) -> Any:
        set_worker(trial, token)
        try:
            return objective(trial)
        except KeyboardInterrupt:
            set_fail_reason(trial, CTRL_C_REASON)
            interrupted.append(trial_id(trial))
            raise

    storage = storage_of(study)
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)() or HEARTBEAT_INTERVAL_S
    poll = poll_s if poll_s is not None else min(5.0, float(interval))
    ran = 0
    while True:
        reclaim_orphans(study, registry, max_retry)
        fail_stale_trials(study)
        target = stored.target_trials
        counts = trial_counts(study, free_skips=target)
        if counts.done + counts.running < target:
            if counts.waiting == 0 and refill is not None:
                refill()
            try:
                with _quiet_heartbeat_warning():
                    study.optimize(owned, n_trials=1, catch=catch, callbacks=list(callbacks), gc_after_trial=True)
            except KeyboardInterrupt:  # Ctrl-C mid-trial: Optuna failed the trial; the rerun measures it again
                for tid in interrupted:
                    frozen = storage.get_trial(tid)
                    if frozen.state == TrialState.FAIL:
                        retry_trial(study, frozen, max_retry)
                raise
            ran += 1
            continue
        if counts.done >= target and (counts.running == 0 or not wait_for_running):
            return ran
        if on_wait is not None:
            on_wait(counts, target)
        time.sleep(poll)
