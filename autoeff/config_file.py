"""Run configuration files: the `autoeff optimize` options as a TOML or YAML file, read and written.

The keys are the command line's flags without their dashes (`budget`, `trials`, `proxy-samples`, `batch`,
`no-warm-start`, `out`, ...), plus `model` and an `options` table of knob options (`[options.cache]
max_interval = 3`). Every run writes the configuration it ran as `OUT/run.toml`, so

    autoeff optimize --config autoeff-out/run.toml               # replays it (and resumes its study)
    autoeff optimize --config run.toml --trials 60                # flags given on the command line win

The file is read into the settings schema's field names (`autoeff.settings`), and checked there like the flags
are; `autoeff.api.optimize_from_config` takes the same file. An unknown key is refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with tomli, the package tomllib came from
    import tomli as tomllib

from autoeff.errors import SettingsError
from autoeff.settings import Flag, RunOptions, SearchSettings

CONFIG_NAME = "run.toml"
_SUFFIXES = (".toml", ".yaml", ".yml")


def _flags() -> dict[str, tuple[str, Flag]]:
    """config key (flag without dashes) -> (field name, flag), for both settings dataclasses."""
    out = {}
    for cls in (SearchSettings, RunOptions):
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag")
            if flag is not None:
                out[flag.name.lstrip("-")] = (f.name, flag)
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    """The file's values under the settings' field names (`proxy-samples` -> `proxy_samples`)."""
    path = Path(path)
    if path.suffix.lower() not in _SUFFIXES:
        raise SettingsError(f"--config {str(path)!r} must be a .toml or .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"--config {str(path)!r} cannot be read ({type(e).__name__})") from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        first = " ".join(str(e).split())[:200]
        raise SettingsError(f"--config {str(path)!r} is not valid {path.suffix.lstrip('.').upper()}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"--config {str(path)!r} must hold a table of option = value")
    flags = _flags()
    known = sorted({*flags, "model", "options"})
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("model", "options"):
            values[key] = value
        elif key in flags:
            name, flag = flags[key]
            values[name] = (not value) if flag.kind == "off-flag" and isinstance(value, bool) else value
        else:
            raise SettingsError(f"--config {str(path)!r}: unknown key {key!r}; known: {', '.join(known)}")
    return values


def _toml_value(value: Any) -> str | None:
    """TOML for a plain value (None: leave the key out; TOML has no null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, list | tuple):
        items = [_toml_value(v) for v in value]
        return "[" + ", ".join(i for i in items if i is not None) + "]"
    if isinstance(value, dict):
        pairs = [(k, _toml_value(v)) for k, v in value.items()]
        return "{" + ", ".join(f"{_key(str(k))} = {v}" for k, v in pairs if v is not None) + "}"
    raise SettingsError(f"cannot write {value!r} to a TOML file")


def _key(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() else json.dumps(name)


def write_config(path: Path, settings: SearchSettings, run: RunOptions) -> Path:
    """The configuration a run ran, as TOML that `read_config` (and `--config`) reads back."""
    lines = ["# What `autoeff optimize` ran; replay it with `autoeff optimize --config " + path.name + "`.",
             f"model = {_toml_value(settings.model)}"]
    for cls, obj in ((SearchSettings, settings), (RunOptions, run)):
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag")
            if flag is None or f.name == "model":
                continue
            value = getattr(obj, f.name)
            if f.name == "budget":
                value = settings.budget.text
            elif isinstance(value, Path):
                value = value.resolve()  # replayable from any working folder
            elif flag.kind == "off-flag":
                value = not value
            text = _toml_value(value)
            if text is not None:
                lines.append(f"{_key(flag.name.lstrip('-'))} = {text}")
    for knob, options in settings.options.items():
        lines.append(f"\n[options.{_key(knob)}]")
        for key, value in options.items():
            text = _toml_value(value)
            if text is not None:
                lines.append(f"{_key(key)} = {text}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


__all__ = ["CONFIG_NAME", "read_config", "write_config"]
