"""autoeff against tuning by hand, at equal measured latency, on the built-in digits U-Net and digits DiT.

    # the whole matrix: 2 models x 2 batch sizes x 4 budgets (many hours on 2 quiet CPU cores; run it alone)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/compare.py --models digits,digits-dit --batches 1,16
    # one piece (one model, one batch size): what to run per session; a killed piece resumes where it stopped
    OMP_WAIT_POLICY=PASSIVE python benchmarks/compare.py --models digits --batches 1
    # the BENCHMARKS.md section from every finished piece (no measuring)
    python benchmarks/compare.py --render
    # every step with tiny counts (plumbing, not results), without touching BENCHMARKS.md
    python benchmarks/compare.py --quick --models digits --batches 1 --budgets 10 --out /tmp/cmp.md

A *piece* is one model at one batch size. Its steps, each saved to `benchmarks/results/compare/<model>-b<batch>
.json` as soon as it is done (a rerun skips what is saved; `--fresh` starts the piece over):

1. references: DDPM 1000 steps (Ho et al., 2020), DDIM (Song et al., 2021) and DPM-Solver++ order 1 (Lu et al.,
   2022) at 50 uniform steps, latency interleaved round-robin. The budgets (`--budgets`, default 3, 5, 10,
   20 %) are fractions of the 50-step DPM-Solver++ 1 latency measured first.
2. by hand: every solver (DPM-Solver++ 2M / 3M, UniPC-2 / -3, DDIM) x schedule family (uniform = trailing,
   Karras rho 7, AYS log-linear, quadratic) x step count whose scanned latency fits a budget, the best by FID
   on a screening sample; on the best of those, per budget: DeepCache N = 2, 3, 5 (branch 1; the block cache
   on the DiT; Ma et al., 2024), int8 (`cpu-int8`, every block group), compiled (`torch.compile`, inductor,
   whole denoiser) and compiled with the best DeepCache, each at every step count that fits. All are autoeff
   Recipes, built by the code that builds the search's candidates. A compiled configuration's images equal its
   eager images up to rounding (`measure.COMPILED_IMAGE_TOLERANCE`), so its FID is the eager one's.
3. autoeff: `autoeff.optimize` at each budget written as a user writes it (`10%`: of the search's own baseline,
   every call timed against its yardstick; until 2026-11-30 the budget was passed in milliseconds), with its
   default sampler (or `--sampler`); its study stays in `--work-dir` (a rerun resumes it;
   `--redo-searches` runs the searches afresh and re-measures, keeping steps 1-2 and the FIDs of unchanged
   recipes; `--redo-searches 3,5` only the searches at those budgets, the others kept; `--remeasure` only
   step 4 again, FIDs kept).
4. re-measured: every chosen configuration (references, the best hand configuration of each kind per budget,
   autoeff's picks) timed interleaved round-robin in one process, each call paired with a yardstick call (the
   reference's solver at a few steps; ratios to the reference then come from one machine speed), and FID
   against the 1797 real digits on two seed sets of `--final-samples` (cached by recipe, shared between batch
   sizes: the images do not depend on the batch a latency is timed at), and at DDPM's sample count for the
   DDPM comparison.

The sampler comparison (NSGA-II, TPE, GP, the budget-filling loop; 3 seeds) is `benchmarks/samplers.py`, the
`make demo` repetition `benchmarks/demo_runs.py`. Targets (issue 13; figures, not tests): autoeff's FID <= the
best hand configuration's within the two-seed noise at every budget and batch; where the best hand
configuration is worse than the 50-step reference beyond noise, autoeff closes >= 50 % of that gap; >= 300x
lower latency than DDPM-1000 at an FID within its noise; <= 20 % of trials measured over budget; each search
<= 10 min. Deterministic given its seeds except where a measured latency decides (which step counts fit, which
candidates are over budget): latency is a measurement. Run it alone on the machine.
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

from autoeff.measure import yardstick_steps  # noqa: E402
from benchmarks._common import (  # noqa: E402
    DEFAULT_OUT,
    ROOT,
    all_groups_quantize,
    build,
    code_identity,
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
PEER_SCHEDULES = ("uniform", "karras", "ays", "quadratic")
QUICK_SOLVERS = ("DPM-Solver++ 2M", "DDIM")
QUICK_SCHEDULES = ("uniform", "quadratic")
CACHE_INTERVALS = (2, 3, 5)
SCAN_MARGIN = 0.15  # scan step counts until the latency passes the largest budget by this much
MAX_STEPS = 50
GAP_TARGET = 0.5  # share of the gap to the 50-step reference autoeff must close where the hand config is worse
DDPM_SPEEDUP_TARGET = 300.0
SEARCH_MINUTES_TARGET = 10.0
OVER_BUDGET_TARGET = 0.20
REFERENCE = "DPM-Solver++ 1 (50)"


# --- a piece's saved state ----------------------------------------------------------------------------------
class Piece:
    """One model at one batch size: its saved steps (`benchmarks/results/compare/<model>-b<batch>.json`)."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        if fresh and path.exists():
            path.unlink()
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = _jsonable(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)


class Bench:
    """The model, its context and the memoised measurements every step of a piece shares."""

    def __init__(self, args: argparse.Namespace, model: str, batch: int, piece: Piece,
                 log: Callable[[str], None]) -> None:
        import autoeff

        self.args, self.model, self.batch, self.piece, self.log = args, model, batch, piece, log
        self.handle = autoeff.load_model(model, device=args.device)
        self.context = make_context(self.handle, args.device)
        # screening FIDs do not depend on the batch a latency is timed at: a piece starts from its siblings'
        self.screened: dict[str, float] = {}
        for other in siblings(args, model, piece.path):
            if (other.get("config") or {}).get("screen_samples") == args.screen_samples:
                self.screened.update(other.get("screened") or {})
        self.screened.update(piece.get("screened") or {})
        self.screen_notes: dict[str, str] = dict(piece.get("screen_notes") or {})
        self.scans: dict[str, list[dict[str, Any]]] = {
            name: [{**e, "recipe": _recipe(e["recipe"])} for e in entries]
            for name, entries in (piece.get("scans") or {}).items()}

    def recipe(self, solver_name: str, order: int, family: str, k: int, **extra: Any) -> Any:
        from autoeff.recipe import Recipe
        from autoeff.search_spaces import schedule, solver

        return Recipe(model=self.model, knobs={"solver": solver.Config(name=solver_name, order=order),
                                               "schedule": schedule.Config(family=family, steps=k), **extra})

    def pipe(self, recipe: Any) -> Any:
        return build(self.handle, recipe, self.context)

    def scan(self, name: str, make: Callable[[int], Any], limit_s: float) -> list[dict[str, Any]]:
        """Latency at k = 1, 2, ... until it passes `limit_s` (saved in the piece by `name`)."""
        if name in self.scans:
            return self.scans[name]
        out = []
        for k in range(1, MAX_STEPS + 1):
            recipe = make(k)
            try:
                t = quick_latency(latency_call(self.handle, self.pipe(recipe), self.batch, LATENCY_SEED),
                                  self.args.device, self.args.threads, repeats=self.args.scan_repeats)
            except Exception as e:  # a configuration that cannot run is a result, not a crash
                self.screen_notes[recipe.to_json()] = f"{type(e).__name__}: {e}"[:200]
                break
            out.append({"k": k, "recipe": recipe, "latency_s": t})
            if t > limit_s:
                break
        self.scans[name] = out
        self.piece.put("scans", self.scans)
        if out:
            self.log(f"  scan {name}: k=1..{out[-1]['k']}, {ms(out[0]['latency_s'])}..{ms(out[-1]['latency_s'])} ms")
        return out

    def screen(self, recipe: Any) -> float:
        """FID on the screening sample (one seed set); a configuration that fails scores +inf. A compiled
        recipe is screened without its compile knob (the same images up to rounding)."""
        key = recipe.to_json()
        if key not in self.screened:
            eager = _without_compile(recipe)
            try:
                q = two_seed_quality(self.handle, self.pipe(eager), f"compare-screen|{eager.to_json()}",
                                     self.args.screen_samples, (SCREEN_SEED,), cache=not self.args.no_cache)
                self.screened[key] = q["fid"][0]
            except Exception as e:  # a broken configuration is a result, not a crash
                self.screened[key] = math.inf
                self.screen_notes[key] = f"{type(e).__name__}: {e}"[:200]
            self.piece.put("screened", self.screened)
            self.piece.put("screen_notes", self.screen_notes)
        return self.screened[key]


def _recipe(data: Any) -> Any:
    from autoeff.recipe import Recipe

    return data if isinstance(data, Recipe) else Recipe.from_dict(data)


def _without_compile(recipe: Any) -> Any:
    from autoeff.recipe import Recipe

    return Recipe(model=recipe.model, knobs={k: v for k, v in recipe.knobs.items() if k != "compile"})


# --- step 2: by hand --------------------------------------------------------------------------------------
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


def hand(bench: Bench, budgets: dict[str, float]) -> dict[str, Any]:
    """The hand configurations per budget (see the module docstring, step 2)."""
    from autoeff.search_spaces import cache, compile

    args = bench.args
    limit = max(budgets.values()) * (1 + SCAN_MARGIN)
    solvers = QUICK_SOLVERS if args.quick else tuple(PEER_SOLVERS)
    schedules = QUICK_SCHEDULES if args.quick else PEER_SCHEDULES
    combos = [(s, f) for s in solvers for f in schedules]
    scans = {}
    for s, f in combos:
        name, order = PEER_SOLVERS[s]
        scans[(s, f)] = bench.scan(f"{s} / {f}", lambda k, n=name, o=order, f=f: bench.recipe(n, o, f, k), limit)
    compiled = compile.Config(mode="default", backend="inductor", scope="model")
    q8 = all_groups_quantize(bench.context, "int8", "cpu-int8")
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

        def variant(tag: str, base: str = base, name: str = name, order: int = order, f: str = f, b: float = b,
                    **extra: Any) -> dict[str, Any] | None:
            entries = bench.scan(f"{base} + {tag}", lambda k: bench.recipe(name, order, f, k, **extra), limit)
            best = best_fitting(bench, entries, b)
            return None if best is None else {"combo": f"{base} + {tag}", **best}

        cached = [v for n in CACHE_INTERVALS
                  if (v := variant(f"DeepCache N={n}", cache=cache.Config(interval=n, branch=1))) is not None]
        best_cache = min(cached, key=lambda e: e["screen_fid"]) if cached else None
        kinds: dict[str, Any] = {"plain": plain, "cache": best_cache,
                                 "int8": variant("int8", quantize=q8),
                                 "compiled": variant("compiled", compile=compiled)}
        if best_cache is not None:
            n = best_cache["recipe"].knobs["cache"].interval
            kinds["compiled+cache"] = variant(f"compiled + DeepCache N={n}", compile=compiled,
                                              cache=cache.Config(interval=n, branch=1))
        options = [e for e in kinds.values() if e is not None]
        overall = min(options, key=lambda e: (e["screen_fid"], e["latency_s"])) if options else None
        out["budgets"][label] = {"budget_s": b, "per_combo": per_combo, **kinds, "best": overall, "base_combo": base}
        bench.log(f"  by hand at {label}: best {overall['combo'] + ' k=' + str(overall['k']) if overall else 'none'}")
    return out


def _fallback_combo(bench: Bench, scans: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """When no plain configuration fits a budget, DeepCache and the others go on the solver and schedule that
    are best at the fewest steps scanned."""
    s, f = min((c for c in scans if scans[c]), key=lambda c: bench.screen(scans[c][0]["recipe"]))
    return f"{s} / {f}"


# --- step 3: autoeff ---------------------------------------------------------------------------------------
def run_search(bench: Bench, budget: str, out: Path, *, sampler: str | None, seed: int, trials: int,
               warm_start: bool = True, final_samples: int, fresh: bool = False) -> dict[str, Any]:
    """One `autoeff.optimize` run in `out` (an existing study there is resumed unless `fresh`) with `budget` as a
    user writes it (`10%`: of the search's own baseline, timed against its yardstick): its winner, trials (state,
    latency, raw FID, skipped), share measured over the search's budget and wall time."""
    import optuna

    from autoeff.api import load_result, optimize
    from autoeff.errors import SearchError
    from autoeff.study import measurement_of, planned_as, skip_reason

    args = bench.args
    if fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    error, result = None, None
    kwargs: dict[str, Any] = {} if sampler is None else {"sampler": sampler}
    try:
        result = optimize(bench.handle, budget=budget, device=args.device, out=out,
                          space=args.space, metric="fid", trials=trials, seed=seed, batch_size=bench.batch,
                          proxy_samples=args.proxy_samples, final_samples=final_samples, warm_start=warm_start,
                          export=False, threads=args.threads, min_steps=1, **kwargs)
    except SearchError as e:
        error = f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - t0
    budget_s: float | None = None  # the search's own budget in seconds (its % resolved against its baseline)
    try:
        stored, records = load_result(out)
        all_trials = stored.study.get_trials(deepcopy=False)
        budget_s = stored.budget_s
    except Exception as e:  # the search failed before its study existed: report, do not crash the benchmark
        error = error or f"{type(e).__name__}: {e}"
        records, all_trials = [], []
    trials_info = []
    for t in sorted(all_trials, key=lambda t: t.number):
        m = measurement_of(t)
        trials_info.append({"number": t.number, "state": t.state.name, "latency_s": m.latency_s if m else None,
                            "fid": m.quality.value if m and m.quality is not None else None,
                            "skipped": skip_reason(t) is not None, "planned": planned_as(t)})
    measured = [t for t in trials_info if t["latency_s"] is not None]
    over = [t for t in measured if budget_s is not None and t["latency_s"] > budget_s]
    best = result.best if result is not None else None
    summary = result.summary() if result is not None else {}
    return {"out": str(out), "budget": budget, "budget_s": budget_s, "sampler": sampler, "seed": seed,
            "trials": trials, "wall_s": wall, "error": error,
            "states": {s: sum(1 for t in trials_info if t["state"] == s) for s in {t["state"] for t in trials_info}},
            "measured": len(measured), "over_budget": len(over), "skipped": sum(t["skipped"] for t in trials_info),
            "completed": sum(1 for t in trials_info if t["state"] == optuna.trial.TrialState.COMPLETE.name),
            "trial_records": trials_info, "latency_model": summary.get("latency_model"),
            "halving": summary.get("halving"),
            "winner": None if best is None else {"number": best.record.number, "recipe": best.record.recipe,
                                                 "proxy": best.record.measurement.to_dict(),
                                                 "final": best.final.to_dict()},
            "records": len(records)}


# --- step 4: re-measured ------------------------------------------------------------------------------------
def final_quality(bench: Bench, pipe: Any, recipe: Any, n: int) -> dict[str, Any]:
    """Two-seed FID of `n` samples per final seed set, cached under the (eager) recipe."""
    import torch

    eager = _without_compile(recipe)
    with torch.compiler.set_stance("force_eager"):  # the eager images (as the search's evaluator makes them)
        return two_seed_quality(bench.handle, pipe, f"compare-final|{eager.to_json()}", n,
                                FINAL_SEEDS[: bench.args.seeds], cache=not bench.args.no_cache)


def ddpm_quality_from(path: Path, steps: int) -> dict[str, Any]:
    """The DDPM baseline's FID as `benchmarks/builtin_models.py` measured it (same model, same features, all
    1797 real digits), instead of generating it again (on 2 CPU cores its 1000 steps cost ~25 min per 500
    samples). The table says where the figure comes from (`source`)."""
    rec = json.loads(Path(path).read_text())
    if rec.get("steps") != steps:
        raise ValueError(f"{path} holds {rec.get('steps')}-step DDPM figures, not {steps}-step ones")
    fids = [r["fid"] for r in rec["seeds"]]
    accs = [r["class_acc"] for r in rec["seeds"]]
    return {"n": rec["samples_per_seed"], "seeds": [r["seed"] for r in rec["seeds"]], "fid": fids,
            "fid_mean": statistics.fmean(fids), "fid_range": max(fids) - min(fids), "fid_pooled": None,
            "class_acc": accs, "class_acc_mean": statistics.fmean(accs),
            "source": f"{Path(path).name} ({rec.get('command', '')}; {rec.get('machine', '')})"}


def remeasure(bench: Bench, finals: dict[str, Any], ddpm_label: str,
              reuse: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Latency interleaved round-robin and two-seed FID for every configuration in `finals`; the FID of a recipe
    in `reuse` (recipe JSON -> its earlier entry) is taken from there, with the code that measured it."""
    args = bench.args
    pipes = {label: bench.pipe(recipe) for label, recipe in finals.items()}
    fns = {label: latency_call(bench.handle, p, bench.batch, LATENCY_SEED) for label, p in pipes.items()}
    # every call paired with the 50-step reference's solver at a few steps (the search's own yardstick rule, at
    # the middle budget): ratios to the reference are then taken at one machine speed (`round_ratio`)
    steps = yardstick_steps(statistics.median(args.budget_pcts) / 100, 50)
    yard = latency_call(bench.handle, bench.pipe(bench.recipe("dpmpp", 1, "uniform", steps)), bench.batch,
                        LATENCY_SEED)
    bench.log(f"final latency: {len(fns)} configurations, {args.rounds} interleaved rounds, yardstick {steps} steps")
    lat = interleaved_latency(fns, args.device, rounds=args.rounds, repeats=args.repeats, threads=args.threads,
                              max_rounds={ddpm_label: args.ddpm_rounds}, log=bench.log, yardstick=yard,
                              yardstick_steps=steps)
    out, reuse = {}, reuse or {}
    for label, recipe in finals.items():
        q, err, code = None, None, code_identity()
        try:
            if label != ddpm_label and recipe.to_json() in reuse:
                q, code = reuse[recipe.to_json()]["quality"], reuse[recipe.to_json()]["quality_code"]
            elif label == ddpm_label:
                q = ddpm_quality_from(ROOT / "benchmarks" / "results" / f"builtin_{bench.model}.json",
                                      args.ddpm_steps) if args.ddpm_steps == 1000 else \
                    final_quality(bench, pipes[label], recipe, args.final_samples)
            else:
                q = final_quality(bench, pipes[label], recipe, args.final_samples)
        except Exception as e:  # reported in the table, not a crash
            err = f"{type(e).__name__}: {e}"[:200]
        bench.log(f"  final quality {label}: FID {fid_pm(q)}")
        from autoeff.evaluators.size import model_size_mb

        out[label] = {"recipe": recipe, "label": short_label(recipe), "latency": lat[label], "quality": q,
                      "quality_code": code, "error": err,
                      "size_mb": model_size_mb(getattr(pipes[label], bench.handle.denoiser_name))}
    return out


# --- one piece ---------------------------------------------------------------------------------------------
def run_piece(args: argparse.Namespace, model: str, batch: int, log: Callable[[str], None]) -> Path:
    from autoeff.recipe import Recipe
    from autoeff.search_spaces import schedule

    path = pieces_dir(args) / f"{model}-b{batch}.json"
    piece = Piece(path, args.fresh)
    # the FIDs of configurations measured before (references, hand) are kept when the recipe, sample count and
    # seeds are the same: a rerun changes the search or adds a budget, not how a recipe's images are made (the
    # latency of every row is re-measured, interleaved); each row says which code measured its FID
    # (nor the batch size: the other pieces of this model are read too, this piece's own entries last)
    reuse: dict[str, dict[str, Any]] = {}
    for data in [*siblings(args, model, path), piece.data]:
        old_code = ((data.get("config") or {}).get("machine") or {}).get("autoeff_code")
        for entry in (data.get("final") or {}).values():
            q = entry.get("quality")
            if q and not entry.get("error") and q.get("n") == args.final_samples \
                    and q.get("seeds") == list(FINAL_SEEDS[: args.seeds]) and not q.get("source"):
                reuse[_recipe(entry["recipe"]).to_json()] = {**entry,
                                                             "quality_code": entry.get("quality_code") or old_code}
    redo: list[str] = []
    if args.redo_searches == "all":
        redo = list(piece.get("searches") or {})
    elif args.redo_searches:
        redo = list(args.redo_searches)
    if redo:
        piece.data["searches"] = {k: v for k, v in (piece.get("searches") or {}).items() if k not in redo}
    if redo or args.remeasure:
        for key in ("rows", "final"):
            piece.data.pop(key, None)
    bench = Bench(args, model, batch, piece, log)
    t_start = time.perf_counter()
    ddpm_label = f"DDPM-{args.ddpm_steps}"
    refs = {ddpm_label: Recipe(model=model, knobs={"schedule": schedule.Config(family="leading",
                                                                                steps=args.ddpm_steps)}),
            "DDIM-50": bench.recipe("ddim", 1, "uniform", 50),
            REFERENCE: bench.recipe("dpmpp", 1, "uniform", 50)}
    if piece.get("references") is None:  # 1. references and budgets
        log(f"[{model} b{batch}] references: latency of the 50-step configurations")
        fns = {k: latency_call(bench.handle, bench.pipe(r), batch, LATENCY_SEED) for k, r in refs.items()
               if k != ddpm_label}
        piece.put("references", interleaved_latency(fns, args.device, rounds=args.rounds, repeats=args.repeats,
                                                    threads=args.threads, log=log))
    reference_s = piece.get("references")[REFERENCE]["median_s"]
    budgets = {f"{p:g}%": p / 100 * reference_s for p in args.budget_pcts}
    log(f"[{model} b{batch}] budgets: " + ", ".join(f"{k} = {ms(v)} ms" for k, v in budgets.items()))
    by_hand = piece.get("hand")  # 2. by hand (a budget added to a finished piece gets its own)
    missing = {k: v for k, v in budgets.items() if by_hand is None or k not in by_hand["budgets"]}
    if missing:
        added = hand(bench, missing)
        by_hand = added if by_hand is None else {**by_hand, "budgets": {**by_hand["budgets"], **added["budgets"]}}
        piece.put("hand", by_hand)
    searches = dict(piece.get("searches") or {})  # 3. autoeff
    for label, b in budgets.items():
        if label in searches:
            continue
        log(f"[{model} b{batch}] autoeff at {label} ({ms(b)} ms), {args.trials} trials")
        searches[label] = run_search(bench, label, args.work_dir / f"{model}-b{batch}-{label.rstrip('%')}pct",
                                     sampler=args.sampler, seed=0, trials=args.trials,
                                     final_samples=args.search_final_samples,
                                     fresh=args.fresh or label in redo or args.redo_searches == "all")
        piece.put("searches", searches)
        w = searches[label]["winner"]
        log(f"  {searches[label]['wall_s'] / 60:.1f} min, winner {short_label(_recipe(w['recipe'])) if w else None}")
    if piece.get("final") is None or [r["budget_label"] for r in piece.get("rows") or []] != list(budgets):
        # 4. re-measured (again when the budgets changed)
        finals: dict[str, Any] = dict(refs)
        roles: dict[str, list[str]] = {k: [k] for k in finals}
        seen = {r.to_json(): k for k, r in finals.items()}
        rows = []
        for label, b in budgets.items():
            hb = by_hand["budgets"][label]
            row: dict[str, Any] = {"budget_label": label, "budget_s": b, "hand": None, "autoeff": None,
                                   "hand_kinds": {}}
            for kind in ("plain", "cache", "int8", "compiled", "compiled+cache"):
                e = hb.get(kind)
                if not e:
                    continue
                recipe = _recipe(e["recipe"])
                name = seen.setdefault(recipe.to_json(), f"hand {kind} @{label}")
                finals.setdefault(name, recipe)
                roles.setdefault(name, []).append(f"hand {kind} @{label}")
                row["hand_kinds"][kind] = name
                if hb.get("best") and _recipe(hb["best"]["recipe"]).to_json() == recipe.to_json():
                    row["hand"] = name
            w = searches[label]["winner"]
            if w is not None:
                recipe = _recipe(w["recipe"])
                name = seen.setdefault(recipe.to_json(), f"autoeff @{label}")
                finals.setdefault(name, recipe)
                roles.setdefault(name, []).append(f"autoeff @{label}")
                row["autoeff"] = name
            rows.append(row)
        final = remeasure(bench, finals, ddpm_label, reuse=reuse)
        for name, rs in roles.items():
            final[name]["roles"] = sorted(set(rs), key=rs.index)
        ddpm_q = final[ddpm_label]["quality"]
        for name in dict.fromkeys(r["autoeff"] for r in rows if r["autoeff"]):
            if ddpm_q and ddpm_q["n"] != args.final_samples:
                earlier = (reuse.get(finals[name].to_json()) or {}).get("quality_at_ddpm_n")
                final[name]["quality_at_ddpm_n"] = earlier if earlier and earlier.get("n") == ddpm_q["n"] else \
                    final_quality(bench, bench.pipe(finals[name]), finals[name], ddpm_q["n"])
        piece.put("rows", rows)
        piece.put("final", final)
    old_cfg = piece.get("config") or {}
    earlier = list(old_cfg.get("earlier_commands") or []) + ([old_cfg["command"]] if old_cfg.get("command") else [])
    command = command_line("compare.py", sys.argv[1:])
    piece.put("config", {"command": command, "earlier_commands": [c for c in earlier if c != command],
                         "machine": machine(args.threads, args.device), "model": model, "batch": batch,
                         "budgets_pct": args.budget_pcts, "space": args.space, "trials": args.trials,
                         "sampler": args.sampler or "default", "proxy_samples": args.proxy_samples,
                         "search_final_samples": args.search_final_samples,
                         "screen_samples": args.screen_samples, "screen_top": args.screen_top,
                         "final_samples": args.final_samples, "seeds": args.seeds,
                         "final_seeds": list(FINAL_SEEDS[: args.seeds]), "screen_seed": SCREEN_SEED,
                         "rounds": args.rounds, "repeats": args.repeats, "ddpm_rounds": args.ddpm_rounds,
                         "ddpm_label": ddpm_label, "quick": args.quick,
                         "wall_min": (piece.get("config") or {}).get("wall_min", 0)
                         + (time.perf_counter() - t_start) / 60})
    piece.put("budgets_s", budgets)
    piece.put("reference_s", reference_s)
    return path


# --- targets and the report -------------------------------------------------------------------------------
def _within_noise(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a's mean FID exceeds b's by no more than the larger of their seed-to-seed ranges."""
    return a["fid_mean"] - b["fid_mean"] <= max(a["fid_range"], b["fid_range"])


RULES = ("paired", "rounds", "pooled")  # how a row's latency is set against the reference's (`round_ratio`)


def round_ratio(final: dict[str, Any], name: str, of: str = REFERENCE, rule: str = "paired") -> float | None:
    """`name`'s latency over `of`'s, the median over the interleaved rounds of the ratio of their round medians
    (the rounds both were timed in). Rounds are what interleaving is for: this VM's speed moves by up to 50 %
    between rounds a minute apart (the DiT piece of 2026-11-30: every configuration fast in rounds 1 and 5, slow
    in 2-4), so the ratio of two pooled medians can compare one configuration's fast rounds with the other's
    slow ones. `rule`: "paired" takes the round medians of calls each timed against the yardstick after it
    (`interleaved_latency`; since 2026-11-30 evening: within a round the speed still moved, e.g. a 4-step row at
    5.3-9.6 % of the reference over five rounds); "rounds" the round medians as measured; "pooled" gives None
    (the caller then sets pooled medians against each other). Pieces timed without a yardstick have only the
    measured round medians, which both round rules then read."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "pooled":
        return None
    key = "raw_round_medians_s" if rule == "rounds" else "round_medians_s"

    def medians(n: str) -> list[float]:
        lat = (final.get(n) or {}).get("latency", {})
        return list(lat.get(key) or lat.get("round_medians_s") or [])

    pairs = [x / y for x, y in zip(medians(name), medians(of), strict=False) if y > 0]  # DDPM: fewer rounds
    return statistics.median(pairs) if pairs else None


def _pooled_median(m: dict[str, Any]) -> float:
    """A re-measured row's pooled median as measured (without a yardstick's correction)."""
    return float(m["latency"].get("raw_median_s") or m["latency"]["median_s"])


def budget_share(piece: dict[str, Any], row: dict[str, Any], name: str | None,
                 rule: str = "paired") -> float | None:
    """How much of the row's budget configuration `name` takes in the re-measure (1.0: exactly the budget): its
    ratio to the 50-step reference (`round_ratio` under `rule`) over the budget's share of that reference; with
    the "pooled" rule (until 2026-11-30) or without round medians, the pooled medians as measured."""
    m = piece["final"].get(name or "")
    if not m:
        return None
    ratio = round_ratio(piece["final"], name or "", rule=rule)
    if ratio is None:
        ref = piece["final"].get(REFERENCE)
        if not ref:
            return float(m["latency"]["median_s"]) / float(row["budget_s"])
        ratio = _pooled_median(m) / _pooled_median(ref)
    return ratio / (float(row["budget_s"]) / float(piece["reference_s"]))


def fits(piece: dict[str, Any], row: dict[str, Any], name: str | None, rule: str = "paired") -> bool:
    """Whether a re-measured configuration is within the row's budget (`budget_share` <= 1)."""
    share = budget_share(piece, row, name, rule)
    return share is not None and share <= 1.0


def final_budget(piece: dict[str, Any], row: dict[str, Any]) -> float:
    """The row's budget in the re-measure, in seconds (shown in the table): its share of the 50-step reference's
    pooled median *as re-measured in the same interleaved rounds* (this VM's speed drifted by 10-40 % between
    the references at the piece's start and the re-measure); the budget in milliseconds from the start where
    the reference was not re-measured. Whether a row fits is decided per round (`budget_share`)."""
    ref = piece["final"].get(REFERENCE)
    if not ref:
        return float(row["budget_s"])
    return float(row["budget_s"]) / float(piece["reference_s"]) * float(ref["latency"]["median_s"])


def best_hand(piece: dict[str, Any], row: dict[str, Any], rule: str = "paired") -> str | None:
    """The hand configuration the row compares with: the lowest final FID among this budget's hand
    configurations (plain, DeepCache, int8, compiled, ...) whose *re-measured* latency fits the budget. The step
    scans that chose them time each one alone and quickly; the re-measure times every row interleaved in one
    process, the same way for both sides, so a hand configuration at the budget's edge can fall out here, as
    autoeff's candidates do in its own re-time."""
    final = piece["final"]
    names = [n for n in dict.fromkeys(row.get("hand_kinds", {}).values())
             if final.get(n) and final[n].get("quality") and fits(piece, row, n, rule)]
    return min(names, key=lambda n: final[n]["quality"]["fid_mean"], default=None)


def targets(piece: dict[str, Any], row: dict[str, Any], rule: str = "paired") -> dict[str, Any]:
    final, cfg = piece["final"], piece["config"]
    a, h = final.get(row["autoeff"] or ""), final.get(best_hand(piece, row, rule) or "")
    ref, ddpm = final.get(REFERENCE), final.get(cfg["ddpm_label"])
    s = piece["searches"][row["budget_label"]]
    t: dict[str, Any] = {}
    qa, qh, qr = (x["quality"] if x else None for x in (a, h, ref))
    t["fits"] = fits(piece, row, row["autoeff"], rule)
    t["vs_hand"] = t["fits"] and (bool(qa and qh and _within_noise(qa, qh)) if qh else bool(qa))
    t["gap_closed"] = None
    if qa and qh and qr and not _within_noise(qh, qr):  # the hand configuration is worse than the reference
        t["gap_closed"] = (qh["fid_mean"] - qa["fid_mean"]) / (qh["fid_mean"] - qr["fid_mean"])
    t["gap_met"] = t["gap_closed"] is None or t["gap_closed"] >= GAP_TARGET
    # by the rule of the budgets (DDPM is timed in the first `ddpm_rounds` rounds only)
    t["ddpm_speedup"] = round_ratio(final, cfg["ddpm_label"], row["autoeff"], rule=rule) if a and ddpm else None
    if t["ddpm_speedup"] is None and a and ddpm:
        t["ddpm_speedup"] = _pooled_median(ddpm) / _pooled_median(a)
    qd = (a.get("quality_at_ddpm_n") or qa) if a else None
    t["ddpm_within_noise"] = bool(qd and ddpm and ddpm["quality"] and _within_noise(qd, ddpm["quality"]))
    t["over_share"] = s["over_budget"] / s["measured"] if s["measured"] else None
    t["over_met"] = t["over_share"] is not None and t["over_share"] <= OVER_BUDGET_TARGET
    t["time_met"] = s["wall_s"] <= SEARCH_MINUTES_TARGET * 60
    return t


def _lat_cell(piece: dict[str, Any], row: dict[str, Any], name: str | None) -> str:
    m = piece["final"].get(name or "")
    if not m:
        return "—"
    share = budget_share(piece, row, name)
    return ms(m["latency"]["median_s"]) + ("" if share is None or share <= 1.0 else f" (over by {share - 1:.0%})")


def render(pieces: list[dict[str, Any]]) -> str:
    lines = [START, "## autoeff vs tuning by hand, at equal measured latency", ""]
    if not pieces:
        lines += ["**Not measured yet.** The comparison of issue 13 (digits U-Net and DiT, batch 1 and 16, budgets "
                  "3/5/10/20 %) has not run on a quiet machine; see the commands below.", END]
        return "\n".join(lines) + "\n"
    cfg0 = pieces[0]["config"]
    names = ", ".join(f"{p['config']['model']} batch {p['config']['batch']}" for p in pieces)
    lines += [
        f"Pieces: {names}; the command, machine and wall time of each below. Budgets: "
        f"{', '.join(f'{x:g}%' for x in cfg0['budgets_pct'])} of DPM-Solver++ order 1 at 50 uniform steps, measured "
        "per piece at its batch. Re-measured rows: latency interleaved round-robin "
        f"({cfg0['rounds']} rounds x {cfg0['repeats']} calls), FID of {cfg0['final_samples']} samples on each of the "
        f"seed sets {cfg0['final_seeds']} against the 1797 real digits (mean ± half the range). Hand "
        f"configurations chosen by FID on {cfg0['screen_samples']} screening samples (seed {cfg0['screen_seed']}); "
        "the row's *best by hand* is the lowest re-measured FID among them whose re-measured latency fits the "
        "budget (as autoeff's pick must: *fits*). A latency fits when its median ratio to the 50-step reference over "
        "the interleaved rounds (each round's median over the reference's in that round) is within the budget's "
        "share: this machine's speed moves by up to 50 % between rounds, and so do the references' medians (the "
        "budget cell: at the piece's start, and pooled over the re-measure's rounds); the DDPM ratio is per round "
        "too. Where a piece was re-measured with a yardstick, every timed call was followed by one call of the "
        "reference's solver at a few steps and counts as the ratio of the two (as autoeff's search times its "
        "candidates), so the round ratios compare costs at one machine speed; its milliseconds are then in the "
        "conditions of the yardstick's first timing, and the targets cell says where the unpaired round medians "
        "or the pooled medians give another verdict. "
        f"autoeff: `autoeff.optimize(space={cfg0['space']!r}, trials={cfg0['trials']}, seed=0, sampler="
        f"{cfg0['sampler']!r}, proxy {cfg0['proxy_samples']} / final {cfg0['search_final_samples']} samples)`.",
        "",
        "| model | batch | budget | best by hand | hand ms | hand FID | autoeff pick | autoeff ms | autoeff FID | "
        "50-step ref FID | gap closed | DDPM-1000 ms / autoeff ms | over budget | search min | targets met? |",
        "| --- | ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for p in pieces:
        cfg, final = p["config"], p["final"]
        ref = final.get(REFERENCE)
        for row in p["rows"]:
            b = final_budget(p, row)
            hn = best_hand(p, row)
            a, h = final.get(row["autoeff"] or ""), final.get(hn or "")
            t = targets(p, row)
            s = p["searches"][row["budget_label"]]
            marks = [f"fits: {'yes' if t['fits'] else 'no'}",
                     f"<= hand: {'yes' if t['vs_hand'] else 'no'}",
                     f"gap >= 50%: {'yes' if t['gap_met'] else 'no'}",
                     f">= 300x DDPM at its FID: {'yes' if t['ddpm_within_noise'] and (t['ddpm_speedup'] or 0) >= DDPM_SPEEDUP_TARGET else 'no'}",  # noqa: E501
                     f"<= 20% over: {'yes' if t['over_met'] else 'no'}",
                     f"<= 10 min: {'yes' if t['time_met'] else 'no'}"]
            for rule, words in (("rounds", "unpaired rounds"), ("pooled", "pooled medians")):
                if rule == "rounds" and not (ref and ref["latency"].get("raw_round_medians_s")):
                    continue  # timed without a yardstick: the paired rule is this one
                old = targets(p, row, rule)  # an earlier rule, where it says otherwise
                differ = [f"{k} {'yes' if old[k] else 'no'}" for k in ("fits", "vs_hand") if old[k] != t[k]]
                if old["ddpm_speedup"] and t["ddpm_speedup"] and (old["ddpm_speedup"] >= DDPM_SPEEDUP_TARGET) != (
                        t["ddpm_speedup"] >= DDPM_SPEEDUP_TARGET):
                    differ.append(f"DDPM {old['ddpm_speedup']:.0f}x")
                if differ:
                    marks.append(f"({words}: {', '.join(differ)})")
            hand_cells = (f"{h['label']} | {_lat_cell(p, row, hn)} | {fid_pm(h['quality'])}" if h
                          else "none fits | — | —")
            auto_cells = (f"{a['label']} | {_lat_cell(p, row, row['autoeff'])} | {fid_pm(a['quality'])}" if a
                          else f"none ({s['error'] or 'no winner'}) | — | —")
            gap = f"{t['gap_closed']:.0%}" if t["gap_closed"] is not None else "— (hand ~ ref)"
            speed = f"{t['ddpm_speedup']:.0f}x" if t["ddpm_speedup"] else "—"
            over = f"{s['over_budget']}/{s['measured']} (+{s['skipped']} skipped)"
            lines.append(f"| {cfg['model']} | {cfg['batch']} | {row['budget_label']} ({ms(row['budget_s'])} ms; "
                         f"re-measured {ms(b)} ms) | {hand_cells} | "
                         f"{auto_cells} | {fid_pm(ref['quality']) if ref else '—'} | {gap} | {speed} | {over} | "
                         f"{s['wall_s'] / 60:.1f} | {'; '.join(marks)} |")
    lines += ["", "Machines and wall times:", ""]
    for p in pieces:
        cfg = p["config"]
        before = "".join(f"`{c}`, then " for c in cfg.get("earlier_commands") or [])
        lines.append(f"- {cfg['model']} batch {cfg['batch']}: {before}`{cfg['command']}` — "
                     f"{machine_line(cfg['machine'])}; {cfg['wall_min']:.0f} min; 50-step DPM-Solver++ 1: "
                     f"{ms(p['reference_s'])} ms.")
    lines += ["", "Every re-measured configuration, per piece:", ""]
    for p in pieces:
        cfg = p["config"]
        lines += [f"**{cfg['model']}, batch {cfg['batch']}**", "",
                  "| role | configuration | latency ms (p10-p90) | FID per seed | FID mean ± half-range | class acc |",
                  "| --- | --- | ---: | --- | ---: | ---: |"]
        for name, m in p["final"].items():
            q = m["quality"]
            lat = m["latency"]
            lines.append(f"| {', '.join(m.get('roles', [name]))} | {m['label']} | {ms(lat['median_s'])} "
                         f"({ms(lat['p10_s'])}-{ms(lat['p90_s'])}) | "
                         f"{', '.join(f'{x:.2f}' for x in q['fid']) if q else m.get('error') or '—'} | "
                         f"{fid_pm(q)}{' (' + q['source'] + ')' if q and q.get('source') else ''} | "
                         f"{q['class_acc_mean']:.3f} |" if q else "— |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


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


def pieces_dir(args: argparse.Namespace) -> Path:
    return results_dir(args.out) / "compare"


def siblings(args: argparse.Namespace, model: str, path: Path) -> list[dict[str, Any]]:
    """The saved pieces of `model` at other batch sizes than the one at `path`."""
    return [json.loads(q.read_text()) for q in sorted(pieces_dir(args).glob(f"{model}-b*.json"))
            if q != path and json.loads(q.read_text()).get("config", {}).get("model") == model]


def finished_pieces(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for path in sorted(pieces_dir(args).glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("final") is not None and data.get("rows") is not None:
            out.append(data)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="digits,digits-dit")
    p.add_argument("--batches", default="1,16", help="images per timed pipeline call, one piece each")
    p.add_argument("--budgets", default="3,5,10,20", help="percent of the 50-step DPM-Solver++ 1 latency")
    p.add_argument("--render", action="store_true", help="only write the section from the finished pieces")
    p.add_argument("--quick", action="store_true", help="every step with tiny counts (plumbing, not results)")
    p.add_argument("--fresh", action="store_true", help="start the pieces (and their searches) over")
    p.add_argument("--redo-searches", nargs="?", const="all", default=None, metavar="BUDGETS",
                   help="keep each piece's references and hand configurations; run autoeff's searches afresh (all, "
                        "or those at these budgets, e.g. 3,5) and re-measure the finalists (after a change to the "
                        "search)")
    p.add_argument("--remeasure", action="store_true",
                   help="keep every step but the last: re-measure the chosen configurations (FIDs kept)")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--space", default="solver,schedule,cache,quantize,prune,compile",
                   help="autoeff's knobs (compile joined on 2026-11-30: the hand side had compiled rows before)")
    p.add_argument("--sampler", default=None, help="autoeff's sampler (default: autoeff's default)")
    p.add_argument("--trials", type=int, default=None, help="trials per search (40; quick 6)")
    p.add_argument("--proxy-samples", type=int, default=None, help="search proxy sample (128; quick 32)")
    p.add_argument("--search-final-samples", type=int, default=None, help="search final sample (1000; quick 64)")
    p.add_argument("--screen-samples", type=int, default=None, help="hand screening FID samples (500; quick 64)")
    p.add_argument("--screen-top", type=int, default=4,
                   help="screen only the N largest step counts that fit each budget (0: all)")
    p.add_argument("--final-samples", type=int, default=None, help="final FID samples per seed (2000; quick 128)")
    p.add_argument("--seeds", type=int, default=2, choices=(1, 2), help="seed sets for the final FID")
    p.add_argument("--ddpm-steps", type=int, default=None, help="steps of the DDPM baseline (1000; quick 100)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (5; quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per round (3; quick 2)")
    p.add_argument("--ddpm-rounds", type=int, default=None, help="rounds for the DDPM baseline (2; quick 1)")
    p.add_argument("--scan-repeats", type=int, default=None, help="timed calls per scanned step count (3; quick 1)")
    p.add_argument("--no-cache", action="store_true", help="recompute FIDs even if cached")
    p.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "bench" / "compare",
                   help="where the searches' studies go (resumed by a rerun)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    q = args.quick
    defaults = {"trials": (40, 6), "proxy_samples": (128, 32), "search_final_samples": (1000, 64),
                "screen_samples": (500, 64), "final_samples": (2000, 128), "ddpm_steps": (1000, 100),
                "rounds": (5, 2), "repeats": (3, 2), "ddpm_rounds": (2, 1), "scan_repeats": (3, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    args.budget_pcts = [float(x) for x in args.budgets.split(",") if x.strip()]
    if args.redo_searches not in (None, "all"):
        args.redo_searches = [f"{float(x):g}%" for x in args.redo_searches.split(",") if x.strip()]
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    if not args.render:
        quiet()
        import torch

        torch.set_num_threads(args.threads)
        args.work_dir.mkdir(parents=True, exist_ok=True)
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            for batch in [int(b) for b in args.batches.split(",") if b.strip()]:
                path = run_piece(args, model, batch, log)
                log(f"piece {model} batch {batch} done: {path}")
    write_section(args.out, START, END, render(finished_pieces(args)))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
