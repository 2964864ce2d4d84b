"""Many machines, one study: heartbeats, retries, counting, workers refusing foreign studies, and two real
worker processes on a real PostgreSQL server, one killed with SIGKILL mid-trial."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import autoeff
from autoeff.errors import SearchError
from autoeff.search import directions
from autoeff.settings import SearchSettings
from autoeff.study import StoredStudy, fail_reason, open_study, recipe_dict_of, set_worker, worker_of
from autoeff.workers import (
    STALE_REASON,
    TrialCounts,
    WorkerRegistry,
    fail_stale_trials,
    open_storage,
    run_trials,
    trial_counts,
)

REPO = Path(__file__).resolve().parents[1]
AUTOEFF = str(Path(sys.executable).with_name("autoeff"))
FAST = ["--steps", "10", "--proxy-samples", "16", "--final-samples", "32", "--max-steps", "10", "--min-steps", "2"]

# Runs the CLI with the device lock instrumented: every timed section (lock held) is appended to a log as
# [pid, start, end], so the test can check that no two processes timed at once.
ENTRY = """
import contextlib, json, os, sys, time
import autoeff.evaluators.latency as latency
_lock = latency.device_lock
@contextlib.contextmanager
def logged(device, timeout=-1):
    with _lock(device, timeout) as held:
        start = time.time()
        try:
            yield held
        finally:
            with open(os.environ["AUTOEFF_TEST_LOCK_LOG"], "a") as f:
                f.write(json.dumps([os.getpid(), start, time.time()]) + "\\n")
latency.device_lock = logged
from autoeff.cli import main
main(sys.argv[1:], prog_name="autoeff")
"""


@pytest.fixture(scope="module")
def pg_url():
    """`$AUTOEFF_TEST_POSTGRES_URL` (set by .ci/run), else a throwaway server started here by
    scripts/with_postgres.sh; skipped only where no server can be started (never on CI)."""
    url = os.environ.get("AUTOEFF_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    folder = tempfile.mkdtemp(prefix="autoeff-pg-test.")
    script = REPO / "scripts" / "with_postgres.sh"
    r = subprocess.run(["bash", str(script), "start", folder], capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        why = (r.stderr.strip().splitlines() or ["unknown error"])[-1]
        msg = f"no PostgreSQL server could be started here: {why}"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI must provide one: .ci/run sets AUTOEFF_TEST_POSTGRES_URL)")
        pytest.skip(msg + "; install postgresql or set AUTOEFF_TEST_POSTGRES_URL")
    try:
        yield r.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(script), "stop", folder], capture_output=True, timeout=120)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("pg_url")


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Heartbeat of storage is supposed to be used with Study.optimize"
        return study.ask()


def test_every_rdb_storage_has_heartbeats_and_validates_them(tmp_path):
    rdb = open_storage(f"sqlite:///{tmp_path / 'a.db'}")
    assert rdb.get_heartbeat_interval() == 20 and rdb.grace_period == 60
    assert rdb.get_heartbeat_stale_trial_callback() is not None
    with pytest.raises(SearchError, match="grace-period"):
        open_storage(f"sqlite:///{tmp_path / 'b.db'}", heartbeat_interval=5, grace_period=5)
    with pytest.raises(SearchError, match=r"cannot open storage 'postgresql\+psycopg2://u:\*\*\*@127.0.0.1:1/x'"):
        open_storage("postgresql+psycopg2://u:secret@127.0.0.1:1/x")  # nothing listens on port 1; password hidden


def _open_at_once(url: str, barrier, results) -> None:  # one of several processes racing to a new database
    barrier.wait()
    try:
        optuna.create_study(storage=open_storage(url), study_name="race", load_if_exists=True)
        results.put("ok")
    except Exception as e:
        results.put(f"{type(e).__name__}: {str(e).splitlines()[0]}")


@pytest.fixture
def fresh_url(request, tmp_path):
    """A database with no tables yet: a new SQLite file, or a new schema on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'new.db'}"
    import sqlalchemy

    schema = f"s{uuid.uuid4().hex[:10]}"
    base = request.getfixturevalue("pg_url")
    with sqlalchemy.create_engine(base).begin() as con:
        con.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


@pytest.mark.parametrize("fresh_url", ["sqlite", "postgresql"], indirect=True)
def test_processes_opening_a_new_database_at_once_all_start(fresh_url):
    """Workers started together on a new database all race to create Optuna's tables (optuna/optuna#1092:
    "table ... already exists" for the losers, 8 rounds in 10 on this VM before the fix); every one opens it."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_at_once, args=(fresh_url, barrier, results)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [results.get(timeout=5) for _ in procs] == ["ok"] * 4
    assert optuna.get_all_study_names(fresh_url) == ["race"]


def test_only_a_schema_race_is_retried():
    import sqlalchemy

    from autoeff.storage import schema_race

    engine = sqlalchemy.create_engine("sqlite://")
    with engine.begin() as con:
        con.execute(sqlalchemy.text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
        con.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))
    errors = {}
    for name, sql in {"exists": "CREATE TABLE t (x INTEGER)", "duplicate": "INSERT INTO t VALUES (1)",
                      "missing": "SELECT * FROM nothing", "syntax": "SELEC 1"}.items():
        with pytest.raises(sqlalchemy.exc.DBAPIError) as e, engine.begin() as con:
            con.execute(sqlalchemy.text(sql))
        errors[name] = schema_race(e.value)
    assert errors == {"exists": True, "duplicate": True, "missing": False, "syntax": False}


def test_stale_trials_are_failed_with_reason_and_retried_once(storage_url):
    """A worker that stopped heartbeating (or died before its first heartbeat) loses its trial to FAIL with a
    reason; one retry with the same params is enqueued; a live worker's trial is left alone; the candidate
    is counted once."""
    rdb = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(storage=rdb, study_name=_name(), directions=["minimize"])
    StoredStudy(study).set_target_trials(3)
    dead = _ask(study)
    dead.suggest_float("x", 0.0, 1.0)
    set_worker(dead, "machine-b")
    rdb.record_heartbeat(dead._trial_id)  # its last heartbeat
    unborn = _ask(study)  # killed between taking the trial and its first heartbeat
    unborn.suggest_float("x", 0.0, 1.0)
    live = _ask(study)
    live.suggest_float("x", 0.0, 1.0)
    assert trial_counts(study) == TrialCounts(done=0, running=3, waiting=0, retried=0)
    for _ in range(6):  # the live worker keeps heartbeating past the grace period
        rdb.record_heartbeat(live._trial_id)
        time.sleep(0.5)
    fail_stale_trials(study)
    fail_stale_trials(study)  # idempotent: nothing is failed or retried twice
    by_number = {t.number: t for t in study.get_trials()}
    for t in (dead, unborn):
        frozen = by_number[t.number]
        assert frozen.state == TrialState.FAIL and fail_reason(frozen) == STALE_REASON
    assert by_number[live.number].state == TrialState.RUNNING
    retries = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert sorted(t.system_attrs["retry_history"] for t in retries) == [[dead.number], [unborn.number]]
    for r in retries:
        original = by_number[r.system_attrs["failed_trial"]]
        assert r.params == original.params
        assert fail_reason(r) is None and worker_of(r) is None
    assert trial_counts(study) == TrialCounts(done=0, running=1, waiting=2, retried=2)
    study.tell(live, 0.5)

    seen: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        seen.append({"x": trial.suggest_float("x", 0.0, 1.0)})
        return seen[-1]["x"]

    ran = run_trials(study, objective, registry=WorkerRegistry(None), wait_for_running=True)
    assert ran == 2 and seen == [by_number[dead.number].params, by_number[unborn.number].params]
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 2
    assert trial_counts(study) == TrialCounts(done=3, running=0, waiting=0, retried=2)


def test_retries_stop_after_max_retry(tmp_path):
    from autoeff.workers import retry_trial

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'r.db'}"), study_name="r")
    t = _ask(study)
    t.suggest_int("k", 1, 9)
    study.tell(t, state=TrialState.FAIL)
    frozen = study.get_trials()[-1]
    for _ in range(3):
        assert retry_trial(study, frozen, max_retry=3)
        retry = study.get_trials()[-1]
        t = _ask(study)  # pops the retry
        assert t.number == retry.number
        study.tell(t, state=TrialState.FAIL)
        frozen = study.get_trials()[t.number]
    assert frozen.system_attrs["retry_history"] == [0, 1, 2]
    assert not retry_trial(study, frozen, max_retry=3)
    assert trial_counts(study) == TrialCounts(done=1, running=0, waiting=0, retried=3)


def _make_study(url: str, name: str, identity: str, *, budget_s: float | None = 0.1) -> optuna.Study:
    from autoeff.budget import parse_budget

    settings = SearchSettings(model="digits", budget=parse_budget("80%"), space=["solver", "schedule"], metric="fid",
                              proxy_samples=16, final_samples=32, max_steps=10, trials=2, sampler="random")
    study = open_study(url, name, settings, identity, directions=directions(settings))
    stored = StoredStudy(study)
    stored.set_run(settings, heartbeat_interval=20, grace_period=60)
    if budget_s is not None:
        stored.set_budget_s(budget_s)
    assert stored.settings() == settings
    return study


@pytest.mark.slow
def test_worker_refuses_missing_unfinished_foreign_or_other_model_study(tmp_path):
    from autoeff.api import join

    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(SearchError, match="no study named 'nope'"):
        join(url, "nope")
    optuna.create_study(storage=url, study_name="bare")
    with pytest.raises(SearchError, match="lacks settings_identity"):
        join(url, "bare")
    _make_study(url, "young", autoeff.load_model("digits").identity, budget_s=None)
    with pytest.raises(SearchError, match="still measuring the baseline"):
        join(url, "young")
    _make_study(url, "other", "weights-of-another-model")
    with pytest.raises(SearchError, match="differs from the one study 'other' searches"):
        join(url, "other")
    with pytest.raises(SearchError, match="no study named 'missing'"):  # optimize --join never creates one
        autoeff.optimize("digits", budget="80%", storage=url, study_name="missing", out=tmp_path / "o", join=True)
    assert "missing" not in optuna.get_all_study_names(url)


@pytest.mark.slow
def test_worker_cli_refuses_a_missing_study_in_one_line(pg_url):
    r = subprocess.run([AUTOEFF, "worker", "--storage", pg_url, "--study-name", "no-such-study"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: no study named 'no-such-study' in {pg_url}; create it first with `autoeff optimize "
        "--storage ... --study-name no-such-study`"]


def _wait_for(cond: Callable[[], object], timeout: float, procs: dict[str, subprocess.Popen], logs: Path,
              what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        for name, p in procs.items():
            if p.poll() is not None and p.returncode != 0:
                pytest.fail(f"{name} exited with {p.returncode} while waiting for {what}:\n"
                            + (logs / f"{name}.log").read_text()[-3000:])
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_two_workers_share_a_postgres_study_and_survive_a_sigkill(pg_url, tmp_path):
    """optimize (coordinator) + two `autoeff worker` processes on one PostgreSQL study; one worker is killed
    with SIGKILL mid-trial. Its trial goes stale, is failed with the reason and retried; the study reaches
    its count with no trial RUNNING or counted twice; timed sections never overlapped (device lock); the
    winner and any worker's trial export from the shared study and load."""
    name, target = _name(), 8
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    env = {**os.environ, "AUTOEFF_LOCK_DIR": str(tmp_path / "locks"), "OMP_WAIT_POLICY": "PASSIVE",
           "AUTOEFF_TEST_LOCK_LOG": str(tmp_path / "lock.log")}
    env.pop("AUTOEFF_WORKER_ID", None)
    procs: dict[str, subprocess.Popen] = {}

    def start(label: str, args: list[str], **extra: str) -> subprocess.Popen:
        log = open(tmp_path / f"{label}.log", "w")  # noqa: SIM115 (closed with the process)
        procs[label] = subprocess.Popen([sys.executable, str(entry), *args], stdout=log, stderr=subprocess.STDOUT,
                                        env={**env, **extra}, cwd=tmp_path)
        return procs[label]

    storage = optuna.storages.RDBStorage(pg_url)

    def study() -> optuna.Study | None:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            return None

    started = time.monotonic()
    try:
        start("coordinator", ["optimize", "--model", "digits", "--budget", "200%", "--trials", str(target),
                              "--sampler", "random", "--no-warm-start", "--top-k", "1", "--threads", "1",
                              "--storage", pg_url, "--study-name", name, "--out", str(tmp_path / "out"),
                              "--heartbeat-interval", "1", "--grace-period", "3", *FAST])
        _wait_for(lambda: (s := study()) is not None and StoredStudy(s).budget_s is not None, 180, procs, tmp_path,
                  "the coordinator's baseline")
        worker = ["worker", "--storage", pg_url, "--study-name", name, "--threads", "1"]
        pid_a, pid_coordinator = start("worker_a", worker).pid, procs["coordinator"].pid
        victim = start("worker_b", worker, AUTOEFF_WORKER_ID="machine-b")  # as if on another machine

        def victim_trial() -> int | None:
            running = study().get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            return next((t.number for t in running  # "recipe": its params are chosen, it is measuring
                         if worker_of(t) == "machine-b" and recipe_dict_of(t) is not None), None)

        killed = _wait_for(victim_trial, 120, procs, tmp_path, "worker_b to measure a trial")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        del procs["worker_b"]
        for label in ("coordinator", "worker_a"):
            rc = procs[label].wait(timeout=300)
            assert rc == 0, (tmp_path / f"{label}.log").read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - started

    final = study()
    trials = final.get_trials()
    by_number = {t.number: t for t in trials}
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert by_number[killed].state == TrialState.FAIL
    assert fail_reason(by_number[killed]) == STALE_REASON
    retries = [t for t in trials if t.system_attrs.get("retry_history") == [killed]]
    assert len(retries) == 1 and retries[0].params == by_number[killed].params
    assert retries[0].state == TrialState.COMPLETE or fail_reason(retries[0])
    assert all(fail_reason(t) for t in trials if t.state == TrialState.FAIL)
    counts = trial_counts(final)
    finished = [t for t in trials if t.state.is_finished()]
    assert counts.done == len(finished) - 1  # the killed attempt and its retry are one candidate
    assert target <= counts.done <= target + 2  # at most one extra trial per other process
    of_a = [t for t in trials if str(worker_of(t)).endswith(f"/{pid_a}")]
    of_coordinator = [t for t in trials if str(worker_of(t)).endswith(f"/{pid_coordinator}")]
    assert of_a and of_coordinator  # both processes ran trials of the one study
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    exported_trial = next((t for t in of_a if t.state == TrialState.COMPLETE), complete[0])

    # the device lock serialized the timed sections of the processes on this machine
    spans = [json.loads(line) for line in (tmp_path / "lock.log").read_text().splitlines()]
    assert len({pid for pid, _, _ in spans}) >= 2
    spans.sort(key=lambda s: s[1])
    for (pid_a, _, end_a), (pid_b, start_b, _) in zip(spans, spans[1:], strict=False):
        assert start_b >= end_a - 1e-3, f"timed sections of {pid_a} and {pid_b} overlapped"
    assert list((tmp_path / "locks").glob("*-cpu.lock"))

    # selection read every worker's trials from storage; export the winner and a worker's trial
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["trials"] == sum(1 for t in trials if t.state == TrialState.COMPLETE)
    exp = tmp_path / "exported"
    r = subprocess.run([AUTOEFF, "export", "--storage", pg_url, "--study-name", name, "--trial",
                        str(exported_trial.number), "--to", str(exp)], capture_output=True, text=True,
                       timeout=180, env=env)
    assert r.returncode == 0, r.stderr
    pipe = autoeff.load(exp)
    assert pipe.autoeff_info["recipe"] == recipe_dict_of(exported_trial)
    assert autoeff.load(tmp_path / "out" / "optimized").autoeff_info["measured"]["trial"] in by_number
    print(f"scenario: {elapsed:.1f} s for {len(trials)} trials")
