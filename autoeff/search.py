"""The Optuna study: latency under a budget against quality, over the knobs of a SearchSpace.

Multi-objective (Deb et al., 2002, NSGA-II by default): minimize latency, maximize quality (larger-is-better
score), optionally minimize model size; the budget is a constraint (feasible when latency <= budget).
Latency is measured first, and a candidate clearly over budget is not spent on quality: it completes with
its measured latency and a pessimistic quality so the sampler still learns where the budget lies
(multi-objective trials cannot use Optuna's pruners). Every trial stores its Recipe and its Measurement as
user attributes; a candidate that raises, returns non-finite images or runs out of memory becomes a FAILED
trial with the reason stored, and the search goes on. The study lives in Optuna storage (SQLite in the
output folder by default), so rerunning resumes and completed trials are never re-run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from autoeff.budget import Budget
from autoeff.measurement import Measurement
from autoeff.recipe import Recipe
from autoeff.search_spaces import knob_module
from autoeff.search_spaces.base import SpaceContext
from autoeff.search_spaces.space import SearchSpace, parse_space

# Quality value given to a candidate whose quality was not measured (over budget). The constraint makes it
# infeasible anyway; the value only has to be worse than any measured score.
UNMEASURED_SCORE = -1.0e9
# A candidate is "clearly" over budget when its latency exceeds the budget by more than this margin; within
# the margin, quality is still measured (the finalists are re-timed before the winner is chosen).
OVER_BUDGET_MARGIN = 0.10

SAMPLERS = ("nsga2", "tpe", "random")
BUDGET_CONSTRAINT = "latency_minus_budget_s"


class SearchError(RuntimeError):
    """The search cannot run as configured (the message says why and what to do)."""


class IncompatibleStudyError(SearchError):
    """A study of that name exists for another model, budget, metric or space."""


class CandidateFailed(Exception):
    """A candidate failed (exception, non-finite output, out of memory, time limit); its trial fails."""


@dataclass
class SearchSettings:
    """Everything that defines a search. Fields in `identity_fields` must match to resume a study."""

    model: str
    budget: Budget
    device: str = "cpu"
    space: list[str] = field(default_factory=lambda: ["solver", "schedule", "cache"])
    metric: str = "fid"
    trials: int = 30
    sampler: str = "nsga2"
    seed: int = 0
    batch_size: int = 1
    proxy_samples: int = 128
    final_samples: int = 1000
    top_k: int = 3
    size_objective: bool = False
    min_steps: int = 2
    max_steps: int = 50
    warm_start: bool = True
    trial_timeout_s: float | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    identity_fields = ("model", "device", "space", "metric", "batch_size", "proxy_samples", "size_objective",
                       "min_steps", "max_steps", "options", "seed")

    def __post_init__(self) -> None:
        self.space = parse_space(self.space)
        if self.trials < 1:
            raise SearchError(f"--trials {self.trials} must be at least 1")
        if self.sampler not in SAMPLERS:
            raise SearchError(f"--sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.batch_size < 1:
            raise SearchError(f"--batch {self.batch_size} must be at least 1")
        if self.proxy_samples < 2 or self.final_samples < self.proxy_samples:
            raise SearchError("--proxy-samples must be >= 2 and --final-samples >= --proxy-samples")
        if not 1 <= self.min_steps <= self.max_steps:
            raise SearchError(f"steps range {self.min_steps}..{self.max_steps} is empty")

    def identity(self, model_identity: str) -> dict[str, Any]:
        """What must match for trials to be comparable (budget excluded: feasibility is recomputed)."""
        d = {k: getattr(self, k) for k in self.identity_fields}
        d["model_identity"] = model_identity
        return json.loads(json.dumps(d, sort_keys=True, default=str))

    def identity_hash(self, model_identity: str) -> str:
        return hashlib.sha256(json.dumps(self.identity(model_identity), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class TrialRecord:
    """A completed trial as read back from storage."""

    number: int
    recipe: Recipe
    measurement: Measurement
    params: dict[str, Any]
    warm_start: bool = False

    @property
    def latency_s(self) -> float:
        return self.measurement.latency_s

    @property
    def score(self) -> float | None:
        return self.measurement.score

    def feasible(self, budget_s: float) -> bool:
        return self.measurement.latency_s <= budget_s

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "recipe": self.recipe.to_dict(), "measurement": self.measurement.to_dict(),
                "params": self.params, "warm_start": self.warm_start}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's own samplers, seeded. The budget constraint is set on each trial (`Trial.set_constraint`,
    Optuna 5), which NSGA-II and TPE read: a value <= 0 is feasible."""
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=16)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"sampler {name!r} is not one of {', '.join(SAMPLERS)}")


def directions(settings: SearchSettings) -> list[str]:
    d = ["minimize", "maximize"]
    if settings.size_objective:
        d.append("minimize")
    return d


def context_for(handle: Any, settings: SearchSettings) -> SpaceContext:
    """The SpaceContext a model gives its knobs."""
    groups: list[str] = []
    try:
        from autoeff.search_spaces.groups import block_groups

        groups = list(block_groups(handle.denoiser))
    except ImportError:  # pragma: no cover - groups ship with the quantize/prune knobs
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
    )


def warm_start_params(space: Sequence[str], context: SpaceContext, fit_steps: int | None = None
                      ) -> list[dict[str, Any]]:
    """Trial params of the configurations a user would try by hand (enqueued before the search samples).

    DPM-Solver++ 2M and UniPC-2 at a few step counts with uniform and AYS-style schedules, and DeepCache
    N=3 over a 20-step DPM-Solver++ (Ma et al., 2024). Knobs in `space` that a pick does not name are set
    to "off" (no cache, no pruning, no quantization), so the hand-picked configurations are exactly what a
    user would run, not random mixtures.

    `fit_steps`: about how many plain denoising steps fit the budget (the baseline's latency per step
    against the budget). When fewer than 20 fit, the picks at 5/10/20 steps are partly over budget, so the
    same solvers at `fit_steps` replace the picks clearly over budget (more than 1.2x `fit_steps`), DeepCache
    N=3 runs over 1.5x that many steps, and all-int8 at 1.3x is added (the speedups these knobs give on the
    digits U-Net, BENCHMARKS.md) -- otherwise a tight budget leaves the search to find its first feasible
    point by chance.
    """
    from autoeff.search_spaces import cache, quantize, schedule, solver
    from autoeff.search_spaces.groups import searched_groups

    groups = searched_groups(context.block_groups)
    off: dict[str, Any] = {}
    if "cache" in space:
        off.update(cache.to_params(cache.Config()))
    if "prune" in space:
        off["prune.mode"] = "off"
    if "quantize" in space:
        off.update({"quantize.mode": "off"} if groups else {"quantize._default": "skip"})

    def clamp(k: float) -> int:
        return min(context.max_steps, max(context.min_steps, int(k)))

    steps = sorted({s for s in (5, 10, 20) if context.min_steps <= s <= context.max_steps} or {context.max_steps})
    tight = fit_steps if fit_steps is not None and fit_steps < 20 else None  # steps that fit a tight budget
    if tight is not None:  # picks clearly over budget would only spend trials
        steps = sorted({*(k for k in steps if k <= 1.2 * tight), clamp(tight)})
    dpmpp2 = solver.Config(name="dpmpp", order=2)
    picks: list[dict[str, Any]] = []
    for solver_cfg in (dpmpp2, solver.Config(name="unipc", order=2)):
        for k in steps:
            for fam in ("uniform", "ays"):
                picks.append({"solver": solver_cfg, "schedule": schedule.Config(family=fam, steps=k)})
    k_cache = 20 if context.min_steps <= 20 <= context.max_steps else steps[-1]
    if tight is not None:
        k_cache = clamp(min(20, 1.5 * tight))
    picks.append({"solver": dpmpp2, "schedule": schedule.Config(family="uniform", steps=k_cache),
                  "cache": cache.Config(interval=3)})
    if tight is not None and groups and "quantize" in space and "int8" in quantize.level_choices(context):
        picks.append({"solver": dpmpp2, "schedule": schedule.Config(family="uniform", steps=clamp(1.3 * tight)),
                      "quantize": {"quantize.mode": "uniform", "quantize.uniform.level": "int8"}})
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for pick in picks:
        params: dict[str, Any] = dict(off)
        for name, cfg in pick.items():
            if name in space:
                params.update(cfg if isinstance(cfg, dict) else knob_module(name).to_params(cfg))
        key = json.dumps(params, sort_keys=True, default=str)
        if params and key not in seen:
            seen.add(key)
            out.append(params)
    return out


def load_records(study: optuna.Study) -> list[TrialRecord]:
    """Completed trials with their Recipe and Measurement, in trial order."""
    records = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if "recipe" not in t.user_attrs or "measurement" not in t.user_attrs:
            continue
        records.append(TrialRecord(
            number=t.number,
            recipe=Recipe.from_dict(t.user_attrs["recipe"]),
            measurement=Measurement.from_dict(t.user_attrs["measurement"]),
            params=dict(t.params),
            warm_start=bool(t.system_attrs.get("fixed_params")),
        ))
    return records


def pareto_front(records: Sequence[TrialRecord], budget_s: float | None = None) -> list[TrialRecord]:
    """Trials with measured quality that no other trial beats on both latency and score (budget-feasible
    only, when `budget_s` is given), sorted by latency."""
    pts = [r for r in records if r.score is not None and (budget_s is None or r.feasible(budget_s))]
    front = []
    for r in pts:
        dominated = any(
            (o.latency_s <= r.latency_s and o.score >= r.score) and (o.latency_s < r.latency_s or o.score > r.score)
            for o in pts
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.latency_s)


class Objective:
    """The study's objective: build the candidate, time it, then (if within budget) score it."""

    def __init__(self, space: SearchSpace, evaluator: Any, budget_s: float, settings: SearchSettings) -> None:
        self.space = space
        self.evaluator = evaluator
        self.budget_s = budget_s
        self.settings = settings

    def __call__(self, trial: optuna.Trial) -> Sequence[float]:
        try:
            recipe = self.space.suggest(trial)
        except Exception as e:  # a config the knobs refuse is a failed candidate, not a crashed search
            self._fail(trial, f"suggest: {type(e).__name__}: {e}")
        trial.set_user_attr("recipe", recipe.to_dict())
        try:
            m = self.evaluate(recipe)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            self._fail(trial, f"{type(e).__name__}: {e}")
        trial.set_user_attr("measurement", m.to_dict())
        trial.set_user_attr("constraint", m.latency_s - self.budget_s)
        trial.set_constraint(BUDGET_CONSTRAINT, m.latency_s - self.budget_s)
        values = [m.latency_s * 1000.0, m.score if m.score is not None else UNMEASURED_SCORE]
        if self.settings.size_objective:
            values.append(m.size_mb or 0.0)
        if not all(math.isfinite(v) for v in values):
            self._fail(trial, f"non-finite objective values {values}")
        return values

    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason[:2000])
        raise CandidateFailed(reason)

    def evaluate(self, recipe: Recipe) -> Measurement:
        """Latency first; quality only when the candidate is not clearly over budget."""
        start = time.monotonic()
        limit = self.settings.trial_timeout_s
        deadline = None if limit is None else start + limit
        pipe = self.space.build(recipe)
        simulated = recipe_is_simulated(recipe)
        latency = self.evaluator.latency(pipe, budget_s=self.budget_s, simulated=simulated, deadline=deadline)
        self._check_time(start)
        size = self.evaluator.size_mb(pipe)
        over = latency["median_s"] > self.budget_s * (1 + OVER_BUDGET_MARGIN)
        quality = None
        score = None
        if not over:
            q = self.evaluator.quality(pipe, self.settings.proxy_samples, deadline=deadline)
            quality, score = q, q["score"]
            self._check_time(start)
        return Measurement(latency_s=latency["median_s"], latency=latency, quality=quality, score=score,
                           size_mb=size, simulated=simulated, over_budget=over, budget_s=self.budget_s,
                           noise_floor=getattr(self.evaluator, "noise_floor", None))

    def _check_time(self, start: float) -> None:
        """The per-trial limit, checked between phases (the evaluator also checks it between pipeline calls;
        a single call that hangs cannot be interrupted from inside the process)."""
        limit = self.settings.trial_timeout_s
        if limit is not None and time.monotonic() - start > limit:
            raise TimeoutError(f"candidate took more than the per-trial limit of {limit:g} s")


def recipe_is_simulated(recipe: Recipe) -> bool:
    """True when the recipe's quantization has no real low-precision kernel (fake-quant): its latency is
    labelled simulated and never reported as a speedup."""
    if "quantize" not in recipe.knobs:
        return False
    return bool(knob_module("quantize").is_simulated(recipe.knobs["quantize"]))


def create_or_load_study(settings: SearchSettings, storage: str | optuna.storages.BaseStorage, study_name: str,
                         model_identity: str, *, create: bool = True, sampler_seed: int | None = None,
                         ) -> optuna.Study:
    """Open the study (creating it if new, unless `create` is False) and refuse one made for another model,
    metric or space. `storage` is a URL or an opened storage (`autoeff.distributed.open_storage`).
    `sampler_seed` seeds this process's sampler (workers use their own so they propose different candidates);
    the sample sets that score candidates always come from `settings.seed`, common to every process."""
    from autoeff.distributed import SETTINGS_ATTR, mask_url

    label = mask_url(storage if isinstance(storage, str) else str(getattr(storage, "url", storage)))
    if optuna.logging.get_verbosity() < optuna.logging.WARNING:  # Optuna's default INFO logs every trial
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(settings.sampler, settings.seed if sampler_seed is None else sampler_seed)
    try:
        if create:
            study = optuna.create_study(storage=storage, study_name=study_name, directions=directions(settings),
                                        sampler=sampler, load_if_exists=True)
        else:
            study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler)
    except KeyError:
        raise SearchError(f"no study named {study_name!r} in {label}; create it first with `autoeff optimize "
                          f"--storage ... --study-name {study_name}`") from None
    except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as e:
        raise SearchError(f"cannot open storage {label!r}: {str(e).splitlines()[0]}") from None
    except Exception as e:  # sqlalchemy errors: unreachable server, bad URL, foreign database
        raise SearchError(f"cannot open storage {label!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    ident = settings.identity(model_identity)
    stored = study.user_attrs.get("settings_identity")
    if stored is None:
        if not create:
            raise SearchError(f"study {study_name!r} in {label} was not created by `autoeff optimize` (it has no "
                              "settings_identity); use another --study-name")
        study.set_user_attr("settings_identity", ident)
        study.set_user_attr("budget", settings.budget.text)
        study.set_user_attr(SETTINGS_ATTR, settings_to_dict(settings))
        study.set_user_attr("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    else:
        diff = sorted(k for k in set(stored) | set(ident) if stored.get(k) != ident.get(k))
        if diff:
            raise IncompatibleStudyError(
                f"study {study_name!r} in {label} was made with different {', '.join(diff)} "
                f"({', '.join(f'{k}={stored.get(k)!r}' for k in diff)}); use another --study-name or --out")
        if study.user_attrs.get("budget") != settings.budget.text:
            raise IncompatibleStudyError(
                f"study {study_name!r} was made for --budget {study.user_attrs.get('budget')}, not "
                f"{settings.budget.text}; use another --study-name or --out")
    return study


def settings_to_dict(settings: SearchSettings) -> dict[str, Any]:
    d = asdict(settings)
    d["budget"] = settings.budget.text
    return d


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"
