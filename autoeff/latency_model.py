"""A latency model learned from the study's own measurements, to fill the budget and to skip what cannot fit.

For every *structure* (a candidate's configuration without its step count and timestep positions: solver,
cache, quantization, pruning, guidance, kernels, compile; the trial parameters outside the schedule knob)

    latency(structure, k) ~= fixed(structure) + per_eval(structure) * k

where k is the number of denoiser evaluations of one call (the schedule's step count). Nothing is assumed
about what a knob saves: DeepCache's cheaper steps, guidance's second batch half, int8 kernels, a compiled
denoiser all show up only as the measured `per_eval` (and `fixed`) of their structure. The figures come from

- the calibration (`run.stage_calibrate`): the pipeline as given, timed at two step counts (one of them twice,
  which also measures this machine's run-to-run noise), fixing the call's `fixed` cost and a first
  `per_eval`: at batch 1 the fixed cost is a large share of a few-step call, so steps do not scale linearly
  from the baseline's 50;
- every measured trial: a structure measured at one step count gets its own `per_eval`; at two step counts
  or more, its own `fixed` too (least squares);
- a structure never measured is predicted from the structures that were: `log(per_eval / calibration's)` is
  a ridge regression (Hoerl & Kennard, 1970) on one indicator per parameter value, so a knob setting's effect
  learned on one structure carries over to the others, and shrinks to "no effect" without data.

Every prediction made before a candidate was built is stored on its trial (`study.set_prediction`) and checked
against the measurement (`report`): the model's error is measured out of sample, per basis (`measured`: the
structure itself was timed before, `similar`: from the regression, `calibration`: nothing but the
calibration). Those errors set how far the model is trusted: a candidate is *clearly* over budget when even
its prediction divided by (1 + the 80th percentile of its basis's errors) is over, or when few of its basis's
past errors would put it within the budget (`Prediction.chance`: the errors are not symmetric, a structure
slower than every one measured is predicted too fast by a regression that shrinks towards them); the step
count that fills the budget leaves a margin of the measured noise floor (`margin`).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoeff.measurement import Baseline
from autoeff.search_spaces.schedule import STEPS_PARAM, is_schedule_param
from autoeff.study import StoredStudy, TrialRecord, measurement_of, prediction_of

BASES: tuple[str, ...] = ("measured", "similar", "calibration")
# Relative error assumed for a basis until it has MIN_ERRORS measured errors of its own.
DEFAULT_REL_ERROR: dict[str, float] = {"measured": 0.15, "similar": 0.3, "calibration": 0.3}
MIN_ERRORS = 3
ERROR_QUANTILE = 0.8
# The fill margin: the noise floor, kept within these bounds.
MARGIN_RANGE = (0.02, 0.30)
RIDGE_LAMBDA = 1.0
# A structure's per-evaluation cost is never taken below this share of the calibration's (a measurement at
# the fixed cost's level says little about the steps).
MIN_PER_EVAL_SHARE = 0.05
CALIBRATION_KEY = "{}"


def structure_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The trial parameters that define a structure: all but the schedule knob's."""
    return {k: v for k, v in params.items() if not is_schedule_param(k)}


def structure_key(params: Mapping[str, Any]) -> str:
    """A structure's identity: its parameters as sorted JSON (the calibration's is `{}`)."""
    return json.dumps(structure_params(params), sort_keys=True, default=str)


def evaluations(params: Mapping[str, Any], default_steps: int) -> int:
    """Denoiser evaluations of one call: the schedule's step count, or the pipeline's own."""
    value = params.get(STEPS_PARAM, default_steps)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else int(default_steps)


def _feature_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def features(params: Mapping[str, Any]) -> list[str]:
    """One indicator per structure parameter value (`cache_interval=3`, `solver.name=dpmpp`)."""
    return sorted(f"{k}={_feature_value(v)}" for k, v in structure_params(params).items())


@dataclass(frozen=True)
class LatencyPoint:
    """One timed call: a structure (its key and features), its evaluations and its median latency."""

    key: str
    features: tuple[str, ...]
    evals: int
    latency_s: float


@dataclass(frozen=True)
class Prediction:
    """The model's latency for a candidate before it is built.

    `basis`: `measured` (its structure was timed), `similar` (the regression over other structures) or
    `calibration`; `rel_error`: the 80th percentile of that basis's measured relative errors so far (a default
    until it has a few). `low_s`: the latency if the model errs high by that much. `chance`: the share of the
    basis's measured errors under which the candidate would be within the budget it was predicted for (None:
    predicted without a budget, or the basis has too few errors)."""

    latency_s: float
    basis: str
    rel_error: float
    evals: int
    chance: float | None = None

    @property
    def low_s(self) -> float:
        return self.latency_s / (1.0 + self.rel_error)

    def to_dict(self) -> dict[str, Any]:
        return {"latency_s": self.latency_s, "basis": self.basis, "rel_error": self.rel_error, "evals": self.evals,
                "chance": self.chance}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        chance = data.get("chance")
        return cls(latency_s=float(data["latency_s"]), basis=str(data["basis"]), rel_error=float(data["rel_error"]),
                   evals=int(data["evals"]), chance=None if chance is None else float(chance))


@dataclass(frozen=True)
class _Fit:
    fixed_s: float
    per_eval_s: float
    # per evaluation count timed for the structure: the median of the latencies timed there (trials and re-times)
    timed_s: Mapping[int, float] = field(default_factory=dict)

    def latency(self, evals: int) -> float:
        return self.fixed_s + self.per_eval_s * evals

    def most_evals(self, limit_s: float, low: int, high: int) -> int | None:
        """The most evaluations in [low, high] predicted within `limit_s`; None when not even `low`."""
        k = math.floor((limit_s - self.fixed_s) / self.per_eval_s) if self.per_eval_s > 0 else high
        k = min(high, k)
        return k if k >= low else None


def _line(evals: Sequence[float], latency: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares `(intercept, slope)` through the points, or None with fewer than two distinct x."""
    x, y = np.asarray(evals, dtype=float), np.asarray(latency, dtype=float)
    if len(set(x.tolist())) < 2:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@dataclass
class LatencyModel:
    """Latency of a structure at k evaluations (see the module docstring). Build it with `fit` or
    `from_study`; `predict`, `steps_that_fill`, `margin`, `report`."""

    fixed_s: float
    per_eval_s: float
    fits: dict[str, _Fit] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    errors: dict[str, list[float]] = field(default_factory=dict)
    noise: float = 0.0
    fastest_s: float | None = None  # the fastest measured candidate (trials only, not the calibration)

    @classmethod
    def fit(cls, points: Sequence[LatencyPoint], *, default_per_eval_s: float, noise: float = 0.0,
            errors: Mapping[str, Sequence[float]] | None = None) -> LatencyModel:
        """Fit from timed calls; the calibration's points carry `CALIBRATION_KEY`. Without two calibration
        step counts the fixed cost is 0 and the per-evaluation cost `default_per_eval_s`."""
        by_key: dict[str, list[LatencyPoint]] = {}
        for p in points:
            if p.evals > 0 and math.isfinite(p.latency_s) and p.latency_s > 0:
                by_key.setdefault(p.key, []).append(p)
        fixed, per_eval = 0.0, default_per_eval_s
        calib = by_key.get(CALIBRATION_KEY, [])
        line = _line([p.evals for p in calib], [p.latency_s for p in calib])
        if line is not None:
            fixed = min(max(line[0], 0.0), min(p.latency_s for p in calib))
            per_eval = statistics.fmean((p.latency_s - fixed) / p.evals for p in calib)
        per_eval = max(per_eval, 1e-9)
        model = cls(fixed_s=fixed, per_eval_s=per_eval, errors={k: list(v) for k, v in (errors or {}).items()},
                    noise=noise)
        for key, pts in by_key.items():
            model.fits[key] = model._fit_structure(pts)
        model._fit_weights(by_key)
        return model

    def _fit_structure(self, pts: Sequence[LatencyPoint]) -> _Fit:
        floor = MIN_PER_EVAL_SHARE * self.per_eval_s
        line = _line([p.evals for p in pts], [p.latency_s for p in pts])
        spread = max(p.evals for p in pts) - min(p.evals for p in pts)
        if line is not None and spread >= 2:
            fixed = min(max(line[0], 0.0), min(p.latency_s for p in pts))
        else:  # one step count: the calibration's fixed cost, this structure's own per-evaluation cost
            fixed = min(self.fixed_s, min(p.latency_s for p in pts))
        per_eval = statistics.fmean((p.latency_s - fixed) / p.evals for p in pts)
        timed: dict[int, list[float]] = {}
        for p in pts:
            timed.setdefault(p.evals, []).append(p.latency_s)
        return _Fit(fixed_s=fixed, per_eval_s=max(per_eval, floor),
                    timed_s={evals: statistics.median(times) for evals, times in timed.items()})

    def _fit_weights(self, by_key: Mapping[str, Sequence[LatencyPoint]]) -> None:
        """Ridge regression of log(per_eval / calibration's) on the structures' parameter indicators."""
        keys = [k for k in by_key if k != CALIBRATION_KEY]
        names = sorted({f for k in keys for f in by_key[k][0].features})
        if not keys or not names:
            return
        index = {n: i for i, n in enumerate(names)}
        x = np.zeros((len(keys), len(names)))
        y = np.zeros(len(keys))
        for row, k in enumerate(keys):
            for f in by_key[k][0].features:
                x[row, index[f]] = 1.0
            y[row] = math.log(self.fits[k].per_eval_s / self.per_eval_s)
        w = np.linalg.solve(x.T @ x + RIDGE_LAMBDA * np.eye(len(names)), x.T @ y)
        self.weights = {n: float(w[i]) for n, i in index.items()}

    # -- using it -----------------------------------------------------------------------------------------
    def _errors(self, basis: str) -> list[float]:
        """`basis`'s measured relative errors (measured / predicted - 1), the finite ones."""
        return [e for e in self.errors.get(basis, []) if math.isfinite(e)]

    def rel_error(self, basis: str) -> float:
        """The 80th percentile of `basis`'s measured |relative errors| (a default until it has a few), never
        below the noise floor."""
        errs = [abs(e) for e in self._errors(basis)]
        value = _quantile(errs, ERROR_QUANTILE) if len(errs) >= MIN_ERRORS else DEFAULT_REL_ERROR[basis]
        return max(value, self.noise)

    def chance_within(self, basis: str, latency_s: float, budget_s: float) -> float | None:
        """The share of `basis`'s measured relative errors under which a prediction of `latency_s` would be
        measured within `budget_s`; None while the basis has fewer than `MIN_ERRORS`."""
        errs = self._errors(basis)
        if len(errs) < MIN_ERRORS:
            return None
        return sum(latency_s * (1.0 + e) <= budget_s for e in errs) / len(errs)

    def _structure_fit(self, params: Mapping[str, Any]) -> tuple[_Fit, str]:
        key = structure_key(params)
        if key in self.fits:
            return self.fits[key], "measured"
        if self.weights:
            log_factor = sum(self.weights.get(f, 0.0) for f in features(params))
            return _Fit(self.fixed_s, self.per_eval_s * math.exp(log_factor)), "similar"
        return _Fit(self.fixed_s, self.per_eval_s), "calibration"

    def predict(self, params: Mapping[str, Any], evals: int, budget_s: float | None = None) -> Prediction:
        """Latency of the structure of `params` at `evals` denoiser evaluations; with `budget_s`, the chance
        that it fits (`Prediction.chance`)."""
        fit, basis = self._structure_fit(params)
        latency = fit.latency(evals)
        chance = None if budget_s is None else self.chance_within(basis, latency, budget_s)
        return Prediction(latency_s=latency, basis=basis, rel_error=self.rel_error(basis), evals=evals, chance=chance)

    @property
    def margin(self) -> float:
        """How far below the budget a filled candidate is aimed: the measured noise floor (the baseline's and
        the calibration's run-to-run spread, and the typical error of predictions for timed structures)."""
        errs = [abs(e) for e in self._errors("measured")]
        typical = statistics.median(errs) if len(errs) >= MIN_ERRORS else 0.0
        lo, hi = MARGIN_RANGE
        return min(hi, max(lo, self.noise, typical))

    def steps_that_fill(self, params: Mapping[str, Any], budget_s: float, low: int, high: int) -> int | None:
        """The most evaluations in [low, high] whose predicted latency stays under budget / (1 + margin); None
        when even `low` does not. For a structure known only through the regression over others (`similar`)
        the margin is that basis's typical error instead (`rel_error`, when larger): a first guess under the
        budget is measured and scored, one over it is neither, and once timed the structure is filled to the
        noise floor. The calibration (the pipeline itself, its schedule pinned) counts as timed.

        What was timed beats the margin: a step count at which the structure's timings have their median within
        the budget is filled even where the prediction with its margin says one step fewer; a median over the
        budget there returns it to the margin's count. The margin is for a guess: on the digits DiT at batch 16
        and 5 % a compiled candidate at 3 steps was timed at 96.9 ms (re-timed at 99.3 ms in the selection)
        against a 103.0 ms budget, the margin (6.5 %) kept every later candidate of that structure at 2 steps, and
        the pick scored FID 25.4 where the hand's compiled 3 steps scored 17.5. The median, not the slowest: in a
        later search the same structure was timed at 3 steps at 104.2, 97.9 and 101.2 ms, then 108.5 ms against a
        105.3 ms budget (this VM's run-to-run noise), and one timing over sent the rest of the search to 2 steps
        (pick 19.5 against the hand's 17.5). An edge candidate is guarded as before: the hedge measures it one
        step fewer, the selection re-times it."""
        fit, basis = self._structure_fit(params)
        margin = self.margin if basis != "similar" else max(self.margin, self.rel_error(basis))
        k = fit.most_evals(budget_s / (1.0 + margin), low, high)
        if basis == "measured":
            timed = [min(e, high) for e, median in fit.timed_s.items() if median <= budget_s and e >= low]
            k = max([k, *timed]) if k is not None else max(timed, default=None)
        return k

    def steps_within(self, params: Mapping[str, Any], budget_s: float, low: int, high: int) -> int | None:
        """The most evaluations in [low, high] whose predicted latency is within `budget_s`, no margin taken
        off: the budget's edge as the model sees it (`planner.FillPlanner.reach` asks for the budget plus the
        noise floor, and measures that edge once)."""
        return self._structure_fit(params)[0].most_evals(budget_s, low, high)

    def report(self) -> dict[str, Any]:
        """The fitted figures and the out-of-sample errors of every stored prediction, per basis."""
        errors: dict[str, Any] = {}
        for basis in BASES:
            errs = self._errors(basis)
            if errs:
                absolute = [abs(e) for e in errs]
                errors[basis] = {"n": len(errs), "median_abs": statistics.median(absolute),
                                 "p90_abs": _quantile(absolute, 0.9), "bias": statistics.fmean(errs)}
        return {"fixed_ms": self.fixed_s * 1000, "per_eval_ms": self.per_eval_s * 1000, "margin": self.margin,
                "noise": self.noise, "structures": len([k for k in self.fits if k != CALIBRATION_KEY]),
                "errors": errors}

    # -- from a study ---------------------------------------------------------------------------------------
    @classmethod
    def from_study(cls, stored: StoredStudy, default_steps: int, baseline: Baseline | None = None) -> LatencyModel:
        """The model of everything `stored` has timed: the calibration, every measured trial and re-time, and
        the errors of the predictions stored on the trials."""
        points, noise, default = study_calibration(stored, default_steps, baseline)
        records = stored.records()
        for r in records:
            point = record_point(r, default_steps)
            points.append(point)
            retimed = stored.retime(r.number)
            if retimed is not None:
                points.append(LatencyPoint(point.key, point.features, point.evals, retimed.median_s))
        errors: dict[str, list[float]] = {}
        for t in stored.study.get_trials(deepcopy=False):
            pred, m = prediction_of(t), measurement_of(t)
            if pred is not None and m is not None and pred.get("latency_s"):
                errors.setdefault(str(pred.get("basis")), []).append(m.latency_s / float(pred["latency_s"]) - 1.0)
        model = cls.fit(points, default_per_eval_s=default, noise=noise, errors=errors)
        model.fastest_s = min((r.latency_s for r in records), default=None)
        return model


def record_point(record: TrialRecord, default_steps: int) -> LatencyPoint:
    """A measured trial as a point of the model (its structure, evaluations and measured latency)."""
    return LatencyPoint(structure_key(record.params), tuple(features(record.params)),
                        evaluations(record.params, default_steps), record.latency_s)


def study_calibration(stored: StoredStudy, default_steps: int, baseline: Baseline | None
                      ) -> tuple[list[LatencyPoint], float, float]:
    """What a study's model starts from: the calibration's points, the noise floor (the calibration's repeated
    step count, or the baseline's when larger) and the per-evaluation cost assumed without a calibration."""
    calib = stored.latency_calibration
    points = [LatencyPoint(CALIBRATION_KEY, (), int(p["evals"]), float(p["latency_s"])) for p in calib]
    noise = calibration_noise(calib)
    if baseline is not None:
        noise = max(noise, baseline.noise_floor)
    default = (baseline.latency_s / max(1, default_steps)) if baseline is not None else 1.0
    return points, noise, default


def calibration_noise(points: Sequence[Mapping[str, float]]) -> float:
    """Run-to-run relative spread of the calibration's repeated step count(s): |a - b| / mean, the largest."""
    by_evals: dict[int, list[float]] = {}
    for p in points:
        by_evals.setdefault(int(p["evals"]), []).append(float(p["latency_s"]))
    spreads = [(max(v) - min(v)) / statistics.fmean(v) for v in by_evals.values() if len(v) >= 2]
    return max(spreads, default=0.0)


__all__ = ["LatencyModel", "LatencyPoint", "Prediction", "structure_key", "structure_params", "features",
           "evaluations", "calibration_noise", "record_point", "study_calibration", "CALIBRATION_KEY", "BASES"]
