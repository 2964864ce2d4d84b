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
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

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


def plain_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """The closest stock diffusers scheduler with the same config (what an exported folder should save)."""
    cls: type[SchedulerMixin] = next(c for c in type(scheduler).__mro__ if c.__module__.startswith("diffusers."))
    return cls.from_config(scheduler.config)
