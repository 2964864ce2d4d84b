"""Optimize the built-in digits model with the Python API and print what was found.

    python examples/optimize_digits.py --budget 10% --trials 24 --out autoeff-out
"""

from __future__ import annotations

import argparse

import autoeff


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget", default="10%")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--out", default="autoeff-out")
    p.add_argument("--proxy-samples", type=int, default=None, help="default 128 for digits")
    p.add_argument("--final-samples", type=int, default=None, help="default 1000 for digits")
    p.add_argument("--steps", type=int, default=None, help="steps you run today: the baseline (default: 50)")
    a = p.parse_args(argv)

    result = autoeff.optimize("digits", budget=a.budget, trials=a.trials, out=a.out,
                              proxy_samples=a.proxy_samples, final_samples=a.final_samples, steps=a.steps)
    base, best = result.baseline, result.best
    print(f"baseline: {base.latency_s * 1000:.1f} ms, FID {base.final_quality.value:.2f}")
    if best is None:  # nothing met the budget when re-timed: the result says why (and which was fastest)
        print(f"no choice: {result.infeasible}")
    else:
        print(f"chosen:   {best.final.latency_s * 1000:.1f} ms, FID {best.final.quality.value:.2f} "
              f"(n={best.final.quality.n}) -> {best.record.recipe.describe()}")
    print("Pareto front (latency ms, proxy score):")
    for rec in result.pareto:
        print(f"  trial {rec.number:3d}: {rec.latency_s * 1000:8.2f} ms  {rec.score:9.3f}")
    print(f"exported to {result.export_path}")


if __name__ == "__main__":
    main()
