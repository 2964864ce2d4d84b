"""The `autoeff` command line: env, --version, generate, and optimize -> show -> export -> bench end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import autoeff
from autoeff.cli import main

AUTOEFF_BIN = Path(sys.executable).parent / "autoeff"


def invoke(*args: str, **kw):
    res = CliRunner().invoke(main, list(args), prog_name="autoeff", **kw)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


def test_version_from_the_installed_script():
    p = subprocess.run([str(AUTOEFF_BIN), "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == f"autoeff, version {autoeff.__version__}"


def test_env_prints_library_versions():
    from importlib.metadata import version

    res = invoke("env")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    for name in ("torch", "diffusers", "optuna"):
        assert f"{name}: {version(name)}" in lines
    assert any(line.startswith("cuda") for line in lines)
    info = json.loads(invoke("env", "--json").stdout)
    assert info["versions"]["optuna"] == version("optuna")


def test_generate_writes_a_png(tmp_path):
    from PIL import Image

    dest = tmp_path / "x.png"
    res = invoke("generate", "--model", "digits", "--n", "4", "--steps", "5", "--out", str(dest))
    assert res.exit_code == 0, res.stderr
    assert dest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(dest) as im:
        assert im.width >= 32 and im.height >= 16  # 4 digits of 16x16 in a grid
    assert f"wrote {dest}" in res.stdout


def test_a_failure_before_the_first_trial_removes_only_what_the_run_created(tmp_path, monkeypatch):
    """An error raised after the --out folder exists but before any trial (here: the baseline) leaves no new
    folder behind, and never removes a folder that was there before."""
    from autoeff.errors import SearchError
    from autoeff.measure import Evaluator

    def broken(self):
        raise SearchError("baseline failed on purpose")

    monkeypatch.setattr(Evaluator, "baseline", broken)
    args = ["optimize", "--model", "digits", "--budget", "200%", "--trials", "1", "--proxy-samples", "4",
            "--final-samples", "4", "--max-steps", "4"]
    new = tmp_path / "new"
    res = invoke(*args, "--out", str(new))
    assert res.exit_code == 2 and res.stderr.splitlines()[-1] == "error: baseline failed on purpose"
    assert not new.exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    res = invoke(*args, "--out", str(old))
    assert res.exit_code == 2
    assert (old / "keep.txt").read_text() == "mine"
    db = tmp_path / "given.db"  # a new SQLite file named by --storage is this run's too
    res = invoke(*args, "--out", str(tmp_path / "new2"), "--storage", f"sqlite:///{db}")
    assert res.exit_code == 2 and not db.exists() and not (tmp_path / "new2").exists()


@pytest.mark.slow
def test_optimize_show_export_bench(tmp_path):
    """The whole CLI on the trained digits model (a 10-step baseline) with tiny counts."""
    from autoeff.api import load_result
    from autoeff.bench import bench_export

    out = tmp_path / "run"
    res = invoke("optimize", "--model", "digits", "--steps", "10", "--budget", "200%", "--trials", "2",
                 "--proxy-samples", "16", "--final-samples", "32", "--max-steps", "10", "--top-k", "2",
                 "--threads", "1", "--out", str(out))
    assert res.exit_code == 0, res.stderr
    assert "baseline:" in res.stdout and "chosen:" in res.stdout and "exported:" in res.stdout
    assert (out / "study.db").is_file() and (out / "optimized" / "autoeff.json").is_file()

    res = invoke("show", "--out", str(out))
    assert res.exit_code == 0 and "Pareto front" in res.stdout
    res = invoke("show", "--out", str(out), "--all")
    assert res.exit_code == 0 and "trials" in res.stdout

    _, records = load_result(out)
    scored = [r for r in records if r.measurement.quality is not None]
    assert scored, "a 10-step candidate within 200% of a 10-step baseline should have been scored"
    rec = scored[0]
    dest = tmp_path / "trial"
    res = invoke("export", "--out", str(out), "--trial", str(rec.number), "--to", str(dest))
    assert res.exit_code == 0, res.stderr
    assert f"exported trial {rec.number}" in res.stdout
    assert autoeff.load(str(dest)).autoeff_info["recipe"] == rec.recipe.to_dict()

    res = invoke("bench", str(dest), "--threads", "1")
    assert res.exit_code == 0, res.stderr
    whats = [line.split()[0] for line in res.stdout.splitlines()]
    assert whats == ["device", "latency", "load", "quality"]

    # the quality re-measured on the same seeds reproduces what the study recorded, exactly
    rows = {r["what"]: r for r in bench_export(dest, threads=1)}
    assert rows["quality"]["measured_value"] == pytest.approx(rec.measurement.quality.value, rel=1e-6)
    assert rows["latency"]["measured_value"] > 0
    final = json.loads((out / "optimized" / "autoeff.json").read_text())["measured"]["final"]
    rows = {r["what"]: r for r in bench_export(out / "optimized", threads=1)}
    assert rows["quality"]["claimed_value"] == final["quality"]["value"]
    assert rows["quality"]["measured_value"] == pytest.approx(final["quality"]["value"], rel=1e-6)
