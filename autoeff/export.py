"""The frozen pipeline folder: write it atomically, load it back with every knob applied, never unpickle.

Layout (a diffusers folder plus autoeff's own files):

    optimized/
      model_index.json, unet/ (or transformer/), scheduler/, ...   diffusers layout, safetensors weights
      autoeff.json     recipe + schema version + measured figures + device + baseline + library versions
      manifest.json    sha256 of every other file, checked on load
      report.html, pareto.png, samples.png                          (written by autoeff.report)

What is stored and what is re-applied on load is each knob's own declaration (`Knob.stored_in_weights`):
a knob stored in the weights (pruning) is saved physically smaller, with the plan that rebuilds the changed
architecture from the unchanged config (`autoeff.json` `weights`: knob -> plan); every other knob is a
deterministic function of the stored weights and the recipe, so `load` re-applies it. The scheduler folder
holds the base scheduler's config; the recipe's solver/schedule replace it.

`autoeff.json` schema versions: 1 stored the pruning plan as `prune_plan`; 2 stores `weights`. Both load.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from safetensors.torch import load_file

from autoeff.env import environment
from autoeff.log import quiet_third_party
from autoeff.manifest import (
    AUTOEFF_JSON,
    MANIFEST_JSON,
    PICKLE_SUFFIXES,
    ExportError,
    export_containing,
    sha256,
    unchanged_since,
    verify,
    why_not_replaceable,
)
from autoeff.measurement import Measurement
from autoeff.model_card import model_card, plain_diffusers
from autoeff.models.folder_checks import FolderError, check_component_config
from autoeff.models.handle import FAMILIES, ModelHandle, family_denoiser, is_family
from autoeff.models.kinds import NOISES, step_keywords
from autoeff.models.registry import ModelNotAvailableError, class_count, family_of, load_pipeline_folder
from autoeff.recipe import SCHEMA_VERSION, Recipe
from autoeff.search_spaces import compile as compile_knob
from autoeff.search_spaces._pinned import plain_scheduler
from autoeff.search_spaces.base import ConfigError, SpaceContext
from autoeff.search_spaces.registry import get_knob, ordered
from autoeff.search_spaces.solver import build_scheduler
from autoeff.search_spaces.space import apply_knobs, build_pipeline
from autoeff.settings import SearchSettings
from autoeff.storage import unwritable

EXPORT_SCHEMA_VERSION = 2
_AUTOEFF_FIELDS = {"export_schema_version", "recipe", "model", "context", "weights", "prune_plan", "measured",
                   "baseline", "device", "versions", "created", "base_scheduler"}
README = "README.md"


class PlainDiffusersWarning(UserWarning):
    """Plain diffusers (`DiffusionPipeline.from_pretrained`) does not reproduce this export's recipe: some knobs are
    applied by `autoeff.load` only (the export's README.md says which)."""


_CONTEXT_TYPES: dict[str, type] = {"family": str, "denoiser": str, "num_train_timesteps": int, "default_steps": int,
                                   "min_steps": int, "max_steps": int, "block_groups": list, "device": str,
                                   "options": dict, "noise": str}
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _model_section(handle: ModelHandle) -> dict[str, Any]:
    return {"spec": handle.spec, "family": handle.family, "resolution": handle.resolution,
            "prompts": handle.prompts, "num_classes": handle.num_classes, "default_steps": handle.default_steps,
            "identity": handle.identity, "guidance_scale": handle.guidance_scale,
            "pipeline_class": type(handle.pipeline).__name__, "extra": dict(handle.extra),
            "dtype": str(handle.denoiser.dtype).replace("torch.", ""), "labels": handle.labels,
            "negative_prompt": handle.negative_prompt}


def _context_section(context: SpaceContext) -> dict[str, Any]:
    return {"family": context.family, "denoiser": context.denoiser,
            "num_train_timesteps": context.num_train_timesteps, "default_steps": context.default_steps,
            "min_steps": context.min_steps, "max_steps": context.max_steps,
            "block_groups": list(context.block_groups), "options": context.options, "noise": context.noise,
            "features": context.features, "flow_shift": context.flow_shift}


def export_pipeline(
    handle: ModelHandle,
    recipe: Recipe,
    context: SpaceContext,
    path: str | Path,
    *,
    measured: dict[str, Any] | None = None,
    baseline: dict[str, Any] | None = None,
    device: str | None = None,
    extra_writer: Callable[[Path], None] | None = None,
    overwrite: bool = True,
    weights: Any = None,
) -> Path:
    """Write the frozen pipeline for `recipe` to `path` atomically (temp folder, then rename).

    `weights` (recipes with a knob stored in the weights only) is the denoiser stored instead of applying those
    knobs to the base afresh: e.g. the pruned weights after `prune.recover`.

    `extra_writer(tmp_folder)` may add report files before the manifest is computed. An interrupted export
    leaves only a hidden temp folder, never a folder that loads as valid.
    """
    path = Path(path).resolve()
    if path.exists() and not path.is_dir():
        raise ExportError(f"{path} is a file; give a folder to export to")
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; choose another folder or allow overwriting")
    if path.exists() and any(path.iterdir()):
        why = why_not_replaceable(path)
        if why is not None:  # never delete what autoeff did not write
            raise ExportError(f"{path} {why}; refusing to overwrite it: choose a new or empty folder")
    inside = export_containing(path.parent)
    if inside is not None:
        raise ExportError(f"{path} is inside the export {inside}; export to a folder outside it")
    why = unwritable(path.parent)
    if why is not None:
        raise ExportError(f"cannot write the export to {path}: {why}")
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        _write(handle, recipe, context, tmp, measured=measured, baseline=baseline, device=device,
               extra_writer=extra_writer, weights=weights)
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # a read-only folder, a full disk, a name too long: one line, not a traceback
            raise ExportError(f"cannot write the export to {path}: {e.strerror or e}") from None
        raise
    return path


def _write(handle: ModelHandle, recipe: Recipe, context: SpaceContext, tmp: Path, *, measured: dict[str, Any] | None,
           baseline: dict[str, Any] | None, device: str | None, extra_writer: Callable[[Path], None] | None,
           weights: Any) -> None:
    """Everything of the export into the (new) folder `tmp`: weights, autoeff.json, extras, manifest."""
    # the stored weights: the base with the knobs stored in the weights (or the given denoiser)
    stored = {k: c for k, c in recipe.knobs.items() if get_knob(k).stored_in_weights is not None}
    weights_recipe = Recipe(model=recipe.model, knobs=stored)
    try:
        pipe = build_pipeline(handle, weights_recipe, context, weights=weights)
    except (ValueError, ConfigError) as e:
        raise ExportError(str(e)) from None
    denoiser = getattr(pipe, context.denoiser)
    plans = {k.name: k.stored_in_weights.plan(denoiser) for k in ordered(stored) if k.stored_in_weights is not None}
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    # `scheduler/` holds the chosen solver, so plain diffusers runs it; the base scheduler, which `autoeff.load`
    # applies the recipe to, goes to autoeff.json
    base_scheduler = plain_scheduler(handle.pipeline.scheduler)
    chosen, plain_note = _solver_for_plain_diffusers(handle, recipe)
    if chosen is not None:
        shutil.rmtree(tmp / "scheduler", ignore_errors=True)
        chosen.save_config(str(tmp / "scheduler"))
        index = json.loads((tmp / "model_index.json").read_text())
        index["scheduler"] = ["diffusers", type(chosen).__name__]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    info = {
        "export_schema_version": EXPORT_SCHEMA_VERSION,
        "recipe": recipe.to_dict(),
        "model": _model_section(handle),
        "context": _context_section(context),
        "weights": plans,
        "measured": measured or {},
        "baseline": baseline or {},
        "device": device or context.device,
        "versions": environment()["versions"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "base_scheduler": {"class": type(base_scheduler).__name__, "solver_saved": chosen is not None,
                           "config": {k: v for k, v in dict(base_scheduler.config).items() if not k.startswith("_")}},
    }
    # no sort_keys: the order of a quantize mapping matters (the first matching `re:` pattern wins)
    (tmp / AUTOEFF_JSON).write_text(json.dumps(info, indent=2, default=str) + "\n")
    (tmp / README).write_text(model_card(info, recipe, context, type(chosen).__name__ if chosen is not None else None,
                                         plain_note))
    if extra_writer is not None:
        extra_writer(tmp)
    for p in tmp.rglob("*"):
        if p.is_file() and p.suffix in PICKLE_SUFFIXES:
            p.unlink()
    _readable_by_all(tmp)
    files = {str(p.relative_to(tmp)): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MANIFEST_JSON).write_text(json.dumps({"sha256": files}, indent=2, sort_keys=True) + "\n")


def _solver_for_plain_diffusers(handle: ModelHandle, recipe: Recipe) -> tuple[Any, str | None]:
    """The recipe's solver as a stock diffusers scheduler plain diffusers can run in this pipeline, or `(None, why
    not)`; `(None, None)` when the recipe has no solver."""
    config = recipe.knobs.get("solver")
    if config is None:
        return None, None
    try:
        chosen = plain_scheduler(build_scheduler(config, handle.pipeline.scheduler))
    except (ConfigError, ValueError) as e:
        return None, str(e)
    pipe_class = type(handle.pipeline)
    if getattr(diffusers, pipe_class.__name__, None) is not pipe_class:
        return None, f"{pipe_class.__name__} is not a diffusers pipeline class"
    params = inspect.signature(type(chosen).step).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        missing = sorted(k for k in step_keywords(pipe_class) if k not in params)
        if missing:
            return None, (f"{pipe_class.__name__} passes {', '.join(missing)} to the scheduler's step, which "
                          f"{type(chosen).__name__} does not take")
    takes = set(inspect.signature(type(chosen).set_timesteps).parameters)
    try:
        source = inspect.getsource(pipe_class.__call__)
    except (OSError, TypeError):
        source = ""
    # a keyword the pipeline passes on (`sigmas=sigmas`) after filling it in itself (`sigmas = ...`): Flux makes its
    # own sigmas and mu, which FlowMatchHeun's set_timesteps does not take (SD3 passes the user's sigmas, None)
    unsupported = sorted(k for k in ("sigmas", "mu") if f"{k}={k}" in source and k not in takes
                         and re.search(rf"^\s*{k} = ", source, re.M))
    if unsupported:
        return None, (f"{pipe_class.__name__} passes {' and '.join(unsupported)} to the scheduler, which "
                      f"{type(chosen).__name__} does not take")
    kwargs = {**handle.pipeline.components, "scheduler": chosen}
    if "requires_safety_checker" in handle.pipeline.config:
        kwargs["requires_safety_checker"] = handle.pipeline.config.requires_safety_checker
    kept = type(pipe_class(**kwargs).scheduler)
    if kept is not type(chosen):
        return None, f"{pipe_class.__name__} replaces any scheduler with a {kept.__name__} when it is built"
    return chosen, None


def _base_scheduler(entry: Any, where: str) -> Any:
    """The base scheduler an export recorded (`base_scheduler`): a diffusers scheduler class by name and a config."""
    if not (isinstance(entry, dict) and isinstance(entry.get("class"), str) and isinstance(entry.get("config"), dict)):
        raise ExportError(f"{where}: base_scheduler must be an object with a class name and a config")
    cls = getattr(diffusers, entry["class"], None) if entry["class"].isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ExportError(f"{where}: base_scheduler.class {entry['class']!r} is not a diffusers scheduler"[:300])
    try:
        return cast(Any, cls).from_config(entry["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise ExportError(f"{where}: base_scheduler.config does not build a {entry['class']} ({e})"[:300]) from None


def _readable_by_all(folder: Path) -> None:
    """Files 0644 and folders 0755, less the umask: some writers (safetensors) create files 0600, and an export
    is meant to be shared (loaded by another user, served from a read-only volume)."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o755 & ~mask)
    for p in folder.rglob("*"):
        p.chmod((0o755 if p.is_dir() else 0o644) & ~mask)


def verify_folder(path: str | Path) -> dict[str, Any]:
    """Check the manifest (every file present, hashes equal, nothing unlisted that could be loaded) and
    return the parsed, validated `autoeff.json`."""
    return _verified(Path(path))[0]


def _verified(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    if re.fullmatch(r"\..+\.(?:tmp|old)-\d+", path.resolve().name):
        raise ExportError(f"{path} is the temporary folder of an interrupted export, not an export; delete it "
                          "and export again")
    if not path.is_dir():
        raise ExportError(f"{path} is not a folder")
    listed = verify(path)
    try:
        text = (path / AUTOEFF_JSON).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ExportError(f"{path / AUTOEFF_JSON} is not UTF-8 text") from None
    return parse_autoeff_json(text, where=str(path / AUTOEFF_JSON)), listed


# Ranges of the values a folder gives autoeff (a value out of range is refused before it is used: a crafted
# resolution of 200000 would otherwise ask for a 160 GB tensor). Each entry: field -> (check, what it must be).
_Check = tuple[Any, str]


def _int_in(lo: int, hi: int) -> _Check:
    return (lambda v: _is_int(v) and lo <= v <= hi, f"an integer in [{lo}, {hi}]")


def _optional(check: _Check) -> _Check:
    return (lambda v: v is None or check[0](v), check[1] + " or null")


def _number_in(lo: float, hi: float) -> _Check:
    return (lambda v: isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi,
            f"a number in [{lo:g}, {hi:g}]")


_TEXT: _Check = (lambda v: isinstance(v, str) and len(v) <= 4096, "a string")
_SCALAR = (str, int, float, bool, type(None))
# Call arguments autoeff passes itself (models/generate.py): an export's `model.extra` may not set them.
_RESERVED_CALL_ARGS = frozenset({"prompt", "class_labels", "latents", "generator", "output_type", "height", "width",
                                 "num_inference_steps", "return_dict", "callback_on_step_end",
                                 "callback_on_step_end_tensor_inputs"})
_MODEL_FIELDS: dict[str, _Check] = {
    "spec": _TEXT, "family": _TEXT, "identity": _TEXT, "pipeline_class": _TEXT,
    "resolution": _int_in(8, 8192), "default_steps": _int_in(1, 10_000),
    "num_classes": _optional(_int_in(1, 1_000_000)), "guidance_scale": _optional(_number_in(0, 100)),
    "prompts": _optional((lambda v: isinstance(v, list) and 0 < len(v) <= 100_000
                          and all(isinstance(p, str) and len(p) <= 10_000 for p in v), "a list of strings")),
    "extra": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and k.isidentifier()
                                                     and k not in _RESERVED_CALL_ARGS and isinstance(x, _SCALAR)
                                                     for k, x in v.items()),
              "an object of call arguments (not ones autoeff sets itself) to plain values"),
    "dtype": (lambda v: v in ("float32", "float16", "bfloat16"), "float32, float16 or bfloat16"),
    "labels": _optional((lambda v: isinstance(v, list) and 0 < len(v) <= 100_000
                         and all(_is_int(x) and 0 <= x <= 1_000_000 for x in v), "a list of class numbers")),
    "negative_prompt": _optional((lambda v: isinstance(v, str) and len(v) <= 10_000, "a string")),
}
_CONTEXT_FIELDS: dict[str, _Check] = {
    "num_train_timesteps": _int_in(1, 100_000), "default_steps": _int_in(1, 10_000),
    "min_steps": _int_in(1, 100_000), "max_steps": _int_in(1, 100_000), "device": _TEXT,
    "block_groups": (lambda v: isinstance(v, list) and all(isinstance(g, str) for g in v), "a list of strings"),
    "options": (lambda v: isinstance(v, dict) and all(isinstance(o, dict) for o in v.values()),
                "an object of knob -> options"),
    "noise": (lambda v: v in NOISES, f"one of {', '.join(NOISES)}"),
    "features": _optional((lambda v: isinstance(v, list) and all(isinstance(f, str) and len(f) <= 100 for f in v),
                           "a list of strings")),
    "flow_shift": _optional(_number_in(0.001, 1000)),
}
_MEASURED_FIELDS: dict[str, _Check] = {
    "trial": _optional(_int_in(0, 10**9)), "batch_size": _int_in(1, 4096), "seed": _int_in(0, 2**32 - 1),
    "metric": _optional(_TEXT), "proxy": _optional((lambda v: isinstance(v, dict), "an object")),
    "final": _optional((lambda v: isinstance(v, dict), "an object")),
    "recovery": _optional((lambda v: isinstance(v, dict), "an object")),
}
_MAX_DEPTH = 32


def _check_fields(where: str, section: str, values: Any, checks: dict[str, _Check]) -> None:
    if not isinstance(values, dict):
        raise ExportError(f"{where}: {section} must be an object")
    for key, (ok, what) in checks.items():
        if key in values and not ok(values[key]):
            raise ExportError(f"{where}: {section}.{key} must be {what}, not {values[key]!r}"[:300])


def _depth(value: Any) -> int:
    """How deeply JSON containers nest in `value` (iteratively: a crafted document must not overflow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d <= _MAX_DEPTH:
                stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_autoeff_json(text: str, where: str = AUTOEFF_JSON) -> dict[str, Any]:
    """Strictly parse an `autoeff.json`: known fields only, each of its type and in range, a schema version
    this autoeff reads."""
    try:
        info = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExportError(f"{where} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer too long to convert, nesting too deep
        raise ExportError(f"{where} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(info, dict):
        raise ExportError(f"{where} must hold a JSON object")
    if _depth(info) > _MAX_DEPTH:
        raise ExportError(f"{where} nests its values more than {_MAX_DEPTH} levels deep; it was not written by "
                          "autoeff")
    unknown = set(info) - _AUTOEFF_FIELDS
    if unknown:
        raise ExportError(f"{where} has unknown field(s) {sorted(unknown)}; it was written by another tool "
                          "or a newer autoeff")
    version = info.get("export_schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportError(f"{where}: export_schema_version must be a positive integer")
    if version > EXPORT_SCHEMA_VERSION:
        raise ExportError(f"{where} has export_schema_version {version}, newer than this autoeff reads "
                          f"({EXPORT_SCHEMA_VERSION}); upgrade autoeff")
    try:
        info["recipe"] = Recipe.from_dict(info.get("recipe"))
    except ConfigError as e:
        raise ExportError(f"{where}: {e}") from None
    model = info.get("model")
    if not isinstance(model, dict) or not is_family(model.get("family")):
        raise ExportError(f"{where}: model.family must be one of {sorted(FAMILIES)} or a kind label such as "
                          "flow-text-latent-transformer")
    if not isinstance(model.get("spec"), str) or not _is_int(model.get("resolution")):
        raise ExportError(f"{where}: model.spec must be a string and model.resolution an integer")
    _check_fields(where, "model", model, _MODEL_FIELDS)
    ctx = info.get("context")
    if not isinstance(ctx, dict):
        raise ExportError(f"{where}: context must be an object")
    for key, value in ctx.items():
        kind = _CONTEXT_TYPES.get(key)
        if kind is not None and not (_is_int(value) if kind is int else isinstance(value, kind)):
            raise ExportError(f"{where}: context.{key} must be {_TYPE_NAMES[kind]}, not {value!r}"[:300])
    _check_fields(where, "context", ctx, _CONTEXT_FIELDS)
    _check_fields(where, "measured", info.get("measured") or {}, _MEASURED_FIELDS)
    for which in ("proxy", "final"):
        claimed = (info.get("measured") or {}).get(which)
        if claimed is not None:
            try:
                Measurement.from_dict(claimed)
            except (ValueError, TypeError) as e:
                raise ExportError(f"{where}: measured.{which} is not a measurement ({e})"[:300]) from None
    try:
        info["context"] = SpaceContext(**ctx)
    except TypeError as e:
        raise ExportError(f"{where}: context: {e}") from None
    if info["context"].denoiser != family_denoiser(model["family"]):
        raise ExportError(f"{where}: context.denoiser {info['context'].denoiser!r} is not the "
                          f"{model['family']} denoiser ({family_denoiser(model['family'])!r})")
    for key in ("measured", "baseline", "versions"):
        if not isinstance(info.get(key, {}), dict):
            raise ExportError(f"{where}: {key} must be an object")
    if not isinstance(info.get("device", ""), str):
        raise ExportError(f"{where}: device must be a string")
    if info["recipe"].schema_version > SCHEMA_VERSION:
        raise ExportError(f"{where}: recipe schema is newer than this autoeff reads")
    info["weights"] = _weights_section(info, where)
    info.pop("prune_plan", None)
    return info


def _weights_section(info: dict[str, Any], where: str) -> dict[str, Any]:
    """knob -> plan of the knobs stored in the weights (schema 1 kept the pruning plan as `prune_plan`)."""
    plans = info.get("weights")
    if plans is None:
        legacy = info.get("prune_plan")
        plans = {} if legacy is None else {"prune": legacy}
    if not isinstance(plans, dict):
        raise ExportError(f"{where}: weights must be an object of knob -> plan")
    recipe: Recipe = info["recipe"]
    for name, plan in plans.items():
        if name not in recipe.knobs:
            raise ExportError(f"{where}: weights has a plan for {name!r}, which the recipe does not use")
        if get_knob(name).stored_in_weights is None:
            raise ExportError(f"{where}: the {name} knob is not stored in the weights, yet weights has its plan")
        if not isinstance(plan, dict):
            raise ExportError(f"{where}: weights.{name} must be an object")
    return plans


def load(path: str | Path, device: str = "cpu", dtype: str | None = None, compile: bool = True) -> Any:
    """Load an exported folder and return a ready pipeline with every knob of its recipe applied.

    Refuses a folder whose files do not match the manifest or whose schema version is unknown; reads only
    JSON and safetensors. The returned pipeline carries the export's figures in `pipe.autoeff_info`.
    `compile=False` leaves compiling out (the compile knob, and torchao's compiled blocks): the same pipeline,
    eager, without the compile time before its first call.
    """
    path = Path(path)
    info, listed = _verified(path)
    model = info["model"]
    context: SpaceContext = info["context"]
    context.device = device
    recipe: Recipe = info["recipe"]
    overrides: dict[str, Any] = {}
    if info["weights"]:
        overrides[context.denoiser] = _load_stored_denoiser(path / context.denoiser, info["weights"])
    if dtype is None and isinstance(model.get("dtype"), str):
        dtype = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(model["dtype"])
        if dtype != "fp32" and not str(device).startswith("cuda"):
            dtype = None  # half precision was searched on a GPU; on the CPU the registry's default applies
    with quiet_third_party():  # diffusers' loading bars and warnings are noise to a user of autoeff.load
        pipe = load_pipeline_folder(path, device=device, dtype=dtype, components=overrides)
    if info.get("base_scheduler") is not None:  # `scheduler/` holds the chosen solver; the recipe applies to the base
        pipe.register_modules(scheduler=_base_scheduler(info["base_scheduler"], str(path / AUTOEFF_JSON)))
    _check_consistent(path, model, pipe, context)
    if overrides:  # diffusers does not cast components passed in; match the other components' dtype
        den = getattr(pipe, context.denoiser)
        other = next((m for n, m in pipe.components.items()
                      if n != context.denoiser and hasattr(m, "dtype") and hasattr(m, "parameters")), None)
        target = other.dtype if other is not None else (den.dtype)
        setattr(pipe, context.denoiser, den.to(device=device, dtype=target))
    # The handle describes how to call the exported pipeline. Its identity is the export's own, so cached
    # reference images of the *base* model are never computed from (or confused with) the optimized one.
    handle = ModelHandle(spec=model["spec"], pipeline=pipe, family=model["family"],
                         resolution=model["resolution"], prompts=model.get("prompts"),
                         num_classes=model.get("num_classes"), default_steps=model.get("default_steps", 50),
                         identity="export-" + sha256(path / MANIFEST_JSON)[:16],
                         guidance_scale=model.get("guidance_scale"), extra=dict(model.get("extra") or {}),
                         labels=model.get("labels"), negative_prompt=model.get("negative_prompt"))
    with contextlib.nullcontext() if compile else compile_knob.disabled():
        pipe = apply_knobs(pipe, recipe, context, which="runtime")
    changed = unchanged_since(path, listed)
    if changed is not None:  # swapped between the check and the load: what was loaded is not what was checked
        raise ExportError(f"{path}/{changed} changed while the export was being loaded; load it again once "
                          "nothing writes to the folder")
    pipe.set_progress_bar_config(disable=True)
    handle.pipeline = pipe
    _warn_plain_diffusers(path, info, recipe, context)
    pipe.autoeff_info = {k: v for k, v in info.items() if k not in ("recipe", "context")}
    pipe.autoeff_info["recipe"] = recipe.to_dict()
    pipe.autoeff_handle = handle
    return pipe


def _warn_plain_diffusers(path: Path, info: dict[str, Any], recipe: Recipe, context: SpaceContext) -> None:
    """Say, once per load, what plain diffusers would not reproduce of this export's recipe."""
    solver_saved = (info.get("base_scheduler") or {}).get("solver_saved") is True
    _gets, only, loadable = plain_diffusers(recipe, context, solver_saved)
    pipeline_class = str((info.get("model") or {}).get("pipeline_class") or "")
    if pipeline_class and not hasattr(diffusers, pipeline_class):
        warnings.warn(PlainDiffusersWarning(
            f"{path}: plain diffusers cannot load this export ({pipeline_class} is autoeff's own pipeline class); "
            "load it with autoeff.load"), stacklevel=3)
    elif not loadable:
        warnings.warn(PlainDiffusersWarning(
            f"{path}: plain diffusers cannot load this export ({', '.join(only)} need autoeff.load); see its "
            f"{README}"), stacklevel=3)
    elif only:
        warnings.warn(PlainDiffusersWarning(
            f"{path}: the recipe's {', '.join(only)} {'is' if len(only) == 1 else 'are'} applied by autoeff.load only; "
            f"DiffusionPipeline.from_pretrained on this folder does not reproduce the measured figures (see its "
            f"{README})"), stacklevel=3)


def _check_consistent(path: Path, model: dict[str, Any], pipe: Any, context: SpaceContext) -> None:
    """What `autoeff.json` says about the model must be true of the pipeline the folder holds (a folder edited
    with its manifest updated passes the hash check, not this one)."""
    where = path / AUTOEFF_JSON
    try:
        family = family_of(pipe)
    except ModelNotAvailableError as e:
        raise ExportError(f"{where}: {e}") from None
    if family != model["family"]:
        raise ExportError(f"{where}: model.family {model['family']!r} is not the family of the pipeline in the "
                          f"folder ({family!r})")
    if model.get("pipeline_class") not in (None, type(pipe).__name__):
        raise ExportError(f"{where}: model.pipeline_class {model['pipeline_class']!r} is not the pipeline in the "
                          f"folder ({type(pipe).__name__})")
    classes = class_count(pipe, context.denoiser)
    if model.get("num_classes") is not None and classes is not None and model["num_classes"] > classes:
        raise ExportError(f"{where}: model.num_classes {model['num_classes']} is more than the {classes} classes "
                          "the denoiser knows")


def _load_stored_denoiser(folder: Path, plans: dict[str, Any]) -> Any:
    """Build the unchanged architecture from its config, let each knob stored in the weights rebuild its change
    (in application order), then load the stored weights into it."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{folder} has no config.json")
    try:
        cfg = check_component_config(cfg_path)
    except FolderError as e:
        raise ExportError(str(e)) from None
    cls_name = cfg.get("_class_name")
    cls = getattr(diffusers, str(cls_name), None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffusers.ModelMixin):
        raise ExportError(f"{cfg_path}: unsupported denoiser class {cls_name!r}")
    model: Any = cast(Any, cls).from_config(cfg)  # a diffusers ModelMixin (untyped for mypy)
    for knob in ordered(plans):
        assert knob.stored_in_weights is not None  # checked by parse_autoeff_json
        try:
            model = knob.stored_in_weights.restore(model, plans[knob.name])
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
            raise ExportError(f"{folder}: its {knob.name} plan cannot be applied ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:300]}); re-export it") from None
    weights = sorted(folder.glob("*.safetensors"))
    if len(weights) != 1:
        raise ExportError(f"{folder} must hold exactly one .safetensors file, found {len(weights)}")
    state = load_file(str(weights[0]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{folder}: stored weights do not match the stored plans: {str(e)[:300]}") from None
    return model.eval()


def claim(number: int, proxy: Measurement, final: Measurement | None, settings: SearchSettings,
          recovery: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `measured` section of `autoeff.json`: what the export claims, and how it was measured."""
    out: dict[str, Any] = {"trial": number, "proxy": proxy.to_dict(), "final": None if final is None else
                           final.to_dict(), "batch_size": settings.batch_size, "seed": settings.seed,
                           "metric": settings.metric}
    if recovery is not None:
        out["recovery"] = recovery
    return out
