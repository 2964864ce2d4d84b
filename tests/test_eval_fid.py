"""FID/KID on the digits classifier's features order real < noisy < noise; Inception needs local weights."""

from __future__ import annotations

import pytest
import torch

from autoeff.evaluators.features import (
    DigitsFeatures,
    InceptionFeatures,
    MissingWeightsError,
    extract_features,
)
from autoeff.evaluators.fid import fid_from_features, kid_from_features, normalize_features
from autoeff.models.digits.data import load_digits_16


@pytest.fixture(scope="module")
def digits_sets():
    x, _ = load_digits_16("all")
    x = (x + 1) / 2
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    ref, other = x[perm[:600]], x[perm[600:1000]]
    noisy = (other + 0.25 * torch.randn(other.shape, generator=g)).clamp(0, 1)
    noise = torch.rand(other.shape, generator=g)
    ext = DigitsFeatures()
    return {k: extract_features(ext, v) for k, v in
            {"ref": ref, "real": other, "noisy": noisy, "noise": noise}.items()}


@pytest.mark.parametrize("normalize", ["none", "l2"])
def test_fid_orders_real_noisy_noise(digits_sets, normalize):
    f = digits_sets
    real = fid_from_features(f["ref"], f["real"], normalize)
    noisy = fid_from_features(f["ref"], f["noisy"], normalize)
    noise = fid_from_features(f["ref"], f["noise"], normalize)
    assert 0 <= real < noisy < noise


def test_kid_orders_and_is_deterministic(digits_sets):
    f = digits_sets
    real, real_std = kid_from_features(f["ref"], f["real"], subsets=20)
    noisy, _ = kid_from_features(f["ref"], f["noisy"], subsets=20)
    noise, _ = kid_from_features(f["ref"], f["noise"], subsets=20)
    assert real < noisy < noise
    assert abs(real) < 3 * real_std + 1e-3  # unbiased: near zero for two real sets
    assert kid_from_features(f["ref"], f["real"], subsets=20) == (real, real_std)


def test_fid_of_a_set_with_itself_is_zero(digits_sets):
    assert fid_from_features(digits_sets["ref"], digits_sets["ref"]) == pytest.approx(0.0, abs=1e-3)


def test_feature_shapes_and_normalisation(digits_sets):
    assert digits_sets["ref"].shape == (600, DigitsFeatures().num_features)
    unit = normalize_features(digits_sets["ref"], "l2").norm(dim=1)
    assert torch.allclose(unit, torch.ones_like(unit))
    with pytest.raises(ValueError, match="normalize"):
        normalize_features(digits_sets["ref"], "pca")
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(digits_sets["ref"][:1], digits_sets["real"])


def test_inception_needs_local_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("AUTOEFF_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError, match="AUTOEFF_INCEPTION_WEIGHTS"):
        InceptionFeatures()
    monkeypatch.setenv("AUTOEFF_INCEPTION_WEIGHTS", str(tmp_path / "nope.safetensors"))
    with pytest.raises(MissingWeightsError, match="not found"):
        InceptionFeatures()


def test_inception_loads_a_torchvision_state_dict_from_safetensors(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    state = inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    path = tmp_path / "inception_v3.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    ext = InceptionFeatures(path)
    feats = extract_features(ext, torch.rand(2, 1, 16, 16))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert len(ext.identity) == 16


def test_the_split_half_standard_error_tracks_the_spread_over_independent_samples():
    from autoeff.evaluators.fid import fid_split_se

    g = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 8, generator=g)
    for n in (64, 512):
        samples = [0.3 + torch.randn(n, 8, generator=g) for _ in range(40)]
        truth = torch.tensor([fid_from_features(real, s) for s in samples]).std().item()
        se = fid_split_se(real, samples[0])
        assert 0.5 * truth < se < 2.5 * truth, (n, se, truth)
    assert fid_split_se(real, samples[0]) < fid_split_se(real, samples[0][:64])  # more images, less noise
