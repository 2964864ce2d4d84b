"""The study's objective: latency under a budget against quality, over the knobs of a SearchSpace.

Multi-objective: minimize latency (ms), the raw quality metric in its own direction (FID minimized, CLIP
maximized), optionally minimize model size (MB); Optuna's metric names say which is which (`metric_names`), and
the budget is a constraint (`Trial.set_constraint`: feasible when latency <= budget), so `optuna-dashboard` and
Optuna's plots show the real front. Before a candidate is built, the study's latency model
(`autoeff.latency_model`) predicts its latency; a candidate predicted *clearly* over budget (even if the model
errs high by the 80th percentile of its past errors), or with little chance to fit (under `MIN_FIT_CHANCE` of
the model's past errors would put it within the budget), is not built: its trial ends PRUNED with the prediction
and the reason (`study.skip_reason`; `decline_reason`). A built candidate is timed first; one measured more than
10 % over budget is not spent on quality: its trial ends PRUNED with its measured latency and the constraint,
and no value stands in for the quality it does not have (multi-objective trials cannot use Optuna's pruners, but
they can end PRUNED, which TPE counts among its bad trials). Every trial stores its Recipe and its Measurement
(`autoeff.study`); a candidate that raises, returns non-finite images or runs out of memory becomes a FAILED
trial with the reason stored, and the search goes on. How the winner is chosen is `autoeff.selection`; the
budget-filling loop is `autoeff.planner`; the order of a whole run is `autoeff.run`.

Samplers (`--sampler`): Optuna's NSGA-II (Deb et al., 2002), TPE (Bergstra et al., 2011; multivariate,
Falkner et al., 2018), GP-based Bayesian optimisation with the constraint (`GPSampler`), random search, and
`fill`, the budget-filling loop (TPE over the structures, step counts from the latency model, timestep
positions by Bayesian optimisation at few steps; `autoeff.planner`).

Compiling (`torch.compile`) is measured apart from latency (`Measurement.compile`, see `autoeff.measure`).
With `--compile-budget`, the compile seconds of the study's trials are summed before each candidate; once
they reach the budget, a candidate that would compile fails without being measured, while one whose graphs
this process has already compiled (the same denoiser graph as an earlier candidate) is measured as usual. The
candidate that crosses the budget finishes: a compilation in progress cannot be interrupted.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Literal, NoReturn

import optuna

from autoeff.errors import SettingsError
from autoeff.evaluators.metric_names import HIGHER_IS_BETTER
from autoeff.evaluators.quality import score
from autoeff.latency_model import ERROR_QUANTILE, LatencyModel, Prediction, evaluations
from autoeff.measure import CompileRefused, Evaluator, compiled_frames
from autoeff.measurement import Baseline, Measurement
from autoeff.models.handle import ModelHandle
from autoeff.recipe import Recipe
from autoeff.search_spaces.base import ConfigError, SpaceContext
from autoeff.search_spaces.capabilities import denoiser_features
from autoeff.search_spaces.groups import block_groups
from autoeff.search_spaces.space import SearchSpace
from autoeff.selection import contender_samples, contends
from autoeff.settings import SAMPLERS, SearchSettings
from autoeff.study import (
    StoredStudy,
    measurement_of,
    set_contender,
    set_fail_reason,
    set_measurement,
    set_prediction,
    set_recipe,
    set_skipped,
)

# A candidate is "clearly" over budget when its latency exceeds the budget by more than this margin; within
# the margin, quality is still measured (the finalists are re-timed before the winner is chosen).
OVER_BUDGET_MARGIN = 0.10
# A candidate is not built when fewer than this share of its basis's past prediction errors would put it within
# the budget. Replayed on the 26 studies under .cache/bench (benchmarks/latency_replay.py, 756 measured trials):
# 21 of the 67 trials measured over budget declined, 5 of 689 within it.
MIN_FIT_CHANCE = 0.25
BUDGET_CONSTRAINT = "latency_minus_budget_s"


def over_budget_reason(latency_s: float, budget_s: float) -> str:
    """Why a candidate measured over budget has no quality: the trial's reason where it ends (PRUNED)."""
    return (f"measured {latency_s * 1000:.1f} ms, more than {OVER_BUDGET_MARGIN:.0%} over the budget of "
            f"{budget_s * 1000:.1f} ms: quality not measured")


def decline_reason(prediction: Prediction, budget_s: float, fastest_s: float | None,
                   min_chance: float = MIN_FIT_CHANCE) -> str | None:
    """Why a candidate is not built, or None. It is declined when its predicted latency, lowered by the 80th
    percentile of its basis's past errors, is still more than `OVER_BUDGET_MARGIN` over the budget, or when under
    `min_chance` of those errors would put it within the budget (`Prediction.chance`); but never when it is
    predicted faster than every candidate measured so far (`fastest_s`; the fastest is what `--best-effort`
    exports when nothing fits, and the first candidates are always measured)."""
    if fastest_s is None or prediction.latency_s < fastest_s:
        return None
    head = (f"predicted {prediction.latency_s * 1000:.1f} ms against a budget of {budget_s * 1000:.1f} ms "
            f"({prediction.basis}")
    if prediction.low_s > budget_s * (1 + OVER_BUDGET_MARGIN):
        return (f"{head}: its predictions erred by at most {prediction.rel_error:.0%} in {ERROR_QUANTILE:.0%} of "
                "cases): clearly over, not built")
    if prediction.chance is not None and prediction.chance < min_chance:
        return (f"{head}: {prediction.chance:.0%} of its past errors would put it within the budget): little chance "
                "to fit, not built")
    return None


class CandidateFailed(Exception):
    """A candidate failed (exception, non-finite output, out of memory, time limit); its trial fails."""


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's own samplers, seeded. The budget constraint is set on each trial (`Trial.set_constraint`,
    Optuna 5), which NSGA-II, TPE and the GP sampler read: a value <= 0 is feasible. `fill` starts as TPE
    (the structures' sampler); `run` wraps it in `planner.FillSampler` once the budget is known."""
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)
    if name == "fill":  # it samples a view of the study (`planner.quality_view`), so it must not write to it
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8, constant_liar=False)
    if name == "gp":
        with warnings.catch_warnings():  # GPSampler's optional arguments are experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SettingsError(f"sampler {name!r} is not one of {', '.join(SAMPLERS)}")


def _metric(settings: SearchSettings) -> str:
    if settings.metric is None:
        raise ValueError("the settings are not resolved for a model (metric is None)")
    return settings.metric


def directions(settings: SearchSettings) -> list[Literal["minimize", "maximize"]]:
    """Latency down; the metric in its own direction (FID down, CLIP up); size down when searched."""
    d: list[Literal["minimize", "maximize"]] = ["minimize",
                                                "maximize" if HIGHER_IS_BETTER[_metric(settings)] else "minimize"]
    if settings.size_objective:
        d.append("minimize")
    return d


def metric_names(settings: SearchSettings) -> list[str]:
    """The names of the trial values, in order (Optuna's `set_metric_names`)."""
    names = ["latency_ms", _metric(settings)]
    if settings.size_objective:
        names.append("size_mb")
    return names


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
    """The study's objective: predict the candidate's latency (skip it when clearly over budget), build it,
    time it, then (if within budget) score it."""

    def __init__(self, space: SearchSpace, evaluator: Evaluator, budget_s: float, settings: SearchSettings,
                 baseline: Baseline | None = None) -> None:
        self.space = space
        self.evaluator = evaluator
        self.budget_s = budget_s
        self.settings = settings
        self.baseline = baseline
        # compile seconds of this process's candidates that failed after compiling (a failed trial stores no
        # measurement, yet its compiling was spent)
        self.failed_compile_s = 0.0

    def __call__(self, trial: optuna.Trial) -> Sequence[float]:
        try:
            recipe = self.space.suggest(trial)
        except ConfigError as e:
            self._refuse(trial, f"suggest: {e}")
        except Exception as e:  # a candidate that cannot be drawn is a failed candidate, not a crashed search
            self._fail(trial, f"suggest: {type(e).__name__}: {e}")
        set_recipe(trial, recipe)
        model = LatencyModel.from_study(StoredStudy(trial.study), self.space.context.default_steps, self.baseline)
        prediction = model.predict(trial.params, evaluations(trial.params, self.space.context.default_steps),
                                   budget_s=self.budget_s)
        set_prediction(trial, prediction.to_dict())
        why = decline_reason(prediction, self.budget_s, model.fastest_s)
        if why is not None:
            set_skipped(trial, why)
            trial.set_constraint(BUDGET_CONSTRAINT, prediction.latency_s - self.budget_s)
            raise optuna.TrialPruned(why)
        try:
            m, pipe, deadline = self._evaluate(recipe, compile_spent_s=self.compile_spent(trial))
        except KeyboardInterrupt:
            raise
        except ConfigError as e:
            self._refuse(trial, f"build: {e}")
        except Exception as e:
            self._fail(trial, f"{type(e).__name__}: {e}")
        set_measurement(trial, m, self.budget_s)
        self.contend(trial, pipe, m, deadline)
        trial.set_constraint(BUDGET_CONSTRAINT, m.latency_s - self.budget_s)
        if m.quality is None:  # no value stands in for a quality that was not measured
            raise optuna.TrialPruned(over_budget_reason(m.latency_s, self.budget_s))
        values = [m.latency_s * 1000.0, m.quality.value]
        if self.settings.size_objective:
            values.append(m.size_mb or 0.0)
        if not all(math.isfinite(v) for v in values):
            self._fail(trial, f"non-finite objective values {values}")
        return values

    def contend(self, trial: optuna.Trial, pipe: object, m: Measurement, deadline: float | None) -> None:
        """Score a candidate within the budget on the halving's first rung now (`selection.contender_samples`)
        when its proxy score is within noise of the best so far: the planner then refines what the larger
        sample prefers, and the selection reuses the score. The proxy's noise is larger than the differences
        among the good candidates (FID on 128 digits: standard error ~3 where they differ by ~1), so ranking
        them by it sends the search after noise. A failure here is recorded; the trial stands."""
        n = contender_samples(self.settings.proxy_n, self.settings.final_n)
        if n is None or m.quality is None or m.score is None or m.latency_s > self.budget_s:
            return
        others = [r.measurement.quality for r in StoredStudy(trial.study).records() if r.number != trial.number
                  and r.feasible(self.budget_s) and r.measurement.quality is not None]
        if not contends(m.quality, max(others, key=score, default=None)):
            return
        try:
            set_contender(trial, n, self.evaluator.quality_at(pipe, n, deadline=deadline))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # the larger sample failed (NaN images, time limit): the proxy measurement stands
            set_contender(trial, n, None, failed=f"{type(e).__name__}: {e}")

    def _refuse(self, trial: optuna.Trial, reason: str) -> NoReturn:
        """A combination the knobs refuse (`ConfigError`: compile scope `model` around a cache wrapper, ...):
        nothing to measure, so the trial ends PRUNED with the reason, like a declined candidate (not counted
        as a trial, up to `--trials` of them; TPE counts PRUNED trials among its bad ones, so it stops drawing
        the combination, while a FAILED trial is invisible to it: on the digits U-Net at 3 %, 7 of 40 trials
        failed on the same compile/cache combination before this)."""
        set_skipped(trial, f"refused: {reason}")
        raise optuna.TrialPruned(f"refused: {reason}")

    def _fail(self, trial: optuna.Trial, reason: str) -> NoReturn:
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
        return self._evaluate(recipe, compile_spent_s)[0]

    def _evaluate(self, recipe: Recipe, compile_spent_s: float = 0.0) -> tuple[Measurement, object, float | None]:
        """`evaluate`'s measurement, the pipeline it built, and the trial's deadline (time.monotonic)."""
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
                           compile=compiled), pipe, deadline

    def _check_time(self, start: float) -> None:
        """The per-trial limit, checked between phases (the evaluator also checks it between pipeline calls;
        a single call that hangs cannot be interrupted from inside the process)."""
        limit = self.settings.trial_timeout_s
        if limit is not None and time.monotonic() - start > limit:
            raise TimeoutError(f"candidate took more than the per-trial limit of {limit:g} s")


__all__ = ["CandidateFailed", "Objective", "make_sampler", "directions", "metric_names", "context_for",
           "OVER_BUDGET_MARGIN", "MIN_FIT_CHANCE", "BUDGET_CONSTRAINT", "decline_reason"]
