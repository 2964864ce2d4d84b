"""Quality of the built-in models: FID of 1000-step DDPM samples vs the real digits, the real-vs-real noise
floor at the same sample count, two seeds each, class accuracy, and a sample grid.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/builtin_models.py                 # ~40 min on 2 CPU cores
    OMP_WAIT_POLICY=PASSIVE python benchmarks/builtin_models.py --quick         # small counts, a few min

Writes the `<!-- builtin:start -->` / `<!-- builtin:end -->` section of BENCHMARKS.md, a JSON record
(benchmarks/results/builtin.json) and the grids docs/images/<model>_ddpm1000.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from autoeff.env import cpu_name  # noqa: E402
from autoeff.evaluators.class_alignment import class_accuracy  # noqa: E402
from autoeff.evaluators.features import DigitsFeatures, extract_features  # noqa: E402
from autoeff.evaluators.fid import fid_from_features  # noqa: E402
from autoeff.models.builtin import load_builtin  # noqa: E402
from autoeff.models.digits.data import load_digits_16  # noqa: E402
from autoeff.models.generate import default_spec, generate  # noqa: E402
from autoeff.report import save_grid  # noqa: E402

START, END = "<!-- builtin:start -->", "<!-- builtin:end -->"


def write_section(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{START}\n{body.rstrip()}\n{END}"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--samples", type=int, default=None, help="per seed (default 1000 U-Net, 500 DiT)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--models", default="digits,digits-dit")
    p.add_argument("--device", default="cpu", help="where the samples are generated (cpu or cuda)")
    p.add_argument("--from-results", action="store_true",
                   help="only rewrite the BENCHMARKS.md section from benchmarks/results/builtin_<model>.json")
    a = p.parse_args(argv)
    if a.from_results:
        a.models = ""
    torch.manual_seed(0)
    extractor = DigitsFeatures()  # features on the CPU: the FID does not depend on where samples were made
    real, real_labels = load_digits_16("all")
    real_feats = extract_features(extractor, (real + 1) / 2)
    machine = torch.cuda.get_device_name() if a.device.startswith("cuda") else cpu_name()
    rows, record = [], {"machine": machine, "threads": torch.get_num_threads(),
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "models": {}}

    # real-vs-real: n real images against the *other* real images (disjoint), two random splits
    def real_vs_real(n: int, seed: int) -> float:
        perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
        n = min(n, len(real) // 2)
        return fid_from_features(real_feats[perm[n:]], real_feats[perm[:n]])

    for name in filter(None, a.models.split(",")):
        n = a.samples or (64 if a.quick else (1000 if name == "digits" else 500))
        steps = 100 if a.quick else a.steps
        handle = load_builtin(name, device=a.device)
        handle.default_steps = steps
        per_seed = []
        for seed in (0, 1):
            spec = default_spec(handle, n, seed=seed, batch_size=125)
            t0 = time.perf_counter()
            images = generate(handle, handle.pipeline, spec)  # returned on the CPU
            secs = time.perf_counter() - t0
            fid = fid_from_features(real_feats, extract_features(extractor, images))
            acc = class_accuracy(images, list(spec.labels))
            per_seed.append({"seed": seed, "fid": fid, "class_acc": acc, "seconds": round(secs, 1)})
            if seed == 0:
                grid = ROOT / "docs" / "images" / f"{name}_ddpm{steps}.png"
                save_grid(images[:100], grid, nrow=10)
            print(name, per_seed[-1], flush=True)
        rvr = [real_vs_real(n, s) for s in (0, 1)]
        record["models"][name] = {"samples_per_seed": n, "steps": steps, "seeds": per_seed, "device": a.device,
                                  "real_vs_real_fid": rvr,
                                  "real_vs_real_n": [min(n, len(real) // 2), len(real) - min(n, len(real) // 2)]}
        fids = [r["fid"] for r in per_seed]
        n_a, n_b = record["models"][name]["real_vs_real_n"]
        rows.append(f"| {name} | DDPM {steps} steps | {n} | {fids[0]:.2f} / {fids[1]:.2f} | "
                    f"{rvr[0]:.2f} / {rvr[1]:.2f} (n={n_a} vs {n_b}) | "
                    f"{per_seed[0]['class_acc']:.3f} / {per_seed[1]['class_acc']:.3f} | "
                    f"![{name}](docs/images/{name}_ddpm{steps}.png) |")
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    cmd = ("OMP_WAIT_POLICY=PASSIVE python benchmarks/builtin_models.py" + (" --quick" if a.quick else "")
           + f" --models {a.models}" + (f" --device {a.device}" if a.device != "cpu" else ""))
    for name, rec in record["models"].items():  # one file per model, so runs on different devices merge
        rec.update({"command": cmd, "machine": record["machine"], "threads": record["threads"],
                    "omp_wait_policy": record["omp_wait_policy"], "row": rows[list(record["models"]).index(name)]})
        suffix = "_quick" if a.quick else ""
        (res_dir / f"builtin_{name}{suffix}.json").write_text(json.dumps(rec, indent=2))
    if not a.quick:
        rows, cmds = [], []
        for name in ("digits", "digits-dit"):
            f = res_dir / f"builtin_{name}.json"
            if f.is_file():
                rec = json.loads(f.read_text())
                rows.append(rec["row"])
                cmds.append(f"`{rec['command']}` ({rec['machine']}, samples generated on {rec.get('device', 'cpu')})")
    body = f"""## Built-in models: quality of the 1000-step baseline

Commands: {'; '.join(cmds) if not a.quick else f'`{cmd}`'}.
FID in the digits classifier's 128-d penultimate feature space against all 1797 real digits (16x16); seeds
0 and 1 (each a disjoint set of per-image noise seeds, balanced labels 0-9). The real-vs-real row is the
noise floor: n real digits against the *other* real digits (disjoint), two random splits. Class accuracy:
the classifier's accuracy on the requested labels (its held-out accuracy on real digits is 99.7%).

| model | sampler | n/seed | FID seed 0 / 1 | real-vs-real FID (2 splits) | class acc seed 0 / 1 | grid |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}
"""
    write_section(a.out, body)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
