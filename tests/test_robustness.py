"""What a hostile or careless user can do to autoeff, and what it must do instead (issue 16).

The bad inputs that end in one refused line are rows of tests/test_refused_inputs.py; here are the ones that
need more than a command line to set up or to check: data a user owns, hangs, races, file modes, the order of
retries, and the machine's load while timing. docs/robustness.md lists every attempt and its test.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from autoeff.budget import parse_budget
from autoeff.cli import main
from autoeff.errors import SearchError
from autoeff.evaluators import load as machine_load
from autoeff.evaluators.latency import measure_latency
from autoeff.export import ExportError, export_pipeline, load
from autoeff.recipe import Recipe
from autoeff.run import OWNER_LOCK, owning
from autoeff.search import context_for
from autoeff.search_spaces import schedule, solver
from autoeff.settings import SearchSettings
from autoeff.study import StoredStudy, incompatibility, set_worker
from autoeff.workers import WorkerRegistry, open_storage, run_trials, worker_id


def _recipe() -> Recipe:
    return Recipe(model="digits", knobs={"solver": solver.Config(name="dpmpp", order=2),
                                         "schedule": schedule.Config(family="uniform", steps=3)})


def _ctx(handle):
    return context_for(handle, SearchSettings(model="digits", budget="1s", space=["solver", "schedule"],
                                              max_steps=10))


# -- 1. export never deletes what it did not write --------------------------------------------------------------
def test_export_refuses_a_folder_that_merely_holds_an_autoeff_json(random_digits_handle, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    (d / "autoeff.json").write_text("{}")
    with pytest.raises(ExportError, match="is not an autoeff export; refusing to overwrite"):
        export_pipeline(random_digits_handle, _recipe(), _ctx(random_digits_handle), d)
    assert (d / "notes.txt").read_text() == "mine" and sorted(p.name for p in d.iterdir()) == [
        "autoeff.json", "notes.txt"]


def test_re_export_keeps_a_users_files_and_changes(random_digits_handle, tmp_path):
    ctx, dest = _ctx(random_digits_handle), tmp_path / "optimized"
    export_pipeline(random_digits_handle, _recipe(), ctx, dest)
    export_pipeline(random_digits_handle, _recipe(), ctx, dest)  # an untouched export is replaced
    (dest / "NOTES.md").write_text("my notes on this model")
    with pytest.raises(ExportError, match=r"holds files autoeff did not write \(NOTES.md\)"):
        export_pipeline(random_digits_handle, _recipe(), ctx, dest)
    assert (dest / "NOTES.md").read_text() == "my notes on this model"
    (dest / "NOTES.md").unlink()
    card = (dest / "README.md").read_text()  # the model card autoeff wrote: a user's edit of it is kept too
    (dest / "README.md").write_text(card + "\nmy notes on this model\n")
    with pytest.raises(ExportError, match="holds README.md, changed since autoeff wrote it"):
        export_pipeline(random_digits_handle, _recipe(), ctx, dest)
    assert (dest / "README.md").read_text().endswith("my notes on this model\n")
    (dest / "README.md").write_text(card)
    (dest / "autoeff.json").write_text((dest / "autoeff.json").read_text().replace('"created"', '"created" '))
    with pytest.raises(ExportError, match="holds autoeff.json, changed since autoeff wrote it"):
        export_pipeline(random_digits_handle, _recipe(), ctx, dest)


# -- 3. a crafted recipe pattern cannot hang a load --------------------------------------------------------------
HANG = """
from autoeff.models.digits.architectures import build_unet
from autoeff.search_spaces.base import ConfigError
from autoeff.search_spaces.groups import resolve_fqn_map
# Python's re needs hours for this pattern against every layer name (catastrophic backtracking)
out = resolve_fqn_map(build_unet(), {"re:(.|.)*Z": "int8", "re:(a|aa)*b": "int8", "_default": "skip"})
print(sorted(set(out.values())))
"""


def test_a_catastrophic_backtracking_pattern_resolves_at_once():
    done = subprocess.run([sys.executable, "-c", HANG], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['skip']"  # no layer name matches: every layer falls to _default


def test_an_overlong_pattern_is_refused():
    from autoeff.search_spaces import quantize
    from autoeff.search_spaces.base import ConfigError

    with pytest.raises(ConfigError, match="longer than 1000 characters"):
        quantize.Config(mapping={"re:" + "a?" * 600 + "a" * 600: "int8", "_default": "skip"}, backend="fake")


# -- 5. one process owns an --out ------------------------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
from filelock import FileLock
lock = FileLock(sys.argv[1]); lock.acquire(); Path(sys.argv[1]).write_text("elsewhere/0/4242")
print("held", flush=True); time.sleep(600)
"""


def test_a_second_optimize_on_an_owned_out_is_refused_naming_the_owner(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("the first run's")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / OWNER_LOCK)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        res = CliRunner().invoke(main, ["optimize", "--model", "digits", "--budget", "200%", "--trials", "1",
                                        "--proxy-samples", "4", "--final-samples", "4", "--max-steps", "4",
                                        "--out", str(out)])
        assert res.exit_code == 2, res.stderr
        assert res.stderr.splitlines()[-1] == (f"error: --out {str(out)!r} is in use by another autoeff optimize "
                                               "(process elsewhere/0/4242); wait for it to finish or choose another "
                                               "--out")
        assert (out / "keep.txt").read_text() == "the first run's" and not (out / "study.db").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with owning(out):  # its process is dead: the OS released the lock, the next run takes it over
        assert (out / OWNER_LOCK).read_text().strip() == worker_id()


# -- 6. a full disk during an export -----------------------------------------------------------------------------
def test_a_full_disk_during_export_is_one_error_and_keeps_the_previous_export(random_digits_handle, tmp_path,
                                                                            monkeypatch):
    ctx, dest = _ctx(random_digits_handle), tmp_path / "optimized"
    export_pipeline(random_digits_handle, _recipe(), ctx, dest)
    before = (dest / "manifest.json").read_text()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(random_digits_handle.pipeline), "save_pretrained", full)
    with pytest.raises(ExportError, match="cannot write the export to .*: No space left on device"):
        export_pipeline(random_digits_handle, _recipe(), ctx, dest)
    assert (dest / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimized"]  # the temp folder is gone


# -- 9. an export others can read ------------------------------------------------------------------------------------
def test_exported_files_are_readable_by_others(random_digits_handle, tmp_path):
    dest = export_pipeline(random_digits_handle, _recipe(), _ctx(random_digits_handle), tmp_path / "shared")
    mask = os.umask(0)
    os.umask(mask)
    files = [p for p in dest.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644 & ~mask, p
    for p in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o755 & ~mask, p


# -- the file swapped between the hash check and the load ------------------------------------------------------
def test_a_file_changed_while_loading_is_refused(random_digits_handle, tmp_path, monkeypatch):
    import autoeff.export as export_module

    dest = export_pipeline(random_digits_handle, _recipe(), _ctx(random_digits_handle), tmp_path / "e")
    real = export_module.apply_knobs

    def swap_then_apply(*args, **kwargs):  # after the check, before the load is done: a writer changes a file
        cfg = dest / "scheduler" / "scheduler_config.json"
        cfg.write_text(cfg.read_text().replace("1000", "1000 "))
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, "apply_knobs", swap_then_apply)
    with pytest.raises(ExportError, match="scheduler_config.json changed while the export was being loaded"):
        load(dest)


# -- 10. a killed trial is retried before the hand-picked configurations still queued --------------------------
def _dead_owner() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host, ns, _ = worker_id().split("/")
    return f"{host}/{ns}/{child.pid}"


def test_a_killed_trial_runs_again_before_the_warm_starts_still_queued(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=60), study_name="s")
    stored = StoredStudy(study)
    stored.set_warm_starts([{"x": 1}, {"x": 2}, {"x": 3}])
    assert stored.enqueue_next_warm_start()  # the first hand-picked one ran ...
    first = study.ask()
    study.tell(first, float(first.suggest_int("x", 0, 100)))
    study.enqueue_trial({"x": 50})  # (a fixed candidate, so that it cannot coincide with a hand-picked one)
    killed = study.ask()  # ... and the search's own candidate was running when its process was killed
    assert killed.suggest_int("x", 0, 100) == 50
    set_worker(killed, _dead_owner())
    stored.set_target_trials(3)
    seen: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        seen.append(trial.suggest_int("x", 0, 100))
        return float(seen[-1])

    with WorkerRegistry.for_storage(url, "s") as registry:
        run_trials(study, objective, registry=registry, wait_for_running=True,
                   refill=stored.enqueue_next_warm_start)
    assert seen[0] == 50  # the retry first ...
    assert seen[1:] == [2]  # ... then the next hand-picked configuration
    assert [t.state for t in study.get_trials()].count(TrialState.FAIL) == 1


# -- 12. the same budget however written -------------------------------------------------------------------------
def test_a_study_resumes_with_its_budget_written_another_way():
    study = optuna.create_study()
    made = SearchSettings(model="digits", budget="200ms", metric="fid", proxy_samples=16, final_samples=32)
    stored = StoredStudy(study)
    stored.initialize(made, "id")
    same = SearchSettings(model="digits", budget="0.2s", metric="fid", proxy_samples=16, final_samples=32)
    assert incompatibility(stored, same, "id", "mem") is None
    other = SearchSettings(model="digits", budget="300ms", metric="fid", proxy_samples=16, final_samples=32)
    assert "was made for --budget 200ms, not 300ms" in (incompatibility(stored, other, "id", "mem") or "")
    assert parse_budget("200ms").same_as(made.budget)


# -- the machine's load while timing ---------------------------------------------------------------------------------
def test_other_cpu_share_from_two_samples():
    before = machine_load.CpuSample(busy_s=100.0, own_s=10.0, wall_s=0.0)
    after = machine_load.CpuSample(busy_s=103.0, own_s=11.0, wall_s=2.0)  # 3 s busy, 1 of it this process
    cpus = os.cpu_count() or 1
    assert machine_load.other_cpu_share(before, after) == pytest.approx(min(1.0, 2.0 / (2.0 * cpus)))
    assert machine_load.other_cpu_share(before, None) is None
    assert machine_load.other_cpu_share(before, before) is None  # no time passed: nothing to say


SPIN = "import time\nend = time.time() + 20\nwhile time.time() < end: pass\n"


def test_a_latency_timed_beside_a_busy_process_records_its_load():
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.5)
        res = measure_latency(lambda: time.sleep(0.05), "cpu", warmup=0, min_repeats=20, max_repeats=20,
                              lock=False)
    finally:
        spinner.kill()
        spinner.wait()
    cpus = os.cpu_count() or 1
    # one core spinning the whole time: at least most of 1/cpus of the machine, whatever else runs
    assert res.other_cpu is not None and res.other_cpu >= 0.6 / cpus
    assert res.load_avg is not None and res.load_avg >= 0


def test_bench_of_a_busy_claim_says_so(tmp_path):
    from autoeff.bench import bench_export
    from tests.conftest import make_digits_export

    folder = make_digits_export(tmp_path / "e")
    rows = {r["what"]: r for r in bench_export(folder, device="cpu", samples=4, threads=1)}
    assert rows["load"]["claimed"] == "not recorded"  # the hand-made claim has no load; a search records it
    assert rows["load"]["measured_value"] is None or 0 <= rows["load"]["measured_value"] <= 1


def test_baseline_failure_is_one_search_error(tmp_path, monkeypatch):
    from autoeff.measure import Evaluator

    def broken(self):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(Evaluator, "baseline", broken)
    with pytest.raises(SearchError, match=r"the baseline \(the pipeline as given\) failed: RuntimeError: CUDA out"):
        import autoeff

        autoeff.optimize("digits", budget="200%", trials=1, proxy_samples=4, final_samples=4, max_steps=4,
                         out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_threads_beyond_the_machine_are_refused(tmp_path):
    res = CliRunner().invoke(main, ["optimize", "--model", "digits", "--budget", "10%", "--threads", "100000",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and f"more than the {os.cpu_count()} CPUs of this machine" in res.stderr
    assert not (tmp_path / "o").exists()


# -- one coordinator per study ---------------------------------------------------------------------------------
def test_a_second_coordinator_of_a_study_is_refused_while_the_first_beats():
    from autoeff.workers import CoordinatorLease

    study = optuna.create_study()
    stored = StoredStudy(study)
    with CoordinatorLease(study, "machine-a/1/100", interval=60, grace=180):
        assert stored.coordinator is not None and stored.coordinator[0] == "machine-a/1/100"
        with pytest.raises(SearchError, match=r"already coordinated by machine-a/1/100 \(it beat 0 s ago\); add "
                                              "trials to it with `autoeff worker`"):
            with CoordinatorLease(study, "machine-b/1/200", interval=60, grace=180):
                pass
    assert stored.coordinator is None  # released on exit
    stored.set_coordinator("machine-a/1/100", time.time() - 600)  # crashed ten minutes ago (its beat is stale)
    with CoordinatorLease(study, "machine-b/1/200", interval=60, grace=180):
        assert stored.coordinator is not None and stored.coordinator[0] == "machine-b/1/200"
    stored.set_coordinator(_dead_owner(), time.time())  # a dead process of this machine: taken over at once
    with CoordinatorLease(study, "machine-c/1/300", interval=60, grace=180):
        assert stored.coordinator is not None and stored.coordinator[0] == "machine-c/1/300"


def test_the_coordinator_renews_its_beat():
    from autoeff.workers import CoordinatorLease

    study = optuna.create_study()
    stored = StoredStudy(study)
    with CoordinatorLease(study, "me/1/1", interval=0.2, grace=1.0):
        first = stored.coordinator
        time.sleep(0.7)
        later = stored.coordinator
    assert first is not None and later is not None and later[1] > first[1]
