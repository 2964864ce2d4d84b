"""Fidelity to the baseline on common seeds: perfect against itself, lower for a different pipeline."""

from __future__ import annotations

import pytest
import torch

from autoeff.evaluators.fidelity import PSNR_CAP_DB, fidelity
from autoeff.models.generate import default_spec, generate


def test_same_seeds_same_images(random_digits_handle):
    h = random_digits_handle
    h.default_steps = 3
    spec = default_spec(h, 6, batch_size=4)
    a = generate(h, h.pipeline, spec)
    b = generate(h, h.pipeline, spec)
    assert torch.equal(a, b)
    c = generate(h, h.pipeline, default_spec(h, 6, seed=1, batch_size=4))
    assert not torch.equal(a, c)


def test_baseline_against_itself_is_perfect(random_digits_handle):
    h = random_digits_handle
    h.default_steps = 3
    images = generate(h, h.pipeline, default_spec(h, 6, batch_size=6))
    res = fidelity(images, images)
    assert res.psnr_db == PSNR_CAP_DB and res.ssim == pytest.approx(1.0) and res.n == 6
    assert res.psnr_std == 0.0


def test_fewer_steps_is_less_faithful(random_digits_handle):
    h = random_digits_handle
    h.default_steps = 4
    spec = default_spec(h, 6, batch_size=6)
    ref = generate(h, h.pipeline, spec)
    h.default_steps = 2
    cand = generate(h, h.pipeline, spec)
    res = fidelity(cand, ref)
    assert res.psnr_db < PSNR_CAP_DB and res.ssim < 1.0


def test_fidelity_orders_perturbations():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(8, 1, 16, 16, generator=g)
    small = (ref + 0.02 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    large = (ref + 0.2 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    a, b = fidelity(small, ref), fidelity(large, ref)
    assert a.psnr_db > b.psnr_db and a.ssim > b.ssim
    with pytest.raises(ValueError, match="differ in shape"):
        fidelity(ref[:4], ref)
