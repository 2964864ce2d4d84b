"""autoeff in a pipeline (issue 15): run configuration files, logs, JSON, MLflow, one search for many budgets, a
report read in ten seconds, and the API returning a result when nothing meets the budget.

One small search (the trained digits model, 3 trials) runs once for the module through the CLI, with a log
file, JSON output and MLflow tracking; the tests read what it left.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

import autoeff
from autoeff.cli import main
from autoeff.config_file import read_config, write_config
from autoeff.errors import SettingsError
from autoeff.settings import RunOptions, SearchSettings

FLAGS = ["--steps", "10", "--budget", "200%", "--trials", "3", "--proxy-samples", "8", "--final-samples", "8",
         "--max-steps", "6", "--threads", "1", "--sampler", "random"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("mlops")
    out = tmp / "run"
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)  # artifacts under tmp, not the working folder
    client.create_experiment("autoeff", artifact_location=(tmp / "artifacts").as_uri())
    res = CliRunner().invoke(main, ["optimize", "--model", "digits", *FLAGS, "--out", str(out), "--json",
                                    "--mlflow-uri", uri, "--log-file", str(tmp / "run.log")])
    assert res.exit_code == 0, res.stderr
    return {"tmp": tmp, "out": out, "uri": uri, "stdout": res.stdout, "stderr": res.stderr}


# -- 1. configuration files ---------------------------------------------------------------------------------------
def test_every_run_writes_the_config_it_ran(run):
    values = read_config(run["out"] / "run.toml")
    assert values["model"] == "digits" and values["budget"] == "200%" and values["trials"] == 3
    assert values["proxy_samples"] == 8 and values["threads"] == 1 and values["warm_start"] is True
    assert Path(values["out"]) == run["out"].resolve() and values["mlflow_uri"] == run["uri"]
    SearchSettings(**{k: v for k, v in values.items() if k in SearchSettings.__dataclass_fields__})


def test_the_config_replays_the_run_and_flags_win(run, tmp_path):
    config = run["out"] / "run.toml"
    # a replay resumes the same study: nothing new to measure, the same winner
    again = CliRunner().invoke(main, ["optimize", "--config", str(config), "--json", "-q"])
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["best"]["number"] == json.loads(run["stdout"])["best"]["number"]
    # a flag given on the command line wins over the file: here a budget the study was not made for
    other = CliRunner().invoke(main, ["optimize", "--config", str(config), "--budget", "50%"])
    assert other.exit_code == 2 and "was made for --budget 200%, not 50%" in other.stderr


def test_config_round_trip_of_options_and_types(tmp_path):
    s = SearchSettings(model="digits", budget="150ms", space="solver,cache", trial_timeout_s=30.0,
                       options={"cache": {"max_interval": 3, "schedules": ["uniform"]}, "solver": {"max_order": 2}})
    r = RunOptions(out=tmp_path / "o", study_name="a b", threads=1)
    path = write_config(tmp_path / "run.toml", s, r)
    values = read_config(path)
    assert SearchSettings(**{k: v for k, v in values.items() if k in SearchSettings.__dataclass_fields__}) == s
    assert values["study_name"] == "a b" and values["options"]["cache"]["schedules"] == ["uniform"]
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model: digits\nbudget: 10%\nproxy-samples: 16\nno-warm-start: true\n")
    assert read_config(yaml_file) == {"model": "digits", "budget": "10%", "proxy_samples": 16, "warm_start": False}


def test_the_api_takes_the_same_file(run):
    result = autoeff.optimize_from_config(run["out"] / "run.toml", export=False)
    assert result.best is not None and result.settings.trials == 3
    with pytest.raises(SettingsError, match="unknown key 'trails'"):
        bad = run["tmp"] / "bad.toml"
        bad.write_text('model = "digits"\ntrails = 3\n')
        autoeff.optimize_from_config(bad)


# -- 2. logs -------------------------------------------------------------------------------------------------------
def test_off_a_terminal_one_plain_line_per_finished_trial(run):
    lines = [line for line in run["stderr"].splitlines() if re.match(r"trial \d+ (COMPLETE|FAIL)", line)]
    assert len(lines) == 3
    assert all(("feasible" in line or "over budget" in line or "FAIL" in line) for line in lines)
    assert all(" ms" in line and "best so far" in line and " | solver: " in line for line in lines
               if "COMPLETE" in line)
    log = (run["tmp"] / "run.log").read_text()
    assert log.count(" INFO autoeff: trial ") == 3 and "measured the baseline" in log


def test_quiet_shows_no_trial_lines(run):
    res = CliRunner().invoke(main, ["optimize", "--config", str(run["out"] / "run.toml"), "-q"])
    assert res.exit_code == 0 and not re.search(r"^trial \d+", res.stderr, re.M)


# -- 3. JSON --------------------------------------------------------------------------------------------------------
def test_json_documents_on_stdout_and_human_lines_on_stderr(run):
    result = json.loads(run["stdout"])
    assert {"settings", "baseline", "best", "pareto", "export_path"} <= set(result)
    assert "chosen:" in run["stderr"] and "exported:" in run["stderr"]
    shown = CliRunner().invoke(main, ["show", "--out", str(run["out"]), "--json", "--all"])
    doc = json.loads(shown.stdout)
    assert len(doc["trials"]) == 3 and set(doc["pareto"]) <= {t["number"] for t in doc["trials"]}
    bench = CliRunner().invoke(main, ["bench", str(run["out"] / "optimized"), "--json", "--samples", "4",
                                      "--threads", "1"])
    assert [r["what"] for r in json.loads(bench.stdout)["rows"]] == ["device", "latency", "load", "quality"]
    assert "python" in json.loads(CliRunner().invoke(main, ["env", "--json"]).stdout)


def test_piped_show_prints_whole_recipes(run):
    shown = CliRunner().invoke(main, ["show", "--out", str(run["out"]), "--all"])
    rows = [line.split("\t") for line in shown.stdout.splitlines() if not line.startswith("#")]
    assert rows[0] == ["trial", "latency ms", "quality", "size MB", "feasible", "recipe"]
    assert len(rows) == 4 and all(len(r) == 6 and r[5].startswith("solver: ") for r in rows[1:])


# -- 4. MLflow -------------------------------------------------------------------------------------------------------
def test_mlflow_holds_the_settings_every_trial_and_the_export(run):
    client = mlflow.tracking.MlflowClient(tracking_uri=run["uri"])
    experiment = client.get_experiment_by_name("autoeff")
    runs = client.search_runs([experiment.experiment_id])
    # the first search is the earliest parent run (replays in other tests log their own runs, without new trials)
    parent = min((r for r in runs if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    assert parent.data.params["budget"] == "200%" and parent.data.params["trials"] == "3"
    assert "baseline_latency_ms" in parent.data.metrics and "chosen_latency_ms" in parent.data.metrics
    assert all("latency_ms" in c.data.metrics and "feasible" in c.data.metrics for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "optimized")}
    assert "optimized/autoeff.json" in artifacts and "optimized/manifest.json" in artifacts


# -- 5. one search, many budgets ---------------------------------------------------------------------------------
def test_export_by_budget_picks_and_re_times_the_best_stored_candidate(run, tmp_path):
    summary = json.loads(run["stdout"])
    slowest = max(t["measurement"]["latency_s"] for t in summary["pareto"])
    res = CliRunner().invoke(main, ["export", "--out", str(run["out"]), "--budget", f"{slowest * 1000 * 3:.1f}ms",
                                    "--to", str(tmp_path / "b"), "--threads", "1"])
    assert res.exit_code == 0, res.stderr
    info = json.loads((tmp_path / "b" / "autoeff.json").read_text())
    assert info["measured"]["retimed"]["median_s"] <= info["measured"]["budget_s"]
    assert re.search(r"trial \d+ meets .* re-timed", res.stderr)


# -- 6. the report ---------------------------------------------------------------------------------------------------
def test_the_report_states_speed_and_quality_and_how_to_use_it(run):
    report = (run["out"] / "optimized" / "report.html").read_text()
    assert re.search(r"\d+\.\dx faster per call, fid [\d.]+ -&gt; [\d.]+ \(n=8\)", report)
    assert "lower is better" in report
    assert f"autoeff export --out {run['out']} --trial" in report
    assert f"autoeff.load(&#x27;{(run['out'] / 'optimized').resolve()}&#x27;)" in report
    assert ".tmp-" not in report  # the snippet names where the export lives, not its temporary folder


# -- 7. the API when nothing meets the budget ---------------------------------------------------------------------
def test_the_cli_exits_3_with_one_line_when_nothing_meets_the_budget(run):
    res = CliRunner().invoke(main, ["optimize", "--config", str(run["out"] / "run.toml"), "--budget", "0.1ms",
                                    "--out", str(run["tmp"] / "none"), "-q", "--trials", "1", "--no-warm-start"])
    assert res.exit_code == 3 and res.stderr.splitlines()[-1].startswith("error: no candidate met the budget")
