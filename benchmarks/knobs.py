"""Each knob alone, on the built-in digits models and the tiny SD1.5/SDXL pipelines on this machine: latency
effect and quality effect.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/knobs.py            # about 3 h on 2 quiet CPU cores
    OMP_WAIT_POLICY=PASSIVE python benchmarks/knobs.py --quick    # plumbing check, small counts
    python benchmarks/knobs.py --quick --out /tmp/K.md            # ... without touching BENCHMARKS.md
    OMP_WAIT_POLICY=PASSIVE python benchmarks/knobs.py --levers-only # compile, kernels, guidance: latency only

Reference: DPM-Solver++ 2M (Lu et al., 2022), 50 uniform (trailing) steps, nothing else. Each row changes one
knob on top of it: DeepCache N=2/3/5 (Ma et al., 2024) with the shallowest and the deepest branch; int8
(torch.ao kernels, `cpu-int8`) and fake int8 (simulated: quality only) on every block group; structured
pruning (DepGraph, Fang et al., 2023) of every block group by 1/4 and 1/2, without and with a short
distillation (`prune.recover`); on the U-Net, schedule families and solvers at a fixed step count;
`kernels` (channels-last, and on the DiT the SDPA backends); `compile` (inductor `default` and
`max-autotune-no-cudagraphs` on the whole denoiser, `default` on its blocks) at each of `--compile-batches`, each
against the reference at the same batch. On the tiny random-weight SD1.5 and SDXL pipelines
(`autoeff.models.tiny`; no real text-to-image weights here): the guidance interval (cut-offs and a limited
interval, Kynkäänniemi et al., 2024) and `kernels` (fused QKV, channels-last, SDPA), latency only: random
weights make no image worth scoring, so those rows claim no quality.

Compile seconds: before any timing, every compiled row is warmed up until a call compiles nothing
(`autoeff.measure.compile_warmup`) with an empty inductor cache (`cold`), then, after `torch._dynamo.reset()`,
again from the on-disk cache the first pass filled (`cached`: what a resumed search or a second process pays).
Timed calls run under `torch.compiler.set_stance("fail_on_recompile")`: a recompile would stop the run.

Latency: one pipeline call at `--batch` images, `autoeff.evaluators.latency.measure_latency`, all rows of a
model interleaved round-robin (`--rounds` rounds of `--repeats` calls each), median of all timed calls. The
denoiser's share (the U-Net / transformer calls alone) is timed in the same calls by forward hooks.
Quality: FID of `--samples` images against the 1797 real digits on two seed sets, class accuracy.
Only the `<!-- knobs:start -->` ... `<!-- knobs:end -->` section of `--out` is replaced; the raw numbers go to
`knobs.json` (in benchmarks/results/ for the real BENCHMARKS.md). `--levers-only` keeps the reference and the
`kernels`, `compile` and `guidance` rows, all latency only (no FID: these levers change rounding, which the tests
and the search's own compiled-vs-eager check bound), and writes its own `<!-- levers:start -->` section and
`levers.json`, leaving the knobs table as it is. Run it alone on the machine: latency
numbers are only meaningful without other load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see latency.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    DEFAULT_OUT,
    DenoiserTimer,
    all_groups_prune,
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
    quiet,
    recipe_key,
    results_dir,
    two_seed_quality,
    write_section,
)

START, END = "<!-- knobs:start -->", "<!-- knobs:end -->"
LEVERS_START, LEVERS_END = "<!-- levers:start -->", "<!-- levers:end -->"


def markers(levers_only: bool) -> tuple[str, str]:
    """The BENCHMARKS.md section a run writes: the knobs table, or the `--levers-only` one."""
    return (LEVERS_START, LEVERS_END) if levers_only else (START, END)

TINY = ("tiny-sd15", "tiny-sdxl")
QUALITY_SEEDS = (101, 102)  # apart from the search's seeds (0-2 per search seed) and compare.py's
LATENCY_SEED = 2
# A knob whose end-to-end speedup stays below this is listed as "no real speedup".
REAL_SPEEDUP = 1.05
DEEPCACHE_EXPECTED = 1.5  # N=3 on the U-Net part (Ma et al., 2024)


@dataclass
class Row:
    model: str
    knob: str  # reference, cache, quantize, prune, schedule, solver
    name: str
    recipe: Any
    recover_steps: int = 0
    simulated: bool = False
    recover_batch: int = 16
    batch: int | None = None  # images per timed call when not `--batch` (the compile rows at batch 1)
    quality: bool = True  # False: latency only (compile rows: rounding only; tiny random-weight models)

    @property
    def key(self) -> str:
        extra = f"recover={self.recover_steps},batch={self.recover_batch}" if self.recover_steps else ""
        if self.batch is not None:
            extra += f"|call-batch={self.batch}"
        return recipe_key(self.recipe, extra)

    @property
    def compiles(self) -> bool:
        cfg = self.recipe.knobs.get("compile")
        return cfg is not None and cfg.mode != "off"


def tiny_rows(model: str, args: argparse.Namespace) -> list[Row]:
    """The tiny SD1.5/SDXL pipelines: the guidance interval and the kernels, latency only."""
    from autoeff.recipe import Recipe
    from autoeff.search_spaces import guidance, kernels, schedule, solver

    def recipe(**knobs: Any) -> Recipe:
        base = {"solver": solver.Config(name="dpmpp", order=2),
                "schedule": schedule.Config(family="uniform", steps=args.tiny_steps)}
        return Recipe(model=model, knobs={**base, **knobs})

    rows = [Row(model, "reference", f"DPM-Solver++ 2M, uniform k={args.tiny_steps}, CFG on every step", recipe(),
                quality=False)]
    for cfg in (guidance.Config(end=0.8), guidance.Config(end=0.5), guidance.Config(end=0.3),
                guidance.Config(start=0.2, end=0.8)):
        rows.append(Row(model, "guidance", f"CFG {cfg.describe()}", recipe(guidance=cfg), quality=False))
    for k in (kernels.Config(fuse_qkv=True), kernels.Config(channels_last=True), kernels.Config(sdpa="math"),
              kernels.Config(sdpa="flash"), kernels.Config(fuse_qkv=True, channels_last=True, sdpa="flash")):
        rows.append(Row(model, "kernels", k.describe(), recipe(kernels=k), quality=False))
    return rows


def lever_rows(model: str, handle: Any, recipe: Any, args: argparse.Namespace) -> list[Row]:
    """kernels and compile on a digits model; compile at each `--compile-batches` against the reference there."""
    from autoeff.search_spaces import compile, kernels

    scored = not args.levers_only
    rows = [Row(model, "kernels", "channels-last", recipe(kernels=kernels.Config(channels_last=True)),
                quality=scored)]
    if handle.denoiser_name == "transformer":
        for b in ("math", "flash"):
            rows.append(Row(model, "kernels", f"SDPA {b}", recipe(kernels=kernels.Config(sdpa=b)), quality=scored))
    if args.no_compile:
        return rows
    if args.compile_backend == "inductor":
        configs = [compile.Config(mode="default"), compile.Config(mode="max-autotune-no-cudagraphs"),
                   compile.Config(mode="default", scope="blocks")]
    else:  # a plumbing check: dynamo capture without code generation
        configs = [compile.Config(mode="default", backend=args.compile_backend, scope=s) for s in compile.SCOPES]
    for batch in args.compile_batches:
        at = None if batch == args.batch else batch
        if at is not None:
            rows.append(Row(model, "reference", f"reference, batch {batch}", recipe(), batch=at, quality=False))
        for cfg in configs:
            rows.append(Row(model, "compile", f"{cfg.describe()}, batch {batch}", recipe(compile=cfg), batch=at,
                            quality=False))
    return rows


def rows_for(model: str, handle: Any, context: Any, args: argparse.Namespace) -> list[Row]:
    from autoeff.recipe import Recipe
    from autoeff.search_spaces import cache, schedule, solver

    if model in TINY:
        return tiny_rows(model, args)

    def recipe(**knobs: Any) -> Recipe:
        base = {"solver": solver.Config(name="dpmpp", order=2),
                "schedule": schedule.Config(family="uniform", steps=args.steps)}
        return Recipe(model=model, knobs={**base, **knobs})

    ref = f"DPM-Solver++ 2M, uniform k={args.steps}"
    rows = [Row(model, "reference", ref, recipe(), quality=not args.levers_only)]
    if args.levers_only:
        return rows + lever_rows(model, handle, recipe, args)
    deepest = cache.branch_range(handle.denoiser)[1]
    technique = "DeepCache" if handle.denoiser_name == "unet" else "block cache (FORA-style)"
    for n in (2, 3, 5):
        for b in sorted({1, deepest}):
            tag = " (deepest)" if b == deepest else ""
            rows.append(Row(model, "cache", f"{technique} N={n} branch {b}{tag}",
                            recipe(cache=cache.Config(interval=n, branch=b))))
    rows.append(Row(model, "quantize", "int8 all block groups (cpu-int8: torch.ao kernels)",
                    recipe(quantize=all_groups_quantize(context, "int8", "cpu-int8"))))
    rows.append(Row(model, "quantize", "fake int8 all block groups (simulated)",
                    recipe(quantize=all_groups_quantize(context, "int8", "fake")), simulated=True))
    for ratio, label in ((0.25, "1/4"), (0.5, "1/2")):
        cfg = all_groups_prune(context, ratio)
        rows.append(Row(model, "prune", f"prune {label} of every block group", recipe(prune=cfg)))
        if args.recover_steps > 0:
            rows.append(Row(model, "prune", f"prune {label} + recover ({args.recover_steps} steps)",
                            recipe(prune=cfg), recover_steps=args.recover_steps, recover_batch=args.batch))
    if model == "digits":
        k = args.fixed_steps
        for fam in ("uniform", "karras", "ays", "quadratic"):
            r = recipe(schedule=schedule.Config(family=fam, steps=k))
            rows.append(Row(model, "schedule", f"DPM-Solver++ 2M, {r.knobs['schedule'].describe()}", r))
        solvers = [solver.Config(name="ddim", order=1), solver.Config(name="dpmpp", order=1),
                   solver.Config(name="dpmpp", order=2), solver.Config(name="dpmpp", order=3),
                   solver.Config(name="dpmpp_single", order=2), solver.Config(name="unipc", order=1),
                   solver.Config(name="unipc", order=2), solver.Config(name="unipc", order=3),
                   solver.Config(name="euler", order=1)]
        for s in solvers:
            rows.append(Row(model, "solver", f"{s.describe()}, uniform k={k}",
                            recipe(solver=s, schedule=schedule.Config(family="uniform", steps=k))))
    return rows + lever_rows(model, handle, recipe, args)


def load_handle(model: str, device: str) -> Any:
    """A built-in model, or a tiny random-weight pipeline (`tiny-sd15`, `tiny-sdxl`)."""
    import autoeff
    from autoeff.models.tiny import build_tiny_sd15, build_tiny_sdxl

    if model in TINY:
        handle = {"tiny-sd15": build_tiny_sd15, "tiny-sdxl": build_tiny_sdxl}[model]()
        handle.pipeline.to(device)
        return handle
    return autoeff.load_model(model, device=device)


def compile_seconds(rows: dict[str, Row], fns: dict[str, Any], device: str, log: Any) -> dict[str, dict[str, Any]]:
    """Cold compile (empty inductor cache), then from the on-disk cache after dynamo forgets every graph."""
    import tempfile

    import torch

    from autoeff.measure import compile_warmup
    from autoeff.search_spaces import compile

    out: dict[str, dict[str, Any]] = {k: {} for k, r in rows.items() if r.compiles}
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="knobs-inductor-") as folder:
        compile.use_cache_dir(folder)
        try:
            for label in ("cold", "cached"):
                if label == "cached":
                    torch._dynamo.reset()
                for key in out:
                    record, _ = compile_warmup(fns[key], device)
                    out[key][label] = None if record is None else record.to_dict()
                    log(f"  compiled {rows[key].name} ({label}): "
                        f"{0.0 if record is None else record.seconds:.1f}s")
        finally:
            if previous is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
    return out


def run_model(model: str, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    import torch

    from autoeff.evaluators.size import model_size_mb
    from autoeff.search_spaces import prune

    handle = load_handle(model, args.device)
    context = make_context(handle, args.device)
    rows = rows_for(model, handle, context, args)
    unique: dict[str, Row] = {}
    for r in rows:
        unique.setdefault(r.key, r)
    pipes: dict[str, Any] = {}
    built: dict[str, dict[str, Any]] = {}
    for key, r in unique.items():
        t0 = time.perf_counter()
        pipe = build(handle, r.recipe, context)
        if r.recover_steps:
            pipe = prune.recover(pipe, handle.pipeline, context, steps=r.recover_steps, batch_size=args.batch,
                                 seed=0)
        pipes[key] = pipe
        den = getattr(pipe, handle.denoiser_name)
        built[key] = {"build_s": time.perf_counter() - t0, "size_mb": model_size_mb(den),
                      "params": sum(p.numel() for p in den.parameters())}
        log(f"  built {r.name} ({built[key]['build_s']:.1f}s)")
    timers = {k: DenoiserTimer(getattr(p, handle.denoiser_name)) for k, p in pipes.items()}
    fns = {k: timers[k].wrap(latency_call(handle, p, unique[k].batch or args.batch, LATENCY_SEED))
           for k, p in pipes.items()}
    compiled = compile_seconds(unique, fns, args.device, log)
    log(f"{model}: latency of {len(fns)} configurations, {args.rounds} interleaved rounds")
    with torch.compiler.set_stance("fail_on_recompile"):
        lat = interleaved_latency(fns, args.device, rounds=args.rounds, repeats=args.repeats,
                                  threads=args.threads, log=log)
    den_s = {k: t.median_s() for k, t in timers.items()}
    for t in timers.values():
        t.remove()
    quality: dict[str, dict[str, Any] | None] = {k: None for k, r in unique.items() if not r.quality}
    for i, (key, r) in enumerate(unique.items()):
        if not r.quality:
            continue
        t0 = time.perf_counter()
        quality[key] = two_seed_quality(handle, pipes[key], f"knobs|{key}", args.samples, QUALITY_SEEDS,
                                        cache=not args.no_cache)
        log(f"  quality {i + 1}/{len(unique)} {r.name}: FID {fid_pm(quality[key])} "
            f"({time.perf_counter() - t0:.0f}s)")
    ref_keys = {r.batch: r.key for r in rows if r.knob == "reference"}  # the reference at each call batch
    out_rows = []
    for r in rows:
        ref_key = ref_keys[r.batch]
        L, Lref = lat[r.key], lat[ref_key]
        d, dref = den_s[r.key], den_s[ref_key]
        out_rows.append({
            "model": model, "knob": r.knob, "name": r.name, "recipe": r.recipe.to_dict(),
            "recover_steps": r.recover_steps, "simulated": r.simulated, "latency": L,
            "speedup": Lref["median_s"] / L["median_s"], "denoiser_s": d,
            "denoiser_speedup": (dref / d) if d and dref else None, "quality": quality[r.key],
            "batch": r.batch or args.batch, "compile": compiled.get(r.key), **built[r.key]})
    return {"model": model, "identity": handle.identity, "rows": out_rows}


def notes(models: list[dict[str, Any]]) -> list[str]:
    """Plain statements the numbers support: the DeepCache expectation, knobs without a real speedup."""
    lines = []
    for m in models:
        rows = m["rows"]
        for r in rows:
            n3 = r["knob"] == "cache" and " N=3 branch 1" in r["name"]
            if n3 and r["denoiser_speedup"] and r["name"].startswith("DeepCache"):
                met = "met" if r["denoiser_speedup"] >= DEEPCACHE_EXPECTED else "NOT met"
                lines.append(f"- {m['model']}: DeepCache N=3, branch 1 speeds the denoiser part up "
                             f"{r['denoiser_speedup']:.2f}x and the whole call {r['speedup']:.2f}x (the "
                             f"literature leads to expect >= {DEEPCACHE_EXPECTED}x on the U-Net part: "
                             f"{met}).")
            elif n3 and r["denoiser_speedup"]:
                lines.append(f"- {m['model']}: {r['name']} speeds the transformer part up "
                             f"{r['denoiser_speedup']:.2f}x and the whole call {r['speedup']:.2f}x.")
        slow = [r for r in rows if r["knob"] in ("cache", "quantize", "prune", "kernels", "compile", "guidance")
                and not r["simulated"] and r["speedup"] < REAL_SPEEDUP]
        for r in rows:
            if r["knob"] in ("kernels", "compile", "guidance") and r["speedup"] >= REAL_SPEEDUP:
                lines.append(f"- {m['model']}: **{r['name']}** pays on this CPU: {r['speedup']:.2f}x end to end at "
                             f"batch {r['batch']}" + (f", after {_compile_s(r)} s of compiling" if r["compile"]
                                                      else "") + ".")
        for r in slow:
            lines.append(f"- {m['model']}: **{r['name']}** gives no real speedup on this CPU "
                         f"({r['speedup']:.2f}x end to end).")
        for r in rows:
            if r["simulated"]:
                lines.append(f"- {m['model']}: {r['name']} runs no int8 kernel: its latency "
                             f"({ms(r['latency']['median_s'])} ms) is not a speedup; the row scores quality "
                             "only.")
        if m["model"] in TINY:
            lines.append(f"- {m['model']}: random weights (`autoeff.models.tiny`): latency only, no quality claim "
                         "for the guidance interval or the kernels on this model.")
    return lines


def _compile_s(r: dict[str, Any]) -> str:
    """`cold / cached` compile seconds of a row, `—` for rows that compile nothing."""
    c = r.get("compile")
    if not c:
        return "—"
    return " / ".join("0" if c.get(k) is None else f"{c[k]['seconds']:.0f}" for k in ("cold", "cached"))


def render(res: dict[str, Any]) -> str:
    cfg = res["config"]
    levers = cfg.get("levers_only", False)
    start, end = markers(levers)
    title = "Compile, fused kernels and the guidance interval, latency only" if levers else "Knobs one at a time"
    lines = [start, f"## {title}", "",
             f"`{cfg['command']}` — {machine_line(cfg['machine'])}; {cfg['wall_min']:.0f} min.", "",
             f"Latency: one pipeline call of {cfg['batch']} images, every configuration of a model "
             f"interleaved round-robin ({cfg['rounds']} rounds x {cfg['repeats']} timed calls after 1 "
             "warm-up), median of all timed calls (p10-p90 in brackets). *Denoiser*: the time spent in "
             "the U-Net / transformer calls of the same pipeline calls (forward hooks). " + (
                 "No quality column: every row here is latency only (compile, fused kernels and the SDPA backend "
                 "change rounding only, which the knob tests and the search's compiled-vs-eager check bound; the "
                 "tiny SD pipelines have random weights). " if levers else
                 f"Quality: FID of {cfg['samples']} samples against the 1797 real digits (digits-classifier "
                 f"features) on two seed sets ({' and '.join(map(str, cfg['quality_seeds']))}; mean ± half the "
                 "difference), and the classifier's accuracy on the requested labels. ") +
             "Size: the denoiser's weights in MB (fake-quant rows: at the simulated width). Compile s: "
             "seconds spent compiling before the first timed call, with an empty inductor cache / from the cache "
             "the first pass filled, never part of the latency; compile rows are timed at their own batch "
             "against the reference at that batch, and score no quality (compiling changes rounding only: "
             "tests and the search's own check); the compile rows share one inductor cache in row order, so a "
             "row's cold seconds can reuse kernels an earlier row compiled. Tiny SD1.5/SDXL rows: random "
             f"weights, latency only. Latency inputs: seed {LATENCY_SEED}." + ("" if levers else
             f" Recover: `prune.recover` (distillation towards the unpruned denoiser), {cfg['recover_steps']} "
             f"steps of batch {cfg['batch']}, lr 1e-4, seed 0; its build time is in knobs.json."), ""]
    for m in res["models"]:
        lines += [f"### {m['model']}", "",
                  "| knob | configuration | latency ms | speedup | denoiser ms | denoiser speedup | FID | "
                  "class acc | size MB | compile s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in m["rows"]:
            L = r["latency"]
            sim = r["simulated"]
            speed = "simulated" if sim else f"{r['speedup']:.2f}x"
            ds = r["denoiser_speedup"]
            dspeed = "simulated" if sim else (f"{ds:.2f}x" if ds else "—")
            lat = f"{ms(L['median_s'])} ({ms(L['p10_s'])}-{ms(L['p90_s'])})"
            acc = "—" if r["quality"] is None else f"{r['quality']['class_acc_mean']:.3f}"
            lines.append(f"| {r['knob']} | {r['name']} | {lat} | "
                         f"{speed} | {ms(r['denoiser_s'])} | {dspeed} | {fid_pm(r['quality'])} | "
                         f"{acc} | {r['size_mb']:.2f} | {_compile_s(r)} |")
        lines.append("")
    lines += ["What the numbers say:", "", *notes(res["models"]), "", end]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts: a plumbing check, not results")
    p.add_argument("--models", default="digits,digits-dit," + ",".join(TINY))
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16, help="images per timed pipeline call")
    p.add_argument("--steps", type=int, default=None, help="reference steps (default 50; --quick 20)")
    p.add_argument("--fixed-steps", type=int, default=None,
                   help="k of the schedule/solver rows (10; quick 5)")
    p.add_argument("--samples", type=int, default=None, help="FID samples per seed set (1000; quick 128)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (5; quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per round (3; quick 2)")
    p.add_argument("--recover-steps", type=int, default=None, help="distillation steps after pruning "
                   "(400; quick 20; 0 = no recovered rows)")
    p.add_argument("--tiny-steps", type=int, default=None, help="steps of the tiny SD rows (20; quick 4)")
    p.add_argument("--compile-batches", default=None, help="call batches of the compile rows (1,16; quick 1)")
    p.add_argument("--no-compile", action="store_true", help="leave out the compile rows")
    p.add_argument("--compile-backend", default="inductor", choices=["inductor", "aot_eager", "eager"],
                   help="eager/aot_eager: a plumbing check of the compile rows (no code generation, no speed)")
    p.add_argument("--no-cache", action="store_true", help="recompute quality even if cached")
    p.add_argument("--levers-only", action="store_true", help="only the reference, kernels, compile and guidance "
                   "rows, latency only, into their own section and levers.json")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--json", type=Path, default=None, help="default: knobs.json in the results folder")
    args = p.parse_args()
    q = args.quick
    defaults = (("steps", 50, 20), ("fixed_steps", 10, 5), ("samples", 1000, 128), ("rounds", 5, 2),
                ("repeats", 3, 2), ("recover_steps", 400, 20), ("tiny_steps", 20, 4),
                ("compile_batches", f"1,{args.batch}", "1"))
    for name, full, quick in defaults:
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    args.compile_batches = [int(b) for b in str(args.compile_batches).split(",") if b.strip()]
    quiet()
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    models = [run_model(m.strip(), args, log) for m in args.models.split(",") if m.strip()]
    res = {"config": {"command": command_line("knobs.py", sys.argv[1:]), "machine": machine(args.threads,
                                                                                            args.device),
                      "batch": args.batch, "rounds": args.rounds, "repeats": args.repeats,
                      "samples": args.samples, "quality_seeds": list(QUALITY_SEEDS), "steps": args.steps,
                      "fixed_steps": args.fixed_steps, "recover_steps": args.recover_steps, "quick": q,
                      "tiny_steps": args.tiny_steps, "compile_batches": args.compile_batches,
                      "levers_only": args.levers_only,
                      "wall_min": (time.perf_counter() - t_start) / 60},
           "models": models}
    write_section(args.out, *markers(args.levers_only), render(res))
    out_json = args.json or results_dir(args.out) / ("levers.json" if args.levers_only else "knobs.json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    log(f"wrote {args.out} and {out_json}")


if __name__ == "__main__":
    main()
