"""An export folder's `manifest.json`: the sha256 of every file autoeff wrote there, read strictly.

Three questions are answered here, each with one line when the answer is no: is this folder, byte for byte,
what autoeff wrote (`verify`)? May autoeff replace this folder, i.e. did it write every file in it
(`why_not_replaceable`)? Which export, if any, does a path lie inside (`export_containing`)?
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

AUTOEFF_JSON = "autoeff.json"
MANIFEST_JSON = "manifest.json"
# Files that could execute code when loaded; an exported folder never contains them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_PATH = 4096  # PATH_MAX on Linux
_MAX_NAME = 255  # NAME_MAX on Linux
_MAX_FILES = 10_000


class ExportError(ValueError):
    """An exported folder cannot be written or loaded (its manifest, its files or its autoeff.json are not what
    autoeff wrote); the message names the folder and the problem."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_entry(man: Path, rel: object, digest: object) -> None:
    if not isinstance(rel, str) or not rel or "\x00" in rel or len(rel) > _MAX_PATH:
        raise ExportError(f"{man} lists {str(rel)[:80]!r}, which is not a file name")
    parts = rel.split("/")
    if any(len(p) > _MAX_NAME for p in parts):
        raise ExportError(f"{man} lists a name longer than {_MAX_NAME} characters ({rel[:60]!r}...)")
    if rel.startswith("/") or ".." in parts or "" in parts or "." in parts:
        raise ExportError(f"{man} lists {rel!r}, which escapes the folder {man.parent}")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ExportError(f"{man} gives {rel!r} a digest that is not a sha256 hex string")


def read_manifest(folder: Path) -> dict[str, str]:
    """`{relative path: sha256}` from `folder/manifest.json`, every entry checked (a plain relative name)."""
    man = folder / MANIFEST_JSON
    if not man.is_file():
        raise ExportError(f"{folder} has no {MANIFEST_JSON}; it is not a complete autoeff export")
    try:
        listed = json.loads(man.read_bytes().decode("utf-8"))["sha256"]
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError):
        raise ExportError(f"{man} is not a valid manifest") from None
    if not isinstance(listed, dict) or len(listed) > _MAX_FILES:
        raise ExportError(f"{man} is not a valid manifest")
    for rel, digest in listed.items():
        _check_entry(man, rel, digest)
    return listed


def _files(folder: Path) -> list[str]:
    root = folder.resolve()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def verify(folder: Path) -> dict[str, str]:
    """Every listed file present (inside the folder, not through a link) with its sha256; nothing unlisted that
    could be loaded; no pickle-capable file. Returns the manifest."""
    listed = read_manifest(folder)
    root = folder.resolve()
    for rel, digest in listed.items():
        p = root / rel
        if p.resolve() != p or root not in p.parents:  # a link could point anywhere
            raise ExportError(f"{folder / MANIFEST_JSON} lists {rel!r}, which escapes the folder {folder}")
        if not p.is_file():
            raise ExportError(f"{folder} is missing {rel} (listed in the manifest); re-export it")
        if sha256(p) != digest:
            raise ExportError(f"{folder}/{rel} does not match its sha256 in the manifest; the folder was "
                                "modified or truncated: re-export it")
    for rel in _files(folder):
        if rel == MANIFEST_JSON:
            continue
        if Path(rel).suffix in PICKLE_SUFFIXES:
            raise ExportError(f"{folder} contains {rel}, a pickle-capable file; autoeff never loads those")
        if rel not in listed and Path(rel).suffix in (".json", ".safetensors"):
            raise ExportError(f"{folder}/{rel} is not in the manifest; the folder was modified: re-export it")
    if AUTOEFF_JSON not in listed:
        raise ExportError(f"{folder} has no {AUTOEFF_JSON} in its manifest")
    return listed


def unchanged_since(folder: Path, listed: dict[str, str]) -> str | None:
    """The first listed file whose content is no longer its manifest digest (checked again after loading, so a
    file swapped between the check and the load is noticed), or None."""
    root = folder.resolve()
    return next((rel for rel, digest in listed.items() if sha256(root / rel) != digest), None)


def why_not_replaceable(folder: Path) -> str | None:
    """Why autoeff may not replace the existing, non-empty `folder` (None when it wrote every file in it)."""
    if not (folder / MANIFEST_JSON).is_file() or not (folder / AUTOEFF_JSON).is_file():
        return "exists, holds files and is not an autoeff export"
    try:
        listed = read_manifest(folder)
    except ExportError:
        return "holds a manifest.json autoeff cannot read"
    extra = [rel for rel in _files(folder) if rel != MANIFEST_JSON and rel not in listed]
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        return f"holds files autoeff did not write ({shown})"
    root = folder.resolve()
    changed = [rel for rel, digest in listed.items() if not (root / rel).is_file() or sha256(root / rel) != digest]
    if changed:
        return f"holds {changed[0]}, changed since autoeff wrote it"
    return None


def export_containing(path: Path) -> Path | None:
    """The export folder (with `manifest.json` and `autoeff.json`) that `path` is, or lies inside."""
    for folder in (path.resolve(), *path.resolve().parents):
        if (folder / MANIFEST_JSON).is_file() and (folder / AUTOEFF_JSON).is_file():
            return folder
    return None


__all__ = ["AUTOEFF_JSON", "MANIFEST_JSON", "PICKLE_SUFFIXES", "ExportError", "sha256", "read_manifest",
           "verify", "unchanged_since", "why_not_replaceable", "export_containing"]
