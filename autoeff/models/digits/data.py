"""scikit-learn's `load_digits` as 16x16 images in [-1, 1]: the training data of the built-in models.

The data ships inside scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

RESOLUTION = 16
NUM_CLASSES = 10


def load_digits_16(split: str = "all", seed: int = 0, holdout: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(images, labels)`: images `(N, 1, 16, 16)` float32 in [-1, 1], labels `(N,)` int64.

    `split` is `all`, `train` or `test`; the train/test split is a seeded permutation (`holdout` of the data
    is the test part), so the classifier's held-out accuracy is measured on images it never saw.
    """
    from sklearn.datasets import load_digits  # lazy: heavy, and needed once per process (the data is cached)

    if split not in ("all", "train", "test"):
        raise ValueError(f"split {split!r} is not one of all, train, test")
    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N,1,8,8) in [0,1]
    x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    y = torch.from_numpy(data.target.astype(np.int64))
    if split == "all":
        return x, y
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(x) * holdout))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return x[idx], y[idx]
