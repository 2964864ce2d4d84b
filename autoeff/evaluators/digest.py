"""The digest of a folder's files, in a module of its own (no torch): the settings schema keys a study's
`--reference` folder by it, and the reference features are cached under it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def folder_digest(folder: str | Path) -> str:
    """sha256 (16 hex digits) of a folder's files, names and bytes, in name order (subfolders are not read)."""
    h = hashlib.sha256()
    path = Path(folder)
    if path.is_dir():
        for p in sorted(path.iterdir()):
            if p.is_file():
                h.update(p.name.encode() + b"\0")
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


__all__ = ["folder_digest"]
