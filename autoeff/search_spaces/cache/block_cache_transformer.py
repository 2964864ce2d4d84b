"""Block-residual caching for diffusion transformers (DiT, PixArt).

FORA (Selvaraju et al., 2024, "FORA: Fast-Forward Caching in Diffusion Transformer Acceleration") reuses
attention and MLP outputs across steps at a fixed interval N; Delta-DiT (Chen et al., 2024) reuses the
residual a range of blocks adds to the hidden states. This file does the static block-range version: on one
step of every N all blocks run and the residual `h_L - h_branch` that blocks `branch..L-1` added is kept; on
the steps between, the patch embedding, the timestep/caption embeddings and blocks `0..branch-1` run on the
new input and the kept residual is added, so the output layer's modulation still sees the new timestep.

Why not diffusers' hooks (diffusers/hooks/, 0.42.1): FirstBlockCache, MagCache and SeaCache decide adaptively
(thresholds, calibrated ratios), not on a fixed N; TaylorSeer and FirstBlockCache keep their state per
`model.cache_context(...)`, which neither DiTTransformer2DModel nor PixArtTransformer2DModel (no CacheMixin)
nor their pipelines open, so they raise "No cache context is set" (checked); Pyramid Attention Broadcast
reuses attention outputs only, needs the pipeline's current timestep and resets only through CacheMixin.
All of them register hooks on the model in place, i.e. on the base module every candidate shares. So the
wrappers below re-implement the two forwards of diffusers 0.42.1 around references to the base modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from autoeff.search_spaces.base import ConfigError
from autoeff.search_spaces.cache.base import CachedDenoiser, Config


class _BlockCacheBase(CachedDenoiser):
    """Runs all `transformer_blocks` on full steps; otherwise the first `branch` plus the kept residual."""

    def __init__(self, transformer: torch.nn.Module, config: Config,
                 run_length: Callable[[], int | None] | None = None) -> None:
        super().__init__(transformer, config, run_length)
        self.branch = config.branch
        self._residual: torch.Tensor | None = None

    def clear_cache(self) -> None:
        self._residual = None

    def _blocks(self, hidden_states: torch.Tensor, full: bool, **block_kwargs: Any) -> torch.Tensor:
        blocks = self.base.transformer_blocks
        if full:
            kept = None
            for i, block in enumerate(blocks):
                if i == self.branch:
                    kept = hidden_states
                hidden_states = block(hidden_states, **block_kwargs)
            if self.stores_cache:
                # kept is set: branch < len(blocks) (wrap_denoiser checks it); else this raises TypeError
                self._residual = hidden_states - kept  # type: ignore[operator]
            return hidden_states
        if self._residual is None:
            raise RuntimeError("the block cache has no residual for a cached step; call reset() before a run")
        if self._residual.shape[0] != hidden_states.shape[0]:
            raise RuntimeError(f"the block cache was filled for a batch of {self._residual.shape[0]}, this "
                               f"call has {hidden_states.shape[0]}; call reset() between runs of new shapes")
        for block in blocks[: self.branch]:
            hidden_states = block(hidden_states, **block_kwargs)
        return hidden_states + self._residual


class BlockCacheDiT(_BlockCacheBase):
    """Block caching around a `DiTTransformer2DModel`; `forward` has its signature."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        # `timestep` is optional only to mirror diffusers' signature; pipelines always pass one
        full = self.schedule.next_call(timestep)  # type: ignore[arg-type]
        m = self.base
        # Mirrors diffusers 0.42.1 DiTTransformer2DModel.forward (inference path).
        hidden_states = m.pos_embed(hidden_states)
        hidden_states = self._blocks(
            hidden_states, full, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
            timestep=timestep, cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels)

        conditioning = m.transformer_blocks[0].norm1.emb(timestep, class_labels,
                                                         hidden_dtype=hidden_states.dtype)
        shift, scale = m.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        hidden_states = m.norm_out(hidden_states) * (1 + scale[:, None]) + shift[:, None]
        hidden_states = m.proj_out_2(hidden_states)

        height = width = int(hidden_states.shape[1] ** 0.5)
        hidden_states = hidden_states.reshape(
            shape=(-1, height, width, m.patch_size, m.patch_size, m.out_channels))
        hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
        output = hidden_states.reshape(
            shape=(-1, m.out_channels, height * m.patch_size, width * m.patch_size))
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)


class BlockCachePixArt(_BlockCacheBase):
    """Block caching around a `PixArtTransformer2DModel`; `forward` has its signature."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.LongTensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        m = self.base
        if m.use_additional_conditions and added_cond_kwargs is None:
            raise ValueError("`added_cond_kwargs` cannot be None when using additional conditions for "
                             "`adaln_single`.")
        # `timestep` is optional only to mirror diffusers' signature; pipelines always pass one
        full = self.schedule.next_call(timestep)  # type: ignore[arg-type]
        # Mirrors diffusers 0.42.1 PixArtTransformer2DModel.forward (inference path).
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = (1 - attention_mask.to(hidden_states.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)
        if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
            encoder_attention_mask = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
            encoder_attention_mask = encoder_attention_mask.unsqueeze(1)

        batch_size = hidden_states.shape[0]
        height, width = (
            hidden_states.shape[-2] // m.config.patch_size,
            hidden_states.shape[-1] // m.config.patch_size,
        )
        hidden_states = m.pos_embed(hidden_states)
        timestep, embedded_timestep = m.adaln_single(
            timestep, added_cond_kwargs, batch_size=batch_size, hidden_dtype=hidden_states.dtype)
        if m.caption_projection is not None:
            encoder_hidden_states = m.caption_projection(encoder_hidden_states)
            encoder_hidden_states = encoder_hidden_states.view(batch_size, -1, hidden_states.shape[-1])

        hidden_states = self._blocks(
            hidden_states, full, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, timestep=timestep,
            cross_attention_kwargs=cross_attention_kwargs, class_labels=None)

        shift, scale = (
            m.scale_shift_table[None] + embedded_timestep[:, None].to(m.scale_shift_table.device)
        ).chunk(2, dim=1)
        hidden_states = m.norm_out(hidden_states)
        hidden_states = hidden_states * (1 + scale.to(hidden_states.device)) + shift.to(hidden_states.device)
        hidden_states = m.proj_out(hidden_states)
        hidden_states = hidden_states.squeeze(1)

        hidden_states = hidden_states.reshape(
            shape=(-1, height, width, m.config.patch_size, m.config.patch_size, m.out_channels))
        hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
        output = hidden_states.reshape(
            shape=(-1, m.out_channels, height * m.config.patch_size, width * m.config.patch_size))
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)


def wrap_transformer(transformer: torch.nn.Module, config: Config,
                     run_length: Callable[[], int | None] | None = None) -> _BlockCacheBase:
    """The block-caching wrapper for a `DiTTransformer2DModel` or `PixArtTransformer2DModel`."""
    if isinstance(transformer, DiTTransformer2DModel):
        return BlockCacheDiT(transformer, config, run_length)
    if isinstance(transformer, PixArtTransformer2DModel):
        return BlockCachePixArt(transformer, config, run_length)
    raise ConfigError("block caching supports DiTTransformer2DModel and PixArtTransformer2DModel, "
                      f"not {type(transformer).__name__}")
