"""Architectures of the built-in models: a class-conditional U-Net, a class-conditional DiT, a classifier.

The denoisers are stock diffusers models (`UNet2DModel`, `DiTTransformer2DModel`) so every knob that works
on them is exercised on the same code users run; only their sizes are chosen here.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, DiTTransformer2DModel, UNet2DModel
from torch import nn

from autoeff.models.digits.data import NUM_CLASSES, RESOLUTION


def build_unet() -> UNet2DModel:
    """About 1M parameters: block_out_channels (32, 64, 64), one layer per block, no attention."""
    return UNet2DModel(
        sample_size=RESOLUTION,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=NUM_CLASSES,
    )


def build_dit() -> DiTTransformer2DModel:
    """A small DiT (Peebles & Xie, 2023): patch size 2 on 16x16 (64 tokens), 6 blocks of width 128."""
    return DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=1,
        out_channels=1,
        num_layers=6,
        sample_size=RESOLUTION,
        patch_size=2,
        norm_num_groups=8,
        num_embeds_ada_norm=NUM_CLASSES,
    )


def build_scheduler() -> DDPMScheduler:
    """The 1000-step DDPM training schedule (Ho et al., 2020): linear betas 1e-4..0.02, epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=True,
    )


class DigitsClassifier(nn.Module):
    """A small CNN for 16x16 digits; its penultimate `feature_dim` features are the digits FID's feature space."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.GroupNorm(8, 32),
            nn.SiLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.GroupNorm(8, 32),
            nn.SiLU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GroupNorm(8, 64),
            nn.SiLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.GroupNorm(8, 64),
            nn.SiLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, self.feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(self.feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images in [-1, 1], shape `(N, 1, 16, 16)`."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
