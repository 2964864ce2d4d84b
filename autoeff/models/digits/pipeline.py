"""Class-conditional pixel-space pipelines for the built-in digits models.

Why a small `DiffusionPipeline` subclass and not `DDPMPipeline`: `DDPMPipeline` takes no class labels, no
custom timesteps and no initial noise, and `DiTPipeline` requires a VAE and classifier-free guidance. These
two classes keep the diffusers loop (`set_timesteps` -> `scale_model_input` -> denoiser -> `step`) visible
and otherwise behave like any diffusers pipeline (`save_pretrained`, `from_pretrained`, `to`, progress bar).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel, ImagePipelineOutput, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from autoeff.models.digits.data import NUM_CLASSES

Denoiser = Any  # a diffusers ModelMixin: its blocks and config are attributes mypy cannot see


def set_schedule(
    scheduler: SchedulerMixin,
    num_inference_steps: int | None,
    timesteps: Sequence[int] | None,
    sigmas: Sequence[float] | None,
    device: torch.device | str | None,
) -> torch.Tensor:
    """Call `scheduler.set_timesteps` the way diffusers' `retrieve_timesteps` does, and return its timesteps."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass either timesteps or sigmas, not both")
    params = set(inspect.signature(scheduler.set_timesteps).parameters)
    if timesteps is not None:
        if "timesteps" not in params:
            raise ValueError(f"{type(scheduler).__name__} does not accept custom timesteps")
        scheduler.set_timesteps(timesteps=list(timesteps), device=device)
    elif sigmas is not None:
        if "sigmas" not in params:
            raise ValueError(f"{type(scheduler).__name__} does not accept custom sigmas")
        scheduler.set_timesteps(sigmas=list(sigmas), device=device)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler.timesteps


class _DigitsPipelineBase(DiffusionPipeline):
    """The shared sampling loop; subclasses say which denoiser they hold."""

    def _denoiser(self) -> Denoiser:
        raise NotImplementedError

    def _predict(self, sample: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def sample_size(self) -> int:
        return int(self._denoiser().config.sample_size)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int] | torch.Tensor | None = None,
        batch_size: int | None = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate digits.

        Args:
            class_labels: digits 0-9 to draw, one per image; when `None`, `batch_size` images of 0,1,2,...
            num_inference_steps: steps of the scheduler's own spacing (ignored if `timesteps`/`sigmas` given).
            timesteps / sigmas: a custom schedule, passed to `scheduler.set_timesteps`.
            latents: initial noise `(B, 1, 16, 16)` (common random numbers across candidates).
            output_type: `pil`, `np` (`(B, 16, 16, 1)` in [0, 1]) or `pt` (`(B, 1, 16, 16)` in [0, 1]).
        """
        denoiser = self._denoiser()
        device = self._execution_device
        dtype = next(denoiser.parameters()).dtype
        if class_labels is None:
            class_labels = [i % NUM_CLASSES for i in range(batch_size or 1)]
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).to(device)
        if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES:
            raise ValueError(f"class_labels must be digits 0-{NUM_CLASSES - 1}, got {labels.tolist()}")
        size = self.sample_size
        shape = (labels.shape[0], int(denoiser.config.in_channels), size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            latents = latents.to(device=device, dtype=dtype)
        steps = set_schedule(self.scheduler, num_inference_steps, timesteps, sigmas, device)
        # after set_timesteps, as in diffusers' pipelines: Euler's initial scale depends on the timesteps
        latents = latents * self.scheduler.init_noise_sigma
        accepts_generator = "generator" in set(inspect.signature(self.scheduler.step).parameters)
        extra = {"generator": generator} if accepts_generator else {}
        for t in self.progress_bar(steps):
            model_input = self.scheduler.scale_model_input(latents, t)
            t_batch = t.reshape(1).expand(latents.shape[0]).to(device)
            noise_pred = self._predict(model_input, t_batch, labels)
            latents = self.scheduler.step(noise_pred, t, latents, **extra).prev_sample

        image = (latents.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            out: object = image
        else:
            arr = image.permute(0, 2, 3, 1).cpu().numpy()
            out = arr if output_type == "np" else self.numpy_to_pil(arr)
        if not return_dict:
            return (out,)
        return ImagePipelineOutput(images=out)

    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> list:

        arr = (images * 255).round().astype("uint8")
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]


class DigitsPipeline(_DigitsPipelineBase):
    """The built-in class-conditional U-Net (`UNet2DModel`) pipeline."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def _denoiser(self) -> Denoiser:
        return self.unet

    def _predict(self, sample: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, t, class_labels=labels).sample


class DigitsDiTPipeline(_DigitsPipelineBase):
    """The built-in class-conditional diffusion transformer (`DiTTransformer2DModel`) pipeline."""

    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer: DiTTransformer2DModel, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    def _denoiser(self) -> Denoiser:
        return self.transformer

    def _predict(self, sample: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.transformer(sample, timestep=t, class_labels=labels).sample
