"""The tiny SD1.5 / SDXL / PixArt pipelines: they run, are seeded, and condition on the prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoeff.models.generate import default_spec, generate
from autoeff.models.tiny import build_tiny_pixart, build_tiny_sd15, build_tiny_sdxl

BUILDERS = {"sd15": build_tiny_sd15, "sdxl": build_tiny_sdxl, "pixart": build_tiny_pixart}


def _run(handle, prompts, seed=0, steps=2):
    return handle.pipeline(
        prompt=prompts, num_inference_steps=steps, output_type="np", guidance_scale=handle.guidance_scale,
        generator=torch.Generator().manual_seed(seed), height=handle.resolution, width=handle.resolution,
        **handle.extra).images


@pytest.fixture(params=list(BUILDERS))
def tiny(request):
    return BUILDERS[request.param]()


def test_family_and_metadata(tiny):
    name = tiny.spec.removeprefix("tiny-")
    assert tiny.family == name
    assert tiny.guidance_scale is not None and tiny.guidance_scale > 1  # classifier-free guidance runs
    assert tiny.prompts and tiny.default_steps <= 8
    assert tiny.denoiser.config.sample_size * tiny.pipeline.vae_scale_factor == tiny.resolution


def test_two_steps_shape_and_range(tiny):
    images = _run(tiny, ["a red cube", "two apples"])
    assert images.shape == (2, tiny.resolution, tiny.resolution, 3)
    assert np.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.01  # not a constant (e.g. all-black) image


def test_same_seed_same_image_other_seed_other_image(tiny):
    a = _run(tiny, ["a cat on a mat"], seed=3)
    b = _run(tiny, ["a cat on a mat"], seed=3)
    c = _run(tiny, ["a cat on a mat"], seed=4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3


def test_prompt_changes_the_image(tiny):
    a = _run(tiny, ["a red cube"])
    b = _run(tiny, ["a blue sky"])
    assert np.abs(a - b).mean() > 1e-3


def test_builders_are_seeded():
    for build in BUILDERS.values():
        first, second = build(), build()
        assert first.identity == second.identity
        np.testing.assert_array_equal(_run(first, ["two apples"]), _run(second, ["two apples"]))


def test_generate_common_random_numbers(tiny):
    spec = default_spec(tiny, 2, batch_size=2)
    out = generate(tiny, tiny.pipeline, spec)
    assert out.shape == (2, 3, tiny.resolution, tiny.resolution)
    assert out.min() >= 0 and out.max() <= 1
    # A sample's image does not depend on the batch it is generated in.
    one_by_one = generate(tiny, tiny.pipeline, default_spec(tiny, 2, batch_size=1))
    torch.testing.assert_close(out, one_by_one, atol=1e-4, rtol=0)
