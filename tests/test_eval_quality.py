"""The metric registry: results, score orientation, family checks, and evaluation of real pipelines."""

from __future__ import annotations

import math

import pytest
import torch

from autoeff.evaluators.agreement import kendall_tau
from autoeff.evaluators.features import MissingWeightsError
from autoeff.evaluators.quality import METRICS, QualityResult, evaluate_pipeline, make_quality, score
from autoeff.evaluators.validity import InvalidOutputError
from autoeff.models.generate import SampleSpec, default_spec


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOEFF_CACHE_DIR", str(tmp_path / "cache"))


def test_result_json_and_score():
    r = QualityResult("fid", 12.5, False, 256, details={"reference": "real"})
    assert QualityResult.from_json(r.to_json()) == r
    assert score(r) == -12.5
    assert score(QualityResult("fidelity", 0.9, True, 8)) == 0.9
    assert score(QualityResult("fid", math.nan, False, 8)) == -math.inf
    with pytest.raises(ValueError, match="no field"):
        QualityResult.from_dict({**r.to_dict(), "extra_field": 1})


def test_digits_metrics_on_a_random_pipeline(random_digits_handle):
    h = random_digits_handle
    h.default_steps = 2
    spec = default_spec(h, 8, batch_size=8)
    metrics = [make_quality(n, h) for n in ("fid", "kid", "fidelity", "class_acc")]
    assert [m.higher_is_better for m in metrics] == [False, False, True, True]
    images, results = evaluate_pipeline(h, h.pipeline, spec, metrics)
    assert images.shape == (8, 1, 16, 16)
    fid, kid, fid_base, acc = results
    assert fid.metric == "fid" and fid.n == 8 and fid.details["reference"] == "real" and fid.value > 0
    assert kid.spread is not None and kid.details["normalize"] == "l2"
    assert fid_base.value == pytest.approx(1.0)  # the base pipeline is its own reference
    assert 0.0 <= acc.value <= 1.0
    base_fid = make_quality("fid", h, reference="baseline")(images, spec)
    assert base_fid.value == pytest.approx(0.0, abs=1e-3)


def test_class_acc_counts_correct_labels():
    from autoeff.evaluators.class_alignment import class_accuracy
    from autoeff.models.builtin import load_classifier
    from autoeff.models.digits.data import load_digits_16

    x, y = load_digits_16("test")
    x, y = (x[:200] + 1) / 2, y[:200]
    assert class_accuracy(x, y, load_classifier()) > 0.9
    assert class_accuracy(x, (y + 1) % 10) < 0.1


def test_nan_pipeline_fails_the_trial(random_digits_handle):
    h = random_digits_handle
    h.default_steps = 2

    class NaNPipe:
        unet = h.pipeline.unet

        def __call__(self, class_labels, latents, **kw):
            class Out:
                images = torch.full_like(latents, float("nan"))
            return Out()

    with pytest.raises(InvalidOutputError):
        evaluate_pipeline(h, NaNPipe(), default_spec(h, 2, batch_size=2), [make_quality("class_acc", h)])


def test_family_checks(random_digits_handle, monkeypatch):
    monkeypatch.delenv("AUTOEFF_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match="unknown quality metric"):
        make_quality("lpips", random_digits_handle)
    with pytest.raises(ValueError, match="text-to-image"):
        make_quality("clip", random_digits_handle)
    assert set(METRICS) == {"fid", "kid", "fidelity", "clip", "class_acc"}
    from autoeff.models.tiny import build_tiny_sd15

    sd = build_tiny_sd15()
    with pytest.raises(MissingWeightsError, match="Inception"):
        make_quality("fid", sd)
    with pytest.raises(ValueError, match="no real reference"):
        make_quality("fid", sd, reference="real")
    with pytest.raises(ValueError, match="class_acc"):
        make_quality("class_acc", sd)


def test_fidelity_on_a_tiny_text_to_image_pipeline():
    from autoeff.models.tiny import build_tiny_sd15

    h = build_tiny_sd15()
    h.default_steps = 2
    spec = SampleSpec(seeds=(0, 1), prompts=("a red cube", "two apples"), batch_size=2)
    metric = make_quality("fidelity", h, fidelity_metric="psnr")
    _, (res,) = evaluate_pipeline(h, h.pipeline, spec, [metric])
    assert res.value == 100.0 and res.details["ssim"] == pytest.approx(1.0)


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="finite"):
        kendall_tau([1, -math.inf], [1, 2])
    with pytest.raises(ValueError, match="proxy scores"):
        kendall_tau([1, 2], [1, 2, 3])
