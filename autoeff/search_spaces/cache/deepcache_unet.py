"""DeepCache for diffusers U-Nets (Ma, Fang & Wang, 2024, "DeepCache: Accelerating Diffusion Models for
Free").

On a full step the whole U-Net runs and the input of up block `D - branch` (the feature map that the skip
branch at depth `branch` merges with) is kept; on the steps between, only conv_in, the first `branch` down
blocks, the last `branch` up blocks and conv_out run, on the new input and timestep, and the kept feature
map stands in for everything deeper.

Written by hand because no maintained library does this for diffusers 0.42: the `deepcache` package (0.1.1)
fails to import its SD/SDXL helpers with diffusers 0.42 and works by monkeypatching the U-Net's block
forwards in place, which would change the base pipeline every candidate shares; diffusers' own cache hooks
target transformers. So the wrappers below hold references to the base U-Net's submodules and re-implement
`UNet2DModel.forward` / `UNet2DConditionModel.forward` of diffusers 0.42.1 (same modules, same order, same
arguments, so a full step is bit-identical), for the code paths the digits, SD1.5 and SDXL pipelines use.
ControlNet / T2I-Adapter residuals, GLIGEN and `image_hint` conditioning are refused with an error.

Granularity is the block (DeepCache also offers finer, per-layer branches). On shallow steps down block
`branch - 1` runs whole, including its downsampler, whose output only the deep part reads: one strided conv
of extra work, kept to call diffusers' blocks unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from autoeff.search_spaces.base import ConfigError
from autoeff.search_spaces.cache.base import CachedDenoiser, Config


class _DeepCacheUNetBase(CachedDenoiser):
    """Shared state: the cached deep feature map and how many skip residuals the shallow up blocks read."""

    # `unet` is a diffusers U-Net (Any): its blocks and config are attributes mypy cannot see.
    def __init__(self, unet: Any, config: Config,
                 run_length: Callable[[], int | None] | None = None) -> None:
        super().__init__(unet, config, run_length)
        if len(unet.up_blocks) != len(unet.down_blocks):
            raise ConfigError(f"DeepCache needs as many up blocks as down blocks; this {type(unet).__name__} "
                              f"has {len(unet.down_blocks)} down and {len(unet.up_blocks)} up blocks")
        self.branch = config.branch
        self._deep: torch.Tensor | None = None
        self._num_res: int | None = None

    @property
    def first_cached_up_block(self) -> int:
        """Index of the first up block on the shallow branch (its input is the cached feature map)."""
        return len(self.base.down_blocks) - self.branch

    def clear_cache(self) -> None:
        self._deep = None
        self._num_res = None

    def _keep(self, sample: torch.Tensor, res: tuple[torch.Tensor, ...]) -> None:
        if self.stores_cache:
            self._deep = sample
            self._num_res = len(res)

    def _cached(self, sample: torch.Tensor, res: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple]:
        """The kept deep feature map and the skip residuals the shallow up blocks read (deep ones dropped)."""
        if self._deep is None or self._num_res is None:
            raise RuntimeError("DeepCache has no features for a shallow step; call reset() before a run")
        if self._deep.shape[0] != sample.shape[0] or len(res) < self._num_res:
            raise RuntimeError(f"DeepCache features were cached for a batch of {self._deep.shape[0]}, this "
                               f"call has {sample.shape[0]}; call reset() between runs of other shapes")
        return self._deep, res[: self._num_res]


class DeepCacheUNet2D(_DeepCacheUNetBase):
    """DeepCache around a `UNet2DModel` (the digits U-Net); `forward` has its signature."""

    def __init__(self, unet: UNet2DModel, config: Config,
                 run_length: Callable[[], int | None] | None = None) -> None:
        super().__init__(unet, config, run_length)
        skip = [type(b).__name__ for b in (*unet.down_blocks, *unet.up_blocks) if hasattr(b, "skip_conv")]
        if skip:
            raise ConfigError(f"DeepCache does not support UNet2DModel skip blocks ({sorted(set(skip))})")

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple:
        full = self.schedule.next_call(timestep)
        u = self.base
        # Mirrors diffusers 0.42.1 UNet2DModel.forward, steps 0-6.
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0

        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.long, device=sample.device)
        elif torch.is_tensor(timesteps) and len(timesteps.shape) == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=timesteps.device)
        t_emb = u.time_proj(timesteps)
        t_emb = t_emb.to(dtype=u.dtype)
        emb = u.time_embedding(t_emb)

        if u.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when doing class conditioning")
            if u.config.class_embed_type == "timestep":
                class_labels = u.time_proj(class_labels)
            class_emb = u.class_embedding(class_labels).to(dtype=u.dtype)
            emb = emb + class_emb
        elif u.class_embedding is None and class_labels is not None:
            raise ValueError("class_embedding needs to be initialized in order to use class conditioning")

        sample = u.conv_in(sample)

        down_block_res_samples: tuple[torch.Tensor, ...] = (sample,)
        for downsample_block in u.down_blocks if full else u.down_blocks[: self.branch]:
            sample, res_samples = downsample_block(hidden_states=sample, temb=emb)
            down_block_res_samples += res_samples

        first = self.first_cached_up_block
        if full:
            if u.mid_block is not None:
                sample = u.mid_block(sample, emb)
        else:
            sample, down_block_res_samples = self._cached(sample, down_block_res_samples)

        for i, upsample_block in enumerate(u.up_blocks):
            if not full and i < first:
                continue
            if full and i == first:
                self._keep(sample, down_block_res_samples)
            res_samples = down_block_res_samples[-len(upsample_block.resnets) :]
            down_block_res_samples = down_block_res_samples[: -len(upsample_block.resnets)]
            sample = upsample_block(sample, res_samples, emb)

        sample = u.conv_norm_out(sample)
        sample = u.conv_act(sample)
        sample = u.conv_out(sample)

        if u.config.time_embedding_type == "fourier":
            timesteps = timesteps.reshape((sample.shape[0], *([1] * len(sample.shape[1:]))))
            sample = sample / timesteps

        if not return_dict:
            return (sample,)
        return UNet2DOutput(sample=sample)


class DeepCacheUNet2DCondition(_DeepCacheUNetBase):
    """DeepCache around a `UNet2DConditionModel` (SD1.5, SDXL); `forward` has its signature."""

    def __init__(self, unet: UNet2DConditionModel, config: Config,
                 run_length: Callable[[], int | None] | None = None) -> None:
        super().__init__(unet, config, run_length)
        if unet.config.addition_embed_type == "image_hint":
            raise ConfigError("DeepCache does not support addition_embed_type='image_hint' U-Nets")

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple:
        if (down_block_additional_residuals is not None or mid_block_additional_residual is not None
                or down_intrablock_additional_residuals is not None):
            raise NotImplementedError("DeepCache does not support ControlNet or T2I-Adapter residuals; "
                                      "leave 'cache' out of the search for ControlNet/adapter pipelines")
        if cross_attention_kwargs is not None and cross_attention_kwargs.get("gligen") is not None:
            raise NotImplementedError("DeepCache does not support GLIGEN conditioning")
        full = self.schedule.next_call(timestep)
        u = self.base
        # Mirrors diffusers 0.42.1 UNet2DConditionModel.forward without the ControlNet/adapter/GLIGEN paths.
        default_overall_up_factor = 2**u.num_upsamplers
        forward_upsample_size = False
        upsample_size = None
        for dim in sample.shape[-2:]:
            if dim % default_overall_up_factor != 0:
                forward_upsample_size = True
                break

        if attention_mask is not None:
            attention_mask = (1 - attention_mask.to(sample.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = (1 - encoder_attention_mask.to(sample.dtype)) * -10000.0
            encoder_attention_mask = encoder_attention_mask.unsqueeze(1)

        if u.config.center_input_sample:
            sample = 2 * sample - 1.0

        t_emb = u.get_time_embed(sample=sample, timestep=timestep)
        emb = u.time_embedding(t_emb, timestep_cond)
        class_emb = u.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            if u.config.class_embeddings_concat:
                emb = torch.cat([emb, class_emb], dim=-1)
            else:
                emb = emb + class_emb
        aug_emb = u.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                  added_cond_kwargs=added_cond_kwargs)
        emb = emb + aug_emb if aug_emb is not None else emb
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        encoder_hidden_states = u.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)

        sample = u.conv_in(sample)

        down_block_res_samples: tuple[torch.Tensor, ...] = (sample,)
        for downsample_block in u.down_blocks if full else u.down_blocks[: self.branch]:
            if hasattr(downsample_block, "has_cross_attention") and downsample_block.has_cross_attention:
                sample, res_samples = downsample_block(
                    hidden_states=sample,
                    temb=emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                sample, res_samples = downsample_block(hidden_states=sample, temb=emb)
            down_block_res_samples += res_samples

        first = self.first_cached_up_block
        if full:
            if u.mid_block is not None:
                if hasattr(u.mid_block, "has_cross_attention") and u.mid_block.has_cross_attention:
                    sample = u.mid_block(
                        sample,
                        emb,
                        encoder_hidden_states=encoder_hidden_states,
                        attention_mask=attention_mask,
                        cross_attention_kwargs=cross_attention_kwargs,
                        encoder_attention_mask=encoder_attention_mask,
                    )
                else:
                    sample = u.mid_block(sample, emb)
        else:
            sample, down_block_res_samples = self._cached(sample, down_block_res_samples)

        for i, upsample_block in enumerate(u.up_blocks):
            if not full and i < first:
                continue
            if full and i == first:
                self._keep(sample, down_block_res_samples)
            is_final_block = i == len(u.up_blocks) - 1
            res_samples = down_block_res_samples[-len(upsample_block.resnets) :]
            down_block_res_samples = down_block_res_samples[: -len(upsample_block.resnets)]
            if not is_final_block and forward_upsample_size:
                upsample_size = down_block_res_samples[-1].shape[2:]

            if hasattr(upsample_block, "has_cross_attention") and upsample_block.has_cross_attention:
                sample = upsample_block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res_samples,
                    encoder_hidden_states=encoder_hidden_states,
                    cross_attention_kwargs=cross_attention_kwargs,
                    upsample_size=upsample_size,
                    attention_mask=attention_mask,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                sample = upsample_block(
                    hidden_states=sample,
                    temb=emb,
                    res_hidden_states_tuple=res_samples,
                    upsample_size=upsample_size,
                )

        if u.conv_norm_out:
            sample = u.conv_norm_out(sample)
            sample = u.conv_act(sample)
        sample = u.conv_out(sample)

        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)


def wrap_unet(unet: torch.nn.Module, config: Config,
              run_length: Callable[[], int | None] | None = None) -> _DeepCacheUNetBase:
    """The DeepCache wrapper for a `UNet2DModel` or `UNet2DConditionModel`."""
    if isinstance(unet, UNet2DConditionModel):
        return DeepCacheUNet2DCondition(unet, config, run_length)
    if isinstance(unet, UNet2DModel):
        return DeepCacheUNet2D(unet, config, run_length)
    raise ConfigError(f"DeepCache supports UNet2DModel and UNet2DConditionModel, not {type(unet).__name__}")
