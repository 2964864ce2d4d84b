"""How busy the machine was while something was timed: the share of all CPUs that *other* processes used.

Read from Linux's `/proc/stat` (the machine's busy CPU time, in clock ticks) minus this process's own CPU time
(`time.process_time`, all its threads), over the wall time of the measurement, divided by the CPU count. 0 means
nothing else ran; 0.5 on a 2-core machine means one core was busy with something else the whole time, and CPU
latencies measured then can be far from the quiet machine's (FACTS.md: 35x with OpenMP spin-waiting). None
where `/proc/stat` does not exist (not Linux). The 1-minute load average is recorded beside it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

# Above this share of the CPUs used by other processes, a latency is reported as measured on a busy machine.
BUSY_SHARE = 0.25


@dataclass(frozen=True)
class CpuSample:
    """A reading of the machine's busy CPU time and this process's own, at one wall-clock moment."""

    busy_s: float
    own_s: float
    wall_s: float


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


def sample() -> CpuSample | None:
    busy = _busy_seconds()
    if busy is None:
        return None
    return CpuSample(busy_s=busy, own_s=time.process_time(), wall_s=time.monotonic())


def other_cpu_share(before: CpuSample | None, after: CpuSample | None) -> float | None:
    """Other processes' share of all CPUs between two samples (0..1), or None when it cannot be read."""
    if before is None or after is None:
        return None
    wall = after.wall_s - before.wall_s
    cpus = os.cpu_count() or 1
    if wall <= 0.05:  # too short for clock-tick resolution to mean anything
        return None
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return min(1.0, max(0.0, others / (wall * cpus)))


def load_average() -> float | None:
    """The 1-minute load average, or None where the system has none."""
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return None


__all__ = ["BUSY_SHARE", "CpuSample", "sample", "other_cpu_share", "load_average"]
