"""Latency timer: repeat logic (injected clock), real timing, JSON round-trip, noise floor, comparisons."""

from __future__ import annotations

import itertools
import math
import statistics
import time

import pytest
import torch

from autoeff.evaluators.latency import (
    LatencyResult,
    cpu_thread_setup,
    is_faster,
    measure_latency,
    median_ci_halfwidth,
    noise_floor,
)


class FakeClock:
    """A clock that only moves when the fake workload 'runs' for a scripted duration."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = iter(durations)
        self.calls = 0

    def timer(self) -> float:
        return self.now

    def fn(self) -> None:
        self.calls += 1
        self.now += next(self.durations)


@pytest.fixture(autouse=True)
def _lock_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOEFF_LOCK_DIR", str(tmp_path / "locks"))


def test_stable_function_stops_at_min_repeats():
    clock = FakeClock(itertools.repeat(0.100))
    res = measure_latency(clock.fn, "cpu", warmup=2, min_repeats=5, max_repeats=30, timer=clock.timer)
    assert res.repeats == 5 and res.stop_reason == "stable"
    assert clock.calls == 2 + 5  # warm-up calls are made but not timed
    assert res.median_s == pytest.approx(0.1) and res.rel_spread == pytest.approx(0.0)


def test_noisy_function_hits_the_cap():
    clock = FakeClock(itertools.cycle([0.10, 0.20, 0.15, 0.30]))
    res = measure_latency(clock.fn, "cpu", warmup=1, min_repeats=5, max_repeats=12, rel_spread=0.05,
                          timer=clock.timer)
    assert res.repeats == 12 and res.stop_reason == "max_repeats"
    assert res.rel_spread > 0.05
    assert res.p10_s < res.median_s < res.p90_s


def test_settles_after_an_early_outlier():
    # one slow call, then steady: more than min_repeats needed, far fewer than the cap
    clock = FakeClock(itertools.chain([0.5, 0.5], itertools.repeat(0.1)))
    res = measure_latency(clock.fn, "cpu", warmup=0, min_repeats=5, max_repeats=30, timer=clock.timer)
    assert res.stop_reason == "stable" and 5 < res.repeats < 30
    assert res.median_s == pytest.approx(0.1)


def test_max_seconds_stops_early():
    clock = FakeClock(itertools.cycle([1.0, 2.0]))
    res = measure_latency(clock.fn, "cpu", warmup=0, min_repeats=5, max_repeats=30, max_seconds=4.0,
                          timer=clock.timer)
    assert res.stop_reason == "max_seconds" and res.repeats == 3


def test_real_sleep_timing():
    res = measure_latency(lambda: time.sleep(0.01), "cpu", warmup=1, min_repeats=3, max_repeats=15,
                          rel_spread=0.5)
    assert 0.009 < res.median_s < 0.1
    assert res.warmup == 1 and 3 <= res.repeats <= 15 and len(res.samples_s) == res.repeats


def test_threads_are_fixed_during_timing_and_restored():
    before = torch.get_num_threads()
    seen = []
    measure_latency(lambda: seen.append(torch.get_num_threads()), "cpu", warmup=0, min_repeats=1,
                    max_repeats=2, rel_spread=10.0, threads=1)
    assert set(seen) == {1} and torch.get_num_threads() == before


def test_json_round_trip_and_unknown_fields():
    clock = FakeClock(itertools.cycle([0.1, 0.11]))
    res = measure_latency(clock.fn, "cpu", warmup=0, min_repeats=3, max_repeats=6, timer=clock.timer)
    again = LatencyResult.from_json(res.to_json())
    assert again == res and again.simulated is False
    with pytest.raises(ValueError, match="no field"):
        LatencyResult.from_dict({**res.to_dict(), "bogus": 1})


def test_device_and_thread_report():
    info = cpu_thread_setup(None)
    assert info["threads"] == torch.get_num_threads() and "omp_wait_policy" in info
    clock = FakeClock(itertools.repeat(0.1))
    res = measure_latency(clock.fn, "cpu", warmup=0, timer=clock.timer)
    assert "logical CPUs" in res.device and res.omp_wait_policy == info["omp_wait_policy"]
    with pytest.raises(ValueError, match="threads"):
        cpu_thread_setup(0)


def _result(median: float, rel: float) -> LatencyResult:
    return LatencyResult(median_s=median, p10_s=median, p90_s=median, iqr_s=0.0, rel_spread=rel, repeats=5,
                         warmup=1, device="test", threads=1, omp_wait_policy="PASSIVE")


def test_noise_floor_and_is_faster():
    runs = [_result(1.00, 0.01), _result(1.04, 0.02), _result(0.98, 0.01)]
    floor = noise_floor(runs)
    assert floor == pytest.approx(0.03)  # half-range of medians (0.06/2) / median 1.00 beats 0.02
    base = runs[0]
    assert is_faster(_result(0.80, 0.01), base, floor)
    assert not is_faster(_result(0.98, 0.001), base, floor)  # within the noise floor
    assert not is_faster(_result(0.90, 0.10), base, floor)  # confidence intervals overlap
    assert not is_faster(base, _result(0.80, 0.01), floor)
    with pytest.raises(ValueError):
        noise_floor([])


def test_median_ci_halfwidth():
    assert math.isinf(median_ci_halfwidth([1.0]))
    assert median_ci_halfwidth([1.0, 1.0, 1.0, 1.0, 1.0]) == 0.0
    assert median_ci_halfwidth([0.9, 1.0, 1.0, 1.0, 1.1]) == pytest.approx(0.1)  # n=5: CI is [min, max]


def test_timing_happens_under_the_device_lock(monkeypatch):
    import contextlib

    import autoeff.evaluators.latency as latency

    events = []

    @contextlib.contextmanager
    def fake_lock(device):
        events.append(("acquire", device))
        yield
        events.append(("release", device))

    monkeypatch.setattr(latency, "device_lock", fake_lock)
    clock = FakeClock(itertools.repeat(0.1))

    def fn():
        events.append("call")
        clock.fn()

    measure_latency(fn, "cpu", warmup=1, min_repeats=2, max_repeats=2, timer=clock.timer)
    assert events == [("acquire", "cpu"), "call", "call", "call", ("release", "cpu")]
    events.clear()
    measure_latency(fn, "cpu", warmup=0, min_repeats=1, max_repeats=1, lock=False, timer=clock.timer)
    assert events == ["call"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_repeats"):
        measure_latency(lambda: None, "cpu", min_repeats=5, max_repeats=2)
    with pytest.raises(ValueError, match="rel_spread"):
        measure_latency(lambda: None, "cpu", rel_spread=0)


class DriftingMachine:
    """A machine whose speed changes from call to call (`speeds`, cycled): a call of `cost` seconds of work takes
    `cost * speed`; the candidate and the yardstick run on the same machine."""

    def __init__(self, speeds):
        self.now = 0.0
        self.speeds = itertools.cycle(speeds)
        self.speed = 1.0

    def timer(self) -> float:
        return self.now

    def work(self, cost: float):
        def call() -> None:
            self.now += cost * self.speed
        return call

    def drift(self, fn):
        def call() -> None:  # the machine's speed moves before each candidate call, and holds for its yardstick
            self.speed = next(self.speeds)
            fn()
        return call


def test_a_yardstick_cancels_the_machines_drift():
    """A 30 ms candidate timed on a machine whose speed swings 1x-2x: raw medians land anywhere in that range, the
    yardstick-relative latency is the candidate's cost in the reference's conditions, exactly; the raw times and
    the yardstick's are kept."""
    speeds = [1.0, 1.9, 1.2, 2.0, 1.5, 1.1, 1.7]
    machine = DriftingMachine(speeds)
    cand, yard = machine.drift(machine.work(0.030)), machine.work(0.050)
    raw = measure_latency(cand, "cpu", warmup=0, min_repeats=7, max_repeats=7, lock=False, timer=machine.timer)
    assert raw.rel_spread > 0.2 and raw.median_s == pytest.approx(0.030 * 1.5)
    # the yardstick's reference time was taken when the machine ran at speed 1.0: 50 ms
    res = measure_latency(cand, "cpu", warmup=0, min_repeats=5, max_repeats=30, lock=False, timer=machine.timer,
                          yardstick=yard, yardstick_ref_s=0.050, yardstick_steps=5)
    assert res.median_s == pytest.approx(0.030) and res.rel_spread == pytest.approx(0.0)
    assert res.stop_reason == "stable" and res.repeats == 5
    assert res.yardstick_ref_s == 0.050 and res.yardstick_steps == 5
    assert len(res.raw_samples_s) == len(res.yardstick_samples_s) == 5
    assert res.raw_median_s > 0.030 and res.drift == pytest.approx(res.raw_median_s / 0.030)
    # without a reference, the yardstick's own median is the reference: the numbers stay near raw times
    own = measure_latency(cand, "cpu", warmup=0, min_repeats=5, max_repeats=5, lock=False, timer=machine.timer,
                          yardstick=yard)
    assert own.yardstick_ref_s == pytest.approx(statistics.median(own.yardstick_samples_s))
    assert own.median_s == pytest.approx(0.030 * own.yardstick_ref_s / 0.050)
    assert LatencyResult.from_json(res.to_json()) == res
    with pytest.raises(ValueError, match="yardstick_ref_s"):
        measure_latency(cand, "cpu", lock=False, yardstick=yard, yardstick_ref_s=0.0)
