"""Train the built-in models on scikit-learn's digits, seeded and reproducible.

    python -m autoeff.models.digits.train classifier --steps 1500
    python -m autoeff.models.digits.train unet --steps 3000
    python -m autoeff.models.digits.train dit --steps 4000

Denoisers are trained with the DDPM epsilon objective (Ho et al., 2020) and an exponential moving average
of the weights (diffusers' `EMAModel`); the EMA weights are what is saved. Output goes to
`autoeff/models/digits/weights/` (safetensors + JSON only), which is committed with the package.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from safetensors.torch import save_file

from autoeff.models.digits.architectures import DigitsClassifier, build_dit, build_scheduler, build_unet
from autoeff.models.digits.data import load_digits_16
from autoeff.models.digits.pipeline import DigitsDiTPipeline, DigitsPipeline

WEIGHTS = Path(__file__).parent / "weights"


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel: cheap augmentation for a 1797-image data set."""
    shifts = torch.randint(-1, 2, (2,), generator=g).tolist()
    return torch.roll(x, shifts=shifts, dims=(2, 3))


def _lr(step: int, steps: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_classifier(steps: int, seed: int, batch: int, out: Path) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xtr, ytr = load_digits_16("train", seed=0)
    xte, yte = load_digits_16("test", seed=0)
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, 2e-3)
        idx = torch.randint(0, len(xtr), (batch,), generator=g)
        x = _augment(xtr[idx], g)
        # light noise so the feature space also separates slightly noisy samples from clean ones
        x = x + 0.05 * torch.randn(x.shape, generator=g)
        loss = F.cross_entropy(model(x), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0:
            print(f"classifier step {step} loss {loss.item():.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    meta = {"steps": steps, "seed": seed, "batch": batch, "heldout_accuracy": acc, "heldout_n": len(yte)}
    (out / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"classifier held-out accuracy {acc:.4f} on {len(yte)} images", flush=True)
    return meta


def train_denoiser(kind: str, steps: int, seed: int, batch: int, lr: float, out: Path,
                   device: str = "cpu") -> dict:

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_all, y_all = load_digits_16("all")
    model = (build_unet() if kind == "unet" else build_dit()).to(device)
    sched = build_scheduler()
    ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True, power=0.75)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    alphas = sched.alphas_cumprod.to(device)
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        x0 = _augment(x_all[idx], g)
        y = y_all[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        # random numbers are drawn on the CPU so the stream is the same whatever the device
        x0, y, noise, t = x0.to(device), y.to(device), noise.to(device), t.to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if kind == "unet":
            pred = model(xt, t, class_labels=y).sample
        else:
            pred = model(xt, timestep=t, class_labels=y).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())
        if step % 100 == 0:
            el = time.perf_counter() - t0
            print(f"{kind} step {step} loss {loss.item():.4f} {el / (step + 1):.3f}s/step", flush=True)
    ema.copy_to(model.parameters())
    model = model.to("cpu").eval()
    pipe = (DigitsPipeline(unet=model, scheduler=sched) if kind == "unet"
            else DigitsDiTPipeline(transformer=model, scheduler=sched))
    pipe.save_pretrained(str(out), safe_serialization=True)
    meta = {"kind": kind, "steps": steps, "seed": seed, "batch": batch, "lr": lr, "device": device,
            "seconds": round(time.perf_counter() - t0, 1), "final_loss": round(loss.item(), 5)}
    (out / "training.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"saved {out} {meta}", flush=True)
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["classifier", "unet", "dit"])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the denoisers only)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model == "classifier":
        train_classifier(a.steps or 1500, a.seed, a.batch, a.out or WEIGHTS / "classifier")
    else:
        default_lr = 1e-3 if a.model == "unet" else 5e-4
        train_denoiser(a.model, a.steps or 3000, a.seed, a.batch, a.lr or default_lr,
                       a.out or WEIGHTS / f"digits-{a.model}", device=a.device)


if __name__ == "__main__":
    main()
