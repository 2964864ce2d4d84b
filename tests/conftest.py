"""Shared fixtures: seeded, tiny, local models only (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def random_digits_handle():
    """The built-in digits U-Net architecture with random weights (fast; no trained weights needed)."""
    from autoeff.models.digits.architectures import build_scheduler, build_unet
    from autoeff.models.digits.pipeline import DigitsPipeline
    from autoeff.models.handle import ModelHandle

    torch.manual_seed(0)
    pipe = DigitsPipeline(unet=build_unet().eval(), scheduler=build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return ModelHandle(spec="digits", pipeline=pipe, family="digits", resolution=16, num_classes=10,
                       default_steps=10, identity="random-digits")


@pytest.fixture
def random_digits_dit_handle():
    """The built-in digits DiT architecture with random weights."""
    from autoeff.models.digits.architectures import build_dit, build_scheduler
    from autoeff.models.digits.pipeline import DigitsDiTPipeline
    from autoeff.models.handle import ModelHandle

    torch.manual_seed(0)
    pipe = DigitsDiTPipeline(transformer=build_dit().eval(), scheduler=build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return ModelHandle(spec="digits-dit", pipeline=pipe, family="digits-dit", resolution=16, num_classes=10,
                       default_steps=10, identity="random-digits-dit")


def make_digits_export(folder: Path) -> Path:
    """The trained digits model, 10-step baseline, exported with DPM-Solver++ 2M on 4 uniform steps."""
    import autoeff
    from autoeff.budget import parse_budget
    from autoeff.evaluators.quality import QualityResult
    from autoeff.export import export_pipeline
    from autoeff.measurement import Measurement
    from autoeff.recipe import Recipe
    from autoeff.search import context_for
    from autoeff.search_spaces import schedule, solver
    from autoeff.settings import SearchSettings

    handle = autoeff.load_model("digits")
    handle.default_steps = 10
    ctx = context_for(handle, SearchSettings(model="digits", budget=parse_budget("1s"), space=["solver"],
                                             max_steps=10))
    recipe = Recipe(model="digits", knobs={"solver": solver.Config(name="dpmpp", order=2),
                                           "schedule": schedule.Config(family="uniform", steps=4)})
    claimed = Measurement(latency_s=0.004, quality=QualityResult(metric="fid", value=30.0, n=16,
                                                                 higher_is_better=False), score=-30.0)
    return export_pipeline(handle, recipe, ctx, folder, device="cpu",
                           measured={"trial": 0, "proxy": claimed.to_dict(), "final": None},
                           baseline={"latency_s": 0.01})
