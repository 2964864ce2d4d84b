"""How a candidate is measured: the evaluators of `autoeff/evaluators/`, wired to one model and one
`EvaluationSpec` (metric, device, seed, batch, sample counts).

This module knows the sample sets (common random numbers: every candidate sees the same seeds, noise, labels
or prompts), the latency call and the quality metric; it never knows which knobs built the pipeline it is
given. It returns the typed records of `autoeff.measurement`.

Compiled pipelines (`torch.compile`, whoever compiled them) are measured the same way, with their compile
time apart: before the timed calls, `compile_warmup` calls the pipeline until one call compiles nothing and
records what the compiling calls cost (`CompileRecord`); the timed calls then run under
`torch.compiler.set_stance("fail_on_recompile")`, so a candidate that would compile inside them is warmed up
again and timed again once (`CompileRecord.retimed`), and fails with that reason the second time.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.utils import counters

from autoeff.evaluators.latency import LatencyResult, cpu_thread_setup, measure_latency
from autoeff.evaluators.lock import device_lock
from autoeff.evaluators.quality import METRICS, QualityResult, make_quality, score
from autoeff.evaluators.size import model_size_mb
from autoeff.evaluators.validity import check_images
from autoeff.measurement import Baseline, CompileRecord, Measurement
from autoeff.models.generate import SampleSpec, call_pipeline, default_spec
from autoeff.models.handle import ModelHandle
from autoeff.settings import SearchSettings

# The three sample sets of a search never overlap: the search's proxy, the finalists' larger sample, latency.
PROXY_SEED, FINAL_SEED, LATENCY_SEED = 0, 1, 2
QUALITY_BATCH = 128
# Warm-up calls that may each compile something before a candidate counts as one that never stops compiling.
MAX_COMPILE_CALLS = 8
# Times the timed calls are started again after something compiled inside them, before the candidate fails.
RETIMES = 1
# A compiled pipeline's images may differ from its eager images by at most this mean absolute difference (images
# in [0, 1]): compiling changes rounding, not results; more is a miscompilation, and the candidate fails.
COMPILED_IMAGE_TOLERANCE = 0.02
_RECOMPILE_MESSAGE = "Detected recompile"  # torch's error under set_stance("fail_on_recompile")


def sample_seed(seed: int, which: int) -> int:
    """The first seed of sample set `which` (`PROXY_SEED`, `FINAL_SEED`, `LATENCY_SEED`) of search seed `seed`."""
    return seed * 10 + which


class CompileRefused(RuntimeError):
    """`Evaluator.timed(..., may_compile=False)` met a pipeline that would compile."""


def compiled_frames() -> int:
    """Code frames `torch.compile` has compiled in this process so far (dynamo's `frames.total` counter)."""
    return int(counters["frames"]["total"])


def uses_compile(pipe: Any) -> bool:
    """Whether some module of `pipe` runs `torch.compile`d code (a compiled module or a compiled region)."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for m in component.modules():
                if isinstance(m, OptimizedModule) or getattr(m, "_compiled_call_impl", None) is not None:
                    return True
    return False


def compile_warmup(call: Callable[[], Any], device: str, *, max_calls: int = MAX_COMPILE_CALLS,
                   deadline: float | None = None) -> tuple[CompileRecord | None, Any]:
    """Call `call()` until a call compiles nothing; returns what compiling cost (`None` when the first call
    compiled nothing) and the last call's output. Holds the device lock: compiling is heavy work that
    another process's timing must not share.

    The compile time is the wall time of the calls that compiled, less as many runs of the call that compiled
    nothing: the seconds spent compiling, never counted in a latency.
    """
    dev = torch.device(device)
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    start = compiled_frames()
    compiling_s, calls = 0.0, 0
    with device_lock(str(device)):
        while True:
            before = compiled_frames()
            t0 = time.perf_counter()
            out = call()
            sync()
            took = time.perf_counter() - t0
            calls += 1
            if compiled_frames() == before:
                break
            compiling_s += took
            if calls >= max_calls:
                raise RuntimeError(f"the pipeline still compiled on warm-up call {calls} of {max_calls}: its graph "
                                   "keeps changing (a shape or a Python value torch.compile guards on), so it "
                                   "cannot be timed")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("candidate ran past the per-trial time limit while compiling")
    frames = compiled_frames() - start
    if frames == 0:
        return None, out
    return CompileRecord(seconds=max(0.0, compiling_s - (calls - 1) * took), warmup_calls=calls,
                         frames=frames), out


def _merge(total: CompileRecord | None, more: CompileRecord | None) -> CompileRecord | None:
    if total is None or more is None:
        return total or more
    return CompileRecord(seconds=total.seconds + more.seconds, warmup_calls=total.warmup_calls + more.warmup_calls,
                         frames=total.frames + more.frames, retimed=total.retimed)


@dataclass(frozen=True)
class EvaluationSpec:
    """What every measurement of a search shares: the metric, the device, the seed of the sample sets, the
    images per timed call, the sample counts of the proxy and the finalists, and the user's folder of real
    images FID/KID compare with (`--reference`; `None`: the metric's own reference)."""

    metric: str
    device: str = "cpu"
    seed: int = 0
    batch_size: int = 1
    proxy_samples: int = 128
    final_samples: int = 1000
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"--metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.proxy_samples < 2 or self.final_samples < 2 or self.batch_size < 1:
            raise ValueError("an evaluation needs at least 2 images per sample set and 1 per call")

    @classmethod
    def of(cls, settings: SearchSettings) -> EvaluationSpec:
        """The spec of resolved search settings."""
        if settings.metric is None:
            raise ValueError("the settings are not resolved for a model (metric is None)")
        return cls(metric=settings.metric, device=settings.device, seed=settings.seed,
                   batch_size=settings.batch_size, proxy_samples=settings.proxy_n, final_samples=settings.final_n,
                   reference=settings.reference)


def yardstick_steps(fraction: float, default_steps: int) -> int:
    """The yardstick's step count for a budget of `fraction` of the baseline: the base pipeline at the budget's
    share of its steps, so a yardstick call costs about what a candidate near the budget does, and at most a
    tenth of its steps (at least one), so pairing never costs more than a tenth of a baseline call per timed call.
    The digits demo (10 % of 50 steps) gets 5."""
    return max(1, min(round(fraction * default_steps), int(default_steps) // 10))


def denoiser_size_mb(pipe: Any, handle: ModelHandle) -> float:
    """Storage of the denoiser's weights in MB (packed low-precision weights counted at their real size)."""
    return float(model_size_mb(getattr(pipe, handle.denoiser_name)))


class Evaluator:
    """Latency and quality of pipelines built from one model, on the fixed sample sets of `spec`.

    `noise_floor`: the baseline's relative latency spread, reported with every measurement (set by `baseline()`,
    or by `follow` when a study resumes with a stored baseline).

    Yardstick (`use_yardstick`, for budgets relative to the baseline): every timed call is paired with a call of
    the base pipeline at `yardstick_steps` steps, so latencies are ratios measured under one set of conditions,
    scaled to the yardstick's time when the baseline was measured (`evaluators.latency`). The baseline sets the
    reference time; a resumed run or a worker takes it from the stored baseline (`follow`).
    """

    def __init__(self, handle: ModelHandle, spec: EvaluationSpec, threads: int | None = None) -> None:
        self.handle = handle
        self.spec = spec
        self.device = spec.device
        self.threads = threads
        self.thread_setup = cpu_thread_setup(threads) if not str(self.device).startswith("cuda") else {}
        qb = min(QUALITY_BATCH, spec.final_samples)
        self.proxy_spec = default_spec(handle, spec.proxy_samples, seed=sample_seed(spec.seed, PROXY_SEED),
                                       batch_size=min(qb, spec.proxy_samples))
        self.final_spec = default_spec(handle, spec.final_samples, seed=sample_seed(spec.seed, FINAL_SEED),
                                       batch_size=qb)
        self.latency_spec = default_spec(handle, spec.batch_size, seed=sample_seed(spec.seed, LATENCY_SEED),
                                         batch_size=spec.batch_size)
        self.metric = make_quality(spec.metric, handle, device=self.device, reference_dir=spec.reference)
        self.noise_floor: float | None = None
        self.yardstick_steps: int | None = None
        self.yardstick_ref_s: float | None = None

    def use_yardstick(self, steps: int, reference_s: float | None = None) -> None:
        """Time every call against the base pipeline at `steps` steps; `reference_s` is the yardstick's time when
        the baseline was measured (None: `baseline()` measures it)."""
        if steps < 1:
            raise ValueError(f"a yardstick needs at least one step, got {steps}")
        self.yardstick_steps, self.yardstick_ref_s = int(steps), reference_s

    def follow(self, baseline: Baseline) -> None:
        """Measure as the stored `baseline` was: its noise floor, and its yardstick when it had one."""
        self.noise_floor = baseline.noise_floor
        lat = baseline.latency
        if lat.yardstick_steps is not None and lat.yardstick_ref_s is not None:
            self.use_yardstick(lat.yardstick_steps, lat.yardstick_ref_s)
        else:
            self.yardstick_steps = self.yardstick_ref_s = None

    def _yardstick(self) -> Callable[[], Any] | None:
        if self.yardstick_steps is None:
            return None
        spec, pipe, steps = self.latency_spec, self.handle.pipeline, self.yardstick_steps
        return lambda: call_pipeline(self.handle, pipe, spec, 0, len(spec), steps=steps)

    # -- latency -------------------------------------------------------------------------------------
    def latency(self, pipe: Any, budget_s: float | None = None, simulated: bool = False,
                deadline: float | None = None) -> LatencyResult:
        """One pipeline call at the search's batch size, timed with warm-up and repeats under the device lock
        (`timed` without its compile record)."""
        return self.timed(pipe, budget_s=budget_s, simulated=simulated, deadline=deadline)[0]

    def timed(self, pipe: Any, budget_s: float | None = None, simulated: bool = False,
              deadline: float | None = None, may_compile: bool = True) -> tuple[LatencyResult, CompileRecord | None]:
        """The latency of one pipeline call at the search's batch size, and what compiling cost (`None` when
        nothing compiled). Warm-up until a call compiles nothing, then timed calls under
        `set_stance("fail_on_recompile")` (see the module docstring). With `may_compile=False` the warm-up runs
        under that stance too: a pipeline whose graphs this process has not compiled yet raises
        `CompileRefused` instead of compiling them.

        A candidate far over budget stops being timed after a few seconds (its median is still honest,
        from fewer repeats).
        """
        spec = self.latency_spec

        def call() -> torch.Tensor:
            return call_pipeline(self.handle, pipe, spec, 0, len(spec))

        compiled: CompileRecord | None = None
        retimed = 0
        while True:
            try:
                with contextlib.nullcontext() if may_compile else torch.compiler.set_stance("fail_on_recompile"):
                    record, out = compile_warmup(call, self.device, deadline=deadline)
            except RuntimeError as e:
                if may_compile or _RECOMPILE_MESSAGE not in str(e):
                    raise
                raise CompileRefused("the pipeline would compile, and compiling is not allowed for it") from None
            if record is not None:
                self._check_compiled(call, out)
            compiled = _merge(compiled, record)
            max_seconds = None if budget_s is None else max(3.0, 6.0 * budget_s)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("candidate ran past the per-trial time limit before it was timed")
                max_seconds = left if max_seconds is None else min(max_seconds, left)
            try:
                with torch.compiler.set_stance("fail_on_recompile"):
                    # one warm-up call here: compile_warmup's last call was the other one
                    res = measure_latency(call, self.device, warmup=1, min_repeats=5, max_repeats=30,
                                          rel_spread=0.03, max_seconds=max_seconds, threads=self.threads,
                                          yardstick=self._yardstick(), yardstick_ref_s=self.yardstick_ref_s,
                                          yardstick_steps=self.yardstick_steps)
                break
            except RuntimeError as e:
                if _RECOMPILE_MESSAGE not in str(e):
                    raise
                retimed += 1
                if retimed > RETIMES:
                    where = " ".join(str(e).split())[:300]
                    raise RuntimeError(f"the pipeline compiled again inside its timed calls {retimed} times, so "
                                       f"its latency cannot be measured without compile time ({where})") from None
        res.simulated = simulated
        if compiled is not None:
            compiled.retimed = retimed
        return res, compiled

    @staticmethod
    def _check_compiled(call: Callable[[], torch.Tensor], images: torch.Tensor) -> None:
        """The compiled images of the latency call against the same call run eagerly."""
        check_images(images)
        with torch.compiler.set_stance("force_eager"):
            eager = call()
        diff = float((images - eager).abs().mean())
        if not diff <= COMPILED_IMAGE_TOLERANCE:
            raise RuntimeError(f"the compiled pipeline's images differ from its eager images by {diff:.3g} on "
                               f"average (at most {COMPILED_IMAGE_TOLERANCE} is rounding): it miscompiles")

    def size_mb(self, pipe: Any) -> float:
        return denoiser_size_mb(pipe, self.handle)

    # -- quality -------------------------------------------------------------------------------------
    def quality(self, pipe: Any, final: bool = False, deadline: float | None = None) -> QualityResult:
        """The search metric on the proxy sample set (or the finalists' set)."""
        return self.quality_on(pipe, self.final_spec if final else self.proxy_spec, deadline=deadline)

    def generate(self, pipe: Any, spec: SampleSpec, deadline: float | None = None) -> torch.Tensor:
        """All images of `spec`, one pipeline call per batch. Each call holds the device lock, so another
        process never times its candidate while this one computes on the same device; the per-trial
        `deadline` (time.monotonic) is checked between calls."""
        chunks = []
        for start in range(0, len(spec), spec.batch_size):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("candidate ran past the per-trial time limit while generating images")
            with device_lock(str(self.device)):
                chunks.append(call_pipeline(self.handle, pipe, spec, start, min(len(spec), start + spec.batch_size)))
        return torch.cat(chunks)

    def quality_on(self, pipe: Any, spec: SampleSpec, deadline: float | None = None) -> QualityResult:
        """The metric on `spec`'s images. A compiled pipeline makes them eagerly (`force_eager`): its static
        shapes would compile again at every quality batch size, and `timed` has checked that its compiled
        images equal the eager ones up to rounding (`COMPILED_IMAGE_TOLERANCE`)."""
        with torch.compiler.set_stance("force_eager"):
            images = self.generate(pipe, spec, deadline=deadline)
        check_images(images)
        q = self.metric(images, spec)
        if not math.isfinite(score(q)):
            raise ValueError(f"quality {q.metric} is not finite ({q.value})")
        return q

    # -- composite -----------------------------------------------------------------------------------
    def baseline(self) -> Baseline:
        """The base pipeline as the user runs it today: latency, proxy quality and final quality."""
        pipe = self.handle.pipeline
        self.yardstick_ref_s = None  # the baseline's own yardstick calls set it
        lat = self.latency(pipe)
        self.noise_floor = lat.rel_spread
        self.yardstick_ref_s = lat.yardstick_ref_s
        return Baseline(latency_s=lat.median_s, latency=lat, quality=self.quality_on(pipe, self.proxy_spec),
                        final_quality=self.quality_on(pipe, self.final_spec), size_mb=self.size_mb(pipe),
                        steps=self.handle.default_steps, scheduler=type(pipe.scheduler).__name__)

    def final_prefix(self, n: int) -> SampleSpec:
        """The first `n` images of the finalists' sample set (the same seeds, labels and prompts)."""
        n = min(n, self.spec.final_samples)
        return default_spec(self.handle, n, seed=sample_seed(self.spec.seed, FINAL_SEED),
                            batch_size=min(QUALITY_BATCH, n))

    def quality_at(self, pipe: Any, n: int, deadline: float | None = None) -> QualityResult:
        """The metric on the first `n` images of the finalists' sample set (a rung of successive halving)."""
        return self.quality_on(pipe, self.final_prefix(n), deadline=deadline)

    def retime(self, pipe: Any, simulated: bool = False) -> LatencyResult:
        """The latency as a finalist is re-timed (`remeasure`), without scoring it."""
        return self.timed(pipe, simulated=simulated)[0]

    def remeasure(self, pipe: Any, budget_s: float, simulated: bool = False) -> Measurement:
        """A finalist: re-timed, and scored on the larger final sample with fresh seeds."""
        lat, compiled = self.timed(pipe, simulated=simulated)
        q = self.quality_on(pipe, self.final_spec)
        return Measurement(latency_s=lat.median_s, latency=lat, quality=q, score=score(q),
                           size_mb=self.size_mb(pipe), simulated=simulated,
                           over_budget=lat.median_s > budget_s, budget_s=budget_s, noise_floor=self.noise_floor,
                           compile=compiled)
