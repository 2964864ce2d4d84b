"""The user's workload applied to a model: what the baseline and every candidate are called with.

`apply_workload(handle, settings)` sets the handle's prompts, negative prompt, class labels, resolution, guidance
scale and step count from the settings (`--prompts`, `--negative-prompt`, `--labels`, `--resolution`,
`--guidance-scale`, `--steps`), after checking each against what the model can take (`models.kinds.ModelKind`):
prompts only for a text-to-image model, labels only for a class-conditional one and within its classes, a
resolution only for a pipeline that takes `height`/`width` and a multiple of what its VAE and patching need, a
guidance scale only for a pipeline that takes one, at most as many steps as the model has training timesteps. A
`--reference` folder must hold images of one size. Each refusal is one line (`SettingsError`). The dtype is
applied when the model is loaded (`models.registry.resolve_model`).
"""

from __future__ import annotations

from autoeff.errors import SettingsError
from autoeff.evaluators.image_folder import ReferenceFolderError, check_folder
from autoeff.models.handle import ModelHandle
from autoeff.models.registry import vae_scale
from autoeff.settings import SearchSettings


def _name(handle: ModelHandle) -> str:
    return f"{type(handle.pipeline).__name__} ({handle.model_kind.label})"


def resolution_multiple(handle: ModelHandle) -> int:
    """What the image side must be a multiple of: the VAE's scale times the transformer's patch size (packed
    latents, as Flux's, count 2x2 patches), or the U-Net's downsampling in pixel space."""
    kind = handle.model_kind
    config = handle.denoiser.config
    if kind.space == "pixel" and kind.denoiser == "unet":
        return 2 ** max(len(getattr(config, "block_out_channels", ()) or ()) - 1, 0)
    patch = getattr(config, "patch_size", None) or 1
    packs = callable(getattr(type(handle.pipeline), "_pack_latents", None))
    return vae_scale(handle.pipeline, kind) * max(int(patch), 2 if packs else 1)


def apply_workload(handle: ModelHandle, settings: SearchSettings) -> None:
    """Set `handle`'s call settings from the workload fields of `settings` (module docstring); SettingsError
    when one does not fit the model."""
    kind = handle.model_kind
    if settings.prompts is not None:
        if kind.conditioning != "text":
            raise SettingsError(f"--prompts: {_name(handle)} takes no prompt (it is {kind.conditioning}-conditional)"
                                if kind.conditioning == "class" else
                                f"--prompts: {_name(handle)} takes no prompt (it is unconditional)")
        handle.prompts = list(settings.prompts)
    if settings.negative_prompt is not None:
        if not kind.takes("negative_prompt"):
            raise SettingsError(f"--negative-prompt: {_name(handle)} takes no negative prompt")
        handle.negative_prompt = settings.negative_prompt
    if settings.labels is not None:
        if kind.conditioning != "class":
            raise SettingsError(f"--labels: {_name(handle)} is not class-conditional; it takes no class labels")
        count = handle.num_classes
        out = [v for v in settings.labels if count is not None and v >= count]
        if out and count is not None:
            raise SettingsError(f"--labels {','.join(map(str, out))} out of range: {_name(handle)} has {count} "
                                f"classes (0-{count - 1})")
        handle.labels = list(settings.labels)
    if settings.resolution is not None and settings.resolution != handle.resolution:
        if not (kind.takes("height") and kind.takes("width")):
            raise SettingsError(f"--resolution: {_name(handle)} takes no height and width; it makes "
                                f"{handle.resolution}x{handle.resolution} images")
        multiple = resolution_multiple(handle)
        if settings.resolution % multiple:
            raise SettingsError(f"--resolution {settings.resolution} must be a multiple of {multiple} for "
                                f"{_name(handle)}")
        handle.resolution = settings.resolution
    if settings.guidance_scale is not None:
        if not kind.takes("guidance_scale"):
            raise SettingsError(f"--guidance-scale: {_name(handle)} takes no guidance scale")
        handle.guidance_scale = float(settings.guidance_scale)
    if settings.steps is not None:
        if settings.steps > handle.num_train_timesteps:
            raise SettingsError(f"--steps {settings.steps} is more than the {handle.num_train_timesteps} training "
                                "timesteps of this model")
        handle.default_steps = settings.steps
    if settings.reference is not None:
        try:
            check_folder(settings.reference)
        except ReferenceFolderError as e:
            raise SettingsError(str(e)) from None


__all__ = ["apply_workload", "resolution_multiple"]
