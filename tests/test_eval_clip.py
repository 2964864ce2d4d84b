"""CLIP score with a tiny random-weight open_clip model saved in open_clip's local-dir layout."""

from __future__ import annotations

import json

import pytest
import torch

from autoeff.evaluators.clip_score import ClipScorer, clip_score, resolve_clip_source
from autoeff.evaluators.features import MissingWeightsError

TINY_CFG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CFG))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return folder


def test_scores_shape_range_determinism(tiny_clip_dir):
    scorer = ClipScorer(str(tiny_clip_dir))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, 48, generator=g)
    prompts = ["a red cube", "a cat on a mat", "two apples"]
    s = scorer(images, prompts)
    assert s.shape == (3,) and bool(((s >= 0) & (s <= 100)).all())
    assert torch.equal(s, scorer(images, prompts))
    assert torch.equal(s, ClipScorer(f"local-dir:{tiny_clip_dir}")(images, prompts))  # weights really loaded
    assert torch.allclose(s[1:], scorer(images[1:], prompts[1:], batch_size=1), atol=1e-4)
    mean, std = clip_score(images, prompts, scorer)
    assert mean == pytest.approx(float(s.double().mean())) and std >= 0
    grey = scorer(torch.rand(2, 1, 32, 32, generator=g), prompts[:2])  # grayscale images are accepted
    assert grey.shape == (2,)
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer(images, prompts[:2])


def test_missing_weights_errors(tmp_path, tiny_clip_dir, monkeypatch):
    monkeypatch.delenv("AUTOEFF_CLIP_MODEL", raising=False)
    monkeypatch.delenv("AUTOEFF_CLIP_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError, match="no CLIP model configured"):
        resolve_clip_source()
    (tmp_path / "open_clip_config.json").write_text(json.dumps(TINY_CFG))
    with pytest.raises(MissingWeightsError, match="no weights file"):
        ClipScorer(str(tmp_path))
    with pytest.raises(MissingWeightsError, match="has no weights"):
        resolve_clip_source("ViT-B-32")
    with pytest.raises(MissingWeightsError, match="not in the local Hugging Face cache"):
        resolve_clip_source("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(MissingWeightsError, match="not a folder nor an open_clip"):
        resolve_clip_source("no-such-model", "x")
    monkeypatch.setenv("AUTOEFF_CLIP_MODEL", str(tiny_clip_dir))
    assert resolve_clip_source()["model_name"].startswith("local-dir:")


def test_builtin_name_with_a_weights_file(tmp_path, monkeypatch):
    import open_clip
    from safetensors.torch import save_file

    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIGS",
                        {**open_clip.factory._MODEL_CONFIGS, "tiny-test": TINY_CFG["model_cfg"]})
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    scorer = ClipScorer("tiny-test", str(path))
    assert scorer(torch.rand(1, 3, 32, 32), ["a cat"]).shape == (1,)
