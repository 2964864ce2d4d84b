"""The export's `README.md`: a Hugging Face model card (https://huggingface.co/docs/hub/model-cards).

YAML front matter as the Hub reads it (`library_name: diffusers`, `base_model`, `tags`, `pipeline_tag`), then the
measured figures (device, sample count, seeds, the metric and what it compared with), the recipe, and the two ways
to load the folder, saying exactly what plain diffusers gets and what only `autoeff.load` applies
(`plain_diffusers`). Everything in it is read from the `autoeff.json` the export writes beside it.
"""

from __future__ import annotations

import json
import re
import statistics
from typing import Any

import diffusers

from autoeff.recipe import Recipe
from autoeff.search_spaces.base import SpaceContext
from autoeff.search_spaces.registry import get_knob

# What plain `DiffusionPipeline.from_pretrained(export)` gets of each knob (the rest only `autoeff.load` applies).
# solver: its scheduler class and config are the folder's `scheduler/` (when the pipeline keeps it and can call it).
_STORED_IN_CONFIG = frozenset({"solver"})


def plain_diffusers(recipe: Recipe, context: SpaceContext, solver_saved: bool) -> tuple[list[str], list[str], bool]:
    """`(knobs plain diffusers gets, knobs only autoeff.load applies, whether plain diffusers can load it at all)`.

    A knob stored in the weights (pruning) changes the denoiser's shapes without changing its config, so plain
    diffusers cannot load the folder; the solver is plain diffusers' when the export saved it in `scheduler/`."""
    gets, only = [], []
    loadable = True
    for name, config in recipe.ordered():
        if _is_off(name, config, context):
            continue
        if name in _STORED_IN_CONFIG and solver_saved:
            gets.append(name)
        else:
            only.append(name)
            if get_knob(name).stored_in_weights is not None:
                loadable = False
    return gets, only, loadable


def _is_off(name: str, config: Any, context: SpaceContext) -> bool:
    off = get_knob(name).off
    try:
        return off is not None and off(context) == config
    except Exception:  # an `off` this context cannot build: count the knob as on
        return False


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def _figure(measurement: dict[str, Any] | None) -> tuple[str, str]:
    if not isinstance(measurement, dict):
        return "-", "-"
    lat = measurement.get("latency_s")
    q = measurement.get("quality") or {}
    latency = "-" if not isinstance(lat, int | float) else f"{lat * 1000:.1f} ms"
    if not q:
        return latency, "not measured"
    details = q.get("details") or {}
    against = {"folder": f"vs {details.get('n_reference', '?')} reference images", "real": "vs the real digits",
               "baseline": "vs the baseline's images"}.get(str(details.get("reference")), "")
    extra = "; ".join(x for x in (against, f"features {details['features']}" if details.get("features") else "",
                                  "SSIM to the baseline's images" if q.get("metric") == "fidelity" else "") if x)
    value = q.get("value")
    shown = f"{value:.4g}" if isinstance(value, int | float) else str(value)
    return latency, f"{q.get('metric')} {shown} (n={q.get('n')}{'; ' + extra if extra else ''})"


def model_card(info: dict[str, Any], recipe: Recipe, context: SpaceContext, scheduler_class: str | None,
               plain_note: str | None) -> str:
    """The card's text for an export whose `autoeff.json` is `info` (recipe as a `Recipe`). `scheduler_class`: the
    class in the folder's `scheduler/` when it is the chosen solver's; `plain_note`: why plain diffusers does not
    get the solver, if it does not."""
    model = info.get("model") or {}
    measured = info.get("measured") or {}
    spec = str(model.get("spec", ""))
    hub_id = spec if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith((".", "/")) else None
    pipeline_class = str(model.get("pipeline_class", "DiffusionPipeline"))
    task = "text-to-image" if model.get("prompts") else "unconditional-image-generation"
    tags = ["autoeff", "diffusers", str(model.get("family", "")), pipeline_class]
    front = ["---", "library_name: diffusers"]
    if hub_id:
        front.append(f"base_model: {_yaml_str(hub_id)}")
    front += [f"pipeline_tag: {task}", "tags:", *[f"- {_yaml_str(t)}" for t in tags if t], "---", ""]

    _gets, only, loadable = plain_diffusers(recipe, context, scheduler_class is not None)
    base_lat, base_q = _figure(info.get("baseline"))
    which = "final" if isinstance(measured.get("final"), dict) else "proxy"
    lat, q = _figure(measured.get(which))
    device = info.get("device", "-")
    timed_on = ((measured.get(which) or {}).get("latency") or {}).get("device") or device
    if isinstance(measured.get(which), dict) or isinstance(info.get("baseline"), dict) and info["baseline"]:
        figures = [
            f"Device: `{device}` ({timed_on}); batch {measured.get('batch_size', '-')} image(s) per call; sample-set "
            f"seed {measured.get('seed', '-')} (the same seeds, prompts and labels for the baseline and the chosen "
            f"pipeline); figures of the {'finalist re-measurement' if which == 'final' else 'search trial'}.",
            "",
            "| | latency per call | quality |",
            "| --- | --- | --- |",
            f"| baseline (the base pipeline, {model.get('default_steps', '-')} steps) | {base_lat} | {base_q} |",
            f"| this export | {lat} | {q} |",
        ]
        timing = (measured.get(which) or {}).get("latency") or {}
        if timing.get("yardstick_ref_s") and timing.get("raw_samples_s"):
            raw = statistics.median(timing["raw_samples_s"])
            figures += ["", f"Latencies are in the conditions the baseline was timed in: each call was timed against "
                        f"the base pipeline at {timing.get('yardstick_steps')} steps run right after it, and scaled by "
                        f"that call's time when the baseline was measured (this machine's speed drifts); as measured, "
                        f"this export's calls took {raw * 1000:.1f} ms (median)."]
    else:
        figures = ["Nothing was measured: this folder was exported without a search's figures."]
    lines = [
        f"# {pipeline_class} optimized by autoeff",
        "",
        f"An efficiency-optimized `{pipeline_class}` (base model: `{spec}`), found and measured by autoeff on the "
        "device below. Every figure was measured, none is estimated.",
        "",
        "## Measured",
        "",
        *figures,
        "",
        "## Recipe",
        "",
        *[f"- **{name}**: {cfg.describe() if hasattr(cfg, 'describe') else cfg}" for name, cfg in recipe.ordered()],
        "",
        "## How to load it",
        "",
        "**With autoeff** (every knob of the recipe applied; the folder's manifest is checked, only JSON and "
        "safetensors are read):",
        "",
        "```python",
        "import autoeff",
        'pipe = autoeff.load("path/to/this/folder")',
        "```",
        "",
        "**With plain diffusers**:",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        'pipe = DiffusionPipeline.from_pretrained("path/to/this/folder")',
        "```",
        "",
    ]
    if not hasattr(diffusers, pipeline_class):
        lines.append(f"Plain diffusers cannot load this folder: `{pipeline_class}` is autoeff's own pipeline class, "
                     "not a diffusers one; load it with `autoeff.load`.")
    elif not loadable:
        stored = ", ".join(n for n in only if get_knob(n).stored_in_weights)
        lines.append(f"Plain diffusers cannot load this folder: {stored} changed the denoiser's shapes in the "
                     "weights, which only `autoeff.load` rebuilds.")
    else:
        got = ["the weights and every component's config"]
        if scheduler_class is not None:
            got.append(f"the chosen solver (`{scheduler_class}` in `scheduler/`)")
        lines.append("Plain diffusers gets: " + "; ".join(got) + ".")
        if plain_note:
            lines.append(f"It does not get the chosen solver: {plain_note}.")
        if only:
            lines.append("Only `autoeff.load` applies: " + ", ".join(f"**{n}**" for n in only)
                         + ". Loaded with plain diffusers, this pipeline does not reproduce the measured figures.")
        else:
            lines.append("Nothing else in the recipe needs autoeff: plain diffusers reproduces it.")
        if "schedule" in only:
            steps = getattr(recipe.knobs["schedule"], "steps", None)
            lines.append(f"(Plain diffusers runs its own step count unless told: pass `num_inference_steps={steps}` "
                         "for the chosen count; the chosen timesteps themselves are pinned by `autoeff.load` only.)")
    lines.append("")
    return "\n".join(front + lines)


__all__ = ["model_card", "plain_diffusers"]
