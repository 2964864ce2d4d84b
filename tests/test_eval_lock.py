"""The per-device lock serializes timed sections across real processes; without it they overlap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_WORKER = """
import json, pathlib, sys, time
from autoeff.evaluators.lock import device_lock
barrier, use_lock, out = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
(barrier / pathlib.Path(out).name).touch()  # ready; wait until both processes are (a start barrier)
deadline = time.time() + 20
while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
    time.sleep(0.005)
if use_lock:
    with device_lock("cpu"):
        start = time.time(); time.sleep(0.4); end = time.time()
else:
    start = time.time(); time.sleep(0.4); end = time.time()
open(out, "w").write(json.dumps([start, end]))
"""


def _run_pair(tmp_path: Path, use_lock: bool) -> list[tuple[float, float]]:
    barrier = tmp_path / f"barrier-{use_lock}"
    barrier.mkdir()
    outs = [tmp_path / f"{use_lock}-{i}.json" for i in range(2)]
    env = {"AUTOEFF_LOCK_DIR": str(tmp_path / "locks"), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(barrier), "1" if use_lock else "0", str(o)],
                              env=env, cwd=Path(__file__).resolve().parents[1]) for o in outs]
    for p in procs:
        assert p.wait(timeout=30) == 0
    return sorted(tuple(json.loads(o.read_text())) for o in outs)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_lock_serializes_two_processes(tmp_path):
    (a, b) = _run_pair(tmp_path, use_lock=True)
    assert not _overlap(a, b), (a, b)


def test_without_lock_they_overlap(tmp_path):
    (a, b) = _run_pair(tmp_path, use_lock=False)
    assert _overlap(a, b), (a, b)


def test_lock_is_reentrant_and_keyed_by_device(tmp_path, monkeypatch):
    from autoeff.evaluators.lock import device_lock, lock_path

    monkeypatch.setenv("AUTOEFF_LOCK_DIR", str(tmp_path))
    assert lock_path("cpu") == lock_path("cpu:3") != lock_path("cuda:1")
    assert lock_path("cpu").parent == tmp_path
    with device_lock("cpu"), device_lock("cpu"):
        pass
