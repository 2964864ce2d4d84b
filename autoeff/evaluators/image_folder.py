"""A folder of the user's real images (`--reference DIR`), read and checked for FID/KID against them.

Images are read with Pillow, converted to RGB and scaled to [0, 1], `(N, 3, H, W)`, like the images a pipeline
returns (`autoeff.models.generate`). Every image must have the same size (the feature extractors resize, but a
folder of mixed sizes is usually a mistake: thumbnails mixed with originals); anything else in the folder is
ignored. The checks read only the image headers, so a large folder is refused (or accepted) quickly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_IMAGES = 50_000
MAX_SIDE = 8192


class ReferenceFolderError(ValueError):
    """The reference folder cannot be used; the message (one line) says why and what to do."""


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, in name order."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_folder(folder: str | Path) -> tuple[int, tuple[int, int]]:
    """`(number of images, (width, height))` of a usable reference folder, or ReferenceFolderError."""
    path = Path(folder)
    if not path.is_dir():
        raise ReferenceFolderError(f"--reference {path} is not a folder")
    files = image_files(path)
    if not files:
        raise ReferenceFolderError(f"--reference {path} holds no images ({', '.join(IMAGE_SUFFIXES)}); put the real "
                                   "images to compare with there")
    if len(files) > MAX_IMAGES:
        raise ReferenceFolderError(f"--reference {path} holds {len(files)} images; use at most {MAX_IMAGES}")
    sizes: dict[tuple[int, int], str] = {}
    for f in files:
        try:
            with Image.open(f) as im:
                size = (int(im.width), int(im.height))
        except (OSError, UnidentifiedImageError, ValueError):
            raise ReferenceFolderError(f"--reference {path}: {f.name} is not a readable image") from None
        if max(size) > MAX_SIDE:
            raise ReferenceFolderError(f"--reference {path}: {f.name} is {size[0]}x{size[1]}, larger than "
                                       f"{MAX_SIDE} pixels a side")
        sizes.setdefault(size, f.name)
        if len(sizes) > 1:
            (a, fa), (b, fb) = list(sizes.items())[:2]
            raise ReferenceFolderError(f"--reference {path} holds images of mixed sizes ({fa} is {a[0]}x{a[1]}, "
                                       f"{fb} is {b[0]}x{b[1]}); give images of one size")
    return len(files), next(iter(sizes))


def load_folder(folder: str | Path) -> torch.Tensor:
    """Every image of a checked folder as `(N, 3, H, W)` float32 in [0, 1]."""
    check_folder(folder)
    arrays = []
    for f in image_files(folder):
        with Image.open(f) as im:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


__all__ = ["ReferenceFolderError", "check_folder", "load_folder", "image_files", "IMAGE_SUFFIXES"]
