"""Point autoeff at an SDXL pipeline saved in a local folder (no download) and optimize it on a GPU.

    python examples/local_sdxl.py /models/stable-diffusion-xl-base-1.0 --device cuda --budget 2s
    # or, with the weights in the local Hugging Face cache:
    autoeff optimize --model sdxl --device cuda --budget 2s

The metric defaults to fidelity (SSIM to the baseline's own images on the same seeds and prompts), which
needs no extra weights; pass --metric clip with local open_clip weights (AUTOEFF_CLIP_MODEL /
AUTOEFF_CLIP_WEIGHTS) for a text-alignment score.
"""

from __future__ import annotations

import argparse

import autoeff


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser()
    p.add_argument("folder", help="a folder saved with StableDiffusionXLPipeline.save_pretrained")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget", default="2s")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--out", default="sdxl-out")
    p.add_argument("--steps", type=int, default=None, help="baseline steps (default: the pipeline's)")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--proxy-samples", type=int, default=None)
    p.add_argument("--final-samples", type=int, default=None)
    a = p.parse_args(argv)

    handle = autoeff.load_model(a.folder, device=a.device)
    if handle.family != "sdxl":
        raise SystemExit(f"{a.folder} holds a {handle.family} pipeline, not SDXL")
    if a.steps:
        handle.default_steps = a.steps
    if a.resolution:
        handle.resolution = a.resolution
    result = autoeff.optimize(handle, device=a.device, budget=a.budget, trials=a.trials, out=a.out,
                              max_steps=handle.default_steps, proxy_samples=a.proxy_samples,
                              final_samples=a.final_samples)
    print(f"{result.baseline.latency_s:.3f} s -> {result.best.final.latency_s:.3f} s per image; "
          f"{result.best.record.recipe.describe()}; exported to {result.export_path}")
    return result


if __name__ == "__main__":
    main()
