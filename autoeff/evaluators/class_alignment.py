"""Class alignment for class-conditional models: the shipped classifier's accuracy on the requested labels.

A fast candidate that draws a well-formed 3 when asked for an 8 has a fine FID but is wrong; this catches it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoeff.models.builtin import load_classifier

__all__ = ["class_accuracy"]


@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                   classifier: nn.Module | None = None, batch_size: int = 512) -> float:
    """Fraction of `images` (N, 1, 16, 16) in [0, 1] that `classifier` (default: the shipped digits
    classifier, which takes [-1, 1]) assigns to the requested `labels`."""
    if classifier is None:

        classifier = load_classifier()
    target = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(list(labels))
    target = target.long().flatten()
    if len(target) != len(images):
        raise ValueError(f"{len(images)} images but {len(target)} labels; pass one label per image")
    if len(images) == 0:
        raise ValueError("class_accuracy needs at least one image")
    param = next(classifier.parameters())
    batches = [classifier(images[i:i + batch_size].to(param.device, param.dtype) * 2 - 1).argmax(1).cpu()
               for i in range(0, len(images), batch_size)]
    preds = torch.cat(batches)
    return float((preds == target).double().mean())
