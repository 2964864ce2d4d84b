"""The built-in models: `digits` (U-Net) and `digits-dit` (DiT), trained by `autoeff.models.digits.train`.

Weights ship with the package as safetensors + JSON and load offline.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from autoeff.models.digits.architectures import DigitsClassifier
from autoeff.models.digits.data import NUM_CLASSES, RESOLUTION
from autoeff.models.digits.pipeline import DigitsDiTPipeline, DigitsPipeline
from autoeff.models.handle import ModelHandle

WEIGHTS = Path(__file__).parent / "digits" / "weights"
BUILTIN = {"digits": ("digits-unet", DigitsPipeline), "digits-dit": ("digits-dit", DigitsDiTPipeline)}


class MissingBuiltinWeightsError(FileNotFoundError):
    """The built-in weights are not in the installed package."""


def folder_identity(folder: Path) -> str:
    """sha256 over the JSON and safetensors files of a saved pipeline folder (first 16 hex digits)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".json", ".safetensors"):
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def load_builtin(name: str, device: str | torch.device = "cpu") -> ModelHandle:
    """Load `digits` or `digits-dit` from the package's weights."""
    if name not in BUILTIN:
        raise ValueError(f"{name!r} is not a built-in model; built-in: {', '.join(BUILTIN)}")
    sub, cls = BUILTIN[name]
    folder = WEIGHTS / sub
    if not (folder / "model_index.json").is_file():
        raise MissingBuiltinWeightsError(
            f"built-in weights for {name!r} are missing at {folder}; train them with "
            f"`python -m autoeff.models.digits.train {'unet' if name == 'digits' else 'dit'}`")
    pipe = cls.from_pretrained(str(folder)).to(device)
    pipe.set_progress_bar_config(disable=True)
    return ModelHandle(spec=name, pipeline=pipe, family=name, resolution=RESOLUTION, num_classes=NUM_CLASSES,
                       default_steps=50, identity=folder_identity(folder))


@lru_cache(maxsize=4)
def load_classifier(device: str = "cpu") -> DigitsClassifier:
    """The shipped digits classifier (eval mode, no grad); its penultimate features define the digits FID."""
    path = WEIGHTS / "classifier" / "model.safetensors"
    if not path.is_file():
        raise MissingBuiltinWeightsError(
            f"the digits classifier is missing at {path}; train it with "
            "`python -m autoeff.models.digits.train classifier`")
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path)))
    model.eval().requires_grad_(False)
    return model.to(device)
