"""The sampler chosen by evidence: NSGA-II, TPE, Optuna's GP sampler (with the budget constraint) and the
budget-filling loop, on the same model, budget, batch and trial count, 3 seeds each.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/samplers.py     # digits, batch 1, 10 %, 24 trials, 3 seeds: ~2.5 h
    python benchmarks/samplers.py --render                     # the BENCHMARKS.md section from the saved runs
    python benchmarks/samplers.py --quick --out /tmp/s.md      # plumbing only

Each run is `autoeff.optimize` as a user runs it (hand-picked warm starts included) at the budget in absolute
milliseconds (`--budget` percent of the 50-step DPM-Solver++ 1 latency, measured first), saved in
`benchmarks/results/samplers/<sampler>-seed<seed>.json` as it finishes (a rerun skips finished runs; the studies
stay in `--work-dir` and resume). Then, at checkpoints of n trials, autoeff's own selection (successive
halving, `autoeff.selection.select`) is run on the run's first n trials, as a search stopped after n trials
would; the checkpoint's winner is scored on this benchmark's final sample (FID of `--final-samples` on each of
two seed sets, cached by recipe, shared with `compare.py`). The curve is that FID against n, "—" where nothing
met the budget yet. The winner: the lowest mean final FID at the last checkpoint over the seeds (ties: the
lower mean over all checkpoints); `autoeff`'s default sampler (`settings.SearchSettings.sampler`) is set to it
by hand, with this table as the evidence.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see latency.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    DEFAULT_OUT,
    ROOT,
    command_line,
    fid_pm,
    interleaved_latency,
    latency_call,
    machine,
    machine_line,
    ms,
    quiet,
    results_dir,
    short_label,
    write_section,
)
from benchmarks.compare import LATENCY_SEED, Bench, Piece, _jsonable, final_quality, run_search  # noqa: E402

START, END = "<!-- samplers:start -->", "<!-- samplers:end -->"
SAMPLERS = ("nsga2", "tpe", "gp", "fill")
FULL_SEEDS = 3  # runs per sampler before a winner is declared


def checkpoint_winners(bench: Bench, out: Path, budget_s: float, checkpoints: list[int]) -> dict[int, Any]:
    """autoeff's selection on the first n trials of the study in `out`, per checkpoint n: the winner's recipe
    and its search-final measurement, or None."""
    from autoeff.latency_model import LatencyModel
    from autoeff.measure import EvaluationSpec, Evaluator
    from autoeff.search import context_for
    from autoeff.search_spaces.space import SearchSpace
    from autoeff.selection import select
    from autoeff.study import StoredStudy, load_existing

    stored = StoredStudy(load_existing(f"sqlite:///{out / 'study.db'}", "autoeff"))
    settings = stored.settings()
    context = context_for(bench.handle, settings)
    steps = stored.steps_searched
    if steps is not None:
        import dataclasses  # lazy: only the checkpoint replay cuts the step range as the run did

        context = dataclasses.replace(context, min_steps=steps[0], max_steps=steps[1])
    space = SearchSpace(bench.handle, settings.space, context)
    evaluator = Evaluator(bench.handle, EvaluationSpec.of(settings), threads=bench.args.threads)
    records = stored.records()
    noise = LatencyModel.from_study(stored, context.default_steps, stored.baseline).margin
    out_: dict[int, Any] = {}
    for n in checkpoints:
        chosen = select([r for r in records if r.number < n], budget_s, top_k=settings.top_k,
                        final_samples=settings.final_n, stored=stored, noise=noise,
                        remeasure=lambda r: evaluator.remeasure(space.build(r.recipe), budget_s),
                        measure=lambda r, k: evaluator.quality_at(space.build(r.recipe), k),
                        retime=lambda r: evaluator.retime(space.build(r.recipe)))
        out_[n] = None if chosen.best is None else {"number": chosen.best.record.number,
                                                    "recipe": chosen.best.record.recipe,
                                                    "search_final": chosen.best.final.to_dict()}
    return out_


def run(args: argparse.Namespace, log: Any) -> None:
    piece = Piece(results_dir(args.out) / "samplers" / "reference.json", args.fresh)
    bench = Bench(args, args.model, args.batch, piece, log)
    if piece.get("reference_s") is None:
        fn = latency_call(bench.handle, bench.pipe(bench.recipe("dpmpp", 1, "uniform", 50)), args.batch, LATENCY_SEED)
        piece.put("reference_s", interleaved_latency({"ref": fn}, args.device, rounds=args.rounds, repeats=3,
                                                     threads=args.threads)["ref"]["median_s"])
    budget_s = args.budget / 100 * piece.get("reference_s")
    log(f"budget {args.budget:g}% = {ms(budget_s)} ms, {args.trials} trials, seeds 0..{args.search_seeds - 1}")
    checkpoints = sorted({max(1, round(args.trials * f)) for f in (0.25, 0.5, 0.75, 1.0)})
    for sampler in args.sampler_list:
        for seed in range(args.search_seeds):
            path = results_dir(args.out) / "samplers" / f"{sampler}-seed{seed}.json"
            if path.exists() and not args.fresh:
                continue
            log(f"{sampler} seed {seed}")
            out = args.work_dir / f"{sampler}-seed{seed}"
            res = run_search(bench, budget_s, out, sampler=sampler, seed=seed, trials=args.trials,
                             final_samples=args.search_final_samples, fresh=args.fresh)
            winners = checkpoint_winners(bench, out, budget_s, checkpoints) if res["records"] else {}
            curve = {}
            for n, w in winners.items():
                q = None
                if w is not None:
                    q = final_quality(bench, bench.pipe(w["recipe"]), w["recipe"], args.final_samples)
                curve[str(n)] = None if w is None else {**w, "quality": q, "label": short_label(w["recipe"])}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_jsonable({
                "sampler": sampler, "seed": seed, "budget_s": budget_s, "checkpoints": checkpoints, "curve": curve,
                "search": {k: res[k] for k in ("wall_s", "states", "measured", "over_budget", "skipped", "error",
                                               "latency_model")},
                "config": {"command": command_line("samplers.py", sys.argv[1:]),
                           "machine": machine(args.threads, args.device), "model": args.model, "batch": args.batch,
                           "budget_pct": args.budget, "trials": args.trials, "space": args.space,
                           "proxy_samples": args.proxy_samples, "search_final_samples": args.search_final_samples,
                           "final_samples": args.final_samples}}), indent=1) + "\n")


def render(args: argparse.Namespace) -> str:
    runs = [json.loads(p.read_text()) for p in sorted((results_dir(args.out) / "samplers").glob("*-seed*.json"))]
    lines = [START, "## Which sampler: the evidence", ""]
    if not runs:
        lines += ["**Not measured yet**: `OMP_WAIT_POLICY=PASSIVE python benchmarks/samplers.py` (digits, batch 1, "
                  "10 % budget, 24 trials, NSGA-II / TPE / GP / fill x 3 seeds; ~2.5 h on 2 quiet cores) has not run "
                  "on a quiet machine.", END]
        return "\n".join(lines) + "\n"
    cfg = runs[0]["config"]
    checkpoints = runs[0]["checkpoints"]
    commands = "; ".join(f"`{c}`" for c in sorted({r["config"]["command"] for r in runs}))  # resumed runs
    lines += [f"{commands} — {machine_line(cfg['machine'])}. {cfg['model']}, batch {cfg['batch']}, budget "
              f"{cfg['budget_pct']:g}% ({ms(runs[0]['budget_s'])} ms), {cfg['trials']} trials, space "
              f"`{cfg['space']}`, proxy {cfg['proxy_samples']} / search final {cfg['search_final_samples']} "
              f"samples. Cells: FID ({cfg['final_samples']} samples x 2 seed sets) of the candidate autoeff's "
              "selection picks from the first n trials.", "",
              "| sampler | seed | " + " | ".join(f"n={n}" for n in checkpoints)
              + " | over budget | skipped | wall min |",
              "| --- | ---: | " + " | ".join("---:" for _ in checkpoints) + " | ---: | ---: | ---: |"]
    by_sampler: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_sampler.setdefault(r["sampler"], []).append(r)
        cells = [fid_pm((r["curve"].get(str(n)) or {}).get("quality")) for n in checkpoints]
        s = r["search"]
        lines.append(f"| {r['sampler']} | {r['seed']} | " + " | ".join(cells)
                     + f" | {s['over_budget']}/{s['measured']} | {s['skipped']} | {s['wall_s'] / 60:.1f} |")

    def mean_at(rs: list[dict[str, Any]], n: int) -> float:
        vals = [((r["curve"].get(str(n)) or {}).get("quality") or {}).get("fid_mean") for r in rs]
        return statistics.fmean(v if v is not None else math.inf for v in vals) if vals else math.inf

    ranking = sorted(by_sampler, key=lambda s: (mean_at(by_sampler[s], checkpoints[-1]),
                                                statistics.fmean(mean_at(by_sampler[s], n) for n in checkpoints)))
    means = "Mean over seeds: " + "; ".join(
        f"{s}: " + " / ".join(f"{mean_at(by_sampler[s], n):.2f}" for n in checkpoints) for s in ranking)
    if all(len(by_sampler.get(s, [])) >= FULL_SEEDS for s in SAMPLERS):
        lines += ["", means + f". Winner by the rule above: **{ranking[0]}**.", END]
    else:  # a partial set of runs ranks nothing: one seed's FID moves by more than the samplers differ
        lines += ["", means + f". **Partial: {len(runs)} of {len(SAMPLERS) * FULL_SEEDS} runs** "
                  f"({FULL_SEEDS} seeds x {', '.join(SAMPLERS)}); no winner is declared until all have run (the "
                  "same command continues: finished runs are kept, an interrupted study resumes).", END]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--budget", type=float, default=10.0, help="percent of the 50-step DPM-Solver++ 1 latency")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--search-seeds", type=int, default=FULL_SEEDS, help="runs per sampler, seeds 0..N-1")
    p.add_argument("--trials", type=int, default=None, help="trials per run (24; quick 6)")
    p.add_argument("--space", default="solver,schedule,cache")
    p.add_argument("--proxy-samples", type=int, default=None, help="(128; quick 32)")
    p.add_argument("--search-final-samples", type=int, default=None, help="(1000; quick 64)")
    p.add_argument("--final-samples", type=int, default=None, help="benchmark FID per seed set (2000; quick 128)")
    p.add_argument("--render", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "bench" / "samplers")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    for name, (full, quick) in {"trials": (24, 6), "proxy_samples": (128, 32), "search_final_samples": (1000, 64),
                                "final_samples": (2000, 128)}.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.sampler_list = [s.strip() for s in args.samplers.split(",") if s.strip()]
    # what compare.Bench and run_search read
    args.screen_samples, args.scan_repeats, args.no_cache, args.seeds = 0, 1, False, 2  # 2 final seed sets
    args.rounds = 2 if args.quick else 5
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    if not args.render:
        quiet()
        import torch

        torch.set_num_threads(args.threads)
        args.work_dir.mkdir(parents=True, exist_ok=True)
        run(args, log)
    write_section(args.out, START, END, render(args))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
