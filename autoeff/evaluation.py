"""How the search measures a candidate: the evaluators of `autoeff/evaluators/`, wired to one model.

This module knows the sample specs (common random numbers: every candidate sees the same seeds, noise,
labels or prompts), the latency call and the quality metric chosen for the search; it never knows which
knobs built the pipeline it is given.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from autoeff.evaluators.latency import cpu_thread_setup, measure_latency
from autoeff.evaluators.quality import METRICS, evaluate_pipeline, make_quality, score
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

    # -- latency -------------------------------------------------------------------------------------
    def latency(self, pipe: Any, budget_s: float | None = None, simulated: bool = False) -> dict[str, Any]:
        """One pipeline call at the user's batch size, timed with warm-up and repeats under the device lock.

        A candidate far over budget stops being timed after a few seconds (its median is still honest,
        from fewer repeats).
        """
        spec = self.latency_spec

        def call() -> torch.Tensor:
            return call_pipeline(self.handle, pipe, spec, 0, len(spec))

        max_seconds = None if budget_s is None else max(3.0, 6.0 * budget_s)
        res = measure_latency(call, self.device, warmup=2, min_repeats=5, max_repeats=30, rel_spread=0.03,
                              max_seconds=max_seconds, threads=self.threads)
        res.simulated = simulated
        return res.to_dict()

    def size_mb(self, pipe: Any) -> float:
        return denoiser_size_mb(pipe, self.handle)

    # -- quality -------------------------------------------------------------------------------------
    def quality(self, pipe: Any, n: int | None = None) -> dict[str, Any]:
        """The search metric on the proxy spec (or the final spec when `n` is the final sample count)."""
        spec = self.final_spec if n is not None and n > self.settings.proxy_samples else self.proxy_spec
        return self.quality_on(pipe, spec)

    def quality_on(self, pipe: Any, spec: SampleSpec) -> dict[str, Any]:
        _, results = evaluate_pipeline(self.handle, pipe, spec, [self.metric])
        q = results[0]
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
                           over_budget=lat["median_s"] > budget_s, budget_s=budget_s)
