"""Warm starts: the configurations a user would try by hand, enqueued before the sampler draws its own.

DPM-Solver++ 2M and UniPC-2 at a few step counts with uniform and AYS-style schedules, DPM-Solver++ 1M at the step
counts above `positions.MAX_FEW_STEPS`, and DeepCache N=3 over a 20-step DPM-Solver++ (Ma et al., 2024); on a
model without DeepCache or block reuse, the cache a user would try first there (`cache.typical`: TaylorSeer N=3 on
the flow-matching transformers). With a knob that keeps the images in the space (`Knob.keeps_images` with a
`typical` setting: `compile`, inductor on the whole denoiser), the first pick with that setting: the
budget-filling loop gives it the step count its own measured cost allows (on the digits U-Net at batch 1 compiling
cut a 3-4 step call by 17-18 % in one re-measure and slowed it in another, BENCHMARKS.md). Every knob of the space
a pick does not name is turned off through its registered `off()` (no cache, no pruning, no quantization, and the
same for any knob registered later), so the hand-picked configurations are exactly what a user would run, not
random mixtures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from autoeff.positions import MAX_FEW_STEPS
from autoeff.search_spaces import cache, quantize, schedule, solver
from autoeff.search_spaces.base import SpaceContext
from autoeff.search_spaces.groups import searched_groups
from autoeff.search_spaces.registry import get_knob, ordered
from autoeff.search_spaces.space import drawn_params


def _off_params(space: Sequence[str], context: SpaceContext) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for knob in ordered(space):
        if knob.off is not None and knob.applies_to(context):
            params.update(knob.to_params(knob.off(context)))
    return params


def warm_start_params(space: Sequence[str], context: SpaceContext, fit_steps: int | None = None
                      ) -> list[dict[str, Any]]:
    """Trial params of the hand-picked configurations, in the order they are enqueued.

    `fit_steps`: about how many plain denoising steps fit the budget (the baseline's latency per step
    against the budget). When fewer than 20 fit, the picks at 5/10/20 steps are partly over budget, so the
    same solvers at `fit_steps` replace the picks clearly over budget (more than 1.2x `fit_steps`), DeepCache
    N=3 runs over 1.5x that many steps, and all-int8 at 1.3x is added (the speedups these knobs give on the
    digits U-Net, BENCHMARKS.md) -- otherwise a tight budget leaves the search to find its first feasible
    point by chance.
    """
    off = _off_params(space, context)

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
    twins = [{**picks[0], k.name: k.typical(context)} for k in ordered(space)  # the first pick, made faster
             if k.keeps_images and k.typical is not None and k.applies_to(context)]
    picks[1:1] = twins
    # first order where many steps fit: its error per step shrinks with the step, and there it can beat the
    # second order (digits U-Net at 20 %: DPM-Solver++ 1M AYS at 10 steps FID 4.04 against 2M at 7-9 steps
    # 4.47-4.68, 2000 samples x 4 seed sets; BENCHMARKS.md); at few steps the second order wins
    for k in (k for k in steps if k > MAX_FEW_STEPS):
        for fam in ("uniform", "ays"):
            picks.append({"solver": solver.Config(name="dpmpp", order=1),
                          "schedule": schedule.Config(family=fam, steps=k)})
    k_cache = 20 if context.min_steps <= 20 <= context.max_steps else steps[-1]
    if tight is not None:
        k_cache = clamp(min(20, 1.5 * tight))
    cached = {"cache": cache.typical(context)} if cache.applies_to(context) else {}
    picks.append({"solver": dpmpp2, "schedule": schedule.Config(family="uniform", steps=k_cache), **cached})
    groups = searched_groups(context.block_groups)
    if tight is not None and groups and "quantize" in space and "int8" in quantize.level_choices(context):
        none = quantize.off(context)  # every block group int8, in the per-group form suggest() draws
        int8 = quantize.Config(mapping={k: ("skip" if k == quantize.DEFAULT_KEY else "int8") for k in none.mapping},
                               backend=none.backend)
        picks.append({"solver": dpmpp2, "schedule": schedule.Config(family="uniform", steps=clamp(1.3 * tight)),
                      "quantize": int8})
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for pick in picks:
        params: dict[str, Any] = dict(off)
        for name, cfg in pick.items():
            if name in space:
                params.update(get_knob(name).to_params(cfg))
        params = drawn_params(params, space, context) if params else params
        key = json.dumps(params, sort_keys=True, default=str)
        if params and key not in seen:
            seen.add(key)
            out.append(params)
    return out


__all__ = ["warm_start_params"]
