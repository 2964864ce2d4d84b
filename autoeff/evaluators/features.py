"""Feature extractors for FID/KID: the digits classifier's penultimate layer, or a local Inception-v3.

Every extractor is an `nn.Module` taking images `(N, C, H, W)` in [0, 1] (what `autoeff.models.generate`
returns) and returning `(N, num_features)` features; it has a `name` and an `identity` (a hash of its
weights) for cache keys. torchmetrics' FID/KID accept such a module as `feature=` and then need neither
torch-fidelity nor a download (FACTS.md).

Inception-v3 weights: autoeff never downloads them. Provide torchvision's `inception_v3` ImageNet state dict
as a safetensors file, via `AUTOEFF_INCEPTION_WEIGHTS=/path/inception_v3.safetensors` (or the `weights=`
argument). Make the file once, on a machine with internet access:

    python -c "from torchvision.models import inception_v3, Inception_V3_Weights as W; \
from safetensors.torch import save_file; \
save_file(inception_v3(weights=W.IMAGENET1K_V1).state_dict(), 'inception_v3.safetensors')"

A `.pt`/`.pth` state dict is accepted too and read with `torch.load(weights_only=True)` (tensors only, no
code is unpickled). These are torchvision's weights, not the TF-ported FID Inception of Heusel et al.:
values are comparable with each other, not with published FIDs. Without the variable, the file torchvision
itself downloads (`inception_v3_google-0cc3c7bd.pth`) is used when it is already in the torch hub cache
(`$TORCH_HOME/hub/checkpoints/`, default `~/.cache/torch/hub/checkpoints/`).

FID/KID against a user's folder of real images (`--reference`) uses Inception when its weights are here, and
otherwise `PixelFeatures`, a weight-free stand-in (the images' colour layout at 8x8), named in every figure it
gives; `reference_extractor` picks, and says in one line what to place where for Inception.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from autoeff.models.builtin import WEIGHTS, load_classifier
from autoeff.models.digits.architectures import DigitsClassifier

__all__ = [
    "DigitsFeatures",
    "FeatureFallbackWarning",
    "InceptionFeatures",
    "MissingWeightsError",
    "PixelFeatures",
    "reference_extractor",
    "extract_features",
    "file_identity",
    "inception_weights_path",
]

INCEPTION_ENV = "AUTOEFF_INCEPTION_WEIGHTS"
# the file torchvision downloads for `inception_v3(weights=IMAGENET1K_V1)`, looked up in the torch hub cache
TORCHVISION_INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"


class MissingWeightsError(FileNotFoundError):
    """Weights an evaluator needs are not on this machine (autoeff never downloads them)."""


@lru_cache(maxsize=16)
def _file_identity(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def file_identity(path: str | Path) -> str:
    """sha256 of a weights file (first 16 hex digits), memoised per (path, size, mtime)."""
    st = os.stat(path)
    return _file_identity(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


class DigitsFeatures(nn.Module):
    """Penultimate features (128-d) of the shipped digits classifier, on images in [0, 1]."""

    name = "digits-classifier"

    def __init__(self, classifier: DigitsClassifier | None = None, device: str = "cpu") -> None:
        super().__init__()

        if classifier is None:
            classifier = load_classifier(device)  # shared and cached per device: never `.to()` it
            self.identity = file_identity(WEIGHTS / "classifier" / "model.safetensors")
        else:
            raw = b"".join(p.detach().cpu().numpy().tobytes() for p in classifier.parameters())
            self.identity = "custom-" + hashlib.sha256(raw).hexdigest()[:12]
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = int(classifier.feature_dim)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"digits features need (N, 1, 16, 16) images in [0, 1], got "
                             f"{tuple(images.shape)}")
        return self.classifier.features(images.float() * 2 - 1)


def hub_inception_path() -> Path:
    """Where torchvision's own download of the Inception-v3 weights lies in the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_INCEPTION_FILE


def inception_weights_path(weights: str | Path | None = None) -> Path:
    """The Inception-v3 weights file from `weights`, `$AUTOEFF_INCEPTION_WEIGHTS` or the torch hub cache, or a
    one-line error naming what to place where."""
    raw = weights or os.environ.get(INCEPTION_ENV)
    if not raw and hub_inception_path().is_file():
        return hub_inception_path()
    if not raw:
        raise MissingWeightsError(
            f"Inception-v3 weights are not on this machine: place torchvision's {TORCHVISION_INCEPTION_FILE} in "
            f"{hub_inception_path().parent}/ or set {INCEPTION_ENV}=/path/inception_v3.safetensors (torchvision's "
            "inception_v3 state dict; see autoeff/evaluators/features.py for the one-liner)")
    path = Path(raw).expanduser()
    if not path.is_file():
        source = "weights=" if weights else INCEPTION_ENV
        raise MissingWeightsError(f"Inception-v3 weights not found at {path} (from {source}); "
                                  "point it at an existing file")
    return path


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":

        return load_file(str(path))
    if path.suffix in (".pt", ".pth", ".bin"):
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        return state
    raise ValueError(f"{path}: unknown weights format {path.suffix!r}; use .safetensors (or .pt / .pth)")


class InceptionFeatures(nn.Module):
    """2048-d pool features of torchvision's Inception-v3 (Szegedy et al., 2016) from a local weights file."""

    name = "inception-v3"

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        from torchvision.models import inception_v3  # lazy: torchvision comes with the optional [clip] extra

        path = inception_weights_path(weights)
        model = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        state = {k: v for k, v in _load_state_dict(path).items() if not k.startswith("AuxLogits.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} is not a torchvision inception_v3 state dict: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        model.fc = nn.Identity()
        self.model = model.eval().requires_grad_(False)
        self.identity = file_identity(path)
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        # torchvision's ImageNet Inception weights are ported from Google's, which expect [-1, 1] inputs
        # (what `transform_input=True` converts ImageNet-normalised inputs into).
        return self.model(x * 2 - 1)


class PixelFeatures(nn.Module):
    """A weight-free feature space: each image area-averaged to 8x8 RGB (192 values), in [0, 1].

    What FID/KID against `--reference` falls back to when no Inception weights are on this machine: it compares
    colour and coarse layout, not content, so its figures are comparable with each other only, and every one
    of them says it used these features (`name`).
    """

    name = "pixels-8x8"
    identity = "pixels-8x8-v1"
    num_features = 192

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_device_anchor", torch.zeros(1))  # so `extract_features` finds the device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return F.adaptive_avg_pool2d(x[:, :3], 8).flatten(1)


class FeatureFallbackWarning(UserWarning):
    """FID/KID against the user's images uses the weight-free `PixelFeatures` (no Inception weights here)."""


def reference_extractor(device: str = "cpu", weights: str | Path | None = None) -> tuple[nn.Module, str | None]:
    """The feature extractor for FID/KID against a folder of real images, and a one-line note when it is not
    Inception (what to place where to get Inception)."""
    try:
        return InceptionFeatures(weights).to(device), None
    except MissingWeightsError as e:
        return PixelFeatures().to(device), (f"FID/KID against --reference use 8x8 pixel features (no Inception "
                                            f"weights): {str(e).split(': ', 1)[-1]}")


@torch.no_grad()
def extract_features(extractor: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features of `images` (N, C, H, W) in [0, 1], in batches, as float64 on the CPU."""
    param = next(extractor.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    out = [extractor(images[i:i + batch_size].to(device)).double().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)
