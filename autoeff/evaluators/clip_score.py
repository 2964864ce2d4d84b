"""CLIP score (Hessel et al., 2021) for text-to-image models, with open_clip and local weights only.

Score per image: `100 * max(cos(image_embedding, text_embedding), 0)` (torchmetrics' scale), averaged over
images. torchmetrics' own `CLIPScore` downloads a model and breaks with transformers 5 (FACTS.md), so the
embeddings come from open_clip (`pip install 'autoeff[clip]'`), whose tokenizer works offline.

Where the weights come from (never downloaded):
  * a folder with `open_clip_config.json` and a weights file (open_clip's `local-dir:` layout), given as
    `model="/path/folder"` or `model="local-dir:/path/folder"`;
  * a built-in open_clip architecture name plus a local weights file: `model="ViT-B-32",
    pretrained="/path/open_clip_model.safetensors"`;
  * a built-in name plus a pretrained tag (`pretrained="laion2b_s34b_b79k"`) only if that tag's file is
    already in the Hugging Face cache.
Defaults come from `$AUTOEFF_CLIP_MODEL` and `$AUTOEFF_CLIP_WEIGHTS`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache
from PIL import Image

from autoeff.evaluators.features import MissingWeightsError

__all__ = ["ClipScorer", "clip_score", "resolve_clip_source"]

MODEL_ENV = "AUTOEFF_CLIP_MODEL"
WEIGHTS_ENV = "AUTOEFF_CLIP_WEIGHTS"
_HINT = (f"set {MODEL_ENV}=/path/to/open_clip_folder (open_clip_config.json + weights), or "
         f"{MODEL_ENV}=ViT-B-32 with {WEIGHTS_ENV}=/path/open_clip_model.safetensors")


def _open_clip() -> Any:
    try:
        import open_clip  # lazy: an optional extra, autoeff[clip]
    except ImportError as e:
        raise ImportError("CLIP score needs open_clip: pip install 'autoeff[clip]'") from e
    return open_clip


def _cached_tag_file(open_clip: Any, name: str, tag: str) -> tuple[str, dict]:
    """The local file of a pretrained tag, if it is already in the Hugging Face cache."""
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, get_pretrained_cfg  # optional extra

    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        raise MissingWeightsError(f"CLIP weights {tag!r} for {name!r}: not a file, not a known tag; {_HINT}")
    repo_id, filename = os.path.split(cfg.get("hf_hub", ""))
    if repo_id:
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        for fname in names:
            hit = try_to_load_from_cache(repo_id, fname)
            if isinstance(hit, str) and Path(hit).is_file():
                return hit, cfg
    raise MissingWeightsError(f"CLIP weights {name}/{tag} are not in the local Hugging Face cache and "
                              f"autoeff does not download; {_HINT}")


def resolve_clip_source(model: str | None = None, pretrained: str | None = None) -> dict[str, Any]:
    """Turn the user's model/weights into `create_model_and_transforms` arguments, or a one-line error."""
    model = model or os.environ.get(MODEL_ENV)
    pretrained = pretrained or os.environ.get(WEIGHTS_ENV)
    if not model:
        raise MissingWeightsError(f"no CLIP model configured for the CLIP score; {_HINT}")
    folder = Path(model[len("local-dir:"):] if model.startswith("local-dir:") else model).expanduser()
    if model.startswith("local-dir:") or folder.is_dir():
        if not (folder / "open_clip_config.json").is_file():
            raise MissingWeightsError(f"{folder} has no open_clip_config.json; {_HINT}")
        from open_clip.factory import _find_checkpoint_in_dir  # optional extra

        if _find_checkpoint_in_dir(folder) is None:
            raise MissingWeightsError(f"{folder} has no weights file (open_clip_model.safetensors); {_HINT}")
        return {"model_name": f"local-dir:{folder.resolve()}", "pretrained": None, "identity": str(folder)}
    open_clip = _open_clip()
    if model not in open_clip.list_models():
        raise MissingWeightsError(f"CLIP model {model!r} is not a folder nor an open_clip architecture; "
                                  f"{_HINT}")
    if not pretrained:
        raise MissingWeightsError(f"CLIP model {model!r} has no weights; {_HINT}")
    if Path(pretrained).expanduser().is_file():
        return {"model_name": model, "pretrained": str(Path(pretrained).expanduser()), "identity": pretrained}
    path, cfg = _cached_tag_file(open_clip, model, pretrained)
    return {"model_name": model, "pretrained": path, "identity": f"{model}/{pretrained}",
            "force_quick_gelu": bool(cfg.get("quick_gelu", False)),
            "image_mean": cfg.get("mean"), "image_std": cfg.get("std")}


class ClipScorer:
    """A loaded open_clip model, its image preprocessing and tokenizer; call it on images and prompts."""

    def __init__(self, model: str | None = None, pretrained: str | None = None, device: str = "cpu") -> None:
        open_clip = _open_clip()
        src = resolve_clip_source(model, pretrained)
        kwargs = {k: v for k, v in src.items() if k not in ("model_name", "identity") and v is not None}
        clip, _, preprocess = open_clip.create_model_and_transforms(src["model_name"], device=device,
                                                                    **kwargs)
        self.model = clip.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(src["model_name"])
        self.identity = src["identity"]
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Per-image CLIP scores `(N,)` for images `(N, 3, H, W)` in [0, 1] and one prompt per image."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        scores = []
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            arr = (chunk.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            pil = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB") for a in arr]
            pixels = torch.stack([self.preprocess(p) for p in pil]).to(self.device)
            tokens = self.tokenizer(list(prompts[i:i + batch_size])).to(self.device)
            img = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
            txt = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
            scores.append((100 * (img * txt).sum(-1)).clamp(min=0).cpu())
        return torch.cat(scores)


def clip_score(images: torch.Tensor, prompts: Sequence[str], scorer: ClipScorer) -> tuple[float, float]:
    """Mean and standard deviation of the per-image CLIP score."""
    s = scorer(images, prompts).double()
    return float(s.mean()), float(s.std()) if len(s) > 1 else 0.0
