"""The quality metrics' names, in a module of their own: the settings schema and the CLI check a `--metric`
against them without importing the metrics (and torch). `quality.make_quality` builds them.

`HIGHER_IS_BETTER` is each metric's direction: the study stores the raw metric value (FID, not -FID) with
this direction (`autoeff.search.directions`)."""

from __future__ import annotations

METRICS: tuple[str, ...] = ("fid", "kid", "fidelity", "clip", "class_acc")
HIGHER_IS_BETTER: dict[str, bool] = {"fid": False, "kid": False, "fidelity": True, "clip": True, "class_acc": True}
