"""What every knob shares: the search context, and strict JSON round-trips of dataclass configs.

A knob is a module in this package with:

    NAME: str                                    # "solver", "schedule", ...
    Config: type                                 # a @dataclass with a `version: int` field
    def suggest(trial, context: SpaceContext) -> Config
    def apply(pipe, config: Config, context: SpaceContext) -> pipe   # returns a new pipeline object

`apply` never mutates modules of the pipeline it receives: it copies what it changes (the search builds
every candidate from the same base pipeline). Serialization follows torchao's `{"_type", "_version",
"_data"}` shape; types are resolved only from the registry of knobs, never imported by name.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A knob config (or a recipe) is invalid; the message names the field and how to fix it."""


@dataclass
class SpaceContext:
    """What a knob may know about the model when it suggests or applies a config.

    Attributes:
        family: model family (`digits`, `digits-dit`, `sd15`, `sdxl`, `pixart`).
        denoiser: `unet` or `transformer` (the pipeline attribute the knobs act on).
        num_train_timesteps: length of the training schedule (usually 1000).
        default_steps: the baseline's step count.
        min_steps / max_steps: the range the schedule knob searches.
        block_groups: names of the denoiser's block groups (for per-group bit-widths and pruning ratios).
        device: `cpu` or `cuda[:i]`.
        options: per-knob restrictions from the user (e.g. {"solver": {"names": ["dpmpp", "unipc"]}}).
    """

    family: str
    denoiser: str
    num_train_timesteps: int = 1000
    default_steps: int = 50
    min_steps: int = 4
    max_steps: int = 50
    block_groups: list[str] = field(default_factory=list)
    device: str = "cpu"
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


def config_to_dict(config: Any) -> dict[str, Any]:
    """`{"_type", "_version", "_data"}` for a dataclass config (lists stay lists, tuples become lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"{config!r} is not a dataclass config")
    data = dataclasses.asdict(config)
    version = data.pop("version", None)
    return {"_type": type(config).__name__, "_version": version, "_data": data}


def config_from_dict(cls: type, payload: dict[str, Any]) -> Any:
    """Rebuild a config of class `cls` from `config_to_dict` output, refusing anything unexpected."""
    if not isinstance(payload, dict) or set(payload) != {"_type", "_version", "_data"}:
        raise ConfigError(f"a {cls.__name__} entry must be an object with exactly _type, _version, _data")
    if payload["_type"] != cls.__name__:
        raise ConfigError(f"expected _type {cls.__name__!r}, got {payload['_type']!r}")
    known_version = next((f.default for f in dataclasses.fields(cls) if f.name == "version"), None)
    if payload["_version"] != known_version:
        raise ConfigError(
            f"{cls.__name__} version {payload['_version']!r} is not the version this autoeff reads "
            f"({known_version}); upgrade autoeff or re-run the search")
    data = payload["_data"]
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}._data must be an object")
    names = {f.name for f in dataclasses.fields(cls) if f.name != "version"}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known: {sorted(names)}")
    try:
        return cls(**copy.deepcopy(data))
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None
