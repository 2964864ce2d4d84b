"""The `solver` knob: which solver integrates the reverse diffusion (diffusers schedulers, configured).

Names, the diffusers 0.42.1 class that implements each, and the paper:

* `ddim`: `DDIMScheduler` (as `_pinned.TimestepDDIMScheduler`, eta 0). Song et al., 2021, DDIM.
* `dpmpp`: `DPMSolverMultistepScheduler`, `algorithm_type="dpmsolver++"`, order 1-3 (1M/2M/3M).
  Lu et al., 2022, DPM-Solver++.
* `dpmpp_single`: `DPMSolverSinglestepScheduler`, `dpmsolver++`, order 1-3 (1S/2S/3S). Lu et al., 2022.
* `unipc`: `UniPCMultistepScheduler` (as `_pinned.TimestepUniPCMultistepScheduler`), order 1-3, B(h) =
  bh1 or bh2. Zhao et al., 2023, UniPC.
* `euler`: `EulerDiscreteScheduler`. Karras et al., 2022, EDM (Euler's method in sigma space).

On flow-matching models (the context's `noise == "flow"`: SD3, Flux, Sana, ...) the solvers are the flow ones:

* `euler`: `FlowMatchEulerDiscreteScheduler` (Euler's method on the rectified-flow ODE; Esser et al., 2024).
* `heun`: `FlowMatchHeunDiscreteScheduler` (as `_pinned.FlowSigmasHeunDiscreteScheduler`): Heun's 2nd-order
  method, two denoiser calls per step (Karras et al., 2022, Algorithm 1).
* `dpmpp`: `DPMSolverMultistepScheduler` with `use_flow_sigmas=True, prediction_type="flow_prediction"` (as
  `_pinned.FlowSigmasDPMSolverMultistepScheduler`), order 1-3: DPM-Solver++ on flow sigmas, as Sana ships it.
* `unipc`: `UniPCMultistepScheduler` on flow sigmas, order 1-3.

The flow solvers carry the model's shift over (FlowMatch's `shift` is DPM-Solver's and UniPC's `flow_shift`), and
Flux's resolution-dependent shift (`use_dynamic_shifting`, the `mu` its pipeline passes); DDIM and
DPM-Solver++ singlestep have no flow variant here and are not in a flow model's space.

Every scheduler is built `from_config(base_scheduler.config)`, the way diffusers documents swapping a
pipeline's scheduler, so the training betas, `prediction_type`, `steps_offset` and `clip_sample` carry over;
settings the base left at its own defaults take the new class's defaults (diffusers' `_use_default_values`
rule: a DDPM base with default `leading` spacing gives DPM-Solver++ its default `linspace`). Overrides:

* the sigma-spacing flags (`use_karras_sigmas`, ...) are turned off: spacing is the schedule knob's job, and
  with them diffusers refuses custom timesteps;
* DDIM clips its x0 prediction only when the base config says `clip_sample=True` (DDIMScheduler's own
  default is True, wrong for latent models; SD pipelines reset it in `__init__`, which a swap bypasses);
* `clip_sample=True` with range 1 (the digits model's DDPM config) becomes `thresholding=True,
  sample_max_value=1` for DPM-Solver++ and UniPC: their dynamic threshold `s` is clamped to [1, 1], which is
  exactly clipping the x0 prediction to [-1, 1]. Euler has no x0 clipping in diffusers and runs unclipped;
* UniPC with B(h) = bh1, or without `lower_order_final`, ends at `final_sigmas_type="sigma_min"`: with
  diffusers' default final sigma of zero the last step has h = inf; bh1's B(h) = h, and a multistep (order
  >= 2) last update, then turn every image into NaN or a singular system (bh2's expm1(-inf) = -1 stays
  finite at order 1, which `lower_order_final` falls back to). sigma_min is how UniPC ended before diffusers
  added the zero option (diffusers PR 7517). Measured on the digits model: every such candidate failed.

Every class built here accepts custom `timesteps`, so any solver composes with any schedule.
When this knob runs alone, the pipeline's own `num_inference_steps` and the spacing above decide the steps.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from autoeff.search_spaces._pinned import (
    SIGMA_SPACING_FLAGS,
    FlowSigmasDPMSolverMultistepScheduler,
    FlowSigmasHeunDiscreteScheduler,
    TimestepDDIMScheduler,
    TimestepUniPCMultistepScheduler,
    fit_to_pipeline,
    is_flow,
    plain_scheduler,
)
from autoeff.search_spaces.base import ConfigError, Knob, SpaceContext, Stage, copy_pipeline
from autoeff.search_spaces.registry import register

NAME = "solver"
SOLVERS: tuple[str, ...] = ("ddim", "dpmpp", "dpmpp_single", "unipc", "euler", "heun")
# the solvers of each noise process (the context's `noise`)
NOISE_SOLVERS: dict[str, tuple[str, ...]] = {"ddpm": ("ddim", "dpmpp", "dpmpp_single", "unipc", "euler"),
                                             "flow": ("euler", "heun", "dpmpp", "unipc")}
MAX_ORDER: dict[str, int] = {"ddim": 1, "dpmpp": 3, "dpmpp_single": 3, "unipc": 3, "euler": 1, "heun": 1}
# `variant` is diffusers' `solver_type`: the 2nd-order update of DPM-Solver++ (midpoint or Heun), and UniPC's
# B(h) choice (bh1 or bh2, Zhao et al. 2023). The first entry is diffusers' default.
VARIANTS: dict[str, tuple[str, ...]] = {
    "dpmpp": ("midpoint", "heun"), "dpmpp_single": ("midpoint", "heun"), "unipc": ("bh2", "bh1")}
_LABELS = {"ddim": "DDIM", "dpmpp": "DPM-Solver++", "dpmpp_single": "DPM-Solver++", "unipc": "UniPC",
           "euler": "Euler", "heun": "Heun"}


def _variant_applies(name: str, order: int) -> bool:
    """UniPC's B(h) matters at every order; DPM-Solver++'s solver_type only from order 2."""
    return name == "unipc" or (name in VARIANTS and order > 1)


@dataclass
class Config:
    """A solver choice.

    Attributes:
        name: one of `SOLVERS`.
        order: solver order, 1-3 for `dpmpp`, `dpmpp_single`, `unipc`; 1 for `ddim`, `euler` and `heun` (Heun is
            a 2nd-order method in one step; `order` counts the steps a multistep solver remembers).
        lower_order_final: use lower orders on the last steps (diffusers' stabilizer for few steps); only
            meaningful, and only settable to False, at order 2-3.
        variant: `solver_type` (see `VARIANTS`); `None` means diffusers' default and is filled in.
    """

    name: str = "dpmpp"
    order: int = 2
    lower_order_final: bool = True
    variant: str | None = None
    version: int = 1

    def __post_init__(self) -> None:
        if self.name not in SOLVERS:
            raise ConfigError(f"solver.name {self.name!r} is not a known solver; "
                              f"use one of {', '.join(SOLVERS)}")
        top = MAX_ORDER[self.name]
        if not isinstance(self.order, int) or isinstance(self.order, bool) or not 1 <= self.order <= top:
            raise ConfigError(f"solver.order {self.order!r} is not valid for {self.name!r}; "
                              f"use an integer in [1, {top}]")
        if not isinstance(self.lower_order_final, bool):
            raise ConfigError("solver.lower_order_final must be true or false, "
                              f"got {self.lower_order_final!r}")
        if not self.lower_order_final and self.order == 1:
            raise ConfigError(f"solver.lower_order_final=False has no effect for {self.name!r} at order 1; "
                              "leave it true or raise the order")
        if _variant_applies(self.name, self.order):
            if self.variant is None:
                self.variant = VARIANTS[self.name][0]
            if self.variant not in VARIANTS[self.name]:
                raise ConfigError(f"solver.variant {self.variant!r} is not valid for {self.name!r}; "
                                  f"use one of {', '.join(VARIANTS[self.name])}")
        elif self.variant is not None:
            raise ConfigError(f"solver.variant {self.variant!r} does not apply to {self.name!r} at order "
                              f"{self.order}; leave it null")

    def describe(self) -> str:
        """E.g. `DPM-Solver++ 2M (midpoint)`, `UniPC-2 (bh2)`, `DDIM`."""
        label = _LABELS[self.name]
        if self.name in ("dpmpp", "dpmpp_single"):
            label += f" {self.order}{'M' if self.name == 'dpmpp' else 'S'}"
        elif self.name == "unipc":
            label += f"-{self.order}"
        if self.variant is not None:
            label += f" ({self.variant})"
        if not self.lower_order_final:
            label += " no-lower-order-final"
        return label


_CLASSES: dict[str, type[SchedulerMixin]] = {
    "ddim": TimestepDDIMScheduler,
    "dpmpp": DPMSolverMultistepScheduler,
    "dpmpp_single": DPMSolverSinglestepScheduler,
    "unipc": TimestepUniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
}


def _clip_as_threshold(config: Any) -> dict[str, Any]:
    """DDPM/DDIM `clip_sample` expressed as DPM-Solver++ / UniPC `thresholding` (see the module docstring)."""
    clip = config.get("clip_sample") and config.get("clip_sample_range", 1.0) == 1.0
    if clip and not config.get("thresholding"):
        return {"thresholding": True, "sample_max_value": 1.0}
    return {}


def _needs_sigma_min(config: Config) -> bool:
    """UniPC configurations whose last step is not finite with a zero final sigma (module docstring)."""
    return config.name == "unipc" and (config.variant == "bh1" or (config.order > 1 and not config.lower_order_final))


_FLOW_CLASSES: dict[str, type[SchedulerMixin]] = {
    "euler": FlowMatchEulerDiscreteScheduler,
    "heun": FlowSigmasHeunDiscreteScheduler,
    "dpmpp": FlowSigmasDPMSolverMultistepScheduler,
    "unipc": TimestepUniPCMultistepScheduler,
}


def _build_flow(config: Config, cfg: Any) -> SchedulerMixin:
    """The flow solver of `config` on a flow model whose scheduler config is `cfg` (module docstring)."""
    if config.name not in _FLOW_CLASSES:
        raise ConfigError(f"solver {config.name!r} has no flow-matching variant; on this model use one of "
                          f"{', '.join(NOISE_SOLVERS['flow'])}")
    shift = cfg.get("shift", cfg.get("flow_shift", 1.0))
    dynamic = bool(cfg.get("use_dynamic_shifting", False))
    cls = _FLOW_CLASSES[config.name]
    accepted = set(inspect.signature(cls.__init__).parameters)
    overrides: dict[str, Any] = {f: False for f in SIGMA_SPACING_FLAGS if f in accepted and f != "use_flow_sigmas"}
    if config.name == "euler":
        overrides.update(shift=shift, use_dynamic_shifting=dynamic)
    elif config.name == "heun":
        overrides.update(shift=shift)
    else:
        overrides.update(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift,
                         use_dynamic_shifting=dynamic, time_shift_type=cfg.get("time_shift_type", "exponential"),
                         solver_order=config.order, lower_order_final=config.lower_order_final,
                         solver_type=config.variant or VARIANTS[config.name][0])
        if config.name == "dpmpp":
            overrides["algorithm_type"] = "dpmsolver++"
        else:
            overrides["predict_x0"] = True
            if _needs_sigma_min(config):  # as on DDPM models: NaN with a zero final sigma otherwise
                overrides["final_sigmas_type"] = "sigma_min"
    return cls.from_config({k: v for k, v in cfg.items() if k in accepted}, **overrides)


def build_scheduler(config: Config, base: SchedulerMixin) -> SchedulerMixin:
    """A new scheduler implementing `config`, with `base`'s training configuration. `base` is untouched."""
    cfg = plain_scheduler(base).config  # a pinned base contributes its config, not its pin
    if is_flow(base):
        return _build_flow(config, cfg)
    if config.name not in NOISE_SOLVERS["ddpm"]:
        raise ConfigError(f"solver {config.name!r} is a flow-matching solver; on this model use one of "
                          f"{', '.join(NOISE_SOLVERS['ddpm'])}")
    cls = _CLASSES[config.name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"use_flow_sigmas"}
    overrides: dict[str, Any] = {f: False for f in SIGMA_SPACING_FLAGS if f in accepted}
    if config.name in ("dpmpp", "dpmpp_single", "unipc"):
        overrides.update(solver_order=config.order, lower_order_final=config.lower_order_final,
                         solver_type=config.variant or VARIANTS[config.name][0], **_clip_as_threshold(cfg))
    if config.name == "ddim":
        # DDIMScheduler's own default is clip_sample=True, which SD pipelines reset in __init__ (latents are
        # not in [-1, 1]); a scheduler set after construction misses that reset: clip only if the base does.
        overrides["clip_sample"] = bool(cfg.get("clip_sample", False))
    elif config.name == "unipc":
        overrides["predict_x0"] = True
        if _needs_sigma_min(config):  # see the module docstring: NaN otherwise
            overrides["final_sigmas_type"] = "sigma_min"
    elif config.name in ("dpmpp", "dpmpp_single"):
        overrides["algorithm_type"] = "dpmsolver++"
    return cls.from_config(cfg, **overrides)


@dataclass
class Options:
    """Restrictions of the solver space: `names` (a subset of `SOLVERS`; default: every solver of the model's
    noise process, `NOISE_SOLVERS`), `max_order` (1-3)."""

    names: list[str] | None = None
    max_order: int = 3

    def __post_init__(self) -> None:
        names = self.names
        if names is not None and (not isinstance(names, list | tuple) or not names
                                  or any(n not in SOLVERS for n in names)):
            raise ConfigError(f"solver option names={names!r} must be a non-empty subset of {', '.join(SOLVERS)}")
        self.names = None if names is None else list(names)
        if isinstance(self.max_order, bool) or not isinstance(self.max_order, int) or not 1 <= self.max_order <= 3:
            raise ConfigError(f"solver option max_order={self.max_order!r} must be an integer in [1, 3]")


def suggest(trial: Any, context: SpaceContext) -> Config:
    """Draw a solver; parameter names are per solver (`solver.dpmpp.order`) so each keeps one distribution.

    Respects `context.options["solver"]`: `names` (subset of `SOLVERS`), `max_order` (1-3).
    """
    opts: Options = KNOB.options_for(context)
    own = NOISE_SOLVERS.get(context.noise, NOISE_SOLVERS["ddpm"])
    names = list(own) if opts.names is None else opts.names
    foreign = [n for n in names if n not in own]
    if foreign:
        raise ConfigError(f"solver option names={names!r}: {', '.join(foreign)} do(es) not run on a {context.noise} "
                          f"model; use some of {', '.join(own)}")
    name = trial.suggest_categorical(f"{NAME}.name", names)
    order = 1
    top = min(MAX_ORDER[name], opts.max_order)
    if top > 1:
        order = trial.suggest_int(f"{NAME}.{name}.order", 1, top)
    lower_order_final = True
    if order > 1:
        lower_order_final = trial.suggest_categorical(f"{NAME}.{name}.lower_order_final", [True, False])
    variant = None
    if _variant_applies(name, order):
        variant = trial.suggest_categorical(f"{NAME}.{name}.variant", list(VARIANTS[name]))
    return Config(name=name, order=order, lower_order_final=lower_order_final, variant=variant)


def to_params(config: Config) -> dict[str, Any]:
    """The trial parameters `suggest` turns into `config` (for `study.enqueue_trial` and `FixedTrial`)."""
    params: dict[str, Any] = {f"{NAME}.name": config.name}
    if MAX_ORDER[config.name] > 1:
        params[f"{NAME}.{config.name}.order"] = config.order
    if config.order > 1:
        params[f"{NAME}.{config.name}.lower_order_final"] = config.lower_order_final
    if _variant_applies(config.name, config.order):
        params[f"{NAME}.{config.name}.variant"] = config.variant
    return params


def apply(pipe: Any, config: Config, context: SpaceContext) -> Any:
    """A copy of `pipe` whose scheduler implements `config`; the base pipeline and scheduler are untouched."""
    return copy_pipeline(pipe, scheduler=fit_to_pipeline(pipe, build_scheduler(config, pipe.scheduler)))


KNOB = register(Knob(
    name=NAME, stage=Stage.SCHEDULER, config=Config, options=Options, suggest=suggest, to_params=to_params,
    apply=apply, help="the solver and its order (DDIM, DPM-Solver++ 1-3M/S, UniPC 1-3, Euler; flow models: "
                      "flow-match Euler and Heun, DPM-Solver++ and UniPC on flow sigmas)"))
