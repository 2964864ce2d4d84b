"""`ModelHandle`: a loaded pipeline plus what autoeff needs to know to search and measure it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Families autoeff knows how to call. The denoiser attribute is where the knobs act.
FAMILIES: dict[str, dict[str, str]] = {
    "digits": {"denoiser": "unet", "conditioning": "class"},
    "digits-dit": {"denoiser": "transformer", "conditioning": "class"},
    "sd15": {"denoiser": "unet", "conditioning": "text"},
    "sdxl": {"denoiser": "unet", "conditioning": "text"},
    "pixart": {"denoiser": "transformer", "conditioning": "text"},
}


@dataclass
class ModelHandle:
    """A resolved model: the base pipeline (never mutated by a candidate) and its metadata.

    Attributes:
        spec: what the user asked for (`digits`, `sdxl`, a folder path, or `<pipeline>` for an object).
        pipeline: the loaded diffusers pipeline.
        family: one of `FAMILIES`.
        resolution: default image side in pixels.
        prompts: default prompts (text-to-image) or `None`.
        num_classes: number of class labels (class-conditional) or `None`.
        default_steps: the step count the baseline uses (the user's "before").
        identity: a short content hash of the weights and configs, used as a cache key.
        guidance_scale: classifier-free guidance used for text-to-image families.
        extra: family-specific call arguments.
    """

    spec: str
    pipeline: Any
    family: str
    resolution: int
    prompts: list[str] | None = None
    num_classes: int | None = None
    default_steps: int = 50
    identity: str = ""
    guidance_scale: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {sorted(FAMILIES)}")

    @property
    def denoiser_name(self) -> str:
        """`unet` or `transformer`: the pipeline attribute holding the denoiser."""
        return FAMILIES[self.family]["denoiser"]

    @property
    def conditioning(self) -> str:
        """`class` or `text`."""
        return FAMILIES[self.family]["conditioning"]

    @property
    def denoiser(self) -> Any:
        return getattr(self.pipeline, self.denoiser_name)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipeline.scheduler.config.num_train_timesteps)
