"""The `schedule` knob: which timesteps the sampler visits, pinned onto the pipeline's scheduler.

Families (k = `steps`, N = training timesteps):

* `uniform`: diffusers' `trailing` spacing, `round(arange(N, 0, -N/k)) - 1` (starts at N-1; Lin et al.,
  2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2).
* `leading`: `arange(k) * (N // k)` reversed, plus the scheduler's `steps_offset` (DDIM / DDPM / Euler /
  PNDM `leading`; DPM-Solver and UniPC define their own `leading` and `linspace` on k+1 points).
* `linspace`: `round(linspace(0, N-1, k))` reversed (DDIM / DDPM `linspace`).
* `quadratic`: `(N-1) * ((k-i)/k)^2`, dense near the data end (Song et al., 2021, DDIM, Appendix D.2).
* `karras`: the sigmas of Karras et al., 2022 (EDM), eq. 5, with exponent `rho`, between the model's own
  sigma(0) and sigma(N-1), mapped back to timesteps through the model's `alphas_cumprod`.
* `ays`: the published 10-step Align Your Steps schedules (Sabour et al., 2024; SDXL's for `sdxl`, SD1.5's
  for every other family) resampled to k steps by log-linear interpolation of their sigmas, as in the AYS
  paper; sigmas are the model's own, sigma(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t).
* `free`: the search picks the k timesteps themselves (AutoDiffusion, Li et al., 2023).

Every family is rounded to integers and, where rounding made duplicates or left the range, repaired by
`repair` into strictly decreasing integers in [0, N-1]; a repaired schedule always has exactly k entries.

Flow-matching models (the context's `noise == "flow"`) are scheduled in *sigmas*, the fraction of noise in (0, 1]
(Lipman et al., 2023), unshifted: the scheduler shifts them by its own rule (SD3's static shift 3, Flux's
resolution-dependent `mu`), as it shifts its built-in spacing. Each family maps to sigmas the way it maps to
timesteps, a timestep t standing for sigma (t + 1) / N: `uniform` is exactly `linspace(1, 1/k, k)` (Flux's own
spacing), `linspace` exactly `linspace(1, s, k)` with s the scheduler's smallest training sigma
(`FlowMatchEulerDiscreteScheduler`'s own spacing, so SD3's), `karras` is eq. 5 between 1 and 1/N (what diffusers'
`use_karras_sigmas` does to flow sigmas), `ays` interpolates the published table's positions log-linearly (an SD1.5
schedule, not one tuned for flow models), and `free` picks the k positions themselves. `shift` (flow models with a
static shift only) replaces the model's shift: the search may move the whole schedule towards more or less noise.

`apply` pins the timesteps with `_pinned.pin_timesteps` (sigmas with `_pinned.pin_sigmas`), so a plain `pipe(...)`
call visits exactly them whatever `num_inference_steps` it passes. A scheduler without custom-timestep support is
converted first (`_pinned.CONVERSIONS`): DDIM and UniPC keep their update rule, PNDM (SD1.5's default) and LMS
become DPM-Solver++ 2M, EulerAncestral becomes Euler; DDPM (the digits models), Euler (SDXL) and DPM-Solver (PixArt)
are pinned as they are. With the solver knob, the solver's scheduler is the one pinned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from autoeff.search_spaces._pinned import fit_to_pipeline, is_flow, pin_sigmas, pin_timesteps, plain_scheduler
from autoeff.search_spaces.base import ConfigError, Knob, SpaceContext, Stage, copy_pipeline
from autoeff.search_spaces.registry import register

NAME = "schedule"
FAMILIES: tuple[str, ...] = ("uniform", "leading", "linspace", "quadratic", "karras", "ays", "free")
#: Align Your Steps 10-step timestep schedules (Sabour et al., 2024), for 1000 training timesteps.
AYS_TIMESTEPS: dict[str, tuple[int, ...]] = {
    "sd15": (999, 850, 736, 645, 545, 455, 343, 233, 124, 24),
    "sdxl": (999, 845, 730, 587, 443, 310, 193, 116, 53, 13),
}
DEFAULT_RHO = 7.0
RHO_RANGE = (1.0, 10.0)
#: The trial parameter holding the step count (the denoiser evaluations of one call, for every solver here).
STEPS_PARAM = f"{NAME}.steps"
FAMILY_PARAM = f"{NAME}.family"


def is_schedule_param(name: str) -> bool:
    """Whether trial parameter `name` belongs to this knob: the step count, the family and the timesteps, which
    change how many evaluations a call makes and where, never what one evaluation costs."""
    return name.startswith(f"{NAME}.")


FREE_PREFIX = f"{NAME}.free.t"


def free_param(i: int) -> str:
    """The trial parameter of the i-th timestep of a `free` schedule."""
    return f"{FREE_PREFIX}{i}"


@dataclass
class Config:
    """A timestep schedule.

    Attributes:
        family: one of `FAMILIES`.
        steps: number of timesteps (denoiser evaluations for first-order and multistep solvers).
        rho: Karras exponent; only for `karras` (filled with 7.0 when left out).
        timesteps: only for `free`: the timesteps, strictly decreasing integers, `len == steps`.
        shift: flow-matching models only: the shift applied to the sigmas (`None`: the model's own).
    """

    family: str = "uniform"
    steps: int = 20
    rho: float | None = None
    timesteps: list[int] | None = None
    version: int = 1
    shift: float | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"schedule.family {self.family!r} is not known; "
                              f"use one of {', '.join(FAMILIES)}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ConfigError(f"schedule.steps {self.steps!r} must be an integer >= 1")
        if self.family == "karras":
            if self.rho is None:
                self.rho = DEFAULT_RHO
            if isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or not (
                    math.isfinite(self.rho) and self.rho > 0):
                raise ConfigError(f"schedule.rho {self.rho!r} must be a positive number "
                                  "(Karras et al. use 7)")
            self.rho = float(self.rho)
        elif self.rho is not None:
            raise ConfigError(f"schedule.rho applies only to family 'karras', not {self.family!r}; "
                              "leave it null")
        if self.family == "free":
            ts = self.timesteps
            if not isinstance(ts, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in ts):
                raise ConfigError(f"schedule.timesteps {ts!r} must be a list of integers for family 'free'")
            if len(ts) != self.steps:
                raise ConfigError(f"schedule.timesteps has {len(ts)} entries but steps is {self.steps}; "
                                  "make steps equal to the number of timesteps")
            if any(a <= b for a, b in zip(ts, ts[1:], strict=False)) or ts[-1] < 0:
                raise ConfigError(f"schedule.timesteps {ts} must be strictly decreasing "
                                  "non-negative integers")
        elif self.timesteps is not None:
            raise ConfigError(f"schedule.timesteps applies only to family 'free', not {self.family!r}; "
                              "leave it null")
        if self.shift is not None:
            if isinstance(self.shift, bool) or not isinstance(self.shift, int | float) or not (
                    math.isfinite(self.shift) and 0 < self.shift <= 100):
                raise ConfigError(f"schedule.shift {self.shift!r} must be a number in (0, 100] (SD3 uses 3)")
            self.shift = float(self.shift)

    def describe(self) -> str:
        """E.g. `uniform k=20`, `karras rho=7 k=8`, `AYS-loglinear k=8`, `free k=3 [999, 500, 20]`,
        `uniform k=8 shift=4.5`."""
        tail = "" if self.shift is None else f" shift={self.shift:g}"
        if self.family == "karras":
            return f"karras rho={self.rho:g} k={self.steps}" + tail
        if self.family == "ays":
            return f"AYS-loglinear k={self.steps}" + tail
        if self.family == "free":
            return f"free k={self.steps} {self.timesteps}" + tail
        return f"{self.family} k={self.steps}" + tail


def repair(values: Sequence[float] | np.ndarray, steps: int, num_train_timesteps: int) -> list[int]:
    """`values` as `steps` strictly decreasing integers in [0, N-1], deterministically and near the input.

    Sorts descending and rounds; clamps entry i into [steps-1-i, N-1-i] (the only range that leaves room
    for the others); then lowers each entry to at most its predecessor minus one. Duplicates from rounding
    (`[3, 0, 0, 0]`) become neighbours (`[3, 2, 1, 0]`).
    """
    n = int(num_train_timesteps)
    if len(values) != steps:
        raise ValueError(f"got {len(values)} timesteps for {steps} steps")
    if steps > n:
        raise ConfigError(f"schedule.steps {steps} exceeds the {n} training timesteps; use at most {n}")
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"schedule produced non-finite timesteps {arr.tolist()}")
    out: list[int] = []
    for i, t in enumerate(np.sort(np.rint(arr))[::-1]):
        t = int(min(max(t, steps - 1 - i), n - 1 - i))
        if out:
            t = min(t, out[-1] - 1)
        out.append(t)
    return out


def train_sigmas(alphas_cumprod: Sequence[float] | torch.Tensor) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for t = 0..N-1 (float64)."""
    ac = np.asarray(torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu())
    return np.sqrt((1.0 - ac) / ac)


def sigma_to_t(sigmas: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Fractional timesteps of `sigmas`, interpolating linearly in log-sigma (as diffusers' `_sigma_to_t`)."""
    log_train = np.log(train)
    if not np.all(np.diff(log_train) > 0):
        raise ValueError("the training sigmas are not increasing in t; cannot map sigmas to timesteps")
    return np.interp(np.log(sigmas), log_train, np.arange(len(train), dtype=np.float64))


def ays_table(family: str) -> tuple[int, ...]:
    """The published AYS schedule used for a model family (SDXL's for `sdxl`, else SD1.5's: flow models too)."""
    return AYS_TIMESTEPS["sdxl" if family == "sdxl" else "sd15"]


def _raw(config: Config, n: int, family: str, alphas_cumprod: Any, steps_offset: int) -> np.ndarray:
    k = config.steps
    if config.family == "uniform":
        # diffusers' trailing expression; its float arange gives k+1 entries for some k (61, 103, ...),
        # the extra one being -1 (diffusers 0.42.1), so keep the first k.
        return (np.round(np.arange(n, 0, -n / k)).astype(np.int64) - 1)[:k].astype(np.float64)
    if config.family == "leading":
        return (np.arange(0, k) * (n // k)).round()[::-1] + steps_offset
    if config.family == "linspace":
        return np.linspace(0, n - 1, k).round()[::-1]
    if config.family == "quadratic":
        return (n - 1) * ((k - np.arange(k)) / k) ** 2
    if config.family == "free":
        return np.asarray(config.timesteps, dtype=np.float64)
    if alphas_cumprod is None:
        raise ValueError(f"schedule family {config.family!r} needs the model's alphas_cumprod")
    train = train_sigmas(alphas_cumprod)
    if len(train) != n:
        raise ValueError(f"alphas_cumprod has {len(train)} entries, expected num_train_timesteps={n}")
    if config.family == "karras":
        rho = float(config.rho or DEFAULT_RHO)
        lo, hi = train[0] ** (1 / rho), train[-1] ** (1 / rho)
        sigmas = (hi + np.linspace(0, 1, k) * (lo - hi)) ** rho  # Karras et al. (2022), eq. 5
        return sigma_to_t(sigmas, train)
    # ays: log-linear interpolation of the published schedule's sigmas (Sabour et al., 2024).
    table = np.asarray(ays_table(family), dtype=np.float64) * (n - 1) / 999
    if k == 1:
        return table[:1]
    log_sig = np.log(np.interp(table, np.arange(n), train))[::-1]  # increasing
    new = np.interp(np.linspace(0, 1, k), np.linspace(0, 1, len(table)), log_sig)
    return sigma_to_t(np.exp(new)[::-1], train)


def timesteps_for(
    config: Config,
    num_train_timesteps: int,
    family: str,
    *,
    alphas_cumprod: Sequence[float] | torch.Tensor | None = None,
    steps_offset: int = 0,
) -> list[int]:
    """The timesteps `config` visits: `config.steps` strictly decreasing ints in [0, N-1].

    `family` is the model family (it picks the AYS table). `alphas_cumprod` (the scheduler's, length N) is
    needed by `karras` and `ays`; `steps_offset` (the scheduler config's) by `leading`.
    """
    n = int(num_train_timesteps)
    if config.steps > n:
        raise ConfigError(f"schedule.steps {config.steps} exceeds the {n} training timesteps; "
                          f"use at most {n}")
    # `free` configs always hold their timesteps list (checked by Config.__post_init__).
    if config.family == "free" and cast(list[int], config.timesteps)[0] > n - 1:
        raise ConfigError(f"schedule.timesteps {config.timesteps} must lie in [0, {n - 1}]")
    return repair(_raw(config, n, family, alphas_cumprod, steps_offset), config.steps, n)


def timesteps_for_scheduler(config: Config, scheduler: SchedulerMixin, family: str) -> list[int]:
    """`timesteps_for` with N, `alphas_cumprod` and `steps_offset` taken from a diffusers scheduler."""
    return timesteps_for(config, int(scheduler.config.num_train_timesteps), family,
                         alphas_cumprod=getattr(scheduler, "alphas_cumprod", None),
                         steps_offset=int(scheduler.config.get("steps_offset", 0) or 0))


def flow_sigmas_for(config: Config, num_train_timesteps: int, lowest: float | None = None) -> list[float]:
    """The unshifted sigmas `config` visits on a flow-matching model: `config.steps` strictly decreasing values
    in (0, 1] (the module docstring says how each family maps). `lowest`: the scheduler's smallest training sigma
    (`linspace` ends there; default 1/N)."""
    n, k = int(num_train_timesteps), config.steps
    if k > n:
        raise ConfigError(f"schedule.steps {k} exceeds the {n} training timesteps; use at most {n}")
    if config.family == "uniform":
        return [float(x) for x in np.linspace(1.0, 1.0 / k, k)]
    if config.family == "linspace":
        return [float(x) for x in np.linspace(1.0, lowest or 1.0 / n, k)]
    if config.family == "karras":
        rho = float(config.rho or DEFAULT_RHO)
        hi, lo = 1.0, 1.0 / n
        sig = (hi ** (1 / rho) + np.linspace(0, 1, k) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    elif config.family == "ays":
        table = (np.asarray(ays_table("flow"), dtype=np.float64) * (n - 1) / 999 + 1) / n
        if k == 1:
            sig = table[:1]
        else:
            log_sig = np.log(table)[::-1]  # increasing
            sig = np.exp(np.interp(np.linspace(0, 1, k), np.linspace(0, 1, len(table)), log_sig))[::-1]
    else:
        ints = timesteps_for(config, n, "flow")
        return [(t + 1) / n for t in ints]
    # keep them strictly decreasing in (0, 1] after rounding to the N-point grid's precision
    out: list[float] = []
    for x in np.clip(sig, 1.0 / n, 1.0):
        x = float(x)
        out.append(min(x, out[-1] * (1 - 1e-6)) if out else x)
    return out


def _default_shifts(flow_shift: float) -> list[float]:
    return [max(1.0, flow_shift / 2), max(2.0, 2 * flow_shift)]


@dataclass
class Options:
    """Restrictions of the schedule space: `families` (a subset of `FAMILIES`), `rho` ([low, high] for Karras),
    `shift` ([low, high] of a flow model's shift; default: half to twice the model's own; `false`: keep it).

    The step range is not an option here: it is the search's `min_steps`/`max_steps` (the context's).
    """

    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    rho: list[float] = field(default_factory=lambda: list(RHO_RANGE))
    shift: list[float] | bool | None = None

    def __post_init__(self) -> None:
        fams = self.families
        if not isinstance(fams, list | tuple) or not fams or any(f not in FAMILIES for f in fams):
            raise ConfigError(f"schedule option families={fams!r} must be a non-empty subset of "
                              f"{', '.join(FAMILIES)}")
        self.families = list(fams)
        rho = self.rho
        if (not isinstance(rho, list | tuple) or len(rho) != 2
                or not all(isinstance(r, int | float) and not isinstance(r, bool) for r in rho)
                or not 0 < rho[0] <= rho[1]):
            raise ConfigError(f"schedule option rho={rho!r} must be [low, high] with 0 < low <= high")
        self.rho = [float(rho[0]), float(rho[1])]
        sh = self.shift
        if sh is False or sh is None:
            return
        if (not isinstance(sh, list | tuple) or len(sh) != 2
                or not all(isinstance(r, int | float) and not isinstance(r, bool) for r in sh)
                or not 0 < sh[0] <= sh[1] <= 100):
            raise ConfigError(f"schedule option shift={sh!r} must be [low, high] with 0 < low <= high <= 100, or false")
        self.shift = [float(sh[0]), float(sh[1])]


def _check_steps(context: SpaceContext) -> None:
    n = context.num_train_timesteps
    if not 1 <= context.min_steps <= context.max_steps <= n:
        raise ConfigError(f"schedule steps range [{context.min_steps}, {context.max_steps}] must satisfy "
                          f"1 <= min_steps <= max_steps <= {n}")


def suggest(trial: Any, context: SpaceContext) -> Config:
    """Draw a schedule. Respects `context.min_steps` / `max_steps` and `context.options["schedule"]`:
    `families` (subset of `FAMILIES`) and `rho` ([low, high] for Karras).

    Parameters: `schedule.family`, `schedule.steps` (log-uniform integer), `schedule.karras.rho`, and for
    `free` one integer `schedule.free.t{i}` in [0, N-1] per position i < steps (the same name and range for
    every k, so samplers share what they learn across step counts). The free values are sorted descending
    and repaired (`repair`), so any draw is a valid schedule and a valid schedule maps to itself.
    """
    opts: Options = KNOB.options_for(context)
    _check_steps(context)
    rho_lo, rho_hi = opts.rho
    family = trial.suggest_categorical(FAMILY_PARAM, opts.families)
    steps = trial.suggest_int(STEPS_PARAM, context.min_steps, context.max_steps, log=True)
    shift = None
    if context.noise == "flow" and context.flow_shift is not None and opts.shift is not False:
        lo, hi = opts.shift if isinstance(opts.shift, list) else _default_shifts(context.flow_shift)
        shift = trial.suggest_float(f"{NAME}.shift", lo, hi, log=True)
    if family == "karras":
        return Config(family, steps, rho=trial.suggest_float(f"{NAME}.karras.rho", rho_lo, rho_hi), shift=shift)
    if family == "free":
        n = context.num_train_timesteps
        raw = [trial.suggest_int(free_param(i), 0, n - 1) for i in range(steps)]
        return Config(family, steps, timesteps=repair(raw, steps, n), shift=shift)
    return Config(family, steps, shift=shift)


def to_params(config: Config) -> dict[str, Any]:
    """The trial parameters `suggest` turns into `config` (for `study.enqueue_trial` and `FixedTrial`)."""
    params: dict[str, Any] = {FAMILY_PARAM: config.family, STEPS_PARAM: config.steps}
    if config.family == "karras":
        params[f"{NAME}.karras.rho"] = config.rho
    if config.family == "free":
        # `free` configs always hold their timesteps list (checked by Config.__post_init__).
        params.update({free_param(i): t for i, t in enumerate(cast(list[int], config.timesteps))})
    if config.shift is not None:
        params[f"{NAME}.shift"] = config.shift
    return params


def lowest_flow_sigma(pipe: Any) -> float:
    """The smallest training sigma of a flow model's scheduler as `FlowMatchEulerDiscreteScheduler` computes it:
    1/N, shifted by the model's static shift (not by a dynamic one, which depends on the resolution)."""
    cfg = plain_scheduler(pipe.scheduler).config
    n = int(cfg.num_train_timesteps)
    if cfg.get("use_dynamic_shifting"):
        return 1.0 / n
    shift = float(cfg.get("shift", cfg.get("flow_shift", 1.0)))
    return shift * (1.0 / n) / (1 + (shift - 1) * (1.0 / n))


def apply(pipe: Any, config: Config, context: SpaceContext) -> Any:
    """A copy of `pipe` whose scheduler is pinned to `config`'s timesteps (sigmas, on a flow model); the base
    pipeline is untouched."""
    if is_flow(pipe.scheduler):
        overrides: dict[str, Any] = {}
        if config.shift is not None:
            cfg = pipe.scheduler.config
            if cfg.get("use_dynamic_shifting"):
                raise ConfigError("schedule.shift: this model shifts its schedule by resolution (dynamic shifting, as "
                                  "Flux does); leave shift null")
            overrides["flow_shift" if "flow_shift" in cfg else "shift"] = config.shift
        sigmas = flow_sigmas_for(config, int(pipe.scheduler.config.num_train_timesteps), lowest_flow_sigma(pipe))
        return copy_pipeline(pipe, scheduler=fit_to_pipeline(pipe, pin_sigmas(pipe.scheduler, sigmas, **overrides)))
    if config.shift is not None:
        raise ConfigError("schedule.shift applies to flow-matching models only; leave it null for this model")
    timesteps = timesteps_for_scheduler(config, pipe.scheduler, context.family)
    return copy_pipeline(pipe, scheduler=fit_to_pipeline(pipe, pin_timesteps(pipe.scheduler, timesteps)))


KNOB = register(Knob(
    name=NAME, stage=Stage.TIMESTEPS, config=Config, options=Options, suggest=suggest, to_params=to_params,
    apply=apply, help="which timesteps the sampler visits and how many (uniform, quadratic, Karras, AYS, free)"))
