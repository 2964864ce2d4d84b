"""The study's objective: latency under a budget against quality, over the knobs of a SearchSpace.

Multi-objective (Deb et al., 2002, NSGA-II by default): minimize latency, maximize quality (larger-is-better
score), optionally minimize model size; the budget is a constraint (feasible when latency <= budget).
Latency is measured first, and a candidate clearly over budget is not spent on quality: it completes with
its measured latency and a pessimistic quality so the sampler still learns where the budget lies
(multi-objective trials cannot use Optuna's pruners). Every trial stores its Recipe and its Measurement
(`autoeff.study`); a candidate that raises, returns non-finite images or runs out of memory becomes a FAILED
trial with the reason stored, and the search goes on. How the winner is chosen is `autoeff.selection`; the
order of a whole run is `autoeff.run`.

Compiling (`torch.compile`) is measured apart from latency (`Measurement.compile`, see `autoeff.measure`).
With `--compile-budget`, the compile seconds of the study's trials are summed before each candidate; once
they reach the budget, a candidate that would compile fails without being measured, while one whose graphs
this process has already compiled (the same denoiser graph as an earlier candidate) is measured as usual. The
candidate that crosses the budget finishes: a compilation in progress cannot be interrupted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Literal

import optuna

from autoeff.errors import SettingsError
from autoeff.evaluators.quality import score
from autoeff.measure import CompileRefused, Evaluator, compiled_frames
from autoeff.measurement import Measurement
from autoeff.models.handle import ModelHandle
from autoeff.recipe import Recipe
from autoeff.search_spaces.base import ConfigError, SpaceContext
from autoeff.search_spaces.capabilities import denoiser_features
from autoeff.search_spaces.groups import block_groups
from autoeff.search_spaces.space import SearchSpace
from autoeff.settings import SAMPLERS, SearchSettings
from autoeff.study import measurement_of, set_fail_reason, set_measurement, set_recipe

# Quality value given to a candidate whose quality was not measured (over budget). The constraint makes it
# infeasible anyway; the value only has to be worse than any measured score.
UNMEASURED_SCORE = -1.0e9
# A candidate is "clearly" over budget when its latency exceeds the budget by more than this margin; within
# the margin, quality is still measured (the finalists are re-timed before the winner is chosen).
OVER_BUDGET_MARGIN = 0.10
BUDGET_CONSTRAINT = "latency_minus_budget_s"


class CandidateFailed(Exception):
    """A candidate failed (exception, non-finite output, out of memory, time limit); its trial fails."""


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's own samplers, seeded. The budget constraint is set on each trial (`Trial.set_constraint`,
    Optuna 5), which NSGA-II and TPE read: a value <= 0 is feasible."""
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SettingsError(f"sampler {name!r} is not one of {', '.join(SAMPLERS)}")


def directions(settings: SearchSettings) -> list[Literal["minimize", "maximize"]]:
    d: list[Literal["minimize", "maximize"]] = ["minimize", "maximize"]
    if settings.size_objective:
        d.append("minimize")
    return d


def flow_shift(scheduler: object) -> float | None:
    """A flow scheduler's static shift (`shift`, or `flow_shift` of DPM-Solver / UniPC on flow sigmas); `None`
    when it shifts by resolution (`use_dynamic_shifting`, Flux)."""
    config = getattr(scheduler, "config", None) or {}
    if config.get("use_dynamic_shifting"):
        return None
    value = config.get("shift", config.get("flow_shift"))
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def context_for(handle: ModelHandle, settings: SearchSettings) -> SpaceContext:
    """The SpaceContext a model gives its knobs under these settings."""
    kind = handle.model_kind
    try:
        groups = list(block_groups(handle.denoiser))
    except ConfigError:  # a denoiser without block lists: the knobs that need groups do not apply to it
        groups = []
    return SpaceContext(
        family=handle.family,
        denoiser=handle.denoiser_name,
        num_train_timesteps=handle.num_train_timesteps,
        default_steps=handle.default_steps,
        min_steps=settings.min_steps,
        max_steps=settings.max_steps,
        block_groups=groups,
        device=settings.device,
        options=settings.options,
        noise=kind.noise,
        features=denoiser_features(handle.pipeline, kind, trace_prune="prune" in settings.space),
        flow_shift=flow_shift(handle.pipeline.scheduler) if kind.noise == "flow" else None,
    )


class Objective:
    """The study's objective: build the candidate, time it, then (if within budget) score it."""

    def __init__(self, space: SearchSpace, evaluator: Evaluator, budget_s: float, settings: SearchSettings) -> None:
        self.space = space
        self.evaluator = evaluator
        self.budget_s = budget_s
        self.settings = settings
        # compile seconds of this process's candidates that failed after compiling (a failed trial stores no
        # measurement, yet its compiling was spent)
        self.failed_compile_s = 0.0

    def __call__(self, trial: optuna.Trial) -> Sequence[float]:
        try:
            recipe = self.space.suggest(trial)
        except Exception as e:  # a config the knobs refuse is a failed candidate, not a crashed search
            self._fail(trial, f"suggest: {type(e).__name__}: {e}")
        set_recipe(trial, recipe)
        try:
            m = self.evaluate(recipe, compile_spent_s=self.compile_spent(trial))
        except KeyboardInterrupt:
            raise
        except Exception as e:
            self._fail(trial, f"{type(e).__name__}: {e}")
        set_measurement(trial, m, self.budget_s)
        trial.set_constraint(BUDGET_CONSTRAINT, m.latency_s - self.budget_s)
        values = [m.latency_s * 1000.0, m.score if m.score is not None else UNMEASURED_SCORE]
        if self.settings.size_objective:
            values.append(m.size_mb or 0.0)
        if not all(math.isfinite(v) for v in values):
            self._fail(trial, f"non-finite objective values {values}")
        return values

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        set_fail_reason(trial, reason)
        raise CandidateFailed(reason)

    def compile_spent(self, trial: optuna.Trial) -> float:
        """Seconds the study's trials (and this process's failed ones) have spent compiling."""
        if self.settings.compile_budget_s is None:
            return 0.0
        stored = (measurement_of(t) for t in trial.study.get_trials(deepcopy=False))
        return self.failed_compile_s + sum(m.compile_s for m in stored if m is not None)

    def evaluate(self, recipe: Recipe, compile_spent_s: float = 0.0) -> Measurement:
        """Latency first; quality only when the candidate is not clearly over budget."""
        start = time.monotonic()
        limit = self.settings.trial_timeout_s
        deadline = None if limit is None else start + limit
        pipe = self.space.build(recipe)
        cap = self.settings.compile_budget_s
        spent = cap is not None and compile_spent_s >= cap
        simulated = recipe.is_simulated()
        frames = compiled_frames()
        t_compile = time.monotonic()
        try:
            latency, compiled = self.evaluator.timed(pipe, budget_s=self.budget_s, simulated=simulated,
                                                     deadline=deadline, may_compile=not spent)
        except CompileRefused:
            raise RuntimeError(f"the compile budget is spent ({compile_spent_s:.0f} s of --compile-budget {cap:g} s) "
                               "and this candidate would compile, so it is not measured") from None
        except Exception:
            if compiled_frames() != frames:  # it compiled before it failed: that time was spent
                self.failed_compile_s += time.monotonic() - t_compile
            raise
        self._check_time(start)
        size = self.evaluator.size_mb(pipe)
        over = latency.median_s > self.budget_s * (1 + OVER_BUDGET_MARGIN)
        quality = None
        if not over:
            quality = self.evaluator.quality(pipe, deadline=deadline)
            self._check_time(start)
        return Measurement(latency_s=latency.median_s, latency=latency, quality=quality,
                           score=None if quality is None else score(quality), size_mb=size, simulated=simulated,
                           over_budget=over, budget_s=self.budget_s, noise_floor=self.evaluator.noise_floor,
                           compile=compiled)

    def _check_time(self, start: float) -> None:
        """The per-trial limit, checked between phases (the evaluator also checks it between pipeline calls;
        a single call that hangs cannot be interrupted from inside the process)."""
        limit = self.settings.trial_timeout_s
        if limit is not None and time.monotonic() - start > limit:
            raise TimeoutError(f"candidate took more than the per-trial limit of {limit:g} s")


__all__ = ["CandidateFailed", "Objective", "make_sampler", "directions", "context_for", "UNMEASURED_SCORE",
           "OVER_BUDGET_MARGIN", "BUDGET_CONSTRAINT"]
