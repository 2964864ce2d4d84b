"""`make demo`, several times in a row, as a new user runs it: does the chosen candidate hold up run after run?

    OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_runs.py            # 5 runs; ~5 min each on 2 quiet cores
    OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_runs.py --runs 1   # one more run (runs are numbered on)
    python benchmarks/demo_runs.py --render                           # the section from the saved runs

Each run is a fresh process running exactly what `make demo` runs, `autoeff optimize --model digits --budget 10%
--trials 24 --out <work-dir>/run-<i>` (batch 1, seed 0, the default sampler and sample counts), in a fresh
--out. Its `summary.json` gives the baseline's latency and final FID (1000 samples, the search's final seed
set) and the chosen candidate's re-timed latency and final FID on the same sample; the wall time is the whole
command's. Saved in `benchmarks/results/demo_runs.json` after every run.

Targets (issue 13): in >= 4 of 5 runs the chosen FID <= 1.5x the baseline's at >= 10x lower latency; each
run <= 10 min on 2 cores; <= 20 % of trials measured over budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import DEFAULT_OUT, ROOT, machine, machine_line, results_dir, write_section  # noqa: E402

START, END = "<!-- demo:start -->", "<!-- demo:end -->"
DEMO_ARGS = ["optimize", "--model", "digits", "--budget", "10%", "--trials", "24"]
FID_RATIO_TARGET = 1.5
SPEEDUP_TARGET = 10.0
MINUTES_TARGET = 10.0
OVER_TARGET = 0.20


def one_run(out: Path) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "autoeff.cli", *DEMO_ARGS, "--out", str(out)], env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {"out": str(out), "exit": proc.returncode, "wall_s": wall,
                           "stderr_tail": proc.stderr.strip().splitlines()[-3:]}
    summary_path = out / "summary.json"
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        base, best = s["baseline"], s.get("best")
        row.update(baseline_ms=base["latency_s"] * 1000, baseline_fid=base["final_quality"]["value"],
                   trials=s["trials"], over_budget=s.get("over_budget"), skipped=s.get("skipped"),
                   latency_model=s.get("latency_model"), halving=s.get("halving"))
        if best is not None:
            final = best["final"]
            row.update(chosen_ms=final["latency_s"] * 1000, chosen_fid=final["quality"]["value"],
                       chosen_recipe=s.get("best_recipe"), chosen_trial=best["number"])
            raw = (final.get("latency") or {}).get("raw_samples_s")
            if raw:  # timed against the yardstick: the milliseconds of the moment, for the record
                row["chosen_raw_ms"] = statistics.median(raw) * 1000
    return row


def met(r: dict[str, Any]) -> bool:
    return ("chosen_fid" in r and r["chosen_fid"] <= FID_RATIO_TARGET * r["baseline_fid"]
            and r["baseline_ms"] / r["chosen_ms"] >= SPEEDUP_TARGET)


def describe(recipe: dict[str, Any] | None) -> str:
    if not recipe:
        return "—"
    from autoeff.recipe import Recipe
    from benchmarks._common import short_label

    return short_label(Recipe.from_dict(recipe))


def render(data: dict[str, Any]) -> str:
    runs = data.get("runs", [])
    lines = [START, "## `make demo`, run after run", ""]
    if not runs:
        lines += ["**Not measured yet**: `OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_runs.py` (5 runs of `make "
                  "demo`, ~25 min on 2 quiet cores) has not run on a quiet machine since issue 13.", END]
        return "\n".join(lines) + "\n"
    lines += [f"`autoeff {' '.join(DEMO_ARGS)} --out <fresh>` (what `make demo` runs), {len(runs)} runs: "
              f"`{data['command']}` — {machine_line(data['machine'])}. FIDs: 1000 samples of the search's final "
              "seed set, against the 1797 real digits; latencies: the baseline's and the chosen candidate's "
              "re-timed median at batch 1, each call timed against the yardstick (the base pipeline at 5 steps, "
              "right after it) and given in the baseline's conditions; the chosen call's milliseconds as timed "
              "in brackets.", "",
              "| run | wall | baseline | chosen | FID ratio | speedup | over budget | chosen configuration | "
              "target met? |", "| ---: | ---: | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for i, r in enumerate(runs):
        if "chosen_fid" not in r:
            lines.append(f"| {i + 1} | {r['wall_s'] / 60:.1f} min | — | none (exit {r['exit']}) | — | — | — | — | no |")
            continue
        ratio = r["chosen_fid"] / r["baseline_fid"]
        speed = r["baseline_ms"] / r["chosen_ms"]
        raw = f" (as timed: {r['chosen_raw_ms']:.1f})" if "chosen_raw_ms" in r else ""
        lines.append(f"| {i + 1} | {r['wall_s'] / 60:.1f} min | {r['baseline_ms']:.0f} ms, FID {r['baseline_fid']:.2f} "
                     f"| {r['chosen_ms']:.1f} ms{raw}, FID {r['chosen_fid']:.2f} | {ratio:.2f} | {speed:.1f}x | "
                     f"{r.get('over_budget')}/{r.get('trials')} (+{r.get('skipped')} skipped) | "
                     f"{describe(r.get('chosen_recipe'))} | {'yes' if met(r) else 'no'} |")
    n_met = sum(met(r) for r in runs)
    slow = sum(r["wall_s"] > MINUTES_TARGET * 60 for r in runs)
    lines += ["", f"Runs meeting FID <= {FID_RATIO_TARGET}x the baseline's at >= {SPEEDUP_TARGET:.0f}x lower latency: "
              f"**{n_met} of {len(runs)}** (target: >= 4 of 5). Runs over {MINUTES_TARGET:.0f} min: {slow}.", END]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--render", action="store_true")
    p.add_argument("--fresh", action="store_true", help="forget the saved runs")
    p.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "bench" / "demo")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    path = results_dir(args.out) / "demo_runs.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() and not args.fresh else {"runs": []}
    if not args.render:
        data["command"] = "OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_runs.py " + " ".join(sys.argv[1:])
        data["machine"] = machine(None)
        for _ in range(args.runs):
            i = len(data["runs"])
            print(f"run {i + 1}", flush=True)
            data["runs"].append(one_run(args.work_dir / f"run-{i}"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=1, default=str) + "\n")
            print(json.dumps({k: v for k, v in data["runs"][-1].items() if k not in ("latency_model", "halving")},
                             default=str), flush=True)
    write_section(args.out, START, END, render(data))


if __name__ == "__main__":
    main()
