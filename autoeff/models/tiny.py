"""Tiny random-weight SD1.5 / SDXL / PixArt pipelines for tests: built from configs, seeded, no download.

They follow the shape of diffusers' own pipeline tests (tiny components after `torch.manual_seed(0)`, 2
steps, `output_type="np"`), with one difference: diffusers' tests download `hf-internal-testing` tokenizers,
while these build theirs in memory (`autoeff.models.tokenizers`). Every component keeps the real family's
layout (scheduler config, text-encoder wiring, SDXL's "text_time" micro-conditioning), so a knob that works
here meets the same code paths as on the real model; only widths and depths are tiny.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from autoeff.models.handle import ModelHandle
from autoeff.models.registry import handle_from_pipeline
from autoeff.models.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

#: Short prompts for the tiny pipelines (the weights are random; the prompts only exercise the encoders).
TINY_PROMPTS = ["a red cube", "a cat on a mat", "two apples", "a blue sky"]
TINY_STEPS = 4
# Latent side 16 with a VAE that downsamples by 2: 32x32 images. 64x64 was ~2.5x slower per step on
# CPU and exercises no further code path.
TINY_RESOLUTION = 32
_LATENT = 16


def _tiny_vae() -> AutoencoderKL:
    """Two encoder/decoder blocks, so `pipe.vae_scale_factor == 2`."""
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=TINY_RESOLUTION,
    )


def _clip_config(tokenizer, hidden_size: int = 32, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def _sd_scheduler_config() -> dict:
    """The noise schedule SD1.5 and SDXL were trained with (their shipped scheduler_config.json)."""
    return {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
            "num_train_timesteps": 1000}


def _handle(pipe, spec: str, guidance_scale: float, **extra) -> ModelHandle:

    pipe.set_progress_bar_config(disable=True)
    return handle_from_pipeline(pipe, spec=spec, prompts=list(TINY_PROMPTS), default_steps=TINY_STEPS,
                                guidance_scale=guidance_scale, resolution=TINY_RESOLUTION, **extra)


def build_tiny_sd15() -> ModelHandle:
    """A StableDiffusionPipeline with a (32, 64) U-Net, a tiny VAE and CLIP text encoder; family `sd15`."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=_LATENT,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = _tiny_vae()
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    # SD1.5 ships PNDM (PLMS) with skip_prk_steps, set_alpha_to_one False.
    scheduler = PNDMScheduler(**_sd_scheduler_config(), skip_prk_steps=True, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return _handle(pipe, "tiny-sd15", guidance_scale=7.5)


def build_tiny_sdxl() -> ModelHandle:
    """A StableDiffusionXLPipeline with both CLIP encoders and "text_time" micro-conditioning; family `sdxl`.

    The U-Net's cross-attention width is the two encoders' hidden sizes concatenated (32 + 32), and its
    added-embedding input is 6 time ids x `addition_time_embed_dim` + the pooled projection of encoder 2
    (6 * 8 + 32 = 80), exactly as SDXL wires them (Podell et al., 2023).
    """
    torch.manual_seed(0)
    time_dim, proj_dim = 8, 32
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=_LATENT,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + proj_dim,
        cross_attention_dim=32 + 32,
        norm_num_groups=32,
    )
    vae = _tiny_vae()
    tokenizer = tiny_clip_tokenizer()
    tokenizer_2 = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2, projection_dim=proj_dim))
    scheduler = EulerDiscreteScheduler(**_sd_scheduler_config(), timestep_spacing="leading",
                                       interpolation_type="linear")
    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet.eval(), scheduler=scheduler,
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    return _handle(pipe, "tiny-sdxl", guidance_scale=5.0)


def build_tiny_pixart() -> ModelHandle:
    """A PixArtAlphaPipeline with a 2-block PixArt transformer and a tiny T5 encoder; family `pixart`.

    The transformer predicts noise and variance (`out_channels = 2 * in_channels`, as PixArt-alpha does) and
    its caption projection takes the T5 width (`caption_channels == d_model`).
    """
    torch.manual_seed(0)
    tokenizer = tiny_t5_tokenizer()
    d_model = 32
    transformer = PixArtTransformer2DModel(
        sample_size=_LATENT,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=d_model,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    vae = _tiny_vae()
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    ))
    # PixArt-alpha ships DPM-Solver++ on the linear DDPM schedule (the diffusers default config).
    scheduler = DPMSolverMultistepScheduler()
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
                               transformer=transformer.eval(), scheduler=scheduler)
    return _handle(pipe, "tiny-pixart", guidance_scale=4.5)
