"""A pipeline folder's JSON checked before diffusers reads it: `model_index.json` and every component's config.

diffusers passes a config's values straight to the model constructors, so a folder with a wrong type (a class
name that is a list), a negative size or an absurd one (`sample_size: 200000`, a multi-gigabyte tensor) fails
deep inside torch, or allocates until the machine swaps. Here every value is checked first, and the first
problem is named in one line (`FolderError`); what passes is loaded by diffusers as usual.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

_MAX_DEPTH = 16
_MAX_INT = 10**7
# Keys that count or size something: never negative, never huge.
_SIZE_KEY = re.compile(r"(^num_|_size$|_sizes$|channels|_dim$|_dims$|layers|heads|timesteps|classes|_length$)")
# Keys whose value directly sizes a dense tensor (positional embeddings, latents): tighter bounds.
_BOUNDS: dict[str, tuple[int, int]] = {"sample_size": (1, 4096), "num_train_timesteps": (1, 100_000),
                                       "in_channels": (1, 4096), "out_channels": (1, 4096),
                                       "patch_size": (1, 64), "max_position_embeddings": (1, 1_000_000),
                                       "vocab_size": (1, 10_000_000)}


class FolderError(ValueError):
    """A pipeline folder's JSON is malformed or out of range; the message names the file, the key and the fix."""


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FolderError(f"{path} cannot be read as JSON ({type(e).__name__}); re-save the pipeline with "
                          "`pipe.save_pretrained(folder)`") from None
    if not isinstance(data, dict):
        raise FolderError(f"{path} must hold a JSON object")
    return data


def _check_value(path: Path, key: str, value: Any, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise FolderError(f"{path}: {key} nests more than {_MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_value(path, f"{key}.{k}", v, depth + 1)
        return
    if isinstance(value, list):
        for v in value:
            _check_value(path, key, v, depth + 1)
        return
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, str) and (name in _BOUNDS or _SIZE_KEY.search(name)):
        raise FolderError(f"{path}: {name} is {value[:60]!r}; a count or size must be a number")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, float) and math.isnan(value):
        raise FolderError(f"{path}: {key} is NaN, not a number")
    if isinstance(value, int | float):
        if name in _BOUNDS:
            lo, hi = _BOUNDS[name]
            if not (isinstance(value, int) and lo <= value <= hi):
                raise FolderError(f"{path}: {name} is {value!r}; it must be an integer in [{lo}, {hi}]")
        elif _SIZE_KEY.search(name) and not 0 <= value <= _MAX_INT:
            raise FolderError(f"{path}: {name} is {value!r}; a count or size must be in [0, {_MAX_INT}]")
        elif math.isfinite(value) and abs(value) > 1e12:  # infinities are sentinels (lambda_min_clipped: -inf)
            raise FolderError(f"{path}: {name} is {value!r}, out of any sensible range")


def check_component_config(path: Path) -> dict[str, Any]:
    """A component's `config.json` (or `scheduler_config.json`), every value checked; returns it."""
    config = _read(path)
    cls = config.get("_class_name")
    if cls is not None and not isinstance(cls, str):
        raise FolderError(f"{path}: _class_name must be a class name (a string), not {cls!r}"[:300])
    for key, value in config.items():
        _check_value(path, key, value)
    return config


def check_pipeline_folder(folder: Path) -> dict[str, Any]:
    """`model_index.json` (class name, components) and every component config of `folder`; returns the index."""
    index_path = folder / "model_index.json"
    index = _read(index_path)
    cls = index.get("_class_name")
    if not isinstance(cls, str) or not cls:
        raise FolderError(f"{index_path}: _class_name must be the pipeline's class name (a string), not {cls!r}"
                          [:300])
    for name, entry in index.items():
        if name.startswith("_"):
            continue
        if not isinstance(entry, list):  # a pipeline setting (e.g. requires_safety_checker), not a component
            _check_value(index_path, name, entry)
            continue
        if len(entry) != 2 or not all(e is None or isinstance(e, str) for e in entry):
            raise FolderError(f"{index_path}: component {name!r} must be [library, class], not {entry!r}"[:300])
        if not name.isidentifier():
            raise FolderError(f"{index_path}: component name {name!r} is not a name")
        sub = folder / name
        for config_name in ("config.json", "scheduler_config.json"):
            if (sub / config_name).is_file():
                check_component_config(sub / config_name)
    return index


__all__ = ["FolderError", "check_pipeline_folder", "check_component_config"]
