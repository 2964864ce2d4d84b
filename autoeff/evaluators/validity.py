"""Reject broken outputs before they are scored: NaN/inf values or blank (constant) images.

A candidate that produces NaNs (a solver diverging at a tiny noise level, an int4 overflow) must become a
failed trial, not a strange quality number; the search catches `InvalidOutputError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["InvalidOutputError", "check_images"]


class InvalidOutputError(ValueError):
    """A pipeline produced unusable images (non-finite values or constant images)."""


def check_images(images: Any, *, max_constant_fraction: float = 0.0, tol: float = 1e-6) -> None:
    """Raise `InvalidOutputError` if `images` (N images: a tensor or array with the batch first) hold a
    non-finite value, or if more than `max_constant_fraction` of them are constant (max - min <= `tol`)."""
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.ndim < 3 or x.shape[0] == 0:
        raise InvalidOutputError(f"expected a batch of images (N, C, H, W) or (N, H, W, C), got shape "
                                 f"{tuple(x.shape)}")
    x = x.detach().float().reshape(x.shape[0], -1)
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise InvalidOutputError(f"{len(bad)} of {len(x)} images contain NaN or inf (first: {bad[:5]}); the "
                                 "pipeline diverged — this candidate fails")
    constant = (x.amax(dim=1) - x.amin(dim=1)) <= tol
    n_const = int(constant.sum())
    if n_const > max_constant_fraction * len(x):
        bad = constant.nonzero().flatten().tolist()
        raise InvalidOutputError(f"{n_const} of {len(x)} images are constant (first: {bad[:5]}, value "
                                 f"{float(x[bad[0], 0]):.3g}); the pipeline produced blank images")
