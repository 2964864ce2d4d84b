"""Generate images from any supported pipeline on common random numbers.

Every sample `i` gets its initial noise from its own seed (`torch.Generator().manual_seed(seeds[i])`), so a
sample's noise does not depend on the batch it lands in, and every candidate sees exactly the same noise,
labels and prompts: differences between candidates are then not sampling noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from autoeff.models.handle import ModelHandle

_STEP_NOISE_OFFSET = 7_919_000_000


@dataclass(frozen=True)
class SampleSpec:
    """What to generate: one entry per image.

    `labels` for class-conditional families, `prompts` for text-to-image ones (cycled when shorter than
    `seeds`). `batch_size` is how many images go through one pipeline call.
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
    """`n` samples starting at `seed`; balanced class labels or the handle's prompts."""
    seeds = tuple(range(seed * 1_000_003, seed * 1_000_003 + n))
    if handle.conditioning == "class":
        k = handle.num_classes or 10
        return SampleSpec(seeds=seeds, labels=tuple(i % k for i in range(n)), batch_size=batch_size)
    prompts = tuple(handle.prompts or ["a photo"])
    return SampleSpec(seeds=seeds, prompts=tuple(prompts[i % len(prompts)] for i in range(n)),
                      batch_size=batch_size)


def latent_shape(handle: ModelHandle, pipe=None) -> tuple[int, int, int]:
    """`(C, H, W)` of the initial noise for one image."""
    pipe = pipe if pipe is not None else handle.pipeline
    den = getattr(pipe, handle.denoiser_name)
    c = int(den.config.in_channels)
    if handle.family in ("digits", "digits-dit"):
        return c, handle.resolution, handle.resolution
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    return c, handle.resolution // scale, handle.resolution // scale


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int], dtype=torch.float32) -> torch.Tensor:
    """Per-sample seeded Gaussian noise, `(len(seeds), *shape)`, on the CPU."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=dtype)
                        for s in seeds])


def call_pipeline(handle: ModelHandle, pipe, spec: SampleSpec, start: int, stop: int) -> torch.Tensor:
    """One pipeline call for samples `start:stop`; returns `(n, C, H, W)` float images in [0, 1] on the CPU."""
    den = getattr(pipe, handle.denoiser_name)
    param = next(den.parameters(), None)
    device = getattr(pipe, "_execution_device", None) or (param.device if param is not None else "cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    latents = initial_noise(spec.seeds[start:stop], latent_shape(handle, pipe)).to(device=device, dtype=dtype)
    # one generator per sample for stochastic solvers, seeded apart from the initial noise, so a sample's
    # noise never depends on the batch it lands in
    gen = [torch.Generator(device="cpu").manual_seed(int(s) + _STEP_NOISE_OFFSET) for s in spec.seeds[start:stop]]
    if handle.conditioning == "class":
        labels = ([spec.labels[i % len(spec.labels)] for i in range(start, stop)] if spec.labels
                  else [0] * (stop - start))
        out = pipe(class_labels=labels, latents=latents, generator=gen, output_type="pt",
                   num_inference_steps=handle.default_steps).images
    else:
        prompts = ([spec.prompts[i % len(spec.prompts)] for i in range(start, stop)] if spec.prompts
                   else ["a photo"] * (stop - start))
        kwargs = dict(handle.extra)
        if handle.guidance_scale is not None:
            kwargs.setdefault("guidance_scale", handle.guidance_scale)
        out = pipe(prompt=prompts, latents=latents, generator=gen, output_type="pt",
                   height=handle.resolution, width=handle.resolution,
                   num_inference_steps=handle.default_steps, **kwargs).images
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out)
    return out.detach().float().cpu()


def generate(handle: ModelHandle, pipe, spec: SampleSpec) -> torch.Tensor:
    """All samples of `spec`, in order, `(N, C, H, W)` in [0, 1] on the CPU."""
    chunks = []
    for start in range(0, len(spec), spec.batch_size):
        chunks.append(call_pipeline(handle, pipe, spec, start, min(len(spec), start + spec.batch_size)))
    return torch.cat(chunks)
