"""Reference outputs/features are cached by joblib.Memory under plain keys: unchanged keys never recompute."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autoeff.evaluators import reference
from autoeff.models.generate import SampleSpec


class Counter:
    def __init__(self):
        self.calls = 0

    def generate(self, handle, pipe, spec):
        self.calls += 1
        return torch.full((len(spec), 1, 16, 16), float(spec.seeds[0] % 7) / 7)


@pytest.fixture
def counter(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOEFF_CACHE_DIR", str(tmp_path / "cache"))
    c = Counter()
    monkeypatch.setattr(reference, "generate", c.generate)
    return c


def test_reference_images_cached_by_key(counter, random_digits_handle):
    h = random_digits_handle
    spec = SampleSpec(seeds=(1, 2, 3), labels=(0, 1, 2), batch_size=3)
    a = reference.reference_images(h, spec)
    b = reference.reference_images(h, spec)
    assert counter.calls == 1 and torch.equal(a, b)
    # a new pipeline object with the same identity is the same key (the pipeline is not hashed)
    reference.reference_images(dataclasses.replace(h, pipeline=object()), spec)
    assert counter.calls == 1
    reference.reference_images(h, SampleSpec(seeds=(1, 2, 4), labels=(0, 1, 2), batch_size=3))
    assert counter.calls == 2
    reference.reference_images(h, SampleSpec(seeds=(1, 2, 3), labels=(0, 1, 3), batch_size=3))
    assert counter.calls == 3
    reference.reference_images(dataclasses.replace(h, identity="other-weights"), spec)
    assert counter.calls == 4
    reference.reference_images(dataclasses.replace(h, default_steps=h.default_steps + 1), spec)
    assert counter.calls == 5
    reference.reference_images(h, spec)
    assert counter.calls == 5


def test_version_bump_recomputes(counter, random_digits_handle, monkeypatch):
    spec = SampleSpec(seeds=(5,), labels=(1,), batch_size=1)
    reference.reference_images(random_digits_handle, spec)
    monkeypatch.setattr(reference, "EVALUATOR_VERSION", reference.EVALUATOR_VERSION + 1)
    reference.reference_images(random_digits_handle, spec)
    assert counter.calls == 2


def test_no_identity_is_never_cached(counter, random_digits_handle):
    h = dataclasses.replace(random_digits_handle, identity="")
    spec = SampleSpec(seeds=(5,), labels=(1,), batch_size=1)
    with pytest.warns(UserWarning, match="no identity"):
        reference.reference_images(h, spec)
        reference.reference_images(h, spec)
    assert counter.calls == 2


def test_real_and_baseline_features_cached(counter, random_digits_handle):
    from autoeff.evaluators.features import DigitsFeatures

    ext = DigitsFeatures()
    real = reference.real_features(ext)
    assert real.shape == (1797, ext.num_features)
    assert torch.equal(reference.real_features(ext), real)
    spec = SampleSpec(seeds=(1, 2), labels=(0, 1), batch_size=2)
    f1 = reference.baseline_features(random_digits_handle, spec, ext)
    f2 = reference.baseline_features(random_digits_handle, spec, ext)
    assert counter.calls == 1 and f1.shape == (2, ext.num_features) and torch.equal(f1, f2)
