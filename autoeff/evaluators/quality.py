"""The quality metrics the CLI accepts, behind one registry: `make_quality(name, handle, ...)`.

| name        | what                                                           | families          | better |
| ----------- | -------------------------------------------------------------- | ----------------- | ------ |
| `fid`       | FID vs the real digits / the `--reference` images / the baseline | all             | lower  |
| `kid`       | KID on l2-normalised features, same references as `fid`        | all               | lower  |
| `fidelity`  | SSIM (or PSNR) vs the baseline's images on the same seeds      | all               | higher |
| `clip`      | CLIP score against the prompts                                 | text-to-image     | higher |
| `class_acc` | classifier accuracy on the requested digits                    | digits, digits-dit| higher |

A metric is called on already generated images and the `SampleSpec` that made them, and returns a
`QualityResult`; `score(result)` turns any result into "larger is better" for the search.
`evaluate_pipeline` generates once, checks the images (`InvalidOutputError`) and runs several metrics.
`describe(result)` names a figure with what it was measured against and in which features, for every report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from autoeff.evaluators.class_alignment import class_accuracy
from autoeff.evaluators.clip_score import ClipScorer
from autoeff.evaluators.features import (
    DigitsFeatures,
    FeatureFallbackWarning,
    InceptionFeatures,
    extract_features,
    reference_extractor,
)
from autoeff.evaluators.fid import fid_from_features, fid_split_se, kid_from_features
from autoeff.evaluators.fidelity import fidelity
from autoeff.evaluators.metric_names import HIGHER_IS_BETTER, METRICS
from autoeff.evaluators.reference import baseline_features, folder_features, real_features, reference_images
from autoeff.evaluators.validity import check_images
from autoeff.models.builtin import load_classifier
from autoeff.models.generate import SampleSpec, generate
from autoeff.models.handle import ModelHandle
from autoeff.records import JsonRecord

__all__ = ["HIGHER_IS_BETTER", "METRICS", "QualityMetric", "QualityResult", "describe", "evaluate_pipeline",
           "make_quality", "score", "standard_error"]

DIGITS_FAMILIES = ("digits", "digits-dit")
# Feature normalisation of the digits FID, chosen by the noise study in benchmarks/evaluators.py.
DIGITS_FID_NORMALIZE = "none"


@dataclass
class QualityResult(JsonRecord):
    """One quality measurement: `value` of `metric` on `n` images (`spread`: its standard deviation over
    images or subsets, when the estimator has one; `stderr`: the standard error of `value` itself, the noise
    that separates two candidates measured on the same sample set, see `standard_error`); `details` holds
    metric-specific extras."""

    metric: str
    value: float
    higher_is_better: bool
    n: int
    spread: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    stderr: float | None = None
    version: int = 1


def standard_error(result: QualityResult) -> float:
    """How far `result.value` moves with the sample: `stderr` when the metric measured it (FID: split halves;
    KID: its spread over subsets, an over-estimate), `spread / sqrt(n)` for a mean over images (SSIM, CLIP),
    the binomial `sqrt(p (1 - p) / n)` for an accuracy, else 5 % of the value."""
    if result.stderr is not None and math.isfinite(result.stderr):
        return float(result.stderr)
    if result.spread is not None and math.isfinite(result.spread) and result.n > 0:
        return float(result.spread) / math.sqrt(result.n)
    if result.metric == "class_acc" and result.n > 0:
        p = min(1.0, max(0.0, result.value))
        return math.sqrt(max(p * (1 - p), 1.0 / result.n) / result.n)
    return 0.05 * abs(result.value)


def describe(result: QualityResult) -> str:
    """E.g. `fid 12.3 (n=64; vs the real digits; features digits-classifier)`, `fidelity 0.91 (n=16; SSIM to
    the baseline)`: the value with what it compared and in which features."""
    d = result.details or {}
    parts = [f"n={result.n}"]
    ref = d.get("reference")
    if ref == "folder":
        parts.append(f"vs {d.get('n_reference', '?')} images of {d.get('folder', '--reference')}")
    elif ref == "real":
        parts.append("vs the real digits")
    elif ref == "baseline":
        parts.append("vs the baseline's images")
    if d.get("features"):
        parts.append(f"features {d['features']}")
    if result.metric == "fidelity":
        parts.append(f"{str(d.get('which', 'ssim')).upper()} to the baseline's images")
    return f"{result.metric} {result.value:.4g} ({'; '.join(parts)})"


def score(result: QualityResult) -> float:
    """The result as "larger is better" (e.g. -FID); a non-finite value scores -inf."""
    if not math.isfinite(result.value):
        return -math.inf
    return result.value if result.higher_is_better else -result.value


class QualityMetric(Protocol):
    name: str
    higher_is_better: bool

    def __call__(self, images: torch.Tensor, spec: SampleSpec) -> QualityResult: ...


class _DistributionMetric:
    """FID or KID against real data or the baseline's outputs, in a given feature space."""

    def __init__(self, name: str, handle: ModelHandle, extractor: Any, reference: str,
                 normalize: str, folder: str | None = None) -> None:
        self.name, self.handle, self.extractor = name, handle, extractor
        self.reference, self.normalize, self.folder = reference, normalize, folder
        self.higher_is_better = False

    def reference_features(self, spec: SampleSpec) -> torch.Tensor:
        if self.reference == "real":
            return real_features(self.extractor, "digits")
        if self.reference == "folder":
            assert self.folder is not None  # make_quality sets it with reference "folder"
            return folder_features(self.extractor, self.folder)
        return baseline_features(self.handle, spec, self.extractor)

    def __call__(self, images: torch.Tensor, spec: SampleSpec) -> QualityResult:
        ref = self.reference_features(spec)
        fake = extract_features(self.extractor, images)
        details: dict[str, Any] = {"reference": self.reference, "n_reference": len(ref),
                                   "features": self.extractor.name, "normalize": self.normalize}
        if self.folder is not None:
            details["folder"] = self.folder
        if self.name == "fid":
            return QualityResult("fid", fid_from_features(ref, fake, self.normalize), False, len(images),
                                 details=details, stderr=fid_split_se(ref, fake, self.normalize))
        mean, std = kid_from_features(ref, fake, self.normalize)
        return QualityResult("kid", mean, False, len(images), spread=std, details=details, stderr=std)


class _FidelityMetric:
    def __init__(self, handle: ModelHandle, which: str) -> None:
        if which not in ("ssim", "psnr"):
            raise ValueError(f"fidelity metric {which!r} is not ssim or psnr")
        self.handle, self.which = handle, which
        self.name, self.higher_is_better = "fidelity", True

    def __call__(self, images: torch.Tensor, spec: SampleSpec) -> QualityResult:
        res = fidelity(images, reference_images(self.handle, spec))
        value, spread = (res.ssim, res.ssim_std) if self.which == "ssim" else (res.psnr_db, res.psnr_std)
        return QualityResult("fidelity", value, True, res.n, spread=spread,
                             details={"which": self.which, "ssim": res.ssim, "psnr_db": res.psnr_db})


class _ClipMetric:
    def __init__(self, handle: ModelHandle, scorer: Any) -> None:
        self.handle, self.scorer = handle, scorer
        self.name, self.higher_is_better = "clip", True

    def __call__(self, images: torch.Tensor, spec: SampleSpec) -> QualityResult:
        prompts = list(spec.prompts or self.handle.prompts or ["a photo"])
        prompts = [prompts[i % len(prompts)] for i in range(len(images))]
        s = self.scorer(images, prompts).double()
        return QualityResult("clip", float(s.mean()), True, len(images),
                             spread=float(s.std()) if len(s) > 1 else 0.0,
                             details={"model": self.scorer.identity})


class _ClassAccMetric:
    def __init__(self, handle: ModelHandle, device: str) -> None:

        self.handle, self.classifier = handle, load_classifier(device)
        self.name, self.higher_is_better = "class_acc", True

    def __call__(self, images: torch.Tensor, spec: SampleSpec) -> QualityResult:
        labels = list(spec.labels) if spec.labels else [0] * len(images)
        acc = class_accuracy(images, labels[:len(images)], self.classifier)
        return QualityResult("class_acc", acc, True, len(images))


def _extractor(handle: ModelHandle, features: str, inception_weights: str | None, device: str) -> Any:
    if features == "auto":
        features = "classifier" if handle.family in DIGITS_FAMILIES else "inception"
    if features == "classifier":
        if handle.family not in DIGITS_FAMILIES:
            raise ValueError(f"the digits classifier features fit only the digits models, not "
                             f"{handle.family!r}")
        return DigitsFeatures(device=device)
    if features == "inception":
        return InceptionFeatures(inception_weights).to(device)
    raise ValueError(f"features={features!r} is not auto, classifier or inception")


def make_quality(
    name: str,
    handle: ModelHandle,
    *,
    reference: str = "auto",
    features: str = "auto",
    normalize: str | None = None,
    fidelity_metric: str = "ssim",
    clip_model: str | None = None,
    clip_weights: str | None = None,
    inception_weights: str | None = None,
    device: str = "cpu",
    reference_dir: str | None = None,
) -> QualityMetric:
    """Build metric `name` (one of `METRICS`) for `handle`.

    `reference` (fid/kid): `real` (digits only), `baseline` (FID to the baseline's own outputs on the same
    spec), `folder` (the user's images in `reference_dir`) or `auto` (the folder when `reference_dir` is given,
    real for digits, baseline otherwise). `features`: `classifier` (digits), `inception` (needs local
    weights, see `autoeff.evaluators.features`) or `auto` (against a folder: Inception when its weights are
    here, else the weight-free `PixelFeatures`). `normalize`: feature normalisation (`none`/`l2`; default: the
    digits choice for FID, `l2` for KID).
    """
    if name not in METRICS:
        raise ValueError(f"unknown quality metric {name!r}; choose one of {', '.join(METRICS)}")
    if reference_dir is not None and name not in ("fid", "kid"):
        raise ValueError(f"--reference is for fid and kid; {name!r} does not compare with real images")
    if name in ("fid", "kid"):
        auto = "folder" if reference_dir is not None else "real" if handle.family in DIGITS_FAMILIES else "baseline"
        ref = auto if reference == "auto" else reference
        if ref not in ("real", "baseline", "folder"):
            raise ValueError(f"reference={reference!r} is not auto, real, baseline or folder")
        if ref == "folder":
            if reference_dir is None:
                raise ValueError("reference='folder' needs reference_dir")
            norm = normalize or (DIGITS_FID_NORMALIZE if name == "fid" else "l2")
            if features in ("auto", "inception"):
                extractor, note = reference_extractor(device, inception_weights) if features == "auto" else (
                    InceptionFeatures(inception_weights).to(device), None)
                if note is not None:
                    warnings.warn(FeatureFallbackWarning(note), stacklevel=2)
            else:
                extractor = _extractor(handle, features, inception_weights, device)
            return _DistributionMetric(name, handle, extractor, ref, norm, folder=str(reference_dir))
        if ref == "real" and handle.family not in DIGITS_FAMILIES:
            raise ValueError(f"no real reference data for {handle.family!r}; use reference='baseline'")
        norm = normalize or (DIGITS_FID_NORMALIZE if name == "fid" else "l2")
        return _DistributionMetric(name, handle, _extractor(handle, features, inception_weights, device),
                                  ref, norm)
    if name == "fidelity":
        return _FidelityMetric(handle, fidelity_metric)
    if name == "clip":
        if handle.conditioning != "text":
            raise ValueError(f"the CLIP score needs a text-to-image model; {handle.family!r} is "
                             "class-conditional")

        return _ClipMetric(handle, ClipScorer(clip_model, clip_weights, device=device))
    if handle.family not in DIGITS_FAMILIES:
        raise ValueError(f"class_acc needs the digits classifier; {handle.family!r} is not a digits model")
    return _ClassAccMetric(handle, device)


def evaluate_pipeline(handle: ModelHandle, pipe: Any, spec: SampleSpec,
                      metrics: Sequence[QualityMetric]) -> tuple[torch.Tensor, list[QualityResult]]:
    """Generate `spec` with `pipe`, reject broken images (`InvalidOutputError`), then run every metric."""
    images = generate(handle, pipe, spec)
    check_images(images)
    return images, [m(images, spec) for m in metrics]
