"""Fidelity to the baseline: PSNR and SSIM (Wang et al., 2004) of a candidate's images against the
baseline's images for the same seeds and labels/prompts (common random numbers), via torchmetrics.

Because both sides start from the same noise, this measures how far the candidate's sampling strays from
the baseline's trajectory: a cheap, low-variance proxy, per image, then averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = ["PSNR_CAP_DB", "FidelityResult", "fidelity"]

# An identical image has infinite PSNR; it is reported as this cap so results stay finite JSON numbers.
PSNR_CAP_DB = 100.0


@dataclass
class FidelityResult:
    """Mean (and standard deviation) over images of PSNR (dB, capped at `PSNR_CAP_DB`) and SSIM."""

    psnr_db: float
    psnr_std: float
    ssim: float
    ssim_std: float
    n: int


def fidelity(images: torch.Tensor, reference: torch.Tensor) -> FidelityResult:
    """Per-image PSNR/SSIM of `images` against `reference`, both `(N, C, H, W)` in [0, 1], same order."""
    if images.shape != reference.shape:
        raise ValueError(f"candidate images {tuple(images.shape)} and reference images "
                         f"{tuple(reference.shape)} differ in shape; generate both from the same SampleSpec")
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected (N, C, H, W) images, got {tuple(images.shape)}")
    x, ref = images.double(), reference.double()
    psnr = peak_signal_noise_ratio(x, ref, data_range=1.0, reduction="none", dim=(1, 2, 3))
    psnr = torch.nan_to_num(psnr, posinf=PSNR_CAP_DB).clamp(max=PSNR_CAP_DB)
    # SSIM's 11x11 Gaussian window needs images of at least 11 px a side (digits are 16).
    kernel = min(11, min(x.shape[-2:]) // 2 * 2 - 1)
    # A tensor: the (image, ...) tuple comes back only with return_full_image / return_contrast_sensitivity.
    ssim = cast(torch.Tensor, structural_similarity_index_measure(x, ref, data_range=1.0, reduction="none",
                                                                  kernel_size=kernel))

    def std(t: torch.Tensor) -> float:
        return float(t.std()) if len(t) > 1 else 0.0

    res = FidelityResult(psnr_db=float(psnr.mean()), psnr_std=std(psnr), ssim=float(ssim.mean()),
                         ssim_std=std(ssim), n=len(x))
    if not (math.isfinite(res.psnr_db) and math.isfinite(res.ssim)):
        raise ValueError("fidelity is not finite; check the images with evaluators.check_images first")
    return res
