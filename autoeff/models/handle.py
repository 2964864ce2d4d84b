"""`ModelHandle`: a loaded pipeline plus what autoeff needs to know to search and measure it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autoeff.models.kinds import ModelKind, detect_kind, parse_label

# Named families: pipelines autoeff has tables for (the digits models' data and classifier, SDXL's and SD1.5's
# Align-Your-Steps schedules, the real models' depths). Every other pipeline's family is its kind's label
# (`ModelKind.label`, e.g. `flow-text-latent-transformer`).
FAMILIES: dict[str, dict[str, str]] = {
    "digits": {"denoiser": "unet", "conditioning": "class"},
    "digits-dit": {"denoiser": "transformer", "conditioning": "class"},
    "sd15": {"denoiser": "unet", "conditioning": "text"},
    "sdxl": {"denoiser": "unet", "conditioning": "text"},
    "pixart": {"denoiser": "transformer", "conditioning": "text"},
}


def is_family(name: Any) -> bool:
    """A named family or a kind label."""
    return isinstance(name, str) and (name in FAMILIES or parse_label(name) is not None)


def family_denoiser(name: str) -> str:
    """The denoiser attribute of a family (a named one, or a kind label's last part)."""
    if name in FAMILIES:
        return FAMILIES[name]["denoiser"]
    parsed = parse_label(name)
    if parsed is None:
        raise ValueError(f"family {name!r} is neither a named family ({', '.join(FAMILIES)}) nor a kind label")
    return parsed[3]


@dataclass
class ModelHandle:
    """A resolved model: the base pipeline (never mutated by a candidate) and its metadata.

    Attributes:
        spec: what the user asked for (`digits`, `sdxl`, a folder path, or `<pipeline>` for an object).
        pipeline: the loaded diffusers pipeline.
        family: one of `FAMILIES`, or the kind's label for any other pipeline.
        resolution: default image side in pixels.
        prompts: default prompts (text-to-image) or `None`.
        num_classes: number of class labels (class-conditional) or `None`.
        default_steps: the step count the baseline uses (the user's "before").
        identity: a short content hash of the weights and configs, used as a cache key.
        guidance_scale: the guidance scale passed to pipelines that take one (`None`: the pipeline's own).
        extra: further call arguments.
        kind: what the pipeline is (`models.kinds.ModelKind`); detected from the pipeline when not given.
        labels: the class labels to draw (class-conditional; default: every class in turn).
        negative_prompt: passed to text-to-image pipelines that take one.
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
    kind: ModelKind | None = None
    labels: list[int] | None = None
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        if not is_family(self.family):
            raise ValueError(f"family {self.family!r} is not one of {sorted(FAMILIES)} nor a kind label")
        if self.kind is None:
            self.kind = detect_kind(self.pipeline)
        if self.family not in FAMILIES and self.family != self.kind.label:
            raise ValueError(f"family {self.family!r} is not the label of the pipeline's kind ({self.kind.label})")

    @property
    def model_kind(self) -> ModelKind:
        """The kind (always set after construction)."""
        assert self.kind is not None  # __post_init__ sets it
        return self.kind

    @property
    def denoiser_name(self) -> str:
        """`unet` or `transformer`: the pipeline attribute holding the denoiser."""
        return self.model_kind.denoiser

    @property
    def conditioning(self) -> str:
        """`none`, `class` or `text`."""
        return self.model_kind.conditioning

    @property
    def denoiser(self) -> Any:
        return getattr(self.pipeline, self.denoiser_name)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipeline.scheduler.config.num_train_timesteps)
