"""Re-run one budget of a finished `compare.py` run with the current code: autoeff's search at the same
absolute budget, then its winner, the old run's winner and that budget's best peer re-measured side by side.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/compare_recheck.py --budget 10%   # ~15 min on 2 CPU cores
    OMP_WAIT_POLICY=PASSIVE python benchmarks/compare_recheck.py --efficiency-seeds 2   # samplers, ~20 min

For a change to the search (a fixed knob, a new default) when the whole comparison (~2 h here) does not fit
again. Everything the search and the measurement use comes from `benchmarks/results/compare.json`: the
budget in milliseconds, batch, trials, proxy and finalist samples, final seed sets and sample count. The peer
is not searched again (its sweep does not depend on autoeff's code). Latency: the configurations interleaved
round-robin (5 rounds x 3 calls); FID: `two_seed_quality` on compare.py's final seed sets, and at DDPM's
sample count when compare.py used one. Output: `compare_recheck_<budget>.json` next to compare.json and a
Markdown table on stdout (pasted into BENCHMARKS.md by hand, with this command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see latency.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (  # noqa: E402
    ROOT,
    fid_pm,
    interleaved_latency,
    latency_call,
    machine,
    machine_line,
    ms,
    quiet,
    short_label,
)
from benchmarks.compare import (  # noqa: E402
    FINAL_SEEDS,
    LATENCY_SEED,
    Bench,
    _lat_cell,
    efficiency,
    final_quality,
    plot_efficiency,
    quality_at_ddpm_n,
    run_search,
)


def efficiency_only(a: argparse.Namespace, old: dict[str, Any], args: argparse.Namespace) -> None:
    """compare.py's sampler comparison alone (`--efficiency-seeds N`), at the compare run's 10 % budget."""
    budget_s = old["budgets_s"]["10%"]
    args.efficiency_trials = old["efficiency"]["trials"] if old.get("efficiency") else old["config"]["trials"]
    args.efficiency_seeds = a.efficiency_seeds
    bench = Bench(args, lambda m: print(m, flush=True))
    eff = efficiency(bench, budget_s, a.work_dir)
    res = {"command": "OMP_WAIT_POLICY=PASSIVE python benchmarks/compare_recheck.py " + " ".join(sys.argv[1:]),
           "machine": machine(a.threads), "efficiency": eff}
    path = a.results.parent / "compare_recheck_efficiency.json"
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    plot_efficiency(eff, a.results.parent / "sampler_efficiency_recheck.png")
    print(f"\n`{res['command']}` — {machine_line(res['machine'])}; 10% budget = {ms(budget_s)} ms, "
          f"{eff['trials']} trials, no warm start\n")
    print("| sampler | seed | best feasible proxy FID after n=6 / 12 / 24 trials | failed | wall min |")
    print("| --- | ---: | --- | ---: | ---: |")
    for r in eff["runs"]:
        c = r["curve"]
        cells = " / ".join(f"{c[n - 1]:.2f}" if len(c) >= n else "—" for n in (6, 12, 24))
        print(f"| {r['sampler']} | {r['seed']} | {cells} | {r['states'].get('FAIL', 0)} | {r['wall_s'] / 60:.1f} |")
    print(f"\nwrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="10%", help="a budget label of the compare run (5%%, 10%%, 20%%)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "compare.json")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--work-dir", type=Path, default=ROOT / ".cache" / "bench" / "compare-recheck")
    p.add_argument("--efficiency-seeds", type=int, default=0,
                   help="instead of a budget: the sampler comparison alone, this many seeds per sampler")
    a = p.parse_args()
    quiet()
    import torch

    from autoeff.recipe import Recipe

    torch.set_num_threads(a.threads)
    old = json.loads(a.results.read_text())
    cfg = old["config"]
    if a.budget not in old["budgets_s"]:
        sys.exit(f"error: {a.results} has budgets {', '.join(old['budgets_s'])}, not {a.budget}")
    args = argparse.Namespace(device="cpu", threads=a.threads, batch=cfg["batch"], space=cfg["space"],
                              proxy_samples=cfg["proxy_samples"], scan_repeats=3, screen_samples=0,
                              final_samples=cfg["final_samples"], seeds=cfg["seeds"], no_cache=False, quick=False)
    a.work_dir.mkdir(parents=True, exist_ok=True)
    if a.efficiency_seeds:
        efficiency_only(a, old, args)
        return
    budget_s = old["budgets_s"][a.budget]
    row = next(r for r in old["rows"] if r["budget_label"] == a.budget)
    bench = Bench(args, lambda m: print(m, flush=True))
    s = run_search(bench, budget_s, a.work_dir / f"budget-{a.budget.rstrip('%')}pct", sampler=cfg["sampler"],
                   seed=0, trials=cfg["trials"], warm_start=True, final_samples=cfg["search_final_samples"],
                   top_k=3)
    configs: dict[str, Any] = {}
    if s["winner"]:
        configs["autoeff (this code)"] = s["winner"]["recipe"]
    for role, name in (("autoeff (compare run)", row["autoeff"]), ("best peer", row["peer"])):
        if name:
            configs[role] = Recipe.from_dict(old["final"][name]["recipe"])
    pipes = {k: bench.pipe(r) for k, r in configs.items()}
    lat = interleaved_latency({k: latency_call(bench.handle, p, cfg["batch"], LATENCY_SEED) for k, p in pipes.items()},
                              "cpu", rounds=5, repeats=3, threads=a.threads)
    ddpm_q = (old["final"].get(old["ddpm_label"]) or {}).get("quality") or {}
    seeds = FINAL_SEEDS[: cfg["seeds"]]
    out: dict[str, Any] = {}
    for k, r in configs.items():
        out[k] = {"recipe": r.to_dict(), "label": short_label(r), "latency": lat[k],
                  "quality": final_quality(bench, pipes[k], r, cfg["final_samples"]),
                  "quality_at_ddpm_n": quality_at_ddpm_n(bench, pipes[k], r, ddpm_q)}
    res = {"command": "OMP_WAIT_POLICY=PASSIVE python benchmarks/compare_recheck.py " + " ".join(sys.argv[1:]),
           "machine": machine(a.threads), "budget": a.budget, "budget_s": budget_s,
           "search": {k: s[k] for k in ("wall_s", "states", "fail_reasons", "over_budget", "error")},
           "configs": out}
    path = a.results.parent / f"compare_recheck_{a.budget.rstrip('%')}pct.json"
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"\n`{res['command']}` — {machine_line(res['machine'])}; budget {a.budget} = {ms(budget_s)} ms; "
          f"search {s['wall_s'] / 60:.1f} min, states {s['states']}, failures {s['fail_reasons'] or 'none'}\n")
    print(f"| role | configuration | latency ms | FID ({cfg['final_samples']}/seed, seeds {list(seeds)}) | "
          f"FID at n={ddpm_q.get('n')} | class acc |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for k, m in out.items():
        qd = fid_pm(m["quality_at_ddpm_n"]) if m["quality_at_ddpm_n"] else "—"
        print(f"| {k} | {m['label']} | {_lat_cell(m, budget_s)} | {fid_pm(m['quality'])} | {qd} | "
              f"{m['quality']['class_acc_mean']:.3f} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
