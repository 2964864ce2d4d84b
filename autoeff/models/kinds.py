"""What kind of model a pipeline is, read from its capabilities rather than its class name.

autoeff needs five facts about a diffusers pipeline to search and measure it, and each is read from what the
pipeline *has*, so a pipeline class autoeff has never seen works when its parts are of a covered kind:

* **denoiser**: the component the knobs act on, `unet` or `transformer` (diffusers' two names for it);
* **conditioning**: `text` when `__call__` takes `prompt`, `class` when it takes `class_labels`, else `none`
  (an unconditional model: it must then take `batch_size` or `latents`);
* **noise process**: `ddpm` (a discrete beta schedule with epsilon, v or sample prediction: Ho et al., 2020;
  Salimans & Ho, 2022) or `flow` (flow matching / rectified flow, Lipman et al., 2023; Liu et al., 2023: a
  `FlowMatch*` scheduler, or `use_flow_sigmas` / `prediction_type="flow_prediction"`), read from the
  scheduler's class and config;
* **space**: `latent` when the pipeline holds a `vae` (or `vqvae`), else `pixel`;
* **call**: the keyword arguments `__call__` takes (`prompt`, `negative_prompt`, `class_labels`, `latents`,
  `generator`, `guidance_scale`, `height`/`width`, `sigmas`/`timesteps`, `output_type`, ...). From them: how
  the initial noise is fixed (`latents` when the pipeline takes image-shaped latents; otherwise one seeded
  generator per image, which diffusers' `randn_tensor` turns into per-image noise), and whether
  classifier-free guidance is *batched* (`[unconditional, conditional]` in one denoiser call, the source of
  `__call__` doubling the latents: what the `guidance` knob needs).

`detect_kind(pipe)` reads a loaded pipeline; `kind_of_class(cls, components, scheduler_config)` reads a saved
folder's class, `model_index.json` and scheduler config before any weight is loaded. A pipeline whose kind is
not covered raises `UncoveredPipelineError` whose one line names what is missing. The one adapter per kind is
`autoeff.models.generate.call_pipeline`, driven by the `ModelKind` alone.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DENOISERS: tuple[str, ...] = ("unet", "transformer")
CONDITIONINGS: tuple[str, ...] = ("none", "class", "text")
NOISES: tuple[str, ...] = ("ddpm", "flow")
SPACES: tuple[str, ...] = ("pixel", "latent")
DDPM_PREDICTIONS: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
GUIDANCE: tuple[str, ...] = ("batched", "none")
NOISE_INPUTS: tuple[str, ...] = ("latents", "generator")
# Call arguments autoeff knows how to fill; any other argument without a default makes a pipeline uncovered.
FILLED: frozenset[str] = frozenset({
    "prompt", "class_labels", "batch_size", "latents", "generator", "num_inference_steps", "output_type",
    "height", "width", "guidance_scale", "negative_prompt", "return_dict"})
_VAE_NAMES = ("vae", "vqvae")
# How diffusers' text-to-image pipelines batch classifier-free guidance into one denoiser call (SD, SDXL,
# PixArt, SD3, Sana, AuraFlow, HunyuanDiT, ...); every one of them puts the negative prompt's half first.
_BATCHED_CFG = "torch.cat([latents] * 2)"


class UncoveredPipelineError(ValueError):
    """The pipeline is not of a kind autoeff covers; the message (one line) names what is missing."""


@dataclass(frozen=True)
class ModelKind:
    """The capabilities of one pipeline (see the module docstring).

    Attributes:
        denoiser: `unet` or `transformer` (the pipeline attribute the knobs act on).
        conditioning: `none`, `class` or `text`.
        noise: `ddpm` or `flow`.
        prediction: `epsilon`, `v_prediction`, `sample` (ddpm) or `flow`.
        space: `pixel` or `latent`.
        call: the keyword arguments the pipeline's `__call__` takes, sorted.
        noise_input: `latents` (autoeff passes the initial noise) or `generator` (one seeded generator per image).
        guidance: `batched` (classifier-free guidance as one `[unconditional, conditional]` denoiser call) or
            `none` (no guidance, guidance distilled into the model, or guidance as separate calls).
    """

    denoiser: str
    conditioning: str
    noise: str
    prediction: str
    space: str
    call: tuple[str, ...] = ()
    noise_input: str = "latents"
    guidance: str = "none"

    def __post_init__(self) -> None:
        for name, allowed in (("denoiser", DENOISERS), ("conditioning", CONDITIONINGS), ("noise", NOISES),
                              ("space", SPACES), ("noise_input", NOISE_INPUTS), ("guidance", GUIDANCE)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelKind.{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")

    @property
    def label(self) -> str:
        """E.g. `flow-text-latent-transformer`, `ddpm-none-pixel-unet`: the family name of a pipeline that has no
        named family (see `models.registry.PIPELINE_FAMILIES`)."""
        return f"{self.noise}-{self.conditioning}-{self.space}-{self.denoiser}"

    def takes(self, argument: str) -> bool:
        """Whether the pipeline's `__call__` takes `argument`."""
        return argument in self.call

    def to_dict(self) -> dict[str, Any]:
        return {"denoiser": self.denoiser, "conditioning": self.conditioning, "noise": self.noise,
                "prediction": self.prediction, "space": self.space, "call": list(self.call),
                "noise_input": self.noise_input, "guidance": self.guidance}


def parse_label(label: str) -> tuple[str, str, str, str] | None:
    """`(noise, conditioning, space, denoiser)` of a kind label, or None when `label` is not one."""
    parts = label.split("-")
    if len(parts) != 4:
        return None
    noise, conditioning, space, denoiser = parts
    if noise in NOISES and conditioning in CONDITIONINGS and space in SPACES and denoiser in DENOISERS:
        return noise, conditioning, space, denoiser
    return None


def _own_call(cls: type) -> Any:
    """The `__call__` a pipeline class runs, past wrappers autoeff itself adds (the guidance knob's subclass)."""
    for klass in cls.__mro__:
        if "__call__" in vars(klass) and not getattr(klass, "_autoeff_guided", False):
            return vars(klass)["__call__"]
    return cls.__call__


def call_arguments(cls: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword parameters of `cls.__call__` (without `self`) and whether it takes `**kwargs`."""
    params = dict(inspect.signature(_own_call(cls)).parameters)
    params.pop("self", None)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_KEYWORD,
                                                               inspect.Parameter.VAR_POSITIONAL)}
    return named, var_kw


def batches_guidance(cls: type) -> bool:
    """Whether `cls.__call__` runs classifier-free guidance as one batched denoiser call (module docstring)."""
    try:
        source = inspect.getsource(_own_call(cls))
    except (OSError, TypeError):  # no source (a compiled or dynamically built class): assume it does not
        return False
    return _BATCHED_CFG in source


@functools.cache
def step_keywords(cls: Any) -> frozenset[str]:
    """The keyword arguments `cls.__call__` passes to `self.scheduler.step(...)` by name (DDPMPipeline passes
    `generator`, DDIMPipeline `eta` and `use_clipped_model_output`); a solver whose `step` lacks one must drop it.
    Pipelines that build their step arguments from the scheduler's own signature (`**extra_step_kwargs`, SD)
    contribute nothing here."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(_own_call(cls))))
    except (OSError, TypeError, SyntaxError):
        return frozenset()
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "step" and isinstance(func.value, ast.Attribute)
                and func.value.attr == "scheduler"):
            found.update(k.arg for k in node.keywords if k.arg is not None)
    return frozenset(found)


def noise_of(scheduler_class: str, config: Mapping[str, Any]) -> tuple[str, str]:
    """`(noise, prediction)` of a scheduler from its class name and config, or UncoveredPipelineError."""
    prediction = str(config.get("prediction_type") or "")
    if scheduler_class.startswith("FlowMatch") or config.get("use_flow_sigmas") or prediction == "flow_prediction":
        return "flow", "flow"
    has_betas = "beta_start" in config or config.get("trained_betas") is not None or "beta_schedule" in config
    if has_betas and "num_train_timesteps" in config:
        prediction = prediction or "epsilon"
        if prediction not in DDPM_PREDICTIONS:
            raise UncoveredPipelineError(f"its scheduler {scheduler_class} predicts {prediction!r}; autoeff covers "
                                         f"{', '.join(DDPM_PREDICTIONS)} (DDPM-family) and flow matching")
        return "ddpm", prediction
    raise UncoveredPipelineError(
        f"its scheduler {scheduler_class or '(none)'} is neither a DDPM-family scheduler (a beta schedule with "
        "epsilon, v or sample prediction) nor a flow-matching one")


def kind_of_class(cls: type, components: Mapping[str, str | None], scheduler_class: str,
                  scheduler_config: Mapping[str, Any], packs_latents: bool | None = None) -> ModelKind:
    """The kind of a pipeline class holding `components` (name -> class name, None for an absent one) with a
    scheduler of class `scheduler_class` and config `scheduler_config`; UncoveredPipelineError otherwise."""
    present = {name for name, value in components.items() if value}
    denoiser = next((d for d in DENOISERS if d in present), None)
    if denoiser is None:
        raise UncoveredPipelineError(f"it has no unet or transformer component (it has: "
                                     f"{', '.join(sorted(present)) or 'none'})")
    params, _ = call_arguments(cls)
    required = sorted(n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in FILLED)
    if required:
        raise UncoveredPipelineError(f"its __call__ needs {', '.join(required)}, which autoeff does not pass (it "
                                     "generates from noise and a prompt, a class label or nothing)")
    missing = [n for n in ("num_inference_steps", "output_type") if n not in params]
    if "generator" not in params and "latents" not in params:
        missing.append("generator or latents")
    if missing:
        raise UncoveredPipelineError(f"its __call__ takes no {', '.join(missing)}, which autoeff needs to set the "
                                     "step count, read the images and seed the noise")
    if "prompt" in params:
        conditioning = "text"
    elif "class_labels" in params:
        conditioning = "class"
    elif "batch_size" in params or "latents" in params:
        conditioning = "none"
    else:
        raise UncoveredPipelineError("its __call__ takes no prompt, class_labels, batch_size or latents, so autoeff "
                                     "cannot say how many images to make")
    noise, prediction = noise_of(scheduler_class, scheduler_config)
    space = "latent" if any(v in present for v in _VAE_NAMES) else "pixel"
    packs = packs_latents if packs_latents is not None else callable(getattr(cls, "_pack_latents", None))
    noise_input = "latents" if "latents" in params and not packs else "generator"
    if noise_input == "generator" and "generator" not in params:
        raise UncoveredPipelineError("it packs its latents and takes no generator, so its noise cannot be seeded "
                                     "per image")
    guidance = "batched" if (conditioning == "text" and "guidance_scale" in params and batches_guidance(cls)) \
        else "none"
    return ModelKind(denoiser=denoiser, conditioning=conditioning, noise=noise, prediction=prediction, space=space,
                     call=tuple(sorted(params)), noise_input=noise_input, guidance=guidance)


def detect_kind(pipe: Any) -> ModelKind:
    """The kind of a loaded pipeline (its class, components and scheduler); UncoveredPipelineError otherwise."""
    components = {name: type(c).__name__ if c is not None else None
                  for name, c in getattr(pipe, "components", {}).items()}
    scheduler = getattr(pipe, "scheduler", None)
    config = dict(getattr(scheduler, "config", None) or {})
    scheduler_class = _plain_class_name(scheduler) if scheduler is not None else ""
    return kind_of_class(type(pipe), components, scheduler_class, config)


def _plain_class_name(obj: Any) -> str:
    """The class name of the nearest diffusers class in `obj`'s MRO (autoeff's pinned schedulers subclass them)."""
    for klass in type(obj).__mro__:
        if klass.__module__.startswith("diffusers."):
            return klass.__name__
    return type(obj).__name__


__all__ = ["ModelKind", "UncoveredPipelineError", "detect_kind", "kind_of_class", "noise_of", "call_arguments",
           "step_keywords",
           "batches_guidance", "parse_label", "DENOISERS", "CONDITIONINGS", "NOISES", "SPACES", "FILLED"]
