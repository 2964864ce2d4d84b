"""Re-measure an exported pipeline on this device: what its `autoeff.json` claims vs what it measures now.

`autoeff bench optimized/` loads the folder with `autoeff.load` (manifest and schema checked), times one
pipeline call with the same timer, batch size and seeds the search used (`autoeff.measure.Evaluator`,
which wraps `autoeff.evaluators.latency.measure_latency`), and scores the quality metric recorded in the
export on the same sample set (same seeds and labels or prompts), so claimed and measured differ only by
the device and by measurement noise.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from autoeff.budget import format_seconds
from autoeff.evaluators.latency import device_description
from autoeff.evaluators.load import BUSY_SHARE
from autoeff.evaluators.quality import DIGITS_FAMILIES, describe
from autoeff.export import load
from autoeff.measure import FINAL_SEED, PROXY_SEED, QUALITY_BATCH, EvaluationSpec, Evaluator, sample_seed
from autoeff.models.generate import default_spec
from autoeff.models.registry import ModelNotAvailableError, resolve_model
from autoeff.settings import default_metric

DEFAULT_SAMPLES = 256


def _claim(info: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The figures the export claims: its finalist re-measurement if it has one, else its search trial's."""
    measured = info.get("measured") or {}
    for which in ("final", "proxy"):
        if isinstance(measured.get(which), dict):
            return which, measured[which]
    return "none", {}


def _base_handle(info: dict[str, Any], exported: Any, model_path: str | None, device: str) -> tuple[Any, str]:
    """The *base* model, called like the export, for metrics that compare to the base model's images
    (fidelity; FID/KID to the baseline). Never the optimized pipeline: its images are not the reference."""
    model = info["model"]
    try:
        base = resolve_model(model["spec"], model_path=model_path, device=device)
    except ModelNotAvailableError as e:
        return None, str(e).splitlines()[0]
    if model.get("identity") and base.identity != model["identity"]:
        return None, f"the base model loaded here (identity {base.identity}) is not the one searched"
    for f in ("default_steps", "resolution", "prompts", "num_classes", "guidance_scale", "extra", "labels",
              "negative_prompt"):
        setattr(base, f, getattr(exported, f))
    return base, ""


def _share(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.0%}"


def bench_export(path: str | Path, device: str = "cpu", samples: int | None = None,
                 threads: int | None = None, model_path: str | None = None,
                 reference: str | Path | None = None) -> list[dict[str, Any]]:
    """Claimed vs measured latency and quality of the exported pipeline at `path`, measured on `device`.

    `samples`: images scored for quality (default: as many as the claimed figure used, else 256).
    `reference`: the folder of reference images, where the claim was scored against the user's images
    (`--reference`) and that folder has moved; when it is missing and none is given, quality is not measured
    (another reference would give a figure that is not comparable with the claim).
    Returns rows `{what, claimed, measured, claimed_value, measured_value, note}` for `device`, `latency`
    (seconds per call), `load` (the share of the CPUs other processes used while each latency was timed: a
    claim made on a busy machine is not comparable) and `quality` (the recorded metric; FID against real data
    for the digits models).
    Raises `autoeff.export.ExportError` for a folder that fails its manifest or schema checks.
    """
    if samples is not None and samples < 2:
        raise ValueError(f"samples={samples}: quality needs at least 2 images")
    pipe = load(path, device=device)
    info = pipe.autoeff_info
    handle = pipe.autoeff_handle
    which, claim = _claim(info)
    claim_q = claim.get("quality") or {}
    metric = claim_q.get("metric") or default_metric(handle)
    n = int(samples or claim_q.get("n") or DEFAULT_SAMPLES)
    measured_info = info.get("measured") or {}
    batch = int(measured_info.get("batch_size") or 1)
    seed = int(measured_info.get("seed") or 0)
    folder = (claim_q.get("details") or {}).get("folder")  # FID/KID against the user's --reference images
    if reference is not None and not Path(reference).is_dir():
        raise ValueError(f"reference={str(reference)!r} is not a folder of images")
    missing = isinstance(folder, str) and reference is None and not Path(folder).is_dir()
    # when missing, the spec still names the recorded folder (the metric reads it only when scoring, which is
    # then skipped), so no other reference (the base model, its features) is built in its place
    ref_dir = str(reference) if reference is not None else folder if isinstance(folder, str) else None
    spec = EvaluationSpec(metric=metric, device=device, seed=seed, batch_size=batch, proxy_samples=2,
                          final_samples=max(n, 2), reference=ref_dir)
    needs_base = metric == "fidelity" or (metric in ("fid", "kid") and handle.family not in DIGITS_FAMILIES
                                          and ref_dir is None)
    if missing:
        eval_handle, why = None, ""
    else:
        eval_handle, why = (_base_handle(info, handle, model_path, device) if needs_base else (handle, ""))
    evaluator = Evaluator(eval_handle or handle, spec, threads=threads)

    lat = evaluator.latency(pipe)
    offset = PROXY_SEED if which == "proxy" else FINAL_SEED
    samples_spec = default_spec(handle, n, seed=sample_seed(seed, offset), batch_size=min(QUALITY_BATCH, n))
    q = evaluator.quality_on(pipe, samples_spec) if eval_handle is not None else None

    claimed_dev = (claim.get("latency") or {}).get("device") or info.get("device") or "-"
    rows: list[dict[str, Any]] = [{
        "what": "device", "claimed": str(claimed_dev), "measured": device_description(device),
        "claimed_value": None, "measured_value": None, "note": f"export measured on {info.get('device', '-')}",
    }]
    claimed_lat = claim.get("latency_s")
    note = f"batch {batch}" + ("" if "batch_size" in measured_info else " (not recorded; assumed)")
    if claim.get("simulated"):
        note += "; claimed latency is simulated (fake quantization), not a real speedup"
    claimed_raw = (claim.get("latency") or {}).get("raw_samples_s")
    if claimed_raw and (claim.get("latency") or {}).get("yardstick_ref_s"):
        note += (f"; the claim is in its baseline's timing conditions (timed against a yardstick), "
                 f"{format_seconds(statistics.median(claimed_raw))} as timed then")
    rows.append({
        "what": "latency",
        "claimed": "-" if claimed_lat is None else format_seconds(float(claimed_lat)),
        "measured": format_seconds(lat.median_s) + (
            "" if claimed_lat is None else f" ({lat.median_s / float(claimed_lat):.2f}x claimed)"),
        "claimed_value": None if claimed_lat is None else float(claimed_lat),
        "measured_value": float(lat.median_s),
        "note": note,
    })
    claimed_load = (claim.get("latency") or {}).get("other_cpu")
    rows.append({
        "what": "load",
        "claimed": _share(claimed_load),
        "measured": _share(lat.other_cpu) + ("" if lat.other_cpu is None else " of the CPUs used by other processes"),
        "claimed_value": claimed_load, "measured_value": lat.other_cpu,
        "note": ("busy: a latency measured then can be inflated" if lat.busy or (claimed_load or 0) > BUSY_SHARE
                 else "quiet"),
    })
    claimed_v = claim_q.get("value")
    rows.append({
        "what": "quality",
        "claimed": "-" if claimed_v is None else f"{metric} {float(claimed_v):.4g} (n={claim_q.get('n')})",
        "measured": "not measured" if q is None else describe(q),
        "claimed_value": None if claimed_v is None else float(claimed_v),
        "measured_value": None if q is None else float(q.value),
        "note": (f"the claim was scored against the reference images in {folder}, which is not there; pass "
                 "--reference DIR" if missing else
                 f"{metric} compares to the base model's images, which are not available here ({why}); pass "
                 "--model-path to the base model" if q is None else
                 f"{which} sample set" if which != "none" else "nothing claimed in autoeff.json"),
    })
    return rows


__all__ = ["bench_export", "DEFAULT_SAMPLES"]
