"""The quality metrics' names, in a module of their own: the settings schema and the CLI check a `--metric`
against them without importing the metrics (and torch). `quality.make_quality` builds them."""

from __future__ import annotations

METRICS: tuple[str, ...] = ("fid", "kid", "fidelity", "clip", "class_acc")
