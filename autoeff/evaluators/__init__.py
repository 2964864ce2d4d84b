"""Evaluators: latency on the real device and quality of generated images. They never know which knobs
made a pipeline.

    latency.py          measure_latency, LatencyResult, noise_floor, is_faster, cpu_thread_setup
    lock.py             device_lock: one timing per device at a time, across processes
    validity.py         check_images / InvalidOutputError: NaN, inf or blank outputs fail the trial
    features.py         digits-classifier, Inception-v3 (local weights only) and 8x8-pixel feature extractors
    fid.py              FID and KID (torchmetrics) on extracted features
    fidelity.py         PSNR / SSIM against the baseline's images on the same seeds
    clip_score.py       CLIP score with open_clip (local weights only)
    class_alignment.py  classifier accuracy on the requested digits
    reference.py        baseline images and reference features, cached with joblib.Memory
    image_folder.py     a user's folder of real images (--reference), checked and read
    digest.py           the digest of a folder's files (light: the settings schema uses it)
    agreement.py        Kendall's tau between a proxy metric and the final metric
    quality.py          make_quality(name, handle): the metric registry; QualityResult; score()

Names are imported lazily so that `autoeff.evaluators.lock` stays light (no torch import).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LatencyResult": "latency", "measure_latency": "latency", "noise_floor": "latency",
    "is_faster": "latency", "cpu_thread_setup": "latency", "device_lock": "lock",
    "InvalidOutputError": "validity", "check_images": "validity", "QualityResult": "quality",
    "make_quality": "quality", "score": "quality", "evaluate_pipeline": "quality", "METRICS": "metric_names",
    "kendall_tau": "agreement",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"autoeff.evaluators.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'autoeff.evaluators' has no attribute {name!r}")
