"""Reference outputs and reference features, computed once and cached on disk with `joblib.Memory`.

Keys are plain data: the model's identity (a hash of its weights and configs), the call settings, the
SampleSpec (seeds, labels/prompts, batch size), the feature extractor's identity and `EVALUATOR_VERSION`.
Never the pipeline object itself: it is passed through joblib's `ignore=` so it is neither hashed nor part
of the key. Bump `EVALUATOR_VERSION` when what these functions compute changes.

The cache lives in `$AUTOEFF_CACHE_DIR` (default `~/.cache/autoeff/joblib`). It is this machine's own
cache, written by autoeff; joblib stores results with pickle, so do not point it at files from others.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
from torch import nn

from autoeff.evaluators.digest import folder_digest
from autoeff.evaluators.features import extract_features
from autoeff.evaluators.image_folder import load_folder
from autoeff.models.digits.data import load_digits_16
from autoeff.models.generate import SampleSpec, generate
from autoeff.models.handle import ModelHandle

__all__ = ["EVALUATOR_VERSION", "baseline_features", "cache_dir", "folder_features", "memory", "real_features",
           "reference_images"]

EVALUATOR_VERSION = 1


def cache_dir() -> Path:
    """`$AUTOEFF_CACHE_DIR` or `~/.cache/autoeff/joblib`."""
    return Path(os.environ.get("AUTOEFF_CACHE_DIR") or Path.home() / ".cache" / "autoeff" / "joblib")


def memory() -> joblib.Memory:
    """A `joblib.Memory` at `cache_dir()` (read from the environment at each call)."""
    return joblib.Memory(location=str(cache_dir()), verbose=0)


def _call_key(handle: ModelHandle) -> str:
    """Everything besides the weights that changes what the baseline draws."""
    key: dict[str, Any] = {"family": handle.family, "resolution": handle.resolution, "steps": handle.default_steps,
                           "guidance": handle.guidance_scale, "extra": handle.extra}
    if handle.negative_prompt is not None:  # only when set: the keys of every other model stay as they were
        key["negative_prompt"] = handle.negative_prompt
    return json.dumps(key, sort_keys=True, default=repr)


def _cacheable(handle: ModelHandle) -> bool:
    if handle.identity:
        return True
    warnings.warn(f"model {handle.spec!r} has no identity; its reference outputs are not cached",
                  stacklevel=3)
    return False


def _reference_images(identity: str, call_key: str, spec_key: dict, version: int,
                      handle: ModelHandle, spec: SampleSpec) -> np.ndarray:
    return generate(handle, handle.pipeline, spec).numpy()


def reference_images(handle: ModelHandle, spec: SampleSpec) -> torch.Tensor:
    """The baseline pipeline's images for `spec`, `(N, C, H, W)` in [0, 1] (cached per model and spec)."""
    if not _cacheable(handle):
        return torch.from_numpy(_reference_images("", "", {}, EVALUATOR_VERSION, handle, spec))
    fn = memory().cache(_reference_images, ignore=["handle", "spec"])
    out = fn(handle.identity, _call_key(handle), spec.key(), EVALUATOR_VERSION, handle, spec)
    return torch.from_numpy(out)


def _features_of(extractor: nn.Module, images: torch.Tensor) -> np.ndarray:
    return extract_features(extractor, images).numpy()


def _real_features(dataset: str, extractor_name: str, extractor_identity: str, version: int,
                   extractor: nn.Module) -> np.ndarray:
    if dataset != "digits":
        raise ValueError(f"no real data set {dataset!r}; the built-in one is 'digits'")

    images, _ = load_digits_16("all")
    return _features_of(extractor, (images + 1) / 2)


def real_features(extractor: Any, dataset: str = "digits") -> torch.Tensor:
    """Features of the whole real data set (`digits`: scikit-learn's 1797 digits), cached per extractor."""
    fn = memory().cache(_real_features, ignore=["extractor"])
    return torch.from_numpy(fn(dataset, extractor.name, extractor.identity, EVALUATOR_VERSION, extractor))


def _baseline_features(identity: str, call_key: str, spec_key: dict, extractor_name: str,
                       extractor_identity: str, version: int, handle: ModelHandle, spec: SampleSpec,
                       extractor: nn.Module) -> np.ndarray:
    return _features_of(extractor, reference_images(handle, spec))


def baseline_features(handle: ModelHandle, spec: SampleSpec, extractor: Any) -> torch.Tensor:
    """Features of the baseline's images for `spec` (the FID-to-teacher reference), cached."""
    if not _cacheable(handle):
        return torch.from_numpy(_features_of(extractor, reference_images(handle, spec)))
    fn = memory().cache(_baseline_features, ignore=["handle", "spec", "extractor"])
    out = fn(handle.identity, _call_key(handle), spec.key(), extractor.name, extractor.identity,
             EVALUATOR_VERSION, handle, spec, extractor)
    return torch.from_numpy(out)


def _folder_features(digest: str, extractor_name: str, extractor_identity: str, version: int, folder: str,
                     extractor: nn.Module) -> np.ndarray:
    return _features_of(extractor, load_folder(folder))


def folder_features(extractor: Any, folder: str | Path) -> torch.Tensor:
    """Features of every image of a user's reference folder (`--reference`), cached per folder content (its
    digest, not its path) and extractor."""
    fn = memory().cache(_folder_features, ignore=["folder", "extractor"])
    return torch.from_numpy(fn(folder_digest(Path(folder)), extractor.name, extractor.identity, EVALUATOR_VERSION,
                               str(folder), extractor))
