"""Parsing user input for the latency budget: `200ms`, `0.2s`, `10%` (of the baseline's latency)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|%)\s*$")
MAX_SECONDS = 24 * 3600.0
MIN_SECONDS = 1e-4  # 0.1 ms: no diffusion pipeline call is faster; below it a budget is a typo (1e-9s, 0.2ms/1000)
MIN_FRACTION = 1e-3  # 0.1 % of the baseline


class BudgetError(ValueError):
    """A budget string that cannot be used; the message says how to write it."""


@dataclass(frozen=True)
class Budget:
    """Either an absolute latency (`seconds`) or a fraction of the baseline's latency (`fraction`)."""

    text: str
    seconds: float | None = None
    fraction: float | None = None

    def same_as(self, other: Budget) -> bool:
        """The same budget however written (`200ms` and `0.2s`; `10%` and `10.0%`)."""
        if self.seconds is not None and other.seconds is not None:
            return math.isclose(self.seconds, other.seconds, rel_tol=1e-9)
        if self.fraction is not None and other.fraction is not None:
            return math.isclose(self.fraction, other.fraction, rel_tol=1e-9)
        return False

    def resolve(self, baseline_seconds: float) -> float:
        """The budget in seconds, given the baseline's measured latency."""
        if self.seconds is not None:
            return self.seconds
        assert self.fraction is not None
        return self.fraction * baseline_seconds


def parse_budget(text: str) -> Budget:
    """`200ms` -> 0.2 s; `0.2s` -> 0.2 s; `10%` -> a tenth of the baseline. Anything else raises BudgetError."""
    raw = str(text)
    m = _PATTERN.match(raw)
    if not m:
        if re.match(r"^\s*-", raw):
            raise BudgetError(f"--budget {raw!r} is negative; write a positive latency such as 200ms or 0.2s")
        if re.match(r"^\s*[0-9.eE+-]+\s*$", raw):
            raise BudgetError(f"--budget {raw!r} has no unit; write {raw.strip()}ms or {raw.strip()}s "
                              "(or a percentage of the baseline such as 10%)")
        raise BudgetError(f"--budget {raw!r} is not a latency; write e.g. 200ms, 0.2s or 10% (of the baseline)")
    value, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(value):
        raise BudgetError(f"--budget {raw!r} is not a finite number; write e.g. 200ms, 0.2s or 10%")
    if value <= 0:
        raise BudgetError(f"--budget {raw!r} must be greater than zero; write e.g. 200ms")
    if unit == "%":
        if value > 1000:
            raise BudgetError(f"--budget {raw!r} is more than 10x the baseline; write at most 1000%")
        if value / 100.0 < MIN_FRACTION:
            raise BudgetError(f"--budget {raw!r} is less than 0.1% of the baseline; write e.g. 10%")
        return Budget(text=raw.strip(), fraction=value / 100.0)
    seconds = value / 1000.0 if unit == "ms" else value
    if seconds > MAX_SECONDS:
        raise BudgetError(f"--budget {raw!r} is more than a day per call; write a realistic latency such as 2s")
    if seconds < MIN_SECONDS:
        raise BudgetError(f"--budget {raw!r} is less than 0.1 ms per call, faster than any diffusion pipeline; "
                          "write e.g. 200ms")
    return Budget(text=raw.strip(), seconds=seconds)


def format_seconds(seconds: float) -> str:
    """`0.0123` -> `12.3 ms`; `2.5` -> `2.50 s`."""
    if seconds < 1.0:
        return f"{seconds * 1000:.3g} ms" if seconds * 1000 < 100 else f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"
