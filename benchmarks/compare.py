"""autoeff against what a user would do by hand, at equal measured latency, on the built-in digits U-Net.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/compare.py            # ~3.5 h on 2 quiet CPU cores, ~1.5 h
                                                                    # of it DDPM-1000's FID (--ddpm-samples)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/compare.py --final-samples 2000 --screen-top 4 \
        --ddpm-fid-from benchmarks/results/builtin_digits.json --efficiency-trials 24 --efficiency-seeds 1
                                                                    # what BENCHMARKS.md shows: 77 min
    OMP_WAIT_POLICY=PASSIVE python benchmarks/compare.py --quick    # every step, tiny counts: plumbing only
    python benchmarks/compare.py --quick --out /tmp/cmp.md          # ... without touching BENCHMARKS.md

Steps (all on one device, one batch size, one thread setting, fixed seeds):

1. Baselines: DDPM with 1000 steps (Ho et al., 2020); DDIM (Song et al., 2021) and DPM-Solver++ order 1 at 50
   uniform steps. The budgets are fractions (`--budgets`, default 5, 10, 20 %) of the 50-step DPM-Solver++
   order-1 latency measured first.
2. Peers, "what a user would try from the diffusers docs and the DeepCache README": DPM-Solver++ 2M / 3M
   (Lu et al., 2022), UniPC-2 / -3 (Zhao et al., 2023) and DDIM, each with uniform (trailing), Karras
   (rho 7, Karras et al., 2022) and AYS-style log-linear (Sabour et al., 2024) schedules, at every step count
   whose measured latency fits a budget; the best per budget by FID on a screening sample. On top of the best
   plain peer: DeepCache N=2/3/5, branch 1 (Ma et al., 2024), and int8 where a real kernel exists
   (`cpu-int8`), again at every step count that fits. All are autoeff Recipes, built by the same code
   as the search's candidates.
3. autoeff's pick: `autoeff.optimize` at each budget (absolute milliseconds), space `--space`.
4. Every chosen configuration, the winners included, re-measured in this process: latency interleaved
   round-robin (median of all timed calls), FID against the real digits on two seed sets of
   `--final-samples` each (mean, range, pooled), class accuracy.
5. Search efficiency: best feasible proxy FID against trial number for NSGA-II, TPE and random search at the
   10 % budget, same seeds for each sampler.

Outputs: the `<!-- compare:start -->` ... `<!-- compare:end -->` section of `--out`, `compare.json`,
`compare.png` and `sampler_efficiency.png` (in benchmarks/results/ for the real BENCHMARKS.md, else next to
`--out`). Deterministic given its seeds except where a measured latency decides (which step counts fit a
budget, which search candidates are over budget): latency is a measurement. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see latency.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    DEFAULT_OUT,
    ROOT,
    all_groups_quantize,
    build,
    command_line,
    fid_pm,
    interleaved_latency,
    latency_call,
    machine,
    machine_line,
    make_context,
    ms,
    quick_latency,
    quiet,
    results_dir,
    short_label,
    two_seed_quality,
    write_section,
)

START, END = "<!-- compare:start -->", "<!-- compare:end -->"
FINAL_SEEDS = (201, 202)  # apart from the searches' seeds (10*seed + 0..2) and knobs.py's
SCREEN_SEED = 250
LATENCY_SEED = 2  # the search's latency seed (Evaluator: 10*seed + 2 with seed 0)
PEER_SOLVERS: dict[str, tuple[str, int]] = {"DPM-Solver++ 2M": ("dpmpp", 2), "DPM-Solver++ 3M": ("dpmpp", 3),
                                            "UniPC-2": ("unipc", 2), "UniPC-3": ("unipc", 3),
                                            "DDIM": ("ddim", 1)}
PEER_SCHEDULES = ("uniform", "karras", "ays")
QUICK_SOLVERS = ("DPM-Solver++ 2M", "UniPC-3", "DDIM")
QUICK_SCHEDULES = ("uniform", "ays")
CACHE_INTERVALS = (2, 3, 5)
SCAN_MARGIN = 0.15  # scan step counts until the latency passes the largest budget by this much
MAX_STEPS = 50
FID_TARGET = 0.8  # autoeff FID <= 0.8 x the best peer's
DDPM_SPEEDUP_TARGET = 100.0
SEARCH_MINUTES_TARGET = 10.0


class Bench:
    """The model, its context and the memoised measurements every step shares."""

    def __init__(self, args: argparse.Namespace, log: Callable[[str], None]) -> None:
        import autoeff

        self.args, self.log = args, log
        self.handle = autoeff.load_model("digits", device=args.device)
        self.context = make_context(self.handle, args.device)
        self.screened: dict[str, float] = {}
        self.screen_notes: dict[str, str] = {}
        self.scan_cache: dict[str, list[dict[str, Any]]] = {}

    def recipe(self, solver_name: str, order: int, family: str, k: int, **extra: Any) -> Any:
        from autoeff.recipe import Recipe
        from autoeff.search_spaces import schedule, solver

        return Recipe(model="digits", knobs={"solver": solver.Config(name=solver_name, order=order),
                                             "schedule": schedule.Config(family=family, steps=k), **extra})

    def pipe(self, recipe: Any) -> Any:
        return build(self.handle, recipe, self.context)

    def scan(self, name: str, make: Callable[[int], Any], limit_s: float) -> list[dict[str, Any]]:
        """Latency at k = 2, 3, ... until it passes `limit_s` (memoised by `name`)."""
        if name in self.scan_cache:
            return self.scan_cache[name]
        out = []
        for k in range(2, MAX_STEPS + 1):
            recipe = make(k)
            t = quick_latency(latency_call(self.handle, self.pipe(recipe), self.args.batch, LATENCY_SEED),
                              self.args.device, self.args.threads, repeats=self.args.scan_repeats)
            out.append({"k": k, "recipe": recipe, "latency_s": t})
            if t > limit_s:
                break
        self.scan_cache[name] = out
        self.log(f"  scan {name}: k=2..{out[-1]['k']}, "
                 f"{ms(out[0]['latency_s'])}..{ms(out[-1]['latency_s'])} ms")
        return out

    def screen(self, recipe: Any) -> float:
        """FID on the screening sample (one seed set); a configuration that fails scores +inf."""
        key = recipe.to_json()
        if key not in self.screened:
            try:
                q = two_seed_quality(self.handle, self.pipe(recipe), f"compare-screen|{key}",
                                     self.args.screen_samples, (SCREEN_SEED,), cache=not self.args.no_cache)
                self.screened[key] = q["fid"][0]
            except Exception as e:  # a broken configuration is a result, not a crash
                self.screened[key] = math.inf
                self.screen_notes[key] = f"{type(e).__name__}: {e}"[:200]
        return self.screened[key]


def best_fitting(bench: Bench, entries: list[dict[str, Any]], budget_s: float) -> dict[str, Any] | None:
    """The entry with the best screening FID among those whose scanned latency fits `budget_s` (with
    `--screen-top N`, among the N largest step counts that fit)."""
    fits = [e for e in entries if e["latency_s"] <= budget_s]
    if bench.args.screen_top:  # a user takes the most steps that fit; screening a few below that is enough
        fits = fits[-bench.args.screen_top:]
    for e in fits:
        e["screen_fid"] = bench.screen(e["recipe"])
    fits = [e for e in fits if math.isfinite(e["screen_fid"])]
    return min(fits, key=lambda e: (e["screen_fid"], e["latency_s"])) if fits else None


def peers(bench: Bench, budgets: dict[str, float]) -> dict[str, Any]:
    """Plain, cached and int8 peers per budget (see the module docstring)."""
    from autoeff.search_spaces import cache

    args = bench.args
    limit = max(budgets.values()) * (1 + SCAN_MARGIN)
    solvers = QUICK_SOLVERS if args.quick else tuple(PEER_SOLVERS)
    schedules = QUICK_SCHEDULES if args.quick else PEER_SCHEDULES
    combos = [(s, f) for s in solvers for f in schedules]
    scans = {}
    for s, f in combos:
        name, order = PEER_SOLVERS[s]
        scans[(s, f)] = bench.scan(f"{s} / {f}", lambda k, n=name, o=order, f=f: bench.recipe(n, o, f, k),
                                   limit)
    out: dict[str, Any] = {"combos": [f"{s} / {f}" for s, f in combos], "budgets": {}}
    for label, b in budgets.items():
        per_combo = {}
        for (s, f), entries in scans.items():
            best = best_fitting(bench, entries, b)
            per_combo[f"{s} / {f}"] = None if best is None else {
                "k": best["k"], "screen_fid": best["screen_fid"], "latency_s": best["latency_s"]}
        ok = [(c, v) for c, v in per_combo.items() if v is not None]
        plain = None
        if ok:
            c, v = min(ok, key=lambda cv: cv[1]["screen_fid"])
            s, f = c.split(" / ")
            plain = {"combo": c, **v, "recipe": bench.recipe(*PEER_SOLVERS[s], f, v["k"])}
        base = plain["combo"] if plain else _fallback_combo(bench, scans)
        s, f = base.split(" / ")
        name, order = PEER_SOLVERS[s]
        cached = []
        for n in CACHE_INTERVALS:
            def make(k: int, n: int = n, name: str = name, order: int = order, f: str = f) -> Any:
                return bench.recipe(name, order, f, k, cache=cache.Config(interval=n, branch=1))

            entries = bench.scan(f"{base} + DeepCache N={n}", make, limit)
            best = best_fitting(bench, entries, b)
            if best is not None:
                cached.append({"combo": f"{base} + DeepCache N={n}", **best})
        best_cache = min(cached, key=lambda e: e["screen_fid"]) if cached else None
        q8 = all_groups_quantize(bench.context, "int8", "cpu-int8")
        entries = bench.scan(f"{base} + int8", lambda k, name=name, order=order, f=f, q8=q8:
                             bench.recipe(name, order, f, k, quantize=q8), limit)
        best_int8 = best_fitting(bench, entries, b)
        if best_int8 is not None:
            best_int8 = {"combo": f"{base} + int8", **best_int8}
        options = [e for e in (plain, best_cache, best_int8) if e is not None]
        overall = min(options, key=lambda e: e["screen_fid"]) if options else None
        out["budgets"][label] = {"budget_s": b, "per_combo": per_combo, "plain": plain, "cache": best_cache,
                                 "int8": best_int8, "best": overall, "base_combo": base}
        chosen = f"{overall['combo']} k={overall['k']}" if overall else "none"
        bench.log(f"  peers at {label}: best {chosen}")
    out["scans"] = {n: [{"k": e["k"], "latency_s": e["latency_s"], "screen_fid": e.get("screen_fid")}
                        for e in entries] for n, entries in bench.scan_cache.items()}
    return out


def _fallback_combo(bench: Bench, scans: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """When no plain peer fits a budget, DeepCache and int8 go on the solver and schedule that are best at
    the fewest steps scanned (k=2)."""
    s, f = min(scans, key=lambda c: bench.screen(scans[c][0]["recipe"]))
    return f"{s} / {f}"


def run_search(bench: Bench, budget_s: float, out: Path, *, sampler: str, seed: int, trials: int,
               warm_start: bool, final_samples: int, top_k: int) -> dict[str, Any]:
    """One `autoeff.optimize` run in a fresh folder; its winner, front, per-trial records and wall time."""
    import optuna

    from autoeff.api import load_result, optimize
    from autoeff.errors import SearchError
    from autoeff.selection import pareto_front
    from autoeff.study import fail_reason, is_warm_start, measurement_of

    args = bench.args
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    error, result = None, None

    def progress(info: Any) -> None:
        if info.done % max(1, trials // 5) == 0 or info.done == trials:
            best = info.best_score
            bench.log(f"    {sampler} seed {seed}: {info.done}/{trials} trials, {info.feasible} "
                      "feasible, "
                      f"best proxy FID {(-best if best is not None else float('nan')):.2f}")

    try:
        result = optimize(bench.handle, budget=f"{budget_s * 1e3:.4f}ms", device=args.device, out=out,
                          space=args.space, metric="fid", trials=trials, sampler=sampler, seed=seed,
                          batch_size=args.batch, proxy_samples=args.proxy_samples,
                          final_samples=final_samples,
                          top_k=top_k, warm_start=warm_start, export=False, threads=args.threads,
                          progress=progress)
    except SearchError as e:
        error = f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - t0
    try:
        stored, records = load_result(out)
        all_trials = stored.study.get_trials(deepcopy=False)
    except Exception as e:  # the search failed before its study existed: report, do not crash the benchmark
        error = error or f"{type(e).__name__}: {e}"
        records, all_trials = [], []
    trials_info = []
    for t in sorted(all_trials, key=lambda t: t.number):
        m = measurement_of(t)
        trials_info.append({"number": t.number, "state": t.state.name,
                            "latency_s": m.latency_s if m else None,
                            "fid": -m.score if m and m.score is not None else None,
                            "warm_start": is_warm_start(t), "fail_reason": fail_reason(t)})
    states: dict[str, int] = {}
    for t in trials_info:
        states[t["state"]] = states.get(t["state"], 0) + 1
    reasons: dict[str, int] = {}
    for t in trials_info:
        if t["fail_reason"]:
            r = t["fail_reason"].split(":")[0][:60]
            reasons[r] = reasons.get(r, 0) + 1
    over = sum(1 for r in records if r.measurement.over_budget)
    best = result.best if result is not None else None
    front = pareto_front(records, budget_s)
    return {"out": str(out), "sampler": sampler, "seed": seed, "trials": trials, "wall_s": wall,
            "error": error,
            "states": states, "fail_reasons": reasons, "over_budget": over,
            "completed": sum(1 for t in trials_info if t["state"] == optuna.trial.TrialState.COMPLETE.name),
            "trial_records": trials_info,
            "winner": None if best is None else {"number": best.record.number, "recipe": best.record.recipe,
                                                 "proxy": best.record.measurement.to_dict(),
                                                 "final": best.final.to_dict()},
            "front": [{"number": r.number, "recipe": r.recipe, "latency_s": r.latency_s,
                       "proxy_fid": -r.score} for r in front]}


def efficiency(bench: Bench, budget_s: float, work: Path) -> dict[str, Any]:
    """Best feasible proxy FID after each trial, per sampler and seed (no warm start: the samplers alone)."""
    args = bench.args
    runs = []
    for sampler in ("nsga2", "tpe", "random"):
        for seed in range(args.efficiency_seeds):
            bench.log(f"  efficiency: {sampler} seed {seed}")
            res = run_search(bench, budget_s, work / f"efficiency-{sampler}-seed{seed}", sampler=sampler,
                             seed=seed, trials=args.efficiency_trials, warm_start=False,
                             final_samples=args.proxy_samples, top_k=1)
            curve, best = [], math.inf
            for t in res["trial_records"]:
                if t["fid"] is not None and t["latency_s"] is not None and t["latency_s"] <= budget_s:
                    best = min(best, t["fid"])
                curve.append(best)
            runs.append({"sampler": sampler, "seed": seed, "curve": curve, "wall_s": res["wall_s"],
                         "states": res["states"], "over_budget": res["over_budget"], "error": res["error"]})
    return {"budget_s": budget_s, "trials": args.efficiency_trials, "seeds": args.efficiency_seeds,
            "runs": runs}


def final_measurements(bench: Bench, finals: dict[str, Any]) -> dict[str, Any]:
    """Latency interleaved round-robin and two-seed FID for every configuration in `finals`."""
    args = bench.args
    pipes = {label: bench.pipe(recipe) for label, recipe in finals.items()}
    fns = {label: latency_call(bench.handle, p, args.batch, LATENCY_SEED) for label, p in pipes.items()}
    ddpm = {label: args.ddpm_rounds for label in finals if label.startswith("DDPM")}
    bench.log(f"final latency: {len(fns)} configurations, {args.rounds} interleaved rounds")
    lat = interleaved_latency(fns, args.device, rounds=args.rounds, repeats=args.repeats,
                              threads=args.threads, max_rounds=ddpm, log=bench.log)
    out = {}
    for i, (label, recipe) in enumerate(finals.items()):
        n = args.ddpm_samples if label.startswith("DDPM") else args.final_samples
        t0 = time.perf_counter()
        q, err = None, None
        try:
            if label.startswith("DDPM") and args.ddpm_fid_from:
                q = ddpm_quality_from(args.ddpm_fid_from, args.ddpm_steps)
            else:
                q = final_quality(bench, pipes[label], recipe, n)
        except Exception as e:  # reported in the table, not a crash
            err = f"{type(e).__name__}: {e}"[:200]
        took = time.perf_counter() - t0
        bench.log(f"  final quality {i + 1}/{len(finals)} {label}: FID {fid_pm(q)} ({took:.0f}s)")
        from autoeff.evaluators.size import model_size_mb

        out[label] = {"recipe": recipe, "label": short_label(recipe), "latency": lat[label], "quality": q,
                      "error": err, "size_mb": model_size_mb(pipes[label].unet)}
    return out


def final_quality(bench: Bench, pipe: Any, recipe: Any, n: int) -> dict[str, Any]:
    """Two-seed FID of `n` samples per final seed set, cached under the recipe (one key for every caller)."""
    args = bench.args
    return two_seed_quality(bench.handle, pipe, f"compare-final|{recipe.to_json()}", n, FINAL_SEEDS[: args.seeds],
                            cache=not args.no_cache)


def quality_at_ddpm_n(bench: Bench, pipe: Any, recipe: Any, ddpm_q: dict[str, Any] | None) -> dict[str, Any] | None:
    """The same at DDPM's sample count when that differs from `--final-samples` (FID falls as n grows, so the
    DDPM target compares at equal n); None when the counts are equal or DDPM has no FID."""
    if not ddpm_q or not ddpm_q.get("n") or ddpm_q["n"] == bench.args.final_samples:
        return None
    return final_quality(bench, pipe, recipe, ddpm_q["n"])


def ddpm_quality_from(path: Path, steps: int) -> dict[str, Any]:
    """The DDPM baseline's FID as `benchmarks/builtin_models.py` measured it (same model, same features, all
    1797 real digits), instead of generating it again: on 2 CPU cores its 1000 steps cost ~25 min per 500
    samples. The table says where the figure comes from (`source`)."""
    rec = json.loads(Path(path).read_text())
    if rec.get("steps") != steps:
        raise ValueError(f"{path} holds {rec.get('steps')}-step DDPM figures, not {steps}-step ones")
    fids = [r["fid"] for r in rec["seeds"]]
    accs = [r["class_acc"] for r in rec["seeds"]]
    return {"n": rec["samples_per_seed"], "seeds": [r["seed"] for r in rec["seeds"]], "fid": fids,
            "fid_mean": statistics.fmean(fids), "fid_range": max(fids) - min(fids), "fid_pooled": None,
            "class_acc": accs, "class_acc_mean": statistics.fmean(accs),
            "source": f"{Path(path).name} ({rec.get('command', '')}; {rec.get('machine', '')})"}


# --- report ---------------------------------------------------------------------------------------------


def _fid(m: dict[str, Any] | None) -> float | None:
    return m["quality"]["fid_mean"] if m and m.get("quality") else None


def _within_noise(qa: dict[str, Any], qr: dict[str, Any]) -> bool:
    """autoeff's mean FID exceeds the reference's by no more than the larger of their seed-to-seed ranges."""
    return qa["fid_mean"] - qr["fid_mean"] <= max(qa["fid_range"], qr["fid_range"])


def _vs_ddpm_quality(a: dict[str, Any]) -> dict[str, Any] | None:
    """autoeff's quality at DDPM's sample count when that differs (FID falls as n grows, so FIDs are only
    compared at equal n), else its final quality."""
    return a.get("quality_at_ddpm_n") or a.get("quality")


def targets(row: dict[str, Any], final: dict[str, Any], ddpm_label: str) -> dict[str, Any]:
    a, p, d = final.get(row["autoeff"] or ""), final.get(row["peer"] or ""), final.get(ddpm_label)
    t: dict[str, Any] = {}
    fa, fp = _fid(a), _fid(p)
    t["fid_ratio"] = fa / fp if fa is not None and fp else None
    t["fid_met"] = t["fid_ratio"] is not None and t["fid_ratio"] <= FID_TARGET
    t["ddpm_speedup"] = (d["latency"]["median_s"] / a["latency"]["median_s"]) if a and d else None
    qa = _vs_ddpm_quality(a) if a else None
    t["ddpm_met"] = bool(qa and d and d["quality"] and _within_noise(qa, d["quality"])
                         and t["ddpm_speedup"] >= DDPM_SPEEDUP_TARGET)
    t["time_met"] = row["search_wall_s"] <= SEARCH_MINUTES_TARGET * 60
    return t


def _vs_ddpm_note(a: dict[str, Any] | None, d: dict[str, Any] | None) -> str:
    if not a or not d or not a.get("quality_at_ddpm_n") or not d.get("quality"):
        return ""
    q = a["quality_at_ddpm_n"]
    return f" (FID at n={q['n']}: {fid_pm(q)} vs {fid_pm(d['quality'])})"


def _lat_cell(m: dict[str, Any] | None, budget_s: float) -> str:
    if not m:
        return "—"
    L = m["latency"]["median_s"]
    over = "" if L <= budget_s else f" (over by {L / budget_s - 1:.0%})"
    return f"{ms(L)}{over}"


def _ddpm_fid_note(res: dict[str, Any]) -> str:
    label = res["ddpm_label"]
    q = (res["final"].get(label) or {}).get("quality") or {}
    if q.get("source"):
        return (f"{label}: not regenerated, taken from {q['source']}: n={q['n']} per seed, seeds "
                f"{q['seeds']}, same model and FID")
    return f"{label}: {res['config']['ddpm_samples']} per seed"


def _screened_note(cfg: dict[str, Any]) -> str:
    top = cfg.get("screen_top")
    return f"the {top} largest step counts" if top else "all step counts"


def render(res: dict[str, Any]) -> str:
    cfg, final = res["config"], res["final"]
    ddpm_label = res["ddpm_label"]
    lines = [START, "## autoeff vs tuning by hand, at equal measured latency", "",
             f"`{cfg['command']}` — {machine_line(cfg['machine'])}; {cfg['wall_min']:.0f} min in all.", "",
             "Model: the built-in digits U-Net (16x16, class-conditional). Latency: one pipeline call of "
             f"{cfg['batch']} images. Budgets: {', '.join(f'{p:g}%' for p in cfg['budgets_pct'])} of "
             f"DPM-Solver++ order 1 at 50 steps, measured first at {ms(res['reference_s'])} ms. Final "
             "figures: every row re-measured in one process, latency interleaved round-robin "
             f"({cfg['rounds']} rounds x {cfg['repeats']} calls; {ddpm_label}: {cfg['ddpm_rounds']} rounds), "
             f"FID of {cfg['final_samples']} samples per seed set (seeds {cfg['final_seeds']}; "
             f"{_ddpm_fid_note(res)}) against the 1797 real digits (mean ± half the range). Peers were "
             f"chosen by FID on {cfg['screen_samples']} screening samples (seed {cfg['screen_seed']}) among "
             f"{_screened_note(cfg)} whose latency fits. "
             f"autoeff: `autoeff.optimize(space={cfg['space']!r}, trials={cfg['trials']}, seed=0, "
             f"sampler={cfg['sampler']!r})`.",
             "", "| budget | best peer | peer ms | peer FID | autoeff pick | autoeff ms | autoeff FID | "
             f"FID autoeff/peer | {ddpm_label} ms / autoeff ms | search min | target met? |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in res["rows"]:
        b = row["budget_s"]
        p, a = final.get(row["peer"] or ""), final.get(row["autoeff"] or "")
        t = row["targets"]
        marks = [f"FID<=0.8x: {'yes' if t['fid_met'] else 'no'}",
                 f"~DDPM at >=100x: {'yes' if t['ddpm_met'] else 'no'}{_vs_ddpm_note(a, final.get(ddpm_label))}",
                 f"<=10 min: {'yes' if t['time_met'] else 'no'}"]
        peer_cells = (f"{p['label']} | {_lat_cell(p, b)} | {fid_pm(p['quality'])}" if p
                      else "none fits | — | —")
        auto_cells = (f"{a['label']} | {_lat_cell(a, b)} | {fid_pm(a['quality'])}" if a
                      else f"none ({row['error'] or 'no winner'}) | — | —")
        ratio = f"{t['fid_ratio']:.2f}" if t["fid_ratio"] is not None else "—"
        speed = f"{t['ddpm_speedup']:.0f}x" if t["ddpm_speedup"] else "—"
        lines.append(f"| {row['budget_label']} ({ms(b)} ms) | {peer_cells} | {auto_cells} | {ratio} | "
                     f"{speed} | {row['search_wall_s'] / 60:.1f} | {'; '.join(marks)} |")
    lines += ["", "Targets (figures, not assertions): autoeff FID <= 0.8x the best peer's at each budget; "
              "autoeff within two-seed noise of 1000-step DDPM (mean FID above DDPM's by at most the larger "
              "seed-to-seed range of the two, both at DDPM's sample count) at >= 100x lower latency; each "
              "search <= 10 min (wall time of `autoeff.optimize`, its baseline measurement and finalist "
              "re-check included).", "",
              "### Every re-measured configuration", "",
              "| role | configuration | latency ms (p10-p90) | FID per seed | FID mean ± half-range | "
              "pooled FID | class acc | size MB |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for label, m in final.items():
        L, q = m["latency"], m["quality"]
        if q:
            per_seed = ", ".join(f"{v:.2f}" for v in q["fid"])
            pooled = "—" if q.get("fid_pooled") is None else f"{q['fid_pooled']:.2f}"
            qcells = f"{per_seed} | {fid_pm(q)} | {pooled} | {q['class_acc_mean']:.3f}"
        else:
            qcells = f"failed: {m['error']} | — | — | —"
        roles = ", ".join(m.get("roles", [label]))
        lines.append(f"| {roles} | {m['label']} | {ms(L['median_s'])} ({ms(L['p10_s'])}-{ms(L['p90_s'])}) | "
                     f"{qcells} | {m['size_mb']:.2f} |")
    pe = res["peers"]
    lines += ["", "### Peer sweep: best step count per solver and schedule (screening FID, "
              f"{cfg['screen_samples']} samples)", "",
              "| solver / schedule | " + " | ".join(pe["budgets"]) + " |",
              "| --- | " + " | ".join("---" for _ in pe["budgets"]) + " |"]
    for combo in pe["combos"]:
        cells = []
        for v in pe["budgets"].values():
            c = v["per_combo"].get(combo)
            cells.append(f"k={c['k']}: {c['screen_fid']:.2f}" if c else "none fits")
        lines.append(f"| {combo} | " + " | ".join(cells) + " |")
    for kind in ("cache", "int8"):
        cells = []
        for v in pe["budgets"].values():
            c = v[kind]
            cells.append(f"{c['combo'].split(' / ')[-1]} k={c['k']}: {c['screen_fid']:.2f}" if c
                         else "none fits")
        what = "DeepCache N=2/3/5" if kind == "cache" else "int8 (cpu-int8)"
        lines.append(f"| best {what} on the best plain peer | " + " | ".join(cells) + " |")
    lines += ["", "### The searches", "",
              "| budget | trials (states) | over budget | failures (reason: count) | wall min | "
              "winner (proxy FID) |", "| --- | --- | ---: | --- | ---: | --- |"]
    for label, s in res["searches"].items():
        states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(s["states"].items()))
        fails = "; ".join(f"{k}: {v}" for k, v in s["fail_reasons"].items()) or "none"
        w = s["winner"]
        win = f"trial {w['number']} ({-w['proxy']['score']:.2f})" if w else f"none: {s['error']}"
        lines.append(f"| {label} | {s['trials']} ({states}) | {s['over_budget']} | {fails} | "
                     f"{s['wall_s'] / 60:.1f} | {win} |")
    eff = res.get("efficiency")
    if eff:
        marks = sorted({max(1, eff["trials"] // 4), max(1, eff["trials"] // 2), eff["trials"]})
        lines += ["", f"### Search efficiency at the 10% budget ({ms(eff['budget_s'])} ms): best feasible "
                  f"proxy FID after n trials, mean over {eff['seeds']} seed(s), no warm start", "",
                  "| sampler | " + " | ".join(f"n={n}" for n in marks)
                  + " | trials with no feasible candidate yet | wall min per search |",
                  "| --- | " + " | ".join("---:" for _ in marks) + " | ---: | ---: |"]
        for sampler in ("nsga2", "tpe", "random"):
            runs = [r for r in eff["runs"] if r["sampler"] == sampler]
            cells = []
            for n in marks:
                vals = [r["curve"][n - 1] for r in runs if len(r["curve"]) >= n]
                vals = [v for v in vals if math.isfinite(v)]
                cells.append(f"{statistics.fmean(vals):.2f}" if vals else "—")
            empty = statistics.fmean(sum(1 for v in r["curve"] if not math.isfinite(v)) for r in runs)
            wall = statistics.fmean(r["wall_s"] for r in runs) / 60
            lines.append(f"| {sampler} | " + " | ".join(cells) + f" | {empty:.1f} | {wall:.1f} |")
        lines += ["", "Each sampler starts from random draws (TPE: 8 trials, NSGA-II: a first generation of "
                  "16), so small trial counts say little about them. Plot: `sampler_efficiency.png`."]
    if res.get("screen_failures"):
        lines += ["", f"{len(res['screen_failures'])} screened configuration(s) failed to generate valid "
                  "images (reasons in compare.json, `screen_failures`)."]
    lines += ["", "Plot: `compare.png` (left: screening FID of every peer that fits and of each search's "
              "Pareto front; right: the re-measured configurations).", END]
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pts = [(e["latency_s"] * 1e3, e["screen_fid"]) for entries in res["peers"]["scans"].values()
           for e in entries if e.get("screen_fid") is not None and math.isfinite(e["screen_fid"])]
    if pts:
        ax1.scatter(*zip(*pts, strict=True), s=10, c="0.6", label="peers (screened, fit a budget)")
    for i, (label, s) in enumerate(res["searches"].items()):
        front = [(f["latency_s"] * 1e3, f["screen_fid"]) for f in s["front"]
                 if f.get("screen_fid") is not None and math.isfinite(f["screen_fid"])]
        if front:
            ax1.plot(*zip(*sorted(front), strict=True), "-o", ms=4, color=colors[i % len(colors)],
                     label=f"autoeff front, {label}")
    for i, row in enumerate(res["rows"]):
        for ax in (ax1, ax2):
            ax.axvline(row["budget_s"] * 1e3, ls="--", lw=1, color=colors[i % len(colors)])
    for label, m in res["final"].items():
        if not m["quality"]:
            continue
        q = m["quality"]
        baseline = label.startswith(("DDPM", "DDIM", "DPM-Solver++ 1"))
        marker = "*" if label.startswith("autoeff") else ("s" if baseline else "o")
        ax2.errorbar(m["latency"]["median_s"] * 1e3, q["fid_mean"], yerr=q["fid_range"] / 2, fmt=marker, ms=8,
                     capsize=3, label=label)
    for ax, title in ((ax1, f"screening ({res['config']['screen_samples']} samples, one seed set)"),
                      (ax2, f"re-measured ({res['config']['final_samples']} samples x "
                            f"{res['config']['seeds']} seeds)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"latency per call of {res['config']['batch']} images (ms, log)")
        ax.set_ylabel("FID vs real digits (lower is better, log)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_efficiency(eff: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sampler in ("nsga2", "tpe", "random"):
        curves = [r["curve"] for r in eff["runs"] if r["sampler"] == sampler]
        n = min(len(c) for c in curves)
        xs = list(range(1, n + 1))
        mean, lo, hi = [], [], []
        for i in range(n):
            vals = [c[i] for c in curves if math.isfinite(c[i])]
            mean.append(statistics.fmean(vals) if len(vals) == len(curves) else math.nan)
            lo.append(min(vals) if vals else math.nan)
            hi.append(max(vals) if vals else math.nan)
        line, = ax.plot(xs, mean, label=sampler)
        ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    ax.set_xlabel("trial")
    ax.set_ylabel("best feasible proxy FID so far (log)")
    ax.set_yscale("log")
    ax.set_title(f"search efficiency at {eff['budget_s'] * 1e3:.1f} ms "
                 f"({eff['seeds']} seed(s); band: min-max)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jsonable(obj: Any) -> Any:
    """Recipes as their dicts, non-finite floats as null, anything else JSON cannot hold as a string."""
    from autoeff.recipe import Recipe

    if isinstance(obj, Recipe):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    return str(obj)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="every step with tiny counts (plumbing, not results)")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16, help="images per timed pipeline call")
    p.add_argument("--budgets", default="5,10,20", help="percent of the 50-step DPM-Solver++ 1 latency")
    p.add_argument("--space", default="solver,schedule,cache,quantize,prune")
    p.add_argument("--sampler", default="nsga2")
    p.add_argument("--trials", type=int, default=None, help="trials per search (40; quick 6)")
    p.add_argument("--proxy-samples", type=int, default=None, help="search proxy sample (128; quick 32)")
    p.add_argument("--search-final-samples", type=int, default=None, help="search finalists (1000; quick 64)")
    p.add_argument("--screen-samples", type=int, default=None,
                   help="peer screening FID samples (500; quick 128)")
    p.add_argument("--final-samples", type=int, default=None,
                   help="final FID samples per seed (2000; quick 128)")
    p.add_argument("--seeds", type=int, default=2, choices=(1, 2), help="seed sets for the final FID")
    p.add_argument("--ddpm-steps", type=int, default=None,
                   help="steps of the DDPM baseline (1000; quick 100)")
    p.add_argument("--ddpm-samples", type=int, default=None, help="final FID samples per seed for DDPM "
                   "(default: --final-samples)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (5; quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per round (3; quick 2)")
    p.add_argument("--ddpm-rounds", type=int, default=None, help="rounds for the DDPM baseline (2; quick 1)")
    p.add_argument("--scan-repeats", type=int, default=None,
                   help="timed calls per scanned step count (3; quick 1)")
    p.add_argument("--efficiency-trials", type=int, default=None,
                   help="trials per sampler run (default --trials)")
    p.add_argument("--efficiency-seeds", type=int, default=None, help="seeds per sampler (2; quick 1)")
    p.add_argument("--no-efficiency", action="store_true", help="skip the sampler comparison")
    p.add_argument("--screen-top", type=int, default=0,
                   help="screen only the N largest step counts that fit each budget (0: all)")
    p.add_argument("--ddpm-fid-from", type=Path, default=None,
                   help="take DDPM's FID from a builtin_models.py result (benchmarks/results/builtin_digits."
                        "json) instead of generating it; its latency is still measured here")
    p.add_argument("--no-cache", action="store_true", help="recompute FIDs even if cached")
    p.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "bench" / "compare",
                   help="where the searches' studies go (wiped per search)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    q = args.quick
    defaults = {"trials": (40, 6), "proxy_samples": (128, 32), "search_final_samples": (1000, 64),
                "screen_samples": (500, 128), "final_samples": (2000, 128), "ddpm_steps": (1000, 100),
                "rounds": (5, 2), "repeats": (3, 2), "ddpm_rounds": (2, 1), "scan_repeats": (3, 1),
                "efficiency_seeds": (2, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    args.ddpm_samples = args.ddpm_samples or args.final_samples
    args.efficiency_trials = args.efficiency_trials or args.trials
    quiet()
    import torch

    from autoeff.recipe import Recipe
    from autoeff.search_spaces import schedule

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    bench = Bench(args, log)
    res_dir = results_dir(args.out)
    res_dir.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    # 1. baselines and budgets
    ddpm_label = f"DDPM-{args.ddpm_steps}"
    baselines = {
        ddpm_label: Recipe(model="digits", knobs={"schedule": schedule.Config(family="leading",
                                                                                steps=args.ddpm_steps)}),
        "DDIM-50": bench.recipe("ddim", 1, "uniform", 50),
        "DPM-Solver++ 1 (50)": bench.recipe("dpmpp", 1, "uniform", 50),
    }
    log("baselines: latency of the 50-step references")
    ref_fns = {k: latency_call(bench.handle, bench.pipe(r), args.batch, LATENCY_SEED)
               for k, r in baselines.items() if not k.startswith("DDPM")}
    ref_lat = interleaved_latency(ref_fns, args.device, rounds=args.rounds, repeats=args.repeats,
                                  threads=args.threads, log=log)
    reference_s = ref_lat["DPM-Solver++ 1 (50)"]["median_s"]
    pcts = [float(x) for x in args.budgets.split(",") if x.strip()]
    budgets = {f"{pct:g}%": pct / 100 * reference_s for pct in pcts}
    log("budgets: " + ", ".join(f"{k} = {ms(v)} ms" for k, v in budgets.items()))

    # 2. peers
    log("peers: scanning step counts")
    peer_res = peers(bench, budgets)

    # 3. autoeff
    searches = {}
    for label, b in budgets.items():
        log(f"autoeff search at {label} ({ms(b)} ms), {args.trials} trials")
        s = run_search(bench, b, args.work_dir / f"budget-{label.rstrip('%')}pct", sampler=args.sampler,
                       seed=0, trials=args.trials, warm_start=True, final_samples=args.search_final_samples,
                       top_k=3)
        for f in s["front"]:
            f["screen_fid"] = bench.screen(f["recipe"])
        searches[label] = s
        log(f"  search at {label}: {s['wall_s'] / 60:.1f} min, states {s['states']}, "
            f"winner {short_label(s['winner']['recipe']) if s['winner'] else None}")

    # 4. final re-measurement of everything chosen
    finals: dict[str, Any] = dict(baselines)
    seen = {r.to_json(): k for k, r in finals.items()}
    roles: dict[str, list[str]] = {k: [k] for k in finals}
    rows = []
    for label, b in budgets.items():
        pb = peer_res["budgets"][label]
        row = {"budget_label": label, "budget_s": b, "peer": None, "autoeff": None,
               "search_wall_s": searches[label]["wall_s"], "error": searches[label]["error"]}
        for kind in ("plain", "cache", "int8"):
            e = pb[kind]
            if e is None:
                continue
            name = seen.setdefault(e["recipe"].to_json(), f"peer {kind} @{label}")
            finals.setdefault(name, e["recipe"])
            roles.setdefault(name, []).append(f"peer {kind} @{label}")
            if pb["best"] is e:
                row["peer"] = name
        w = searches[label]["winner"]
        if w is not None:
            name = seen.setdefault(w["recipe"].to_json(), f"autoeff @{label}")
            finals.setdefault(name, w["recipe"])
            roles.setdefault(name, []).append(f"autoeff @{label}")
            row["autoeff"] = name
        rows.append(row)
    final = final_measurements(bench, finals)
    for name, rs in roles.items():
        final[name]["roles"] = sorted(set(rs), key=rs.index)
    ddpm_q = final[ddpm_label]["quality"]
    for name in dict.fromkeys(row["autoeff"] for row in rows if row["autoeff"]):
        q = quality_at_ddpm_n(bench, bench.pipe(finals[name]), finals[name], ddpm_q)
        if q is not None:
            final[name]["quality_at_ddpm_n"] = q
            log(f"  {name} at DDPM's n={q['n']}: FID {fid_pm(q)}")
    for row in rows:
        row["targets"] = targets(row, final, ddpm_label)

    # 5. sampler efficiency
    eff = None
    if not args.no_efficiency:
        b10 = budgets.get("10%", list(budgets.values())[len(budgets) // 2])
        log("search efficiency: nsga2 / tpe / random")
        eff = efficiency(bench, b10, args.work_dir)

    res = {"config": {"command": command_line("compare.py", sys.argv[1:]),
                      "machine": machine(args.threads, args.device), "batch": args.batch,
                      "budgets_pct": pcts, "space": args.space, "trials": args.trials,
                      "sampler": args.sampler,
                      "proxy_samples": args.proxy_samples, "search_final_samples": args.search_final_samples,
                      "screen_samples": args.screen_samples, "final_samples": args.final_samples,
                      "screen_top": args.screen_top,
                      "ddpm_fid_from": str(args.ddpm_fid_from) if args.ddpm_fid_from else None,
                      "ddpm_samples": args.ddpm_samples, "seeds": args.seeds, "rounds": args.rounds,
                      "repeats": args.repeats, "ddpm_rounds": args.ddpm_rounds, "quick": q,
                      "final_seeds": list(FINAL_SEEDS[: args.seeds]), "screen_seed": SCREEN_SEED,
                      "wall_min": (time.perf_counter() - t_start) / 60},
           "reference_s": reference_s, "reference_latency": ref_lat, "budgets_s": budgets,
           "ddpm_label": ddpm_label, "peers": peer_res, "searches": searches, "final": final, "rows": rows,
           "efficiency": eff, "screen_failures": bench.screen_notes}
    (res_dir / "compare.json").write_text(json.dumps(_jsonable(res), indent=1) + "\n")  # first: nothing lost
    plot(res, res_dir / "compare.png")
    if eff:
        plot_efficiency(eff, res_dir / "sampler_efficiency.png")
    write_section(args.out, START, END, render(res))
    log(f"wrote {args.out}, {res_dir / 'compare.json'}, compare.png"
        + (", sampler_efficiency.png" if eff else ""))


if __name__ == "__main__":
    main()
