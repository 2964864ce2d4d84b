"""`SearchSpace`: the knobs chosen for a model family, composed into one Recipe per Optuna trial."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autoeff.models.handle import ModelHandle
from autoeff.recipe import Recipe
from autoeff.search_spaces import KNOB_ORDER, knob_module
from autoeff.search_spaces.base import SpaceContext


def parse_space(text: str | Sequence[str]) -> list[str]:
    """`"schedule,solver,cache"` -> knob names in application order; unknown names raise ValueError."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise ValueError("the search space is empty; name at least one knob: " + ",".join(KNOB_ORDER))
    unknown = [n for n in names if n not in KNOB_ORDER]
    if unknown:
        raise ValueError(f"unknown knob(s) {unknown} in the search space; known: {','.join(KNOB_ORDER)}")
    return [n for n in KNOB_ORDER if n in names]


def build_pipeline(handle: ModelHandle, recipe: Recipe, context: SpaceContext, pruned_denoiser: Any = None) -> Any:
    """Apply every knob of `recipe` to a copy of the handle's base pipeline (the base is never mutated).

    `pruned_denoiser` replaces the prune knob's output (e.g. the pruned denoiser after `prune.recover`): the
    other knobs are applied on top of it, as on a freshly pruned one.
    """
    pipe = copy_pipeline(handle.pipeline)
    if pruned_denoiser is not None:
        if "prune" not in recipe.knobs:
            raise ValueError("pruned_denoiser given for a recipe without a prune knob")
        pipe.register_modules(**{context.denoiser: pruned_denoiser})
    for name in KNOB_ORDER:
        if name in recipe.knobs and not (name == "prune" and pruned_denoiser is not None):
            pipe = knob_module(name).apply(pipe, recipe.knobs[name], context)
    return pipe


def copy_pipeline(pipe: Any) -> Any:
    """A new pipeline object sharing the same component modules (knobs copy what they change)."""
    kwargs = dict(pipe.components)
    if "requires_safety_checker" in pipe.config:  # keeps SD pipelines from warning on every copy
        kwargs["requires_safety_checker"] = pipe.config.requires_safety_checker
    new = type(pipe)(**kwargs)
    cfg = getattr(pipe, "_progress_bar_config", None)
    if cfg is not None:
        new.set_progress_bar_config(**cfg)
    return new


class SearchSpace:
    """The knobs to search for one model; `suggest(trial)` draws a Recipe, `build(recipe)` a pipeline."""

    def __init__(self, handle: ModelHandle, knobs: Sequence[str], context: SpaceContext) -> None:
        self.handle = handle
        self.knobs = parse_space(list(knobs))
        self.context = context

    def suggest(self, trial: Any) -> Recipe:
        configs = {name: knob_module(name).suggest(trial, self.context) for name in self.knobs}
        return Recipe(model=self.handle.spec, knobs=configs)

    def build(self, recipe: Recipe, pruned_denoiser: Any = None) -> Any:
        return build_pipeline(self.handle, recipe, self.context, pruned_denoiser=pruned_denoiser)
