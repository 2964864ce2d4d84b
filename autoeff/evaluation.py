"""How the search measures a candidate: the evaluators of `autoeff/evaluators/`, wired to one model.

This module knows the sample specs (common random numbers: every candidate sees the same seeds, noise,
labels or prompts), the latency call and the quality metric chosen for the search; it never knows which
knobs built the pipeline it is given.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from autoeff.evaluators.latency import cpu_thread_setup, measure_latency
from autoeff.evaluators.lock import device_lock
from autoeff.evaluators.quality import METRICS, make_quality, score
from autoeff.evaluators.validity import check_images
from autoeff.measurement import Measurement
from autoeff.models.generate import SampleSpec, call_pipeline, default_spec
from autoeff.models.handle import ModelHandle

# Seeds of the three sample sets never overlap: the search's proxy, the finalists' larger sample, latency.
PROXY_SEED, FINAL_SEED, LATENCY_SEED = 0, 1, 2
QUALITY_BATCH = 128


def default_metric(handle: ModelHandle) -> str:
    """FID against the real data for the built-in models; fidelity (SSIM to the baseline's own images on
    the same seeds and prompts) for others, which needs no extra weights and no data set."""
    return "fid" if handle.family in ("digits", "digits-dit") else "fidelity"


def denoiser_size_mb(pipe: Any, handle: ModelHandle) -> float:
    """Storage of the denoiser's weights in MB (packed low-precision weights counted at their real size)."""
    from autoeff.search_spaces.quantize import model_size_mb

    return float(model_size_mb(getattr(pipe, handle.denoiser_name)))


class Evaluator:
    """Latency and quality of pipelines built from one model, on fixed sample specs."""

    def __init__(self, handle: ModelHandle, settings: Any, threads: int | None = None) -> None:
        if settings.metric not in METRICS:
            raise ValueError(f"--metric {settings.metric!r} is not one of {', '.join(METRICS)}")
        self.handle = handle
        self.settings = settings
        self.device = settings.device
        self.threads = threads
        self.thread_setup = cpu_thread_setup(threads) if not str(self.device).startswith("cuda") else {}
        qb = min(QUALITY_BATCH, settings.final_samples)
        self.proxy_spec = default_spec(handle, settings.proxy_samples, seed=settings.seed * 10 + PROXY_SEED,
                                       batch_size=min(qb, settings.proxy_samples))
        self.final_spec = default_spec(handle, settings.final_samples, seed=settings.seed * 10 + FINAL_SEED,
                                       batch_size=qb)
        self.latency_spec = default_spec(handle, settings.batch_size, seed=settings.seed * 10 + LATENCY_SEED,
                                         batch_size=settings.batch_size)
        self.metric = make_quality(settings.metric, handle, device=self.device)
        # the baseline's relative latency spread, reported with every measurement (set by `baseline()`, or by
        # the caller from a stored baseline when a study resumes)
        self.noise_floor: float | None = None

    # -- latency -------------------------------------------------------------------------------------
    def latency(self, pipe: Any, budget_s: float | None = None, simulated: bool = False,
                deadline: float | None = None) -> dict[str, Any]:
        """One pipeline call at the user's batch size, timed with warm-up and repeats under the device lock.

        A candidate far over budget stops being timed after a few seconds (its median is still honest,
        from fewer repeats).
        """
        spec = self.latency_spec

        def call() -> torch.Tensor:
            return call_pipeline(self.handle, pipe, spec, 0, len(spec))

        max_seconds = None if budget_s is None else max(3.0, 6.0 * budget_s)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("candidate ran past the per-trial time limit before it was timed")
            max_seconds = left if max_seconds is None else min(max_seconds, left)
        res = measure_latency(call, self.device, warmup=2, min_repeats=5, max_repeats=30, rel_spread=0.03,
                              max_seconds=max_seconds, threads=self.threads)
        res.simulated = simulated
        return res.to_dict()

    def size_mb(self, pipe: Any) -> float:
        return denoiser_size_mb(pipe, self.handle)

    # -- quality -------------------------------------------------------------------------------------
    def quality(self, pipe: Any, n: int | None = None, deadline: float | None = None) -> dict[str, Any]:
        """The search metric on the proxy spec (or the final spec when `n` is the final sample count)."""
        spec = self.final_spec if n is not None and n > self.settings.proxy_samples else self.proxy_spec
        return self.quality_on(pipe, spec, deadline=deadline)

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

    def quality_on(self, pipe: Any, spec: SampleSpec, deadline: float | None = None) -> dict[str, Any]:
        images = self.generate(pipe, spec, deadline=deadline)
        check_images(images)
        q = self.metric(images, spec)
        d = q.to_dict()
        d["score"] = score(q)
        if not math.isfinite(d["score"]):
            raise ValueError(f"quality {q.metric} is not finite ({q.value})")
        return d

    # -- composite -----------------------------------------------------------------------------------
    def baseline(self) -> dict[str, Any]:
        """The base pipeline as the user runs it today: latency, proxy quality and final quality."""
        pipe = self.handle.pipeline
        lat = self.latency(pipe)
        self.noise_floor = lat["rel_spread"]
        proxy = self.quality_on(pipe, self.proxy_spec)
        final = self.quality_on(pipe, self.final_spec)
        return {"latency_s": lat["median_s"], "latency": lat, "quality": proxy, "score": proxy["score"],
                "final_quality": final, "final_score": final["score"], "size_mb": self.size_mb(pipe),
                "steps": self.handle.default_steps,
                "scheduler": type(pipe.scheduler).__name__}

    def remeasure(self, pipe: Any, budget_s: float, simulated: bool = False) -> Measurement:
        """A finalist: re-timed, and scored on the larger final sample with fresh seeds."""
        lat = self.latency(pipe, simulated=simulated)
        q = self.quality_on(pipe, self.final_spec)
        return Measurement(latency_s=lat["median_s"], latency=lat, quality=q, score=q["score"],
                           size_mb=self.size_mb(pipe), simulated=simulated,
                           over_budget=lat["median_s"] > budget_s, budget_s=budget_s, noise_floor=self.noise_floor)
