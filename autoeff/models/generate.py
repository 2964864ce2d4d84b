"""Generate images from any pipeline of a covered kind on common random numbers: the one call adapter.

`call_pipeline` calls a pipeline the way its kind says (`models.kinds.ModelKind`): prompts (and a negative
prompt) to a text-to-image pipeline, class labels to a class-conditional one, a batch size to an unconditional
one; the resolution, the guidance scale and the step count where the pipeline takes them; `output_type="pt"`,
with whatever comes back (a tensor, an array, PIL images) turned into `(N, C, H, W)` floats in [0, 1].

Every sample `i` gets its initial noise from its own seed, so a sample's noise does not depend on the batch it
lands in, and every candidate sees exactly the same noise, labels and prompts: differences between candidates
are then not sampling noise. A pipeline that takes image-shaped `latents` gets them
(`torch.Generator().manual_seed(seeds[i])`), and a second generator per sample for a stochastic solver's noise;
any other (one that packs its latents, as Flux does, or takes none, as DDPM does) gets one generator per
sample seeded with the sample's seed, from which diffusers' `randn_tensor` draws each image's noise alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from autoeff.models.handle import ModelHandle

_STEP_NOISE_OFFSET = 7_919_000_000


@dataclass(frozen=True)
class SampleSpec:
    """What to generate: one entry per image.

    `labels` for class-conditional models, `prompts` for text-to-image ones (cycled when shorter than
    `seeds`), neither for unconditional ones. `batch_size` is how many images go through one pipeline call.
    """

    seeds: tuple[int, ...]
    labels: tuple[int, ...] | None = None
    prompts: tuple[str, ...] | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("a SampleSpec needs at least one seed")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def __len__(self) -> int:
        return len(self.seeds)

    def key(self) -> dict:
        """A JSON-able description, used in cache keys."""
        return {"seeds": list(self.seeds), "labels": None if self.labels is None else list(self.labels),
                "prompts": None if self.prompts is None else list(self.prompts), "batch_size": self.batch_size}


def default_spec(handle: ModelHandle, n: int, seed: int = 0, batch_size: int = 64) -> SampleSpec:
    """`n` samples starting at `seed`; the handle's labels (default: every class in turn) or prompts, cycled."""
    seeds = tuple(range(seed * 1_000_003, seed * 1_000_003 + n))
    if handle.conditioning == "class":
        pool = list(handle.labels or range(handle.num_classes or 10))
        return SampleSpec(seeds=seeds, labels=tuple(pool[i % len(pool)] for i in range(n)), batch_size=batch_size)
    if handle.conditioning == "none":
        return SampleSpec(seeds=seeds, batch_size=batch_size)
    prompts = tuple(handle.prompts or ["a photo"])
    return SampleSpec(seeds=seeds, prompts=tuple(prompts[i % len(prompts)] for i in range(n)),
                      batch_size=batch_size)


def latent_shape(handle: ModelHandle, pipe=None) -> tuple[int, int, int]:
    """`(C, H, W)` of the initial noise for one image (for pipelines that take image-shaped latents)."""
    pipe = pipe if pipe is not None else handle.pipeline
    den = getattr(pipe, handle.denoiser_name)
    c = int(den.config.in_channels)
    if handle.model_kind.space == "pixel":
        return c, handle.resolution, handle.resolution
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    return c, handle.resolution // scale, handle.resolution // scale


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int], dtype=torch.float32) -> torch.Tensor:
    """Per-sample seeded Gaussian noise, `(len(seeds), *shape)`, on the CPU."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=dtype)
                        for s in seeds])


def to_images(out) -> torch.Tensor:
    """A pipeline's images (a `(N, C, H, W)` tensor, a `(N, H, W, C)` array or a list of PIL images) as `(N, C, H,
    W)` float32 in [0, 1] on the CPU."""
    if isinstance(out, list | tuple):
        out = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in out])
        out = out[..., None] if out.ndim == 3 else out
    if isinstance(out, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).float()
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out)
    return out.detach().float().cpu()


def call_pipeline(handle: ModelHandle, pipe, spec: SampleSpec, start: int, stop: int,
                  steps: int | None = None) -> torch.Tensor:
    """One pipeline call for samples `start:stop`, at the model's default step count or `steps`; returns
    `(n, C, H, W)` float images in [0, 1] on the CPU."""
    kind = handle.model_kind
    seeds = spec.seeds[start:stop]
    n = len(seeds)
    kwargs: dict = {"output_type": "pt", "num_inference_steps": handle.default_steps if steps is None else steps}
    if kind.noise_input == "latents":
        den = getattr(pipe, handle.denoiser_name)
        param = next(den.parameters(), None)
        device = getattr(pipe, "_execution_device", None) or (param.device if param is not None else "cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        kwargs["latents"] = initial_noise(seeds, latent_shape(handle, pipe)).to(device=device, dtype=dtype)
        # one generator per sample for stochastic solvers, seeded apart from the initial noise, so a sample's
        # noise never depends on the batch it lands in
        offset = _STEP_NOISE_OFFSET
    else:
        offset = 0  # the generators draw the initial noise, then (a stochastic solver) the steps' noise
    if kind.takes("generator"):
        kwargs["generator"] = [torch.Generator(device="cpu").manual_seed(int(s) + offset) for s in seeds]
    if kind.conditioning == "class":
        kwargs["class_labels"] = ([spec.labels[i % len(spec.labels)] for i in range(start, stop)] if spec.labels
                                  else [0] * n)
    elif kind.conditioning == "text":
        kwargs["prompt"] = ([spec.prompts[i % len(spec.prompts)] for i in range(start, stop)] if spec.prompts
                            else ["a photo"] * n)
        if handle.negative_prompt is not None and kind.takes("negative_prompt"):
            kwargs["negative_prompt"] = [handle.negative_prompt] * n
    elif kind.takes("batch_size"):
        kwargs["batch_size"] = n
    if kind.takes("height") and kind.takes("width"):
        kwargs["height"] = kwargs["width"] = handle.resolution
    if handle.guidance_scale is not None and kind.takes("guidance_scale"):
        kwargs["guidance_scale"] = handle.guidance_scale
    kwargs.update(handle.extra)
    return to_images(pipe(**kwargs).images)


def generate(handle: ModelHandle, pipe, spec: SampleSpec) -> torch.Tensor:
    """All samples of `spec`, in order, `(N, C, H, W)` in [0, 1] on the CPU."""
    chunks = []
    for start in range(0, len(spec), spec.batch_size):
        chunks.append(call_pipeline(handle, pipe, spec, start, min(len(spec), start + spec.batch_size)))
    return torch.cat(chunks)
