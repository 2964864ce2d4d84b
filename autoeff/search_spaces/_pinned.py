"""Schedulers that take custom timesteps, and schedulers pinned to one list of timesteps.

diffusers pipelines choose their own timesteps: they call `scheduler.set_timesteps(num_inference_steps,
device=...)` (directly, or through `retrieve_timesteps` in the SD / SDXL / PixArt pipelines). The schedule
knob must decide the timesteps without touching the pipeline's code, so `pin_timesteps` returns a scheduler
whose `set_timesteps` ignores the count it is given and visits the pinned list instead.

Custom timesteps in diffusers 0.42.1 (`set_timesteps(timesteps=...)`): DPMSolverMultistep,
DPMSolverSinglestep, EulerDiscrete, DDPM, Heun, LCM, TCD take them; DDIM and UniPC do not. The two classes
below add them to DDIM and UniPC while leaving every update rule to diffusers:

* `TimestepDDIMScheduler` runs `DDIMScheduler.step` unchanged and only tells it which timestep comes next.
* `TimestepUniPCMultistepScheduler` runs UniPC's own `set_timesteps`, then replaces its timesteps and the
  sigmas derived from them by the same formula UniPC uses for its built-in spacings.

Schedulers with no custom-timestep support and no adapter here (PNDM, LMS, EulerAncestral, ...) are
*converted* by `timestep_capable` before pinning: see `CONVERSIONS`.

Flow-matching models (`is_flow`) are pinned to *sigmas* instead (`pin_sigmas`): fractions of the noise in (0, 1],
unshifted, which the scheduler shifts by its own rule (the static `shift`, or Flux's resolution-dependent `mu`
that the pipeline passes). FlowMatchEuler and UniPC take custom sigmas and `mu`; two adapters add them to
DPM-Solver++ and FlowMatchHeun, running their own `set_timesteps` and replacing the sigmas by the same
expressions those use for their built-in spacing (`FlowSigmasDPMSolverMultistepScheduler`,
`FlowSigmasHeunDiscreteScheduler`); without custom sigmas they are exactly the stock classes.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from autoeff.models.kinds import step_keywords

# Config flags under which diffusers' schedulers refuse custom timesteps (they make their own sigmas).
SIGMA_SPACING_FLAGS: tuple[str, ...] = (
    "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas")


def check_timesteps(timesteps: Sequence[int], num_train_timesteps: int) -> list[int]:
    """`timesteps` as a list of ints, or ValueError unless strictly decreasing and in [0, N-1]."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("custom timesteps are empty; pass at least one timestep")
    if any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"custom timesteps must be strictly decreasing, got {ts}")
    if ts[0] > num_train_timesteps - 1 or ts[-1] < 0:
        raise ValueError(f"custom timesteps must lie in [0, {num_train_timesteps - 1}], got {ts}")
    return ts


class TimestepDDIMScheduler(DDIMScheduler):
    """DDIM (Song et al., 2021, "Denoising Diffusion Implicit Models") on any strictly decreasing timesteps.

    `DDIMScheduler.step` finds the previous timestep as `t - num_train_timesteps // num_inference_steps`,
    which is only right for evenly spaced `leading` schedules (diffusers issue #9261). With custom timesteps,
    `step` here sets `num_inference_steps = 1` for the duration of the call, so that expression is negative
    and DDIM reads `final_alpha_cumprod`, and sets `final_alpha_cumprod` to alpha-bar of the true next
    timestep (or leaves the real final value on the last step). Every line of the update is DDIM's own,
    including `clip_sample`, `thresholding`, `eta` and `use_clipped_model_output`. Without custom timesteps
    this is exactly `DDIMScheduler`.
    """

    custom_timesteps: bool = False
    final_alpha_cumprod: torch.Tensor  # set by DDIMScheduler.__init__

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        if timesteps is None:
            self.custom_timesteps = False
            if num_inference_steps is None:
                raise ValueError("pass num_inference_steps or timesteps")
            super().set_timesteps(num_inference_steps, device=device)
            return
        if num_inference_steps is not None:
            raise ValueError("pass either num_inference_steps or timesteps, not both")
        ts = check_timesteps(timesteps, self.config.num_train_timesteps)
        self.num_inference_steps = len(ts)
        self.timesteps = torch.tensor(ts, dtype=torch.int64, device=device)
        self._next_timestep = dict(zip(ts, [*ts[1:], None], strict=True))
        self.custom_timesteps = True

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             *args: Any, **kwargs: Any) -> Any:
        if not self.custom_timesteps:
            return super().step(model_output, timestep, sample, *args, **kwargs)
        t = int(timestep)
        if t not in self._next_timestep:
            raise ValueError(f"timestep {t} is not one of the custom timesteps {self.timesteps.tolist()}")
        nxt = self._next_timestep[t]
        saved = self.num_inference_steps, self.final_alpha_cumprod
        self.num_inference_steps = 1
        if nxt is not None:
            self.final_alpha_cumprod = self.alphas_cumprod[nxt]
        try:
            return super().step(model_output, timestep, sample, *args, **kwargs)
        finally:
            self.num_inference_steps, self.final_alpha_cumprod = saved


class TimestepUniPCMultistepScheduler(UniPCMultistepScheduler):
    """UniPC (Zhao et al., 2023, "UniPC: A Unified Predictor-Corrector Framework") on custom timesteps.

    UniPC's own `set_timesteps` resets the multistep state; then its timesteps and sigmas are replaced by the
    custom ones, with sigmas interpolated from the training schedule exactly as UniPC does for its built-in
    `linspace` / `leading` / `trailing` spacings (so the stock schedule passed as custom timesteps gives the
    same sampler bit for bit). Without custom timesteps this is exactly `UniPCMultistepScheduler`.
    """

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        if timesteps is None:
            super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu)
            return
        if num_inference_steps is not None or sigmas is not None:
            raise ValueError("pass timesteps alone, without num_inference_steps or sigmas")
        flags = [f for f in SIGMA_SPACING_FLAGS if self.config.get(f)]
        if flags:
            raise ValueError(f"custom timesteps need {', '.join(flags)} = False in the UniPC config")
        if self.solver_p is not None:
            raise ValueError("custom timesteps are not supported with a separate predictor (solver_p)")
        ts = check_timesteps(timesteps, self.config.num_train_timesteps)
        super().set_timesteps(len(ts), device=device)
        # The same expressions as UniPCMultistepScheduler.set_timesteps' default branch (diffusers 0.42.1).
        train_sigmas = np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5)
        sig = np.interp(np.array(ts, dtype=np.int64), np.arange(0, len(train_sigmas)), train_sigmas)
        if self.config.final_sigmas_type == "sigma_min":
            last = ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
        else:
            last = 0
        self.sigmas = torch.from_numpy(np.concatenate([sig, [last]]).astype(np.float32))
        self.timesteps = torch.tensor(ts, dtype=torch.int64, device=device)


def is_flow(scheduler: SchedulerMixin | Any) -> bool:
    """Whether a scheduler integrates a flow-matching model (a `FlowMatch*` class, or flow sigmas)."""
    config = getattr(scheduler, "config", None) or {}
    cls = scheduler if isinstance(scheduler, type) else type(scheduler)
    return (any(c.__name__.startswith("FlowMatch") for c in cls.__mro__) or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction")


def shift_sigmas(sigmas: np.ndarray, shift: float, mu: float | None) -> np.ndarray:
    """Flow sigmas shifted as diffusers shifts them: by `exp(mu)` when the pipeline passes `mu` (exponential
    time shift, Flux), else by the static `shift`: `shift * s / (1 + (shift - 1) * s)` (Esser et al., 2024)."""
    s = np.asarray(sigmas, dtype=np.float64)
    factor = math.exp(mu) if mu is not None else float(shift)
    return factor * s / (1 + (factor - 1) * s)


def check_sigmas(sigmas: Sequence[float]) -> list[float]:
    """`sigmas` as floats, or ValueError unless strictly decreasing in (0, 1]."""
    out = [float(x) for x in sigmas]
    if not out:
        raise ValueError("custom sigmas are empty; pass at least one")
    if any(a <= b for a, b in zip(out, out[1:], strict=False)) or out[0] > 1 or out[-1] <= 0:
        raise ValueError(f"custom flow sigmas must be strictly decreasing in (0, 1], got {out}")
    return out


class FlowSigmasDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++ (Lu et al., 2022) on flow sigmas (`use_flow_sigmas=True`, as Sana ships it), with custom sigmas.

    diffusers 0.42.1's DPM-Solver++ computes flow sigmas only from a step count; Flux's pipeline passes its own
    sigmas (and `mu`), and the schedule knob pins them. With `sigmas`, the stock `set_timesteps` runs for their
    count (resetting the multistep state), then its sigmas and timesteps are replaced by the given ones shifted
    as the stock branch shifts (`flow_shift`, or `exp(mu)`), the final sigma kept from the stock computation.
    """

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      mu: float | None = None, timesteps: Sequence[int] | None = None,
                      sigmas: Sequence[float] | None = None) -> None:
        if sigmas is None:
            super().set_timesteps(num_inference_steps, device=device, mu=mu, timesteps=timesteps)
            return
        if num_inference_steps is not None and num_inference_steps != len(sigmas) or timesteps is not None:
            raise ValueError("pass sigmas alone, without num_inference_steps or timesteps")
        shift = self.config.flow_shift
        super().set_timesteps(len(sigmas), device=device, mu=mu)
        shifted = shift_sigmas(np.asarray(check_sigmas(sigmas)), shift, mu)
        last = float(self.sigmas[-1])  # type: ignore[has-type]
        self.sigmas = torch.from_numpy(np.concatenate([shifted, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(shifted * self.config.num_train_timesteps).to(device=device,
                                                                                     dtype=torch.int64)
        self.num_inference_steps = len(shifted)


class FlowSigmasHeunDiscreteScheduler(FlowMatchHeunDiscreteScheduler):
    """Heun's method on a flow-matching model (Karras et al., 2022, Algorithm 1), with custom sigmas and `mu`.

    diffusers 0.42.1's FlowMatchHeun takes only a step count and a static shift; here `sigmas` (unshifted) and
    Flux's `mu` are accepted too, and the sigmas and timesteps are built by the stock expressions (each interior
    sigma twice: the predictor and corrector evaluations). Without them this is the stock class.
    """

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: Sequence[float] | None = None, mu: float | None = None) -> None:
        if sigmas is None and mu is None:
            if num_inference_steps is None:
                raise ValueError("pass num_inference_steps or sigmas")
            super().set_timesteps(num_inference_steps, device=device)
            return
        if sigmas is None:
            assert num_inference_steps is not None
            base = np.linspace(self._sigma_to_t(self.sigma_max), self._sigma_to_t(self.sigma_min),
                               num_inference_steps) / self.config.num_train_timesteps
        else:
            base = np.asarray(check_sigmas(sigmas))
        super().set_timesteps(len(base), device=device)
        shifted = torch.from_numpy(shift_sigmas(base, self.config.shift, mu)).to(dtype=torch.float32, device=device)
        t = shifted * self.config.num_train_timesteps
        self.timesteps = torch.cat([t[:1], t[1:].repeat_interleave(2)]).to(device=device)
        full = torch.cat([shifted, torch.zeros(1, device=shifted.device)])
        self.sigmas = torch.cat([full[:1], full[1:-1].repeat_interleave(2), full[-1:]])


#: Flow schedulers that take custom sigmas (and `mu`): as they are, or through an adapter above.
FLOW_SIGMA_CLASSES: dict[str, type[SchedulerMixin]] = {
    "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
    "FlowMatchHeunDiscreteScheduler": FlowSigmasHeunDiscreteScheduler,
    "DPMSolverMultistepScheduler": FlowSigmasDPMSolverMultistepScheduler,
    "UniPCMultistepScheduler": UniPCMultistepScheduler,
}


#: What `timestep_capable` turns a scheduler without custom-timestep support into (same training config).
#: DDIM and UniPC keep their update rule; PNDM (PLMS, a 4th-order linear multistep method) and LMS become
#: DPM-Solver++ 2M, the multistep sampler diffusers recommends in their place; EulerAncestral becomes
#: (deterministic) Euler. Anything else unlisted also becomes DPM-Solver++ 2M.
CONVERSIONS: dict[str, type[SchedulerMixin]] = {
    "DDIMScheduler": TimestepDDIMScheduler,
    "UniPCMultistepScheduler": TimestepUniPCMultistepScheduler,
    "EulerAncestralDiscreteScheduler": EulerDiscreteScheduler,
}
FALLBACK: type[SchedulerMixin] = DPMSolverMultistepScheduler


def base_class(scheduler: SchedulerMixin | type) -> type[SchedulerMixin]:
    """The scheduler's class with pinning removed (`PinnedX` -> `X`)."""
    cls = scheduler if isinstance(scheduler, type) else type(scheduler)
    return getattr(cls, "_pinned_base", cls)


def _without_sigma_flags(scheduler: SchedulerMixin) -> dict[str, bool]:
    return {f: False for f in SIGMA_SPACING_FLAGS if scheduler.config.get(f)}


def timestep_capable(scheduler: SchedulerMixin) -> SchedulerMixin:
    """`scheduler` itself when it takes custom timesteps; otherwise a new scheduler that does.

    A scheduler that takes them only with its sigma-spacing flags off (`use_karras_sigmas`, ...) gets a copy
    with those flags off; one that never takes them becomes `CONVERSIONS[its class]` (or `FALLBACK`), built
    `from_config` so the training betas, prediction type and spacing carry over.
    """
    cls = base_class(scheduler)
    if "timesteps" in inspect.signature(cls.set_timesteps).parameters:
        overrides = _without_sigma_flags(scheduler)
        return cls.from_config(scheduler.config, **overrides) if overrides else scheduler
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(f"{cls.__name__} has no discrete noise schedule (alphas_cumprod); the schedule "
                         "knob supports DDPM-style (epsilon / v / sample) schedulers only")
    target = CONVERSIONS.get(cls.__name__, FALLBACK)
    new = target.from_config(scheduler.config)
    overrides = _without_sigma_flags(new)
    return target.from_config(new.config, **overrides) if overrides else new


class _PinnedMixin:
    """`set_timesteps` visits `pinned_timesteps` whatever count, timesteps or sigmas the caller passes."""

    _pinned_base: type[SchedulerMixin]
    config: Any  # the ConfigMixin config of the scheduler class this is mixed into
    pinned_timesteps: tuple[int, ...] = ()

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      **kwargs: Any) -> None:
        self._pinned_base.set_timesteps(self, timesteps=list(self.pinned_timesteps), device=device)

    def __reduce__(self) -> tuple:
        # The class is made at run time, so pickle rebuilds it from the base class, config and timesteps.
        return _rebuild_pinned, (self._pinned_base, dict(self.config), self.pinned_timesteps)


@functools.cache
def _pinned_class(base: type[SchedulerMixin]) -> type[SchedulerMixin]:
    return type(f"Pinned{base.__name__}", (_PinnedMixin, base),
                {"_pinned_base": base, "__module__": __name__, "__doc__": _PinnedMixin.__doc__})


def _rebuild_pinned(base: type[SchedulerMixin], config: dict, timesteps: tuple[int, ...]) -> SchedulerMixin:
    return pin_timesteps(base.from_config(config), timesteps)


def pin_timesteps(scheduler: SchedulerMixin, timesteps: Sequence[int]) -> SchedulerMixin:
    """A new scheduler, built from `scheduler`'s config, that always visits exactly `timesteps`.

    The result is an instance of a subclass of the scheduler's class (after `timestep_capable`: a DDIM stays
    DDIM, a PNDM becomes DPM-Solver++ 2M); its `config` is that class's config, its `pinned_timesteps` the
    list, and its timesteps are already set (so `init_noise_sigma` is right before any `set_timesteps`).
    `scheduler` itself is not modified.
    """
    capable = timestep_capable(scheduler)
    base: type = base_class(capable)  # plain `type`: mypy does not see `type[Any]` as Hashable (for the cache)
    ts = tuple(check_timesteps(timesteps, int(capable.config.num_train_timesteps)))
    pinned = _pinned_class(base).from_config(capable.config)
    pinned.pinned_timesteps = ts
    pinned.set_timesteps()
    return pinned


class _PinnedSigmasMixin:
    """`set_timesteps` visits `pinned_sigmas` (unshifted) whatever count or sigmas the caller passes; the `mu` a
    pipeline passes (Flux's resolution-dependent shift) is kept."""

    _pinned_base: type[SchedulerMixin]
    config: Any
    pinned_sigmas: tuple[float, ...] = ()

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: Sequence[float] | None = None, mu: float | None = None,
                      timesteps: Sequence[float] | None = None) -> None:
        # `sigmas` and `timesteps` are in the signature because diffusers' `retrieve_timesteps` refuses a scheduler
        # whose `set_timesteps` does not name them; both are ignored like the count
        extra = {"mu": mu} if mu is not None else {}
        self._pinned_base.set_timesteps(self, sigmas=np.asarray(self.pinned_sigmas, dtype=np.float64), device=device,
                                        **extra)

    def __reduce__(self) -> tuple:
        return _rebuild_pinned_sigmas, (self._pinned_base, dict(self.config), self.pinned_sigmas)


@functools.cache
def _pinned_sigmas_class(base: type[SchedulerMixin]) -> type[SchedulerMixin]:
    return type(f"Pinned{base.__name__}", (_PinnedSigmasMixin, base),
                {"_pinned_base": base, "__module__": __name__, "__doc__": _PinnedSigmasMixin.__doc__})


def _rebuild_pinned_sigmas(base: type[SchedulerMixin], config: dict, sigmas: tuple[float, ...]) -> SchedulerMixin:
    return pin_sigmas(base.from_config(config), sigmas)


def sigma_capable(scheduler: SchedulerMixin) -> SchedulerMixin:
    """`scheduler` itself when it takes custom flow sigmas and `mu`; otherwise the same scheduler through its
    adapter (`FLOW_SIGMA_CLASSES`), or ValueError for a flow scheduler autoeff has no adapter for."""
    cls = base_class(scheduler)
    params = inspect.signature(cls.set_timesteps).parameters
    if "sigmas" in params and "mu" in params:
        return scheduler
    plain = next(c for c in cls.__mro__ if c.__module__.startswith("diffusers."))
    target = FLOW_SIGMA_CLASSES.get(plain.__name__)
    if target is None:
        raise ValueError(f"{plain.__name__} takes no custom sigmas; the schedule knob supports flow-match Euler and "
                         "Heun, DPM-Solver++ and UniPC on flow-matching models")
    return target.from_config(scheduler.config)


def pin_sigmas(scheduler: SchedulerMixin, sigmas: Sequence[float], **config: Any) -> SchedulerMixin:
    """A new flow scheduler, built from `scheduler`'s config (with `config` overrides, e.g. a shift), that always
    visits exactly `sigmas` (unshifted; the scheduler shifts them). `scheduler` itself is not modified."""
    capable = sigma_capable(scheduler)
    base: type = base_class(capable)
    pinned = _pinned_sigmas_class(base).from_config(capable.config, **config)
    pinned.pinned_sigmas = tuple(check_sigmas(sigmas))
    if not pinned.config.get("use_dynamic_shifting"):
        pinned.set_timesteps()  # dynamic shifting needs the pipeline's `mu`: set at the pipeline's call
    return pinned


@functools.cache
def _tolerant_class(cls: Any, dropped: frozenset[str]) -> type:
    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        for name in dropped:
            kwargs.pop(name, None)
        return cls.step(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"step": step, "_autoeff_dropped_step_kwargs": dropped,
                                       "__module__": cls.__module__, "__qualname__": cls.__qualname__})


def fit_to_pipeline(pipe: Any, scheduler: SchedulerMixin) -> SchedulerMixin:
    """`scheduler` (a new one a knob built) made to accept the keywords `pipe`'s `__call__` passes to its `step`:
    ones its `step` does not take (DDIMPipeline's `eta` to DPM-Solver++, DDPMPipeline's `generator` to UniPC) are
    dropped, which is what they mean to a deterministic solver. Changes the scheduler's class in place (same name,
    one subclass per class and dropped set); a scheduler that takes them all is returned as it is."""
    params = inspect.signature(type(scheduler).step).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return scheduler
    pipe_class: Any = type(pipe)
    scheduler_class: Any = type(scheduler)
    dropped = frozenset(k for k in step_keywords(pipe_class) if k not in params)
    if dropped:
        scheduler.__class__ = _tolerant_class(scheduler_class, dropped)
    return scheduler


def plain_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """The closest stock diffusers scheduler with the same config (what an exported folder should save)."""
    cls: type[SchedulerMixin] = next(c for c in type(scheduler).__mro__ if c.__module__.startswith("diffusers."))
    return cls.from_config(scheduler.config)
