"""One machine, crashes: `kill -9` of `autoeff optimize` at random points resumes at once without losing a
completed trial or corrupting SQLite; orphaned trials of dead processes are failed and retried while live
processes' trials are left alone; an interrupted export never leaves a folder that loads."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import autoeff
from autoeff.export import ExportError, export_pipeline, load
from autoeff.recipe import Recipe
from autoeff.storage import check_storage
from autoeff.study import StoredStudy, fail_reason, set_worker, worker_of
from autoeff.workers import WorkerRegistry, open_storage, reclaim_orphans, trial_counts, worker_id

AUTOEFF = str(Path(sys.executable).with_name("autoeff"))
FAST = ["--steps", "10", "--proxy-samples", "16", "--final-samples", "32", "--max-steps", "10", "--min-steps", "2"]


def _integrity(db: Path) -> str:
    """SQLite's integrity check of `db`, opened read-write as the next run opens it: a kill in the middle of a
    commit leaves a hot journal, which SQLite rolls back on that open (a read-only connection cannot)."""
    with closing(sqlite3.connect(db)) as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


_KILLED_WRITER = """
import os, signal, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
con.execute("BEGIN")
con.execute("CREATE TABLE scratch (x TEXT)")
con.executemany("INSERT INTO scratch VALUES (?)", [("x" * 100,)] * 20000)  # spills pages into the file
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_study_left_with_a_hot_journal_by_a_killed_writer_is_resumed(tmp_path):
    """A process killed in the middle of a write leaves a hot rollback journal; a read-only connection cannot
    read the file then. The storage check a resumed run makes rolls it back (SQLite's own recovery) instead of
    refusing the study as unreadable, and the study loads with its completed trial and nothing of the torn
    write."""
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    study = optuna.create_study(storage=url, study_name="s")
    study.enqueue_trial({"k": 3})
    study.optimize(lambda t: float(t.suggest_int("k", 1, 9)), n_trials=1)
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(db)], check=False)
    assert db.with_name("study.db-journal").stat().st_size > 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"), \
            closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        con.execute("SELECT name FROM sqlite_master").fetchall()

    assert check_storage(url, "--storage") is True
    assert _integrity(db) == "ok"
    with closing(sqlite3.connect(db)) as con:
        assert not con.execute("SELECT name FROM sqlite_master WHERE name = 'scratch'").fetchall()
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [(t.state, t.params, t.values) for t in trials] == [(TrialState.COMPLETE, {"k": 3}, [3.0])]


def _ask(study: optuna.Study, owner: str | None) -> optuna.Trial:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = study.ask()
    t.suggest_int("k", 1, 100)
    if owner is not None:
        set_worker(t, owner)
    return t


def _state(study: optuna.Study, trial: optuna.Trial) -> TrialState:
    return study.get_trials(deepcopy=False)[trial.number].state


def _hold_lock(path):
    """Another process that holds the registry lock file `path` (as a live worker does) until killed."""
    return subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True); time.sleep(600)"), str(path)], stdout=subprocess.PIPE)


def test_sqlite_registry_fails_orphans_of_dead_processes_only(tmp_path):
    """Another process registered on the study (holding its lock file) keeps its trials, even one taken before
    its owner was recorded; once it is killed, its trials are failed with the reason and retried at once."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=60), study_name="s")
    me = WorkerRegistry.for_storage(url, "s")
    assert me.folder == tmp_path / "study.db.workers" / "s"
    me.folder.mkdir(parents=True)
    holder = _hold_lock(me.folder / "proc-b.lock")
    try:
        assert holder.stdout.readline().strip() == b"held"
        owned_by_live = _ask(study, "proc-b")
        unowned = _ask(study, None)
        owned_by_dead = _ask(study, "proc-c")
        with me:
            assert reclaim_orphans(study, me) == [owned_by_dead.number]
            assert _state(study, owned_by_live) == _state(study, unowned) == TrialState.RUNNING
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            assert reclaim_orphans(study, me) == [owned_by_live.number, unowned.number]
            assert not (me.folder / "proc-b.lock").exists()  # the dead process's file is cleaned up
        assert not list(me.folder.iterdir())  # and ours on exit
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    trials = study.get_trials()
    for t in (owned_by_live, unowned, owned_by_dead):
        assert trials[t.number].state == TrialState.FAIL
        assert fail_reason(trials[t.number]).startswith("interrupted: process ")
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(r.system_attrs["failed_trial"] for r in retries) == sorted(
        t.number for t in (owned_by_live, unowned, owned_by_dead))
    assert all(r.params == trials[r.system_attrs["failed_trial"]].params for r in retries)
    assert trial_counts(study).done == 0  # three candidates, none finished yet


def test_a_dead_process_lock_is_removed_even_without_orphan_trials(tmp_path):
    """A process killed between trials leaves its lock file but no RUNNING trial; the next run removes it."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=60), study_name="s")
    me = WorkerRegistry.for_storage(url, "s")
    me.folder.mkdir(parents=True)
    holder = _hold_lock(me.folder / "proc-d.lock")
    try:
        assert holder.stdout.readline().strip() == b"held"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with me:
        assert reclaim_orphans(study, me) == []  # nothing was running
        assert not (me.folder / "proc-d.lock").exists()


def test_same_host_process_check_without_registry(tmp_path, monkeypatch):
    """Storages other than SQLite (no registry): a trial whose owner process on this machine is gone is failed
    at once; one of a live process, or of another machine, is left to the heartbeats."""
    monkeypatch.delenv("AUTOEFF_WORKER_ID", raising=False)
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'p.db'}", heartbeat_interval=60),
                                study_name="p")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        here = worker_id().rsplit("/", 1)[0]
        alive = _ask(study, f"{here}/{sleeper.pid}")
        remote = _ask(study, "another-host/4026531836/1")
        registry = WorkerRegistry(None)
        assert reclaim_orphans(study, registry) == []
        sleeper.kill()
        sleeper.wait()
        assert reclaim_orphans(study, registry) == [alive.number]
        assert _state(study, remote) == TrialState.RUNNING
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_ctrl_c_mid_trial_fails_it_with_reason_and_retries_it(tmp_path):
    from autoeff.workers import run_trials

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'c.db'}"), study_name="c")
    StoredStudy(study).set_target_trials(2)
    calls: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        calls.append(trial.suggest_int("k", 1, 100))
        if len(calls) == 1:
            raise KeyboardInterrupt
        return float(calls[-1])

    with WorkerRegistry.for_storage(f"sqlite:///{tmp_path / 'c.db'}", "c") as reg:
        with pytest.raises(KeyboardInterrupt):
            run_trials(study, objective, registry=reg, wait_for_running=True)
        first = study.get_trials()[0]
        assert first.state == TrialState.FAIL and "Ctrl-C" in fail_reason(first)
        assert trial_counts(study).done == 0  # the interrupted candidate is not counted: it will run again
        assert run_trials(study, objective, registry=reg, wait_for_running=True) == 2
    assert calls[1] == calls[0]  # the retry measured the same candidate first
    assert trial_counts(study).done == 2 and len(study.get_trials()) == 3


def _running_of(url: str, pid: int) -> bool:
    try:
        study = optuna.load_study(study_name="autoeff", storage=url)
    except Exception:  # KeyError, or sqlalchemy errors: the study (or its tables) may not exist yet
        return False
    return any(str(worker_of(t) or "").endswith(f"/{pid}")
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


@pytest.mark.slow
def test_kill9_at_random_points_then_resume(tmp_path):
    """Three SIGKILLs of `autoeff optimize` at seeded random moments after it took a trial; after each, SQLite
    passes integrity_check and loads; the rerun fails and retries the interrupted trial at once (reason
    "interrupted", not a heartbeat timeout), never re-runs a completed trial, and finishes the count."""
    rng = random.Random(20261126)
    out = tmp_path / "run"
    db = out / "study.db"
    url = f"sqlite:///{db}"
    cmd = [AUTOEFF, "optimize", "--model", "digits", "--budget", "200%", "--trials", "6", "--sampler", "random",
           "--no-warm-start", "--top-k", "1", "--threads", "1", "--out", str(out), *FAST]
    env = {**os.environ, "AUTOEFF_LOCK_DIR": str(tmp_path / "locks")}
    env.pop("AUTOEFF_WORKER_ID", None)
    completed: dict[int, tuple] = {}
    kills = 3
    started = time.monotonic()
    for k in range(kills):
        log = open(tmp_path / f"run{k}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 180
            while not _running_of(url, proc.pid):
                assert proc.poll() is None, (tmp_path / f"run{k}.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the run never started a trial"
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 2.0))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            log.close()
        assert _integrity(db) == "ok"
        study = optuna.load_study(study_name="autoeff", storage=url)
        for t in study.get_trials():
            if t.number in completed:  # a completed trial is never touched again
                assert (t.state, t.datetime_start, t.values) == completed[t.number]
            elif t.state == TrialState.COMPLETE:
                completed[t.number] = (t.state, t.datetime_start, t.values)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    elapsed = time.monotonic() - started

    assert _integrity(db) == "ok"
    study = optuna.load_study(study_name="autoeff", storage=url)
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number, frozen in completed.items():
        assert (trials[number].state, trials[number].datetime_start, trials[number].values) == frozen
    interrupted = [t for t in trials if t.state == TrialState.FAIL
                   and (fail_reason(t) or "").startswith("interrupted: process ")]
    assert 1 <= len(interrupted) <= kills  # at most the trial running at each kill
    assert all(fail_reason(t) for t in trials if t.state == TrialState.FAIL)
    for t in interrupted:  # each retried exactly once, with the params it had (a kill mid-suggest leaves some)
        retries = [r for r in trials if r.system_attrs.get("retry_history", [])[-1:] == [t.number]]
        assert len(retries) == 1
        assert {k: retries[0].params[k] for k in t.params} == t.params
    counts = trial_counts(study)
    assert counts.done == 6 and counts.retried == len(interrupted)
    assert len([t for t in trials if t.state.is_finished()]) == 6 + len(interrupted)
    assert not list((out / "study.db.workers" / "autoeff").glob("*.lock"))
    assert (out / "optimized" / "manifest.json").is_file()
    print(f"kill -9 x{kills} + resume: {elapsed:.1f} s, {len(interrupted)} interrupted trial(s) retried")


# -- export ---------------------------------------------------------------------------------------------------
def _recipes() -> tuple[Recipe, Recipe]:
    from autoeff.search_spaces import schedule, solver

    a = Recipe(model="digits", knobs={"solver": solver.Config(name="dpmpp", order=2),
                                      "schedule": schedule.Config(family="uniform", steps=4)})
    b = Recipe(model="digits", knobs={"solver": solver.Config(name="unipc", order=2),
                                      "schedule": schedule.Config(family="uniform", steps=6)})
    return a, b


def _context(handle):
    from autoeff.budget import parse_budget
    from autoeff.search import context_for
    from autoeff.settings import SearchSettings

    return context_for(handle, SearchSettings(model="digits", budget=parse_budget("1s"),
                                              space=["solver", "schedule"]))


def test_export_failing_midway_keeps_the_previous_export(random_digits_handle, tmp_path):
    a, b = _recipes()
    ctx = _context(random_digits_handle)
    dest = tmp_path / "optimized"
    export_pipeline(random_digits_handle, a, ctx, dest)

    def broken(folder: Path) -> None:
        assert (folder / "autoeff.json").is_file()  # halfway: weights and autoeff.json written
        raise RuntimeError("disk full (injected)")

    with pytest.raises(RuntimeError, match="injected"):
        export_pipeline(random_digits_handle, b, ctx, dest, extra_writer=broken)
    assert load(dest).autoeff_info["recipe"] == a.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimized"]  # no temp folder left behind
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="injected"):
        export_pipeline(random_digits_handle, b, ctx, fresh, extra_writer=broken)
    assert not fresh.exists()


KILLED_EXPORT = """
import sys, time
from pathlib import Path
import autoeff
from autoeff.budget import parse_budget
from autoeff.export import export_pipeline
from autoeff.recipe import Recipe
from autoeff.search import context_for
from autoeff.settings import SearchSettings
handle = autoeff.load_model("digits")
ctx = context_for(handle, SearchSettings(model="digits", budget=parse_budget("1s"), space=["solver", "schedule"]))
def stall(folder):
    Path(sys.argv[3]).write_text(str(folder))
    time.sleep(600)
export_pipeline(handle, Recipe.from_json(Path(sys.argv[1]).read_text()), ctx, sys.argv[2], extra_writer=stall)
"""


@pytest.mark.slow
def test_export_killed_midway_leaves_the_previous_export_and_an_unloadable_temp(tmp_path):
    handle = autoeff.load_model("digits")
    a, b = _recipes()
    dest = tmp_path / "optimized"
    export_pipeline(handle, a, _context(handle), dest)
    (tmp_path / "b.json").write_text(b.to_json())
    marker = tmp_path / "halfway"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(tmp_path / "b.json"), str(dest), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftover = Path(marker.read_text())
    assert leftover.is_dir() and leftover.name.startswith(".optimized.tmp-")
    assert load(dest).autoeff_info["recipe"] == a.to_dict()  # the previous complete export, intact
    with pytest.raises(ExportError, match="temporary folder of an interrupted export"):
        load(leftover)
    export_pipeline(handle, b, _context(handle), dest)  # a later export still works over it
    assert load(dest).autoeff_info["recipe"] == b.to_dict()
