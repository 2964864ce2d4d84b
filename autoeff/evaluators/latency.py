"""Honest end-to-end latency of one pipeline call, on the device it will run on.

The timer follows nanoGPT's `bench.py`: warm-up calls, then timed calls with `torch.cuda.synchronize()`
on both sides of each call on a GPU. Instead of a fixed count it repeats until the median is known well
enough: the half-width of a distribution-free 95% confidence interval of the median (order statistics of
a Binomial(n, 1/2), as in any nonparametrics text, e.g. Conover, "Practical Nonparametric Statistics"),
relative to the median, must fall below `rel_spread`, or a cap on repeats (or seconds) stops it.

CPU timing and OpenMP: with two threads and another busy core, OpenMP spin-waiting made forward passes ~35x
slower (FACTS.md). `OMP_WAIT_POLICY=PASSIVE` removes that, but OpenMP reads it once, when torch loads its
runtime: the process that measures must set it at startup, before `import torch` (the autoeff CLI does;
`make` exports it). `cpu_thread_setup()` reports the value found in the environment; it cannot tell
whether it was set early enough, so set it in the shell or first thing in `main`.

A machine whose speed drifts (a shared VM: the same 50-step call took 412-772 ms within one hour here, and one
window of 30 calls 458-1008 ms; FACTS.md) makes milliseconds measured minutes apart incomparable. With a
`yardstick` (a short fixed call, e.g. the base pipeline at a few steps) each timed call is followed by one
yardstick call, and the number kept is the ratio of the two, scaled by the yardstick's reference time: the
call's latency in the conditions the reference was timed in. On this VM the ratio of a 3-step candidate to a
5-step yardstick varied 3.4 % (coefficient of variation over 69 windows of 5 pairs, 4 minutes) where either
call alone varied 15 %. Pairing a measurement with a concurrently measured reference is the usual remedy for
drift in benchmarking (e.g. Kalibera & Jones, "Rigorous Benchmarking in Reasonable Time", ISMM 2013, on
randomised, interleaved runs); no timing library in our dependencies does it for a pipeline call, hence this.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from scipy.stats import binom

from autoeff.evaluators import load
from autoeff.evaluators.load import BUSY_SHARE
from autoeff.evaluators.lock import device_lock
from autoeff.records import JsonRecord

__all__ = [
    "LatencyResult",
    "cpu_thread_setup",
    "device_description",
    "is_faster",
    "measure_latency",
    "median_ci_halfwidth",
    "noise_floor",
]


@dataclass
class LatencyResult(JsonRecord):
    """One latency measurement: seconds per call of the measured function.

    Attributes:
        median_s: median seconds per call (the number reported and compared).
        p10_s / p90_s: 10th / 90th percentiles; iqr_s: interquartile range.
        rel_spread: half-width of the 95% confidence interval of the median, relative to the median.
        repeats / warmup: timed and untimed calls.
        device: what ran it (CPU model or GPU name); threads: torch intra-op threads (CPU).
        omp_wait_policy: `OMP_WAIT_POLICY` in the environment (`unset` when absent).
        stop_reason: `stable`, `max_repeats` or `max_seconds`.
        samples_s: every timed call, in order.
        simulated: True when the number is not a real device timing (e.g. a fake-quant backend).
        other_cpu: the share of all CPUs other processes used during the timed calls (0..1; `evaluators.load`),
            None where it cannot be read; load_avg: the 1-minute load average at the end.
        yardstick_ref_s: with a yardstick, its reference time; every number above is then the call's time
            relative to the yardstick call after it, times this (the call in the reference's conditions).
        raw_samples_s / yardstick_samples_s: with a yardstick, the timed calls and the yardstick calls as
            measured (milliseconds of the moment); drift: the yardstick's median now over its reference.
        yardstick_steps: the yardstick's step count (the base pipeline at that many steps).
    """

    median_s: float
    p10_s: float
    p90_s: float
    iqr_s: float
    rel_spread: float
    repeats: int
    warmup: int
    device: str
    threads: int
    omp_wait_policy: str
    stop_reason: str = "stable"
    samples_s: list[float] = field(default_factory=list)
    simulated: bool = False
    other_cpu: float | None = None
    load_avg: float | None = None
    yardstick_ref_s: float | None = None
    yardstick_steps: int | None = None
    raw_samples_s: list[float] = field(default_factory=list)
    yardstick_samples_s: list[float] = field(default_factory=list)
    version: int = 1

    @property
    def drift(self) -> float | None:
        """The yardstick's median in this measurement over its reference time (1.3: the machine ran 30 % slower
        than when the reference was timed); None without a yardstick."""
        if self.yardstick_ref_s is None or not self.yardstick_samples_s:
            return None
        return statistics.median(self.yardstick_samples_s) / self.yardstick_ref_s

    @property
    def raw_median_s(self) -> float:
        """The median of the calls as measured (without the yardstick's correction)."""
        return statistics.median(self.raw_samples_s) if self.raw_samples_s else self.median_s

    @property
    def busy(self) -> bool:
        """Other processes used more than `load.BUSY_SHARE` of the CPUs while this was timed."""
        return self.other_cpu is not None and self.other_cpu > BUSY_SHARE


def device_description(device: str) -> str:
    """The GPU's name (`torch.cuda.get_device_name`) or the CPU model from /proc/cpuinfo."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model} ({os.cpu_count()} logical CPUs)" if dev.type == "cpu" else f"{model} ({dev.type})"


def cpu_thread_setup(threads: int | None) -> dict[str, Any]:
    """Set torch's intra-op thread count (when `threads` is given) and report what is in effect.

    Returns `{"threads", "interop_threads", "omp_wait_policy", "cpu_count"}`. `OMP_WAIT_POLICY` is only
    read here: it takes effect only if set before torch was imported (see the module docstring).
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}; pass None to keep torch's setting")
        torch.set_num_threads(int(threads))
    return {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "cpu_count": os.cpu_count(),
    }


def median_ci_halfwidth(samples: list[float], confidence: float = 0.95) -> float:
    """Half-width of the distribution-free confidence interval of the median, relative to the median.

    The interval is `[x_(l), x_(n+1-l)]` with `l` the `(1-confidence)/2` quantile of Binomial(n, 1/2)
    (at least 1). Infinite for fewer than 2 samples.
    """
    n = len(samples)
    if n < 2:
        return math.inf
    xs = sorted(samples)
    lo = max(1, int(binom.ppf((1 - confidence) / 2, n, 0.5)))
    hi = n + 1 - lo
    med = statistics.median(xs)
    if med <= 0:
        return math.inf
    return (xs[hi - 1] - xs[lo - 1]) / 2 / med


def _quantile(xs: list[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(xs, dtype=torch.float64), q))


def measure_latency(
    fn: Callable[[], Any],
    device: str,
    *,
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 30,
    rel_spread: float = 0.05,
    max_seconds: float | None = None,
    lock: bool = True,
    threads: int | None = None,
    timer: Callable[[], float] = time.perf_counter,
    yardstick: Callable[[], Any] | None = None,
    yardstick_ref_s: float | None = None,
    yardstick_steps: int | None = None,
) -> LatencyResult:
    """Time `fn()` (one end-to-end pipeline call, as a user runs it) on `device`.

    `warmup` untimed calls, then timed calls until at least `min_repeats` are done and the median's
    relative CI half-width is <= `rel_spread`, or `max_repeats` calls, or `max_seconds` of timed calls
    (whichever comes first; at least one timed call). On CUDA the device is synchronized before and after
    each call. On CPU, `threads` (if given) fixes torch's thread count for the measurement and is restored
    afterwards. With `lock`, the per-device inter-process lock (`autoeff.evaluators.lock`) is held for the
    whole measurement, warm-up included. `timer` is injectable for tests.

    With a `yardstick` (see the module docstring) every timed call is followed by a timed `yardstick()` call
    (warmed up as many times), and each sample is `call / yardstick * yardstick_ref_s`; the stopping rule and
    every statistic apply to those samples. Without `yardstick_ref_s` the reference is this measurement's own
    yardstick median (how the reference itself is measured: its samples are then about its raw times).
    """
    if warmup < 0 or min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(f"need warmup >= 0 and 1 <= min_repeats <= max_repeats; got warmup={warmup}, "
                         f"min_repeats={min_repeats}, max_repeats={max_repeats}")
    if rel_spread <= 0:
        raise ValueError(f"rel_spread must be > 0 (e.g. 0.05 for +-5%), got {rel_spread}")
    dev = torch.device(device)
    is_cuda = dev.type == "cuda"
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(dev)) if is_cuda else (lambda: None)
    old_threads = torch.get_num_threads()
    setup = cpu_thread_setup(threads if not is_cuda else None)
    if yardstick_ref_s is not None and not yardstick_ref_s > 0:
        raise ValueError(f"yardstick_ref_s must be a positive time, got {yardstick_ref_s}")
    samples: list[float] = []  # raw times, or ratios to the yardstick (scaled at the end)
    raw: list[float] = []
    yard: list[float] = []
    reason = "max_repeats"

    def timed(call: Callable[[], Any]) -> float:
        sync()
        t0 = timer()
        call()
        sync()
        return timer() - t0

    try:
        with device_lock(str(device)) if lock else nullcontext():
            for _ in range(warmup):
                fn()
                if yardstick is not None:
                    yardstick()
                sync()
            started = timer()
            before = load.sample()
            while len(samples) < max_repeats:
                took = timed(fn)
                if yardstick is None:
                    samples.append(took)
                else:
                    raw.append(took)
                    yard.append(timed(yardstick))
                    samples.append(took / yard[-1])
                if len(samples) >= min_repeats and median_ci_halfwidth(samples) <= rel_spread:
                    reason = "stable"
                    break
                if max_seconds is not None and timer() - started >= max_seconds:
                    reason = "max_seconds"
                    break
            other_cpu = load.other_cpu_share(before, load.sample())
    finally:
        if threads is not None and not is_cuda:
            torch.set_num_threads(old_threads)
    ref: float | None = None
    if yardstick is not None:
        ref = statistics.median(yard) if yardstick_ref_s is None else yardstick_ref_s
        samples = [r * ref for r in samples]
    return LatencyResult(
        median_s=statistics.median(samples),
        p10_s=_quantile(samples, 0.1),
        p90_s=_quantile(samples, 0.9),
        iqr_s=_quantile(samples, 0.75) - _quantile(samples, 0.25),
        rel_spread=median_ci_halfwidth(samples),
        repeats=len(samples),
        warmup=warmup,
        device=device_description(str(device)),
        threads=setup["threads"],
        omp_wait_policy=setup["omp_wait_policy"],
        stop_reason=reason,
        samples_s=samples,
        other_cpu=other_cpu,
        load_avg=load.load_average(),
        yardstick_ref_s=ref,
        yardstick_steps=None if yardstick is None else yardstick_steps,
        raw_samples_s=raw,
        yardstick_samples_s=yard,
    )


def noise_floor(results: list[LatencyResult]) -> float:
    """The relative noise of the baseline: the larger of the within-run CI half-widths and the run-to-run
    half-range of the medians (relative to their median). Pass several baseline runs to include drift."""
    if not results:
        raise ValueError("noise_floor needs at least one baseline LatencyResult")
    within = max(r.rel_spread for r in results)
    medians = [r.median_s for r in results]
    between = (max(medians) - min(medians)) / 2 / statistics.median(medians) if len(medians) > 1 else 0.0
    return float(max(within, between))


def is_faster(a: LatencyResult, b: LatencyResult, floor: float) -> bool:
    """True when `a` is faster than `b` by more than noise: their median CIs do not overlap and `a`'s
    median is below `b`'s by more than the relative noise floor `floor`."""
    if floor < 0:
        raise ValueError(f"floor is a relative spread and must be >= 0, got {floor}")
    separated = a.median_s * (1 + a.rel_spread) < b.median_s * (1 - b.rel_spread)
    return bool(separated and a.median_s < b.median_s * (1 - floor))
