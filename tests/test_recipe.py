"""The Recipe's JSON round trip and strict loading, and fuzz tests of the two loaders of untrusted JSON.

`Recipe.from_json` / `Recipe.from_dict` and `autoeff.export.parse_autoeff_json` read files a user may have
edited or received from elsewhere: whatever the input, they return a valid object or raise their documented
error (ConfigError / ExportError), never another exception.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoeff.export import EXPORT_SCHEMA_VERSION, ExportError, parse_autoeff_json
from autoeff.recipe import SCHEMA_VERSION, Recipe
from autoeff.search_spaces import cache, knob_names, prune, quantize, schedule, solver
from autoeff.search_spaces.base import ConfigError, SpaceContext


def five_knob_recipe() -> Recipe:
    return Recipe(model="digits", knobs={
        "prune": prune.Config(ratios={"down.1": 0.25, "up.1": 0.25}, importance="l2", round_to=8),
        # the order of a quantize mapping matters (the first matching `re:` rule wins): it must survive JSON
        "quantize": quantize.Config(mapping={"re:(?:mid_block)(?:\\..+)?": "int8", "down.0": "int8",
                                             "_default": "skip"}, backend="cpu-int8"),
        "solver": solver.Config(name="dpmpp", order=2),
        "schedule": schedule.Config(family="ays", steps=6),
        "cache": cache.Config(interval=2, branch=2),
    })


def autoeff_document() -> dict[str, Any]:
    """A minimal valid `autoeff.json` (the shape `export_pipeline` writes)."""
    ctx = SpaceContext(family="digits", denoiser="unet", default_steps=10, min_steps=2, max_steps=10,
                       block_groups=["down.0", "down.1", "mid", "up.0", "up.1"])
    return {
        "export_schema_version": EXPORT_SCHEMA_VERSION,
        "recipe": five_knob_recipe().to_dict(),
        "model": {"spec": "digits", "family": "digits", "resolution": 16, "prompts": None, "num_classes": 10,
                  "default_steps": 10, "identity": "abc", "guidance_scale": None,
                  "pipeline_class": "DigitsPipeline"},
        "context": {"family": ctx.family, "denoiser": ctx.denoiser,
                    "num_train_timesteps": ctx.num_train_timesteps, "default_steps": ctx.default_steps,
                    "min_steps": ctx.min_steps, "max_steps": ctx.max_steps, "block_groups": ctx.block_groups,
                    "device": "cpu", "options": {}},
        "weights": {},
        "measured": {"trial": 3, "proxy": {"latency_s": 0.01}, "final": None},
        "baseline": {"latency_s": 0.02},
        "device": "cpu",
        "versions": {"torch": "2.14.1"},
        "created": "2026-11-01T00:00:00",
    }


# -- round trip and strict loading -------------------------------------------------------------------------
def test_round_trip_of_all_five_knobs_is_exact():
    recipe = five_knob_recipe()
    text = recipe.to_json()
    back = Recipe.from_json(text)
    assert back == recipe
    assert back.to_json() == text
    assert list(back.knobs) == [k for k in knob_names() if k in recipe.knobs]
    assert list(back.knobs["quantize"].mapping) == list(recipe.knobs["quantize"].mapping)
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION


def test_round_trip_keeps_an_empty_recipe():
    assert Recipe.from_json(Recipe(model="sdxl").to_json()) == Recipe(model="sdxl")


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(extra=1), ["unknown field", "extra"]),
    (lambda d: d["knobs"].update(warp={"_type": "Config", "_version": 1, "_data": {}}),
     ["unknown knob", "warp", "known knobs"]),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), ["newer", "upgrade autoeff"]),
    (lambda d: d.update(schema_version=0), ["schema_version 0"]),
    (lambda d: d.update(schema_version="1"), ["schema_version must be an integer"]),
    (lambda d: d.update(model=""), ["model must be a non-empty string"]),
    (lambda d: d.update(knobs=[]), ["knobs must be an object"]),
    (lambda d: d["knobs"]["solver"]["_data"].update(warp=1), ["no field", "warp"]),
    (lambda d: d["knobs"]["solver"].update(_version=99), ["version 99", "upgrade autoeff"]),
    (lambda d: d["knobs"]["solver"].update(_type="Other"), ["expected _type"]),
    (lambda d: d["knobs"]["solver"].pop("_data"), ["exactly _type, _version, _data"]),
])
def test_strict_loading_refuses_with_a_message_naming_the_problem(mutate, words):
    doc = five_knob_recipe().to_dict()
    mutate(doc)
    with pytest.raises(ConfigError) as err:
        Recipe.from_json(json.dumps(doc))
    for w in words:
        assert w in str(err.value)
    assert "\n" not in str(err.value)


def test_not_json_and_not_an_object_are_config_errors():
    for text in ("{", "[1, 2]", "null", "1" * 5000, "[" * 100_000):
        with pytest.raises(ConfigError):
            Recipe.from_json(text)


def test_valid_autoeff_document_parses():
    info = parse_autoeff_json(json.dumps(autoeff_document()))
    assert isinstance(info["recipe"], Recipe) and info["recipe"] == five_knob_recipe()
    assert isinstance(info["context"], SpaceContext) and info["context"].max_steps == 10


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(surprise=True), ["unknown field", "surprise"]),
    (lambda d: d.update(export_schema_version=EXPORT_SCHEMA_VERSION + 1), ["newer", "upgrade autoeff"]),
    (lambda d: d.update(export_schema_version=True), ["positive integer"]),
    (lambda d: d["recipe"].update(schema_version=SCHEMA_VERSION + 1), ["recipe", "newer"]),
    (lambda d: d["recipe"]["knobs"].update(warp={}), ["unknown knob", "warp"]),
    (lambda d: d["model"].update(family=["digits"]), ["model.family"]),
    (lambda d: d["model"].pop("resolution"), ["model.resolution"]),
    (lambda d: d["context"].update(denoiser="transformer"), ["context.denoiser"]),
    (lambda d: d["context"].update(max_steps="10"), ["context.max_steps must be an integer"]),
    (lambda d: d["context"].update(colour=1), ["context"]),
    (lambda d: d.update(measured=[]), ["measured must be an object"]),
])
def test_autoeff_document_refusals(mutate, words):
    doc = autoeff_document()
    mutate(doc)
    with pytest.raises(ExportError) as err:
        parse_autoeff_json(json.dumps(doc), where="x/autoeff.json")
    for w in words:
        assert w in str(err.value)
    assert str(err.value).startswith("x/autoeff.json")


# -- fuzzing -----------------------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["digits", "unet", "dpmpp", "ays", "uniform", "int8", "skip", "_default", "Config",
                       "re:.*", "cpu-int8", "l2"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=16,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON document (dict keys and list indices)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: Any, base: dict[str, Any]) -> dict[str, Any] | Any:
    """`base` with one to three edits: a value replaced, a key deleted, or a key added, anywhere."""
    doc: Any = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            doc = draw(JSON) if action == "replace" else doc
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if action == "replace":
            parent[path[-1]] = draw(JSON)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(st.text(max_size=10))] = draw(JSON)
    return doc


def _recipe_loads_or_config_error(doc: Any) -> None:
    try:
        recipe = Recipe.from_json(json.dumps(doc))
    except ConfigError:
        return
    # what loads is a valid recipe: it serializes and loads back equal
    assert Recipe.from_json(recipe.to_json()) == recipe


def _autoeff_loads_or_export_error(text: str) -> None:
    try:
        info = parse_autoeff_json(text)
    except ExportError:
        return
    assert isinstance(info["recipe"], Recipe) and isinstance(info["context"], SpaceContext)


@FUZZ
@given(JSON)
def test_fuzz_recipe_arbitrary_json(doc):
    _recipe_loads_or_config_error(doc)


@FUZZ
@given(mutated(five_knob_recipe().to_dict()))
def test_fuzz_recipe_mutations(doc):
    _recipe_loads_or_config_error(doc)


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_recipe_arbitrary_text(text):
    try:
        Recipe.from_json(text)
    except ConfigError:
        pass


@FUZZ
@given(JSON)
def test_fuzz_autoeff_json_arbitrary_json(doc):
    _autoeff_loads_or_export_error(json.dumps(doc))


@FUZZ
@given(mutated(autoeff_document()))
def test_fuzz_autoeff_json_mutations(doc):
    _autoeff_loads_or_export_error(json.dumps(doc))


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_autoeff_json_arbitrary_text(text):
    _autoeff_loads_or_export_error(text)
