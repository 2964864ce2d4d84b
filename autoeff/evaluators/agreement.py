"""Rank agreement between a cheap proxy metric and the final metric (Kendall's tau, via scipy).

The search scores candidates with a small-sample proxy; finalists are re-scored with a large sample. A proxy
is only worth using if it orders candidates like the final metric does: measure it, do not assume it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy.stats import kendalltau

__all__ = ["kendall_tau"]


def kendall_tau(proxy_scores: Sequence[float], final_scores: Sequence[float]) -> float:
    """Kendall's tau-b between two score lists for the same candidates, in the same order.

    Both must be oriented the same way (e.g. both `score()` values, larger is better). Returns NaN when a
    list is constant (no ranking to agree with).
    """
    if len(proxy_scores) != len(final_scores):
        raise ValueError(f"{len(proxy_scores)} proxy scores but {len(final_scores)} final scores")
    if len(proxy_scores) < 2:
        raise ValueError("rank agreement needs at least 2 candidates")
    if any(not math.isfinite(float(v)) for v in (*proxy_scores, *final_scores)):
        raise ValueError("scores must be finite; drop failed candidates before measuring agreement")
    return float(kendalltau(list(proxy_scores), list(final_scores)).statistic)
