"""What `benchmarks/knobs.py` and `benchmarks/compare.py` share: the machine record, recipes built from the
knob modules, interleaved latency, two-seed FID against the real digits, and BENCHMARKS.md sections.

Import it after setting `OMP_WAIT_POLICY` (each script does so before anything imports torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from autoeff.evaluators.class_alignment import class_accuracy
from autoeff.evaluators.features import DigitsFeatures, extract_features
from autoeff.evaluators.fid import fid_from_features
from autoeff.evaluators.latency import (
    LatencyResult,
    cpu_thread_setup,
    device_description,
    measure_latency,
    median_ci_halfwidth,
)
from autoeff.evaluators.quality import DIGITS_FID_NORMALIZE
from autoeff.evaluators.reference import memory, real_features
from autoeff.evaluators.validity import check_images
from autoeff.models.generate import SampleSpec, call_pipeline, default_spec, generate
from autoeff.models.handle import ModelHandle
from autoeff.recipe import Recipe
from autoeff.search_spaces import knob_names
from autoeff.search_spaces.base import SpaceContext
from autoeff.search_spaces.groups import DEFAULT_KEY, group_name_of_key, group_prefixes, group_regex
from autoeff.search_spaces.groups import searched_groups as _searched_groups
from autoeff.search_spaces.space import build_pipeline

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OUT = ROOT / "BENCHMARKS.md"
QUALITY_BATCH = 128
# Bump when what `two_seed_quality` computes changes (it is part of the joblib cache key).
QUALITY_VERSION = 1


# --- environment ------------------------------------------------------------------------------------------


def quiet() -> None:
    """No loading bars or library deprecation chatter in benchmark logs (errors still raise)."""
    import warnings

    from diffusers.utils import logging as dlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    for cat in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)
    warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")


@lru_cache(maxsize=1)
def code_identity() -> str:
    """sha256 of every autoeff/*.py file (first 12 hex digits): cached results are only reused for the same
    code, so a changed knob never serves stale numbers."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "autoeff").rglob("*.py")):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def machine(threads: int | None, device: str = "cpu") -> dict[str, Any]:
    """Where and how the numbers were measured."""
    setup = cpu_thread_setup(threads) if not device.startswith("cuda") else {}
    return {"device": device_description(device), "threads": setup.get("threads"),
            "interop_threads": setup.get("interop_threads"), "omp_wait_policy": setup.get("omp_wait_policy"),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "autoeff_code": code_identity()}


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['device']}, torch {m['torch']} with {m['threads']} intra-op threads, "
            f"OMP_WAIT_POLICY={m['omp_wait_policy']}, Python {m['python']}, {m['date']}, "
            f"autoeff code {m['autoeff_code']}")


def write_section(path: Path, start: str, end: str, section: str) -> None:
    """Replace the text between `start` and `end` markers of `path` (append the section if absent)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        a, b = text.index(start), text.index(end) + len(end)
        text = text[:a] + section.rstrip("\n") + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    path.write_text(text)


def results_dir(out: Path) -> Path:
    """`benchmarks/results` for the real BENCHMARKS.md; next to any other `--out` (so quick runs do not
    overwrite published figures)."""
    if out.resolve() == DEFAULT_OUT.resolve():
        return RESULTS
    return out.resolve().parent / f"{out.stem}-results"


def command_line(script: str, argv: Sequence[str]) -> str:
    env = f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} "
    return env + f"python benchmarks/{script} " + " ".join(argv)


# --- recipes ----------------------------------------------------------------------------------------------


def make_context(handle: ModelHandle, device: str = "cpu", max_steps: int = 1000) -> SpaceContext:
    """The SpaceContext the search gives the knobs (block groups read from the denoiser)."""
    from autoeff.search_spaces.groups import block_groups

    return SpaceContext(family=handle.family, denoiser=handle.denoiser_name,
                        num_train_timesteps=handle.num_train_timesteps, default_steps=handle.default_steps,
                        min_steps=1, max_steps=max_steps, block_groups=list(block_groups(handle.denoiser)),
                        device=device)


def searched_groups(context: SpaceContext) -> list[str]:
    return _searched_groups(context.block_groups)


def all_groups_quantize(context: SpaceContext, level: str = "int8", backend: str = "cpu-int8") -> Any:
    """Every block group (not embed/out) at `level`, in the per-group form the search draws."""
    from autoeff.search_spaces import quantize

    mapping = {group_regex(group_prefixes(g)): level for g in searched_groups(context)}
    mapping[DEFAULT_KEY] = "skip"
    return quantize.Config(mapping=mapping, backend=backend)


def all_groups_prune(context: SpaceContext, ratio: float) -> Any:
    from autoeff.search_spaces import prune

    return prune.Config(ratios={g: float(ratio) for g in searched_groups(context)})


def build(handle: ModelHandle, recipe: Recipe, context: SpaceContext) -> Any:
    """The candidate pipeline, through the same code the search uses."""
    return build_pipeline(handle, recipe, context)


def _short_quantize(cfg: Any) -> str:
    levels = {}
    for key, level in cfg.mapping.items():
        if key == DEFAULT_KEY and level == "skip":
            continue
        levels.setdefault(level, []).append(group_name_of_key(key) or key)
    tag = "fake " if cfg.backend == "fake" else ("" if cfg.backend == "cpu-int8" else cfg.backend + " ")
    parts = [f"{lv}[{','.join(gs)}]" for lv, gs in levels.items() if lv != "skip"]
    return f"{tag}quant " + (" ".join(parts) if parts else "none")


def _short_prune(cfg: Any) -> str:
    from autoeff.search_spaces.prune import _fraction

    pruned = {g: r for g, r in cfg.ratios.items() if r > 0}
    if not pruned:
        return "prune none"
    by_ratio: dict[str, list[str]] = {}
    for g, r in pruned.items():
        by_ratio.setdefault(_fraction(r), []).append(g)
    return "prune " + " ".join(f"{r}[{','.join(gs)}]" for r, gs in by_ratio.items())


def short_label(recipe: Recipe) -> str:
    """One compact line per recipe, knobs in application order (for tables and plots)."""
    parts = []
    for name in knob_names():
        cfg = recipe.knobs.get(name)
        if cfg is None:
            continue
        if name == "quantize":
            parts.append(_short_quantize(cfg))
        elif name == "prune":
            parts.append(_short_prune(cfg))
        elif name == "cache":
            if cfg.interval > 1:
                parts.append("DeepCache " + cfg.describe())
        else:
            parts.append(cfg.describe())
    return ", ".join(parts) or "base pipeline"


# --- latency ----------------------------------------------------------------------------------------------


def latency_call(handle: ModelHandle, pipe: Any, batch: int, seed: int = 2) -> Callable[[], Any]:
    """One pipeline call at `batch` images on fixed seeds and labels (what `Evaluator.latency` times)."""
    spec = default_spec(handle, batch, seed=seed, batch_size=batch)
    return lambda: call_pipeline(handle, pipe, spec, 0, len(spec))


class DenoiserTimer:
    """Seconds spent inside the denoiser per pipeline call, from forward pre/post hooks on the module the
    pipeline calls (the cache wrapper when there is one). Two `perf_counter` reads per denoiser call: far
    below the milliseconds a call takes."""

    def __init__(self, module: torch.nn.Module) -> None:
        self._t0 = 0.0
        self._total = 0.0
        self.per_call: list[float] = []
        self._handles = [module.register_forward_pre_hook(self._pre),
                         module.register_forward_hook(self._post)]

    def _pre(self, module: Any, args: Any) -> None:
        self._t0 = time.perf_counter()

    def _post(self, module: Any, args: Any, out: Any) -> None:
        self._total += time.perf_counter() - self._t0

    def wrap(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            self._total = 0.0
            out = fn()
            self.per_call.append(self._total)
            return out

        return call

    def median_s(self) -> float | None:
        return statistics.median(self.per_call) if self.per_call else None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _pooled(samples: list[float], warmup: int, device: str, threads: int, omp: str) -> LatencyResult:
    t = torch.tensor(samples, dtype=torch.float64)
    return LatencyResult(median_s=statistics.median(samples), p10_s=float(torch.quantile(t, 0.1)),
                         p90_s=float(torch.quantile(t, 0.9)),
                         iqr_s=float(torch.quantile(t, 0.75) - torch.quantile(t, 0.25)),
                         rel_spread=median_ci_halfwidth(samples), repeats=len(samples), warmup=warmup,
                         device=device, threads=threads, omp_wait_policy=omp, stop_reason="interleaved",
                         samples_s=list(samples))


def interleaved_latency(fns: dict[str, Callable[[], Any]], device: str, *, rounds: int, repeats: int,
                        warmup: int = 1, threads: int | None = None, max_rounds: dict[str, int] | None = None,
                        log: Callable[[str], None] | None = None, yardstick: Callable[[], Any] | None = None,
                        yardstick_steps: int | None = None) -> dict[str, dict[str, Any]]:
    """Round-robin latency: each round gives every configuration one `measure_latency` block (`warmup`
    untimed calls, then `repeats` timed calls), so slow drift of the machine hits all configurations alike.

    Returns per name the pooled `LatencyResult` as a dict (median of all timed calls, its 95% CI half-width)
    plus `round_medians_s`. `max_rounds` caps the rounds of slow configurations (e.g. 1000-step DDPM).

    With a `yardstick` (a short fixed call; `autoeff.evaluators.latency`) every timed call is followed by one
    yardstick call and kept as their ratio times the yardstick's time measured once before the first round
    (`yardstick_ref_s`, 1 warm-up + 5 calls): every number is then in the conditions of that moment, as the
    search's own timings are. The times as measured stay beside them (`raw_median_s`, `raw_round_medians_s`).
    """
    samples: dict[str, list[float]] = {n: [] for n in fns}
    raw: dict[str, list[float]] = {n: [] for n in fns}
    round_medians: dict[str, list[float]] = {n: [] for n in fns}
    raw_round_medians: dict[str, list[float]] = {n: [] for n in fns}
    ref_s = None
    if yardstick is not None:
        ref_s = measure_latency(yardstick, device, warmup=1, min_repeats=5, max_repeats=5, rel_spread=0.01,
                                threads=threads).median_s
    last: LatencyResult | None = None
    for r in range(rounds):
        t0 = time.perf_counter()
        for name, fn in fns.items():
            if max_rounds and r >= max_rounds.get(name, rounds):
                continue
            last = measure_latency(fn, device, warmup=warmup, min_repeats=repeats, max_repeats=repeats,
                                   rel_spread=0.01, threads=threads, yardstick=yardstick, yardstick_ref_s=ref_s,
                                   yardstick_steps=yardstick_steps)
            samples[name].extend(last.samples_s)
            round_medians[name].append(last.median_s)
            got = last.raw_samples_s or last.samples_s
            raw[name].extend(got)
            raw_round_medians[name].append(statistics.median(got))
        if log:
            log(f"  latency round {r + 1}/{rounds}: {time.perf_counter() - t0:.0f}s")
    assert last is not None
    out = {}
    for name, xs in samples.items():
        res = _pooled(xs, warmup * len(round_medians[name]), last.device, last.threads, last.omp_wait_policy)
        out[name] = {**res.to_dict(), "round_medians_s": round_medians[name]}
        if ref_s is not None:
            out[name].update(yardstick_ref_s=ref_s, yardstick_steps=yardstick_steps,
                             raw_median_s=statistics.median(raw[name]),
                             raw_round_medians_s=raw_round_medians[name])
    return out


def quick_latency(fn: Callable[[], Any], device: str, threads: int | None, repeats: int = 3) -> float:
    """A short latency (for scanning step counts): one warm-up, `repeats`..3x`repeats` calls, median."""
    return measure_latency(fn, device, warmup=1, min_repeats=repeats, max_repeats=3 * repeats,
                           rel_spread=0.05, threads=threads).median_s


# --- quality ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _extractor() -> DigitsFeatures:
    return DigitsFeatures()


def _classifier() -> Any:
    from autoeff.models.builtin import load_classifier

    return load_classifier()


def _features_and_acc(handle: ModelHandle, pipe: Any, spec: SampleSpec) -> tuple[torch.Tensor, float]:
    images = generate(handle, pipe, spec)
    check_images(images)
    return extract_features(_extractor(), images), class_accuracy(images, spec.labels, _classifier())


def _quality(key: str, n: int, seeds: tuple[int, ...], batch: int, version: int,
             handle: ModelHandle, pipe: Any) -> dict[str, Any]:
    real = real_features(_extractor())
    feats, fids, accs = [], [], []
    for s in seeds:
        f, acc = _features_and_acc(handle, pipe, default_spec(handle, n, seed=s, batch_size=batch))
        feats.append(f)
        fids.append(fid_from_features(real, f, DIGITS_FID_NORMALIZE))
        accs.append(acc)
    pooled = fid_from_features(real, torch.cat(feats), DIGITS_FID_NORMALIZE) if len(seeds) > 1 else fids[0]
    return {"n": n, "seeds": list(seeds), "fid": fids, "fid_mean": statistics.fmean(fids),
            "fid_range": max(fids) - min(fids), "fid_pooled": pooled, "class_acc": accs,
            "class_acc_mean": statistics.fmean(accs)}


def two_seed_quality(handle: ModelHandle, pipe: Any, key: str, n: int, seeds: Sequence[int],
                     batch: int = QUALITY_BATCH, cache: bool = True) -> dict[str, Any]:
    """FID against all 1797 real digits (the digits classifier's features, `autoeff.evaluators`' FID) for
    `n` samples on each seed set, their mean and range, the FID of all seeds pooled, and class accuracy.

    `key` names the pipeline (model identity, recipe, any extra step such as distillation). With `cache`,
    results are kept in autoeff's joblib cache under `key`, the sample spec and the autoeff code identity,
    so a rerun of a long benchmark reuses them.
    """
    full_key = json.dumps({"key": key, "model": handle.identity, "code": code_identity()}, sort_keys=True)
    seeds = tuple(int(s) for s in seeds)
    if not cache:
        return _quality(full_key, n, seeds, batch, QUALITY_VERSION, handle, pipe)
    fn = memory().cache(_quality, ignore=["handle", "pipe"])
    return fn(full_key, n, seeds, batch, QUALITY_VERSION, handle, pipe)


def recipe_key(recipe: Recipe, extra: str = "") -> str:
    return recipe.to_json() + (("|" + extra) if extra else "")


# --- formatting -------------------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f}"


def fid_pm(q: dict[str, Any] | None) -> str:
    """`mean ± half-range` over the seed sets."""
    if not q:
        return "—"
    if len(q["fid"]) == 1:
        return f"{q['fid'][0]:.2f}"
    return f"{q['fid_mean']:.2f} ± {q['fid_range'] / 2:.2f}"
