"""How noisy are autoeff's measurements? FID/KID seed noise, real-vs-real FID, latency run-to-run spread, and
whether cheap proxies rank candidates like the final metric. Writes its section of BENCHMARKS.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/evaluators.py           # trained digits weights, 30-60 min CPU
    OMP_WAIT_POLICY=PASSIVE python benchmarks/evaluators.py --quick    # small counts, a few minutes
    python benchmarks/evaluators.py --quick --random-weights --out /tmp/B.md   # plumbing check only

Only the part of BENCHMARKS.md between `<!-- evaluators:start -->` and `<!-- evaluators:end -->` is replaced.
Run it alone on the machine: latency numbers are only meaningful without other load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see latency.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler  # noqa: E402

from autoeff.evaluators.agreement import kendall_tau  # noqa: E402
from autoeff.evaluators.features import DigitsFeatures, extract_features  # noqa: E402
from autoeff.evaluators.fid import fid_from_features, kid_from_features  # noqa: E402
from autoeff.evaluators.fidelity import fidelity  # noqa: E402
from autoeff.evaluators.latency import LatencyResult, measure_latency, noise_floor  # noqa: E402
from autoeff.evaluators.validity import check_images  # noqa: E402
from autoeff.models.generate import default_spec, generate  # noqa: E402
from autoeff.models.handle import ModelHandle  # noqa: E402

START, END = "<!-- evaluators:start -->", "<!-- evaluators:end -->"
ESTIMATORS = ("fid-raw", "fid-l2", "kid-l2")
SCHEDULERS = {"ddim": DDIMScheduler, "dpmpp2m": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler}


def load_handle(random_weights: bool, weights: Path | None = None, device: str = "cpu") -> ModelHandle:
    if weights is not None:  # a digits U-Net folder trained elsewhere (`train.py --out`)
        from autoeff.models.builtin import folder_identity
        from autoeff.models.digits.pipeline import DigitsPipeline

        pipe = DigitsPipeline.from_pretrained(str(weights)).to(device)
        pipe.set_progress_bar_config(disable=True)
        return ModelHandle(spec="digits", pipeline=pipe, family="digits", resolution=16, num_classes=10,
                           default_steps=50, identity=folder_identity(weights))
    if not random_weights:
        from autoeff.models.builtin import load_builtin

        return load_builtin("digits", device=device)
    from autoeff.models.digits.architectures import build_scheduler, build_unet
    from autoeff.models.digits.pipeline import DigitsPipeline

    torch.manual_seed(0)
    pipe = DigitsPipeline(unet=build_unet().eval(), scheduler=build_scheduler()).to(device)
    pipe.set_progress_bar_config(disable=True)
    return ModelHandle(spec="digits", pipeline=pipe, family="digits", resolution=16, num_classes=10,
                       default_steps=50, identity="random-digits")


def candidate(handle: ModelHandle, solver: str, steps: int) -> tuple[ModelHandle, Any]:
    """The base model with another diffusers scheduler and step count (no knob modules: evaluators only)."""
    base = handle.pipeline
    sched = SCHEDULERS[solver].from_config(base.scheduler.config, timestep_spacing="trailing")
    pipe = type(base)(unet=base.unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return dataclasses.replace(handle, default_steps=steps), pipe


def estimate(real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
    return {"fid-raw": fid_from_features(real, fake, "none"), "fid-l2": fid_from_features(real, fake, "l2"),
            "kid-l2": kid_from_features(real, fake, "l2", subsets=50)[0]}


def rel_range(values: list[float]) -> float:
    """(max - min) / |mean|: the spread between seeds, relative to the value."""
    m = statistics.fmean(values)
    return (max(values) - min(values)) / abs(m) if m else float("inf")


def seed_noise(handle: ModelHandle, ext: DigitsFeatures, real: torch.Tensor, sizes: list[int], seeds: int,
               solver: str, steps: int, batch: int) -> list[dict]:
    """Same configuration, independent seed sets, at each sample size."""
    h, pipe = candidate(handle, solver, steps)
    rows = []
    for n in sizes:
        per_seed = []
        for s in range(seeds):
            t0 = time.perf_counter()
            images = generate(h, pipe, default_spec(h, n, seed=100 + s, batch_size=batch))
            check_images(images)
            per_seed.append(estimate(real, extract_features(ext, images)))
            took = time.perf_counter() - t0
            print(f"  seed noise n={n} seed={s}: {per_seed[-1]} ({took:.0f}s)", flush=True)
        for est in ESTIMATORS:
            vals = [p[est] for p in per_seed]
            rows.append({"n": n, "estimator": est, "values": vals, "rel_range": rel_range(vals)})
    return rows


def _balanced_subset(labels: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """n indices with the classes as equal as possible (like `default_spec`'s labels i % 10)."""
    parts = []
    for c in range(10):
        members = torch.nonzero(labels == c).flatten()
        take = n // 10 + (1 if c < n % 10 else 0)
        parts.append(members[torch.randperm(len(members), generator=g)[:take]])
    return torch.cat(parts)


def real_vs_real(real: torch.Tensor, labels: torch.Tensor, sizes: list[int], splits: int) -> list[dict]:
    """n real images against the other 1797-n, over random splits; subsets drawn at random or with
    balanced classes (generated samples have balanced labels)."""
    rows = []
    for n in sizes:
        n_eff = min(n, len(real) // 2)
        for how in ("random", "balanced"):
            vals: dict[str, list[float]] = {e: [] for e in ESTIMATORS}
            for s in range(splits):
                g = torch.Generator().manual_seed(s)
                idx = torch.randperm(len(real), generator=g)[:n_eff] if how == "random" else \
                    _balanced_subset(labels, n_eff, g)
                rest = torch.ones(len(real), dtype=torch.bool)
                rest[idx] = False
                est = estimate(real[rest], real[idx])
                for e in ESTIMATORS:
                    vals[e].append(est[e])
            for e in ESTIMATORS:
                rows.append({"n": n_eff, "n_ref": len(real) - n_eff, "subset": how, "estimator": e,
                             "values": vals[e], "rel_range": rel_range(vals[e])})
    return rows


def latency_child(args: argparse.Namespace) -> None:
    """One latency run in this (fresh) process; prints the LatencyResult as JSON."""
    torch.set_num_threads(args.threads)
    handle = load_handle(args.random_weights, args.weights, args.device)
    h, pipe = candidate(handle, "ddim", args.steps)
    spec = default_spec(h, args.latency_batch, batch_size=args.latency_batch)
    res = measure_latency(lambda: generate(h, pipe, spec), args.device, warmup=2, min_repeats=5,
                          max_repeats=20, rel_spread=0.03)
    print("LATENCY " + res.to_json())


def latency_runs(args: argparse.Namespace, runs: int) -> list[LatencyResult]:
    """`runs` separate processes, each measuring the same baseline call."""
    out = []
    for _ in range(runs):
        cmd = [sys.executable, __file__, "--latency-child", "--threads", str(args.threads), "--steps",
               str(args.steps), "--latency-batch", str(args.latency_batch), "--device", args.device]
        if args.random_weights:
            cmd.append("--random-weights")
        if args.weights:
            cmd += ["--weights", str(args.weights)]
        text = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        line = next(ln for ln in text.splitlines() if ln.startswith("LATENCY "))
        out.append(LatencyResult.from_json(line[len("LATENCY "):]))
        r = out[-1]
        print(f"  latency run: median {r.median_s * 1e3:.1f} ms, spread {r.rel_spread:.3f}", flush=True)
    return out


def agreement(handle: ModelHandle, ext: DigitsFeatures, real: torch.Tensor, cands: list[tuple[str, int]],
              proxy_n: int, final_n: int, batch: int) -> dict:
    """Proxy metrics on `proxy_n` samples vs the final FID on `final_n` independent samples."""
    proxy_spec = default_spec(handle, proxy_n, seed=7, batch_size=batch)
    final_spec = default_spec(handle, final_n, seed=8, batch_size=batch)
    ref = generate(handle, handle.pipeline, proxy_spec)  # the baseline (default steps) on the proxy seeds
    from autoeff.evaluators.class_alignment import class_accuracy

    rows = []
    for solver, steps in cands:
        h, pipe = candidate(handle, solver, steps)
        t0 = time.perf_counter()
        small = generate(h, pipe, proxy_spec)
        big = generate(h, pipe, final_spec)
        fs, fb = extract_features(ext, small), extract_features(ext, big)
        fid_small = fidelity(small, ref)
        row = {"candidate": f"{solver}-{steps}",
               "proxy": {**{k: v for k, v in estimate(real, fs).items()}, "ssim": fid_small.ssim,
                         "psnr": fid_small.psnr_db, "class_acc": class_accuracy(small, proxy_spec.labels)},
               "final": estimate(real, fb)}
        rows.append(row)
        print(f"  {row['candidate']}: {row} ({time.perf_counter() - t0:.0f}s)", flush=True)
    final_key = "fid-raw"
    final = [-r["final"][final_key] for r in rows]
    taus = {}
    for key in ("fid-raw", "fid-l2", "kid-l2", "ssim", "psnr", "class_acc"):
        sign = 1 if key in ("ssim", "psnr", "class_acc") else -1
        taus[key] = kendall_tau([sign * r["proxy"][key] for r in rows], final)
    for key in ("fid-l2", "kid-l2"):
        taus[f"final {key} vs final fid-raw"] = kendall_tau([-r["final"][key] for r in rows], final)
    return {"rows": rows, "tau": taus, "proxy_n": proxy_n, "final_n": final_n, "final_metric": final_key}


def render(res: dict) -> str:
    cfg = res["config"]
    lines = [START, "## Evaluators: measurement noise", "",
             f"`{cfg['command']}` — {cfg['date']}, {cfg['device']}, torch threads {cfg['threads']}, "
             f"OMP_WAIT_POLICY={cfg['omp']}, weights: {cfg['weights']}, {cfg['wall_min']:.1f} min.", "",
             "Feature space: the shipped digits classifier's 128-d penultimate features. `fid-raw`: FID on "
             "the raw features; `fid-l2`: FID on l2-normalised features; `kid-l2`: KID (cubic kernel, "
             "gamma 1) on l2-normalised features. Reference: all 1797 real digits.", "",
             f"### Seed noise: one configuration ({cfg['noise_config']}), independent seed sets", "",
             "| samples | estimator | value per seed set | (max-min)/mean |", "| ---: | --- | --- | ---: |"]
    for r in res["seed_noise"]:
        lines.append(f"| {r['n']} | {r['estimator']} | {', '.join(f'{v:.4g}' for v in r['values'])} | "
                     f"{r['rel_range']:.1%} |")
    lines += ["", "### Real vs real: n real digits against the other 1797-n, 5 splits", "",
              "| n | n_ref | subset | estimator | values | (max-min)/mean |",
              "| ---: | ---: | --- | --- | --- | ---: |"]
    for r in res["real_vs_real"]:
        vals = ", ".join(f"{v:.4g}" for v in r["values"])
        lines.append(f"| {r['n']} | {r['n_ref']} | {r['subset']} | {r['estimator']} | {vals} | "
                     f"{r['rel_range']:.1%} |")
    lat = res["latency"]
    lines += ["", f"### Latency: the baseline call ({cfg['noise_config']}, batch {cfg['latency_batch']}) in "
              f"{len(lat['runs'])} separate processes", "",
              "| run | median ms | p10-p90 ms | CI half-width | repeats | stop |",
              "| ---: | ---: | --- | ---: | ---: | --- |"]
    for i, r in enumerate(lat["runs"]):
        lines.append(f"| {i} | {r['median_s'] * 1e3:.2f} | {r['p10_s'] * 1e3:.2f}-{r['p90_s'] * 1e3:.2f} | "
                     f"{r['rel_spread']:.1%} | {r['repeats']} | {r['stop_reason']} |")
    lines += ["", f"Noise floor (`noise_floor`, all runs): **{lat['floor']:.1%}**."]
    if res.get("agreement"):
        ag = res["agreement"]
        lines += ["", f"### Proxy ({ag['proxy_n']} samples) vs final ({ag['final_n']} independent samples, "
                  f"{ag['final_metric']}) rank agreement", "",
                  "| candidate | proxy fid-raw | proxy fid-l2 | proxy kid-l2 | proxy SSIM | proxy class acc "
                  "| final fid-raw | final fid-l2 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in ag["rows"]:
            p, f = r["proxy"], r["final"]
            lines.append(f"| {r['candidate']} | {p['fid-raw']:.3g} | {p['fid-l2']:.3g} | {p['kid-l2']:.3g} | "
                         f"{p['ssim']:.3f} | {p['class_acc']:.3f} | {f['fid-raw']:.3g} | {f['fid-l2']:.3g} |")
        lines += ["", "Kendall tau against the final ranking: " +
                  ", ".join(f"{k} {v:+.2f}" for k, v in ag["tau"].items()) + "."]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        a, b = text.index(START), text.index(END) + len(END)
        text = text[:a] + section.rstrip("\n") + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sample counts (minutes, not an hour)")
    p.add_argument("--random-weights", action="store_true", help="plumbing check without trained weights")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--steps", type=int, default=20, help="steps of the configuration whose noise is measured")
    p.add_argument("--latency-batch", type=int, default=16)
    p.add_argument("--no-agreement", action="store_true", help="skip the proxy-vs-final study")
    p.add_argument("--weights", type=Path, default=None, help="a digits U-Net folder instead of the built-in")
    p.add_argument("--device", default="cpu", help="where the pipelines run and latency is timed")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    p.add_argument("--latency-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.latency_child:
        latency_child(args)
        return
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    if args.quick:
        sizes, seeds, proxy_n, final_n, runs = [64, 256], 2, 64, 256, 3
        cands = [("ddim", 5), ("ddim", 10), ("dpmpp2m", 5), ("euler", 10)]
    else:
        sizes, seeds, proxy_n, final_n, runs = [256, 2000], 3, 256, 2000, 3
        cands = [("ddim", 4), ("ddim", 8), ("ddim", 16), ("dpmpp2m", 4), ("dpmpp2m", 8), ("dpmpp2m", 16),
                 ("euler", 8), ("euler", 16)]
    handle = load_handle(args.random_weights, args.weights, args.device)
    ext = DigitsFeatures()
    from autoeff.evaluators.reference import real_features

    real = real_features(ext)
    batch = 250
    print("seed noise", flush=True)
    noise = seed_noise(handle, ext, real, sizes, seeds, "ddim", args.steps, batch)
    print("real vs real", flush=True)
    from autoeff.models.digits.data import load_digits_16

    rvr = real_vs_real(real, load_digits_16("all")[1], sizes, splits=5)
    print("latency", flush=True)
    lat = latency_runs(args, runs)
    ag = None
    if not args.no_agreement:
        print("agreement", flush=True)
        ag = agreement(handle, ext, real, cands, proxy_n, final_n, batch)
    res = {
        "config": {"command": "python benchmarks/evaluators.py " + " ".join(sys.argv[1:]),
                   "date": time.strftime("%Y-%m-%d"), "device": lat[0].device, "threads": args.threads,
                   "omp": os.environ.get("OMP_WAIT_POLICY", "unset"), "python": platform.python_version(),
                   "weights": ("random (plumbing only)" if args.random_weights
                               else f"trained ({handle.identity})"),
                   "pipeline_device": args.device,
                   "noise_config": f"DDIM {args.steps} steps, trailing", "latency_batch": args.latency_batch,
                   "wall_min": (time.perf_counter() - t_start) / 60},
        "seed_noise": noise, "real_vs_real": rvr,
        "latency": {"runs": [r.to_dict() for r in lat], "floor": noise_floor(lat)},
        "agreement": ag,
    }
    write_section(args.out, render(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
