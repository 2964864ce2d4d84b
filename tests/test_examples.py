"""The examples a user copies actually run (with tiny counts)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_local_sdxl_example_on_a_tiny_sdxl_folder_then_load_and_generate(tmp_path, capsys):
    from autoeff.models.tiny import build_tiny_sdxl

    folder = tmp_path / "sdxl-folder"
    build_tiny_sdxl().pipeline.save_pretrained(folder)
    result = _load("local_sdxl").main([str(folder), "--device", "cpu", "--budget", "300%", "--trials", "2",
                                       "--out", str(tmp_path / "out"), "--steps", "4", "--proxy-samples", "2",
                                       "--final-samples", "2"])
    assert result.handle.family == "sdxl" and (result.export_path / "autoeff.json").is_file()
    _load("load_and_generate").main([str(result.export_path), "--out", str(tmp_path / "grid.png")])
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert "recipe:" in capsys.readouterr().out


def test_optimize_loaded_pipeline_example_logs_every_trial(tmp_path):
    summary = _load("optimize_loaded_pipeline").main(["--budget", "40%", "--trials", "2", "--out", str(tmp_path),
                                                      "--proxy-samples", "16", "--final-samples", "16",
                                                      "--steps", "10"])
    # (the budget-filling loop runs candidates close to the budget: on a busy machine the re-time may miss it)
    assert summary["speedup"] > 0 if summary["speedup"] is not None else "budget" in summary["infeasible"]
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all("recipe" in json.loads(line) for line in lines)


def test_optimize_digits_example(tmp_path, capsys):
    _load("optimize_digits").main(["--budget", "50%", "--trials", "2", "--out", str(tmp_path),
                                   "--proxy-samples", "16", "--final-samples", "16", "--steps", "10"])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    # the budget-filling loop runs candidates close to the budget: on a busy machine the re-time may miss it
    expected = "chosen:" if summary["best"] is not None else f"no choice: {summary['infeasible']}"
    assert "baseline:" in out and expected in out and "Pareto front" in out
