"""`SearchSpace`: the registered knobs chosen for a search, composed into one Recipe per Optuna trial, and the
one loop that applies a recipe's knobs to a pipeline (used by the search, export and `autoeff.load`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import optuna

from autoeff.models.handle import ModelHandle
from autoeff.recipe import Recipe
from autoeff.search_spaces.base import ConfigError, SpaceContext, Stage, copy_pipeline
from autoeff.search_spaces.registry import get_knob, knob_names, ordered

# Which knobs `apply_knobs` applies: all of them, those whose effect an export stores in the weights, or the
# others (what `autoeff.load` re-applies on top of stored weights).
Which = Literal["all", "weights", "runtime"]


def parse_space(text: str | Sequence[str]) -> list[str]:
    """`"schedule,solver,cache"` -> knob names in application order; unknown names raise ConfigError."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    known = knob_names()
    if not names:
        raise ConfigError("the search space is empty; name at least one knob: " + ",".join(known))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown knob(s) {unknown} in the search space; known: {','.join(known)}")
    return [n for n in known if n in names]


def applicable_knobs(context: SpaceContext) -> list[str]:
    """The registered knobs that apply to the model `context` describes, in application order."""
    return [n for n in knob_names() if get_knob(n).applies_to(context)]


def apply_knobs(pipe: Any, recipe: Recipe, context: SpaceContext, which: Which = "all") -> Any:
    """Apply the recipe's knobs (all, or only the weight-stored / runtime ones) in application order."""
    for knob in ordered(recipe.knobs):
        stored = knob.stored_in_weights is not None
        if which == "all" or (which == "weights") == stored:
            pipe = knob.apply(pipe, recipe.knobs[knob.name], context)
    return pipe


def build_pipeline(handle: ModelHandle, recipe: Recipe, context: SpaceContext, weights: Any = None) -> Any:
    """Apply every knob of `recipe` to a copy of the handle's base pipeline (the base is never mutated).

    `weights` replaces the output of the knobs stored in the weights (e.g. the pruned denoiser after
    `prune.recover`): the other knobs are applied on top of it, as on a freshly pruned one.
    """
    pipe = copy_pipeline(handle.pipeline)
    if weights is None:
        return apply_knobs(pipe, recipe, context)
    if not any(get_knob(k).stored_in_weights is not None for k in recipe.knobs):
        raise ConfigError("a denoiser with stored weights was given for a recipe whose knobs store none")
    pipe.register_modules(**{context.denoiser: weights})
    return apply_knobs(pipe, recipe, context, which="runtime")


def draw(knobs: Sequence[str], trial: Any, context: SpaceContext) -> dict[str, Any]:
    """Each knob's config drawn from `trial`, the step count and timesteps (`Stage.TIMESTEPS`) after every other
    knob, so a sampler that chooses the step count knows the structure it is for (`planner.FillSampler`)."""
    ordered_knobs = ordered(knobs)
    last = [k for k in ordered_knobs if k.stage == Stage.TIMESTEPS]
    return {k.name: k.suggest(trial, context) for k in [*(k for k in ordered_knobs if k not in last), *last]}


def drawn_params(params: dict[str, Any], knobs: Sequence[str], context: SpaceContext) -> dict[str, Any]:
    """The trial parameters a trial enqueued with `params` ends with: those the knobs' `suggest` reads (a
    knob's `to_params` may write one its suggest does not ask on this model, e.g. `cache_method` where the model
    has one cache method). A structure is known by its parameters (`latency_model.structure_key`), so a planned
    candidate must be planned with the parameters it will be measured with."""
    trial = optuna.trial.FixedTrial(params)
    draw([k for k in knobs if get_knob(k).applies_to(context)], trial, context)
    return dict(trial.params)


class SearchSpace:
    """The knobs to search for one model; `suggest(trial)` draws a Recipe, `build(recipe)` a pipeline."""

    def __init__(self, handle: ModelHandle, knobs: Sequence[str], context: SpaceContext) -> None:
        self.handle = handle
        self.context = context
        asked = parse_space(list(knobs))
        # A knob whose technique does not exist for this model (`Knob.applies_to`: e.g. guidance without
        # classifier-free guidance) is simply not in its space.
        self.knobs = [k for k in asked if get_knob(k).applies_to(context)]
        self.left_out = [k for k in asked if k not in self.knobs]
        if not self.knobs:
            raise ConfigError(f"no knob of the search space ({','.join(asked)}) applies to the {context.family} "
                              f"model; add one of: {','.join(applicable_knobs(context))}")

    def suggest(self, trial: Any) -> Recipe:
        """Draw a Recipe. The step count and timesteps (`Stage.TIMESTEPS`) are drawn after every other knob, so
        a sampler that chooses the step count knows the structure it is for (`planner.FillSampler`)."""
        drawn = draw(self.knobs, trial, self.context)
        return Recipe(model=self.handle.spec, knobs={k.name: drawn[k.name] for k in ordered(self.knobs)})

    def build(self, recipe: Recipe, weights: Any = None) -> Any:
        return build_pipeline(self.handle, recipe, self.context, weights=weights)
