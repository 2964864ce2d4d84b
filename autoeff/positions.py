"""Where the few steps go: Bayesian optimisation of the timestep positions themselves, at a fixed step count.

At 2-8 denoiser evaluations the positions of the steps decide the quality more than the solver does
(AutoDiffusion, Li et al., ICCV 2023, searches them by evolution; DM-NonUniform, Xue et al., CVPR 2024; GITS,
Chen et al., 2024; Optimal Stepsize, 2025): on the digits U-Net at 3 steps the quadratic schedule scores FID
~6.5 where AYS scores 16.6, and a search over the three positions found ~5.8. A hand-written evolutionary
search is not needed for this: Optuna's `GPSampler` (a Gaussian process with log expected improvement,
noise fitted) handles a few continuous dimensions with few, noisy evaluations, which is the regime here. It
is started from what a user would try: the uniform, AYS, Karras and quadratic schedules at that step count
(`STARTING_FAMILIES`), measured first as ordinary trials; its proposals are `free` schedules, plain data in
the recipe like any other.

Parametrisation (`to_unit` / `from_unit`): k strictly decreasing timesteps in [0, N-1] as k numbers in [0, 1]:
the first step's position in its upper range, then each step as a fraction of the previous one. Every point of
the unit cube is a valid schedule (after `schedule.repair`), and no two orderings describe the same one, as
sorting k free integers would.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import optuna

from autoeff.search_spaces import schedule

#: Step counts whose positions are searched.
MAX_FEW_STEPS = 8
#: Where the search starts: the families a user tries by hand, in the order they are measured.
STARTING_FAMILIES: tuple[str, ...] = ("uniform", "ays", "quadratic", "karras")
#: The first timestep lies in [FIRST_LOW, 1] x (N - 1).
FIRST_LOW = 0.4
_PROPOSALS = 8  # asks before giving up when the process proposes only schedules already measured


def to_unit(timesteps: Sequence[int], num_train_timesteps: int) -> list[float]:
    """Strictly decreasing timesteps as coordinates in [0, 1] (the inverse of `from_unit`)."""
    top = float(num_train_timesteps - 1)
    x = [max(float(t), 0.5) / top for t in timesteps]
    first = min(1.0, max(0.0, (x[0] - FIRST_LOW) / (1.0 - FIRST_LOW)))
    return [first] + [min(1.0, max(0.0, b / a)) for a, b in zip(x, x[1:], strict=False)]


def from_unit(u: Sequence[float], num_train_timesteps: int) -> list[int]:
    """Coordinates in [0, 1] as `len(u)` strictly decreasing integer timesteps in [0, N-1]."""
    top = float(num_train_timesteps - 1)
    x = [FIRST_LOW + (1.0 - FIRST_LOW) * float(u[0])]
    for ratio in u[1:]:
        x.append(x[-1] * float(ratio))
    return schedule.repair([v * top for v in x], len(u), num_train_timesteps)


def propose(observed: Sequence[tuple[Sequence[int], float]], steps: int, num_train_timesteps: int, *,
            higher_is_better: bool, seed: int) -> list[int] | None:
    """The next timesteps to measure at `steps` steps, given `(timesteps, proxy value)` already measured at that
    step count for one structure; None when no new schedule came up in a few asks.

    The observations are replayed into an in-memory study (stateless: rebuilt from the search's own trials
    each time, so a resumed or distributed search proposes from everything measured). A lower-is-better
    metric with positive values (FID, KID) is modelled as its logarithm: a few broken schedules (FID in the
    hundreds next to good ones at 5-15) would otherwise dominate the Gaussian process's scale and hide the
    differences near the best."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # no "study created in memory" / greenlet chatter
    try:
        return _propose(observed, steps, num_train_timesteps, higher_is_better, seed)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _propose(observed: Sequence[tuple[Sequence[int], float]], steps: int, num_train_timesteps: int,
             higher_is_better: bool, seed: int) -> list[int] | None:
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        f"u{i}": optuna.distributions.FloatDistribution(0.0, 1.0) for i in range(steps)}
    seen = {tuple(int(t) for t in ts) for ts, _ in observed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(3, max(1, len(observed))),
                                            warn_independent_sampling=False)
        study = optuna.create_study(direction="maximize" if higher_is_better else "minimize", sampler=sampler)
    usable = [(ts, float(v)) for ts, v in observed if len(ts) == steps and math.isfinite(v)]
    logged = not higher_is_better and all(v > 0 for _, v in usable)
    for ts, value in usable:
        u = to_unit(ts, num_train_timesteps)
        study.add_trial(optuna.trial.create_trial(params={f"u{i}": v for i, v in enumerate(u)},
                                                  distributions=distributions,
                                                  value=math.log(value) if logged else value))
    for _ in range(_PROPOSALS):
        trial = study.ask(distributions)
        ts = from_unit([trial.params[f"u{i}"] for i in range(steps)], num_train_timesteps)
        if tuple(ts) not in seen:
            return ts
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return None


__all__ = ["MAX_FEW_STEPS", "STARTING_FAMILIES", "to_unit", "from_unit", "propose"]
