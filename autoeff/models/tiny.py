"""Tiny random-weight pipelines of every covered kind for tests: built from configs, seeded, no download.

SD1.5, SD2 (v-prediction), SDXL, PixArt-alpha/Sigma, SD3, Flux.1, Sana, DiT (class-conditional latent), and the
unconditional pixel-space DDPM and DDIM pipelines.

They follow the shape of diffusers' own pipeline tests (tiny components after `torch.manual_seed(0)`, 2
steps, `output_type="np"`), with one difference: diffusers' tests download `hf-internal-testing` tokenizers,
while these build theirs in memory (`autoeff.models.tokenizers`). Every component keeps the real family's
layout (scheduler config, text-encoder wiring, SDXL's "text_time" micro-conditioning), so a knob that works
here meets the same code paths as on the real model; only widths and depths are tiny.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    SanaPipeline,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Gemma2Config,
    Gemma2Model,
    T5Config,
    T5EncoderModel,
)

from autoeff.models.handle import ModelHandle
from autoeff.models.registry import handle_from_pipeline
from autoeff.models.tokenizers import tiny_clip_tokenizer, tiny_gemma_tokenizer, tiny_t5_tokenizer

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


def _handle(pipe, spec: str, guidance_scale: float | None = None, resolution: int = TINY_RESOLUTION,
            **extra: Any) -> ModelHandle:
    pipe.set_progress_bar_config(disable=True)
    handle = handle_from_pipeline(pipe, spec=spec, default_steps=TINY_STEPS, resolution=resolution, **extra)
    if handle.conditioning == "text":
        handle.prompts = list(TINY_PROMPTS)
    if guidance_scale is not None:
        handle.guidance_scale = guidance_scale
    return handle


def _t5(tokenizer, d_model: int = 32) -> T5EncoderModel:
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )).eval()


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


def build_tiny_sd2() -> ModelHandle:
    """A StableDiffusionPipeline as SD 2.x ships it: v-prediction with DDIM (`steps_offset` 1, no clipping) and
    linear projections in the U-Net's attention; family `sd15` (one pipeline class), kind prediction `v_prediction`."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=_LATENT, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True)
    tokenizer = tiny_clip_tokenizer()
    scheduler = DDIMScheduler(**_sd_scheduler_config(), prediction_type="v_prediction", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae().eval(), text_encoder=CLIPTextModel(_clip_config(tokenizer)).eval(), tokenizer=tokenizer,
        unet=unet.eval(), scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    return _handle(pipe, "tiny-sd2", guidance_scale=7.5)


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
    text_encoder = _t5(tokenizer, d_model)
    # PixArt-alpha ships DPM-Solver++ on the linear DDPM schedule (the diffusers default config).
    scheduler = DPMSolverMultistepScheduler()
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
                               transformer=transformer.eval(), scheduler=scheduler)
    return _handle(pipe, "tiny-pixart", guidance_scale=4.5)


def build_tiny_pixart_sigma() -> ModelHandle:
    """A PixArtSigmaPipeline: PixArt-alpha's tiny parts, the Sigma pipeline class (family `pixart`)."""
    alpha = build_tiny_pixart().pipeline
    pipe = PixArtSigmaPipeline(tokenizer=alpha.tokenizer, text_encoder=alpha.text_encoder, vae=alpha.vae,
                               transformer=alpha.transformer, scheduler=alpha.scheduler)
    return _handle(pipe, "tiny-pixart-sigma", guidance_scale=4.5)


def _flow_vae(latent_channels: int = 4) -> AutoencoderKL:
    """The SD3 / Flux VAE layout (no quant convs, a shift factor), two blocks: `vae_scale_factor == 2`."""
    return AutoencoderKL(
        sample_size=TINY_RESOLUTION, in_channels=3, out_channels=3, block_out_channels=(32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035).eval()


def build_tiny_sd3() -> ModelHandle:
    """A StableDiffusion3Pipeline: a 2-layer MM-DiT (`SD3Transformer2DModel`), both CLIP encoders with projection
    and a T5 encoder, flow-match Euler with SD3's shift 3 (Esser et al., 2024); kind `flow-text-latent-transformer`.

    CLIP's hidden states (32 + 32) are cut to the T5 width (32) as SD3 does; the pooled projections are 32 + 32.
    """
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=_LATENT, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
    tok1, tok2, tok3 = tiny_clip_tokenizer(), tiny_clip_tokenizer(), tiny_t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(),
        text_encoder=CLIPTextModelWithProjection(_clip_config(tok1)).eval(), tokenizer=tok1,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tok2)).eval(), tokenizer_2=tok2,
        text_encoder_3=_t5(tok3), tokenizer_3=tok3)
    return _handle(pipe, "tiny-sd3", guidance_scale=7.0)


def build_tiny_flux() -> ModelHandle:
    """A FluxPipeline: one double-stream and two single-stream blocks with guidance embedding (Flux.1-dev's
    layout), CLIP + T5, flow-match Euler with Flux's resolution-dependent (dynamic) shift; latents are packed
    2x2, so the transformer's 16 input channels are 4 latent channels."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    tok1, tok2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=transformer.eval(), scheduler=scheduler, vae=_flow_vae(),
                        text_encoder=CLIPTextModel(_clip_config(tok1)).eval(), tokenizer=tok1,
                        text_encoder_2=_t5(tok2), tokenizer_2=tok2)
    return _handle(pipe, "tiny-flux", guidance_scale=3.5)


def build_tiny_sana() -> ModelHandle:
    """A SanaPipeline: a 2-block linear-attention Sana transformer, a tiny deep-compression autoencoder
    (`AutoencoderDC`) and a tiny Gemma-2 text encoder; DPM-Solver++ on flow sigmas with shift 3, as Sana ships."""
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2, attention_head_dim=8,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
        sample_size=_LATENT)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1], downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407)
    tokenizer = tiny_gemma_tokenizer()
    text_encoder = Gemma2Model(Gemma2Config(
        head_dim=8, hidden_size=16, intermediate_size=32, max_position_embeddings=8192, num_attention_heads=2,
        num_hidden_layers=1, num_key_value_heads=2, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
                        transformer=transformer.eval(), scheduler=scheduler)
    return _handle(pipe, "tiny-sana", guidance_scale=4.5)


def build_tiny_dit() -> ModelHandle:
    """A DiTPipeline: a 2-block class-conditional DiT (Peebles & Xie, 2023) over the tiny VAE's latents, learned
    variance (`out_channels = 2 * in_channels`), 1000 classes whose null class (for guidance) is 1000, so
    `num_embeds_ada_norm=1000`; DDIM on the linear DDPM schedule, as DiT-XL-2 ships."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        sample_size=_LATENT, patch_size=2, in_channels=4, out_channels=8, num_layers=2, num_attention_heads=2,
        attention_head_dim=8, num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False)
    scheduler = DDIMScheduler(beta_schedule="linear", clip_sample=False)
    pipe = DiTPipeline(transformer=transformer.eval(), vae=_tiny_vae().eval(), scheduler=scheduler)
    return _handle(pipe, "tiny-dit", guidance_scale=4.0)


def _tiny_pixel_unet() -> UNet2DModel:
    """An unconditional pixel-space U-Net, 16x16 RGB, two resolutions (32, 64)."""
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def build_tiny_ddpm() -> ModelHandle:
    """A DDPMPipeline (Ho et al., 2020): unconditional, pixel space, the ancestral DDPM sampler (`google/ddpm-*`
    layout: linear betas, clipped x0)."""
    torch.manual_seed(0)
    pipe = DDPMPipeline(unet=_tiny_pixel_unet().eval(), scheduler=DDPMScheduler(clip_sample=True))
    return _handle(pipe, "tiny-ddpm", resolution=16)


def build_tiny_ddim() -> ModelHandle:
    """A DDIMPipeline (Song et al., 2021): the same unconditional pixel U-Net, sampled with DDIM (eta 0)."""
    torch.manual_seed(0)
    pipe = DDIMPipeline(unet=_tiny_pixel_unet().eval(), scheduler=DDIMScheduler())
    return _handle(pipe, "tiny-ddim", resolution=16)


#: Every tiny builder by name (tests parametrize over it).
BUILDERS = {"sd15": build_tiny_sd15, "sd2": build_tiny_sd2, "sdxl": build_tiny_sdxl, "pixart": build_tiny_pixart,
            "pixart-sigma": build_tiny_pixart_sigma, "sd3": build_tiny_sd3, "flux": build_tiny_flux,
            "sana": build_tiny_sana, "dit": build_tiny_dit, "ddpm": build_tiny_ddpm, "ddim": build_tiny_ddim}
