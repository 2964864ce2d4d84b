"""Broken outputs raise InvalidOutputError; real pipeline outputs pass."""

from __future__ import annotations

import pytest
import torch

from autoeff.evaluators.validity import InvalidOutputError, check_images
from autoeff.models.generate import default_spec, generate


def test_nan_and_inf_raise():
    x = torch.rand(4, 1, 16, 16)
    x[2, 0, 3, 3] = float("nan")
    with pytest.raises(InvalidOutputError, match="NaN or inf"):
        check_images(x)
    x = torch.rand(4, 1, 16, 16)
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(InvalidOutputError, match="NaN or inf"):
        check_images(x)


def test_constant_images_raise():
    x = torch.rand(4, 1, 16, 16)
    x[1] = 0.5
    with pytest.raises(InvalidOutputError, match="constant"):
        check_images(x)
    check_images(x, max_constant_fraction=0.25)  # tolerated when allowed


def test_bad_shape_raises():
    with pytest.raises(InvalidOutputError, match="batch of images"):
        check_images(torch.rand(16, 16))


def test_pipeline_output_passes(random_digits_handle):
    h = random_digits_handle
    h.default_steps = 3
    images = generate(h, h.pipeline, default_spec(h, 4, batch_size=4))
    check_images(images)
    check_images(images.permute(0, 2, 3, 1).numpy())  # channels-last arrays too
