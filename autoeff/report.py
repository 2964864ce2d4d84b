"""The search report: Pareto front plot, baseline-vs-chosen sample grids, recipe table, measured figures.

`report.html` is self-contained (images embedded as base64 PNG) so it opens in any browser from disk.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from autoeff.evaluators.latency import LatencyResult
from autoeff.evaluators.quality import QualityResult, describe
from autoeff.measurement import Baseline
from autoeff.models.generate import default_spec, generate
from autoeff.search_spaces.space import build_pipeline
from autoeff.selection import pareto_front

GRID_SAMPLES = 32


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> torch.Tensor:
    """`(N, C, H, W)` in [0, 1] -> one `(C, H', W')` grid (torchvision's make_grid when installed)."""
    n = images.shape[0]
    nrow = nrow or max(1, int(round(n ** 0.5)))
    try:
        from torchvision.utils import make_grid  # lazy: torchvision is optional (the fallback is below)

        return make_grid(images, nrow=nrow, padding=pad, pad_value=1.0)
    except ImportError:  # torchvision is an optional extra; a plain tiling is enough here
        c, h, w = images.shape[1:]
        rows = (n + nrow - 1) // nrow
        grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
        for i in range(n):
            r, k = divmod(i, nrow)
            y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
            grid[:, y0: y0 + h, x0: x0 + w] = images[i]
        return grid


def _to_pil(grid: torch.Tensor, scale: int = 1) -> Any:

    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save images `(N, C, H, W)` in [0, 1] as one PNG grid (small images are upscaled to be visible)."""
    grid = image_grid(images, nrow=nrow)
    scale = max(1, 256 // max(grid.shape[1], 1)) if images.shape[-1] < 64 else 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(grid, scale=min(scale, 8)).save(path)
    return path


def _quality(record: Any) -> float | None:
    q = record.measurement.quality
    return None if q is None else float(q.value)


def plot_pareto(records: list[Any], budget_s: float, baseline: Baseline | None, chosen: Any, path: Path,
                metric: str = "quality") -> Path:
    """Latency against the metric as it is (FID: lower is better; a log axis where it spans a decade or more):
    every trial, the feasible front as a line, the budget, the baseline and the chosen one; trials whose quality
    was not measured (clearly over budget) at their real latency on the worst edge, marked "not measured"."""
    import matplotlib  # lazy: heavy, and the headless backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    higher_better = baseline.final_quality.higher_is_better if baseline is not None else True
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    pts = [(r, v) for r in records if (v := _quality(r)) is not None]
    searched = [(r.latency_s * 1000, v) for r, v in pts if not r.warm_start]
    picked = [(r.latency_s * 1000, v) for r, v in pts if r.warm_start]
    if searched:
        ax.scatter([x for x, _ in searched], [y for _, y in searched], s=14, c="tab:gray", alpha=0.7,
                   label="searched trials")
    if picked:
        ax.scatter([x for x, _ in picked], [y for _, y in picked], s=26, marker="s", facecolors="none",
                   edgecolors="tab:orange", label="hand-picked (warm start)")
    front = pareto_front(records, budget_s)
    front_pts = [(r.latency_s * 1000, v) for r in front if (v := _quality(r)) is not None]
    if front_pts:
        ax.plot([x for x, _ in front_pts], [y for _, y in front_pts], "-o", c="tab:blue", ms=4,
                label="feasible Pareto front")
    ax.axvline(budget_s * 1000, c="tab:red", ls="--", label=f"budget {budget_s * 1000:.1f} ms")
    values = [v for _, v in pts]
    if baseline is not None:
        ax.scatter([baseline.latency_s * 1000], [baseline.quality.value], marker="*", s=120, c="black",
                   label="baseline")
        values.append(baseline.quality.value)
    chosen_q = None if chosen is None else _quality(chosen)
    if chosen_q is not None:
        ax.scatter([chosen.latency_s * 1000], [chosen_q], marker="*", s=160, c="tab:green",
                   label=f"chosen (trial {chosen.number})")
    positive = [v for v in values if v > 0]
    if positive and min(positive) > 0 and max(positive) / min(positive) >= 10 and len(positive) == len(values):
        ax.set_yscale("log")
    unscored = [r for r in records if _quality(r) is None]
    if unscored:  # over budget: latency measured, quality deliberately not spent on them
        lo, hi = ax.get_ylim()
        edge = lo if higher_better else hi
        ax.scatter([r.latency_s * 1000 for r in unscored], [edge] * len(unscored), marker="x", s=18, c="tab:red",
                   alpha=0.7, clip_on=False, label="quality not measured (over budget)")
        ax.set_ylim(lo, hi)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency per call (ms, log scale)")
    ax.set_ylabel(f"{metric} ({'higher' if higher_better else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _fmt_q(q: QualityResult | None) -> str:
    if q is None:
        return "not measured"
    spread = f" ± {q.spread:.3g}" if q.spread is not None else ""
    text = describe(q)  # the value with what it was compared with and in which features
    return text.replace(f"{q.value:.4g} (", f"{q.value:.4g}{spread} (", 1)


def _fmt_lat(lat: LatencyResult | None, latency_s: float) -> str:
    if lat is None:
        return f"{latency_s * 1000:.2f} ms"
    sim = " SIMULATED (fake-quant; not a real speedup)" if lat.simulated else ""
    return f"{latency_s * 1000:.2f} ms median, rel. spread {lat.rel_spread:.3f}, {lat.repeats} repeats{sim}"


def _q_text(q: QualityResult | None) -> str:
    if q is None:
        return "not measured"
    spread = "" if q.spread is None else f"; spread ±{q.spread:.3g}"
    return f"{q.value:.4g} (n={q.n}{spread})"


def headline(base: Baseline, chosen: Any, final: Any) -> str:
    """The speed-up and the quality change in one line: `10.8x faster, fid 5.194 -> 16.87 (n=1000)`."""
    if chosen is None:
        return "No candidate chosen."
    m = final if final is not None else chosen.measurement
    q, bq = m.quality, base.final_quality if final is not None else base.quality
    quality = (f"{bq.metric} {bq.value:.4g} -> {_q_text(q)}" if q is not None else "quality not measured")
    where = "final sample" if final is not None else "search proxy"
    return f"{base.latency_s / m.latency_s:.1f}x faster per call, {quality} ({bq.metric}: " + (
        "higher" if bq.higher_is_better else "lower") + f" is better; {where})"


def front_table(result: Any) -> str:
    """The feasible Pareto front as a table, with the command that exports each point."""
    out = getattr(result, "out", None)
    where = f"--out {out} " if out is not None else ""
    rows = []
    for r in pareto_front(result.records, result.budget_s):
        cmd = f"autoeff export {where}--trial {r.number} --to optimized-trial{r.number}"
        rows.append(f"<tr><td>{r.number}</td><td>{r.latency_s * 1000:.2f}</td>"
                    f"<td>{html.escape(_fmt_q(r.measurement.quality))}</td><td>{html.escape(r.recipe.describe())}</td>"
                    f"<td><code>{html.escape(cmd)}</code></td></tr>")
    return ("<table><tr><th>trial</th><th>latency ms</th><th>quality (search proxy)</th><th>recipe</th>"
            f"<th>export it</th></tr>{''.join(rows)}</table>" if rows else "<p>No feasible trial.</p>")


def load_snippet(result: Any, folder: Path) -> str:
    """How to load and re-measure the exported folder."""
    code = (f"import autoeff\npipe = autoeff.load({str(folder)!r})  # every knob of the recipe applied\n"
            "images = pipe(...).images  # called like the original pipeline")
    return (f"<pre>{html.escape(code)}</pre><p>Re-measure it on this machine: <code>autoeff bench "
            f"{html.escape(str(folder))}</code>. Plain <code>diffusers.DiffusionPipeline.from_pretrained</code> "
            "loads the stored weights but not the re-applied knobs (see autoeff.json).</p>")


def write_report(result: Any, folder: str | Path, chosen: Any = None, final_folder: Path | None = None) -> Path:
    """Write `pareto.png`, `samples.png` and a self-contained `report.html` into `folder` (`result`: an
    `autoeff.result.OptimizeResult`); `final_folder` is where the export will live once written (its load
    snippet names it), `folder` by default."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chosen = chosen or (result.best.record if result.best else None)
    metric = result.settings.metric
    pareto_png = plot_pareto(result.records, result.budget_s, result.baseline, chosen, folder / "pareto.png",
                             metric=metric)
    handle = result.handle
    n = GRID_SAMPLES if handle.family.startswith("digits") else 4
    spec = default_spec(handle, n, seed=12345, batch_size=n)
    base_imgs = generate(handle, handle.pipeline, spec)
    grids = [("baseline", base_imgs)]
    if chosen is not None:
        pipe = build_pipeline(handle, chosen.recipe, result.context)
        stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
        # the grid's batch would compile the static shapes again: draw it eagerly
        with stance("force_eager") if stance is not None else contextlib.nullcontext():
            grids.append((f"chosen (trial {chosen.number})", generate(handle, pipe, spec)))
    both = torch.cat([g for _, g in grids])
    save_grid(both, folder / "samples.png", nrow=n if n <= 16 else n // 2)
    grid_html = ""
    for name, g in grids:
        png = save_grid(g, folder / f"samples_{name.split()[0]}.png", nrow=min(len(g), 16))
        grid_html += (f"<h3>{html.escape(name)}</h3><img src=\"data:image/png;base64,{_b64(png)}\" "
                      f"alt=\"{html.escape(name)}\">\n")

    final = None
    if result.best is not None and chosen is not None and result.best.record.number == chosen.number:
        final = result.best.final
    base = result.baseline
    rows = []
    if chosen is not None:
        for knob, cfg in chosen.recipe.knobs.items():
            desc = cfg.describe() if hasattr(cfg, "describe") else str(cfg)
            rows.append(f"<tr><td>{html.escape(knob)}</td><td>{html.escape(desc)}</td>"
                        f"<td><code>{html.escape(json.dumps(chosen.recipe.to_dict()['knobs'][knob]['_data']))}"
                        "</code></td></tr>")
    figures = [("baseline", _fmt_lat(base.latency, base.latency_s), _fmt_q(base.final_quality))]
    if chosen is not None:
        figures.append((f"chosen, search proxy (trial {chosen.number})",
                        _fmt_lat(chosen.measurement.latency, chosen.latency_s), _fmt_q(chosen.measurement.quality)))
    if final is not None:
        figures.append(("chosen, re-measured", _fmt_lat(final.latency, final.latency_s), _fmt_q(final.quality)))
    fig_rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                       for a, b, c in figures)
    tau = getattr(result, "proxy_final_tau", None)
    tau_html = ("" if tau is None else f"<p>Rank agreement of the search proxy with the final sample on the "
                f"{len(result.finalists)} finalists: Kendall &tau; = {tau:.2f}.</p>")
    speed = f"<p class=\"headline\">{html.escape(headline(base, chosen, final))}</p>"
    if getattr(result, "infeasible", None):
        speed += f"<p class=\"warn\">Nothing met the budget: {html.escape(result.infeasible)}</p>"
    threads = html.escape(str(base.latency.threads))
    wait_policy = html.escape(str(base.latency.omp_wait_policy))
    budget_text = html.escape(result.settings.budget.text)
    if base.latency.yardstick_steps is not None:
        budget_text += (f"; every latency timed against the base pipeline at {base.latency.yardstick_steps} steps "
                        "run right after it, in the baseline's timing conditions")
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>autoeff report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
code{{font-size:11px}}img{{max-width:100%;image-rendering:pixelated}}h3+img{{min-width:60%}}
.headline{{font-size:20px}}.warn{{color:#a00}}pre{{background:#f4f4f4;padding:8px;font-size:12px}}</style></head><body>
<h1>autoeff report: {html.escape(handle.spec)}</h1>
<p>Device: {html.escape(str(base.latency.device))};
threads {threads}, OMP_WAIT_POLICY={wait_policy};
batch {result.settings.batch_size}; budget {result.budget_s * 1000:.2f} ms ({budget_text});
{len(result.records)} completed trials, {len(result.failed)} failed; sampler {result.settings.sampler},
seed {result.settings.seed}; quality proxy {html.escape(metric)} on {result.settings.proxy_samples} samples,
finalists on {result.settings.final_samples}.</p>
{speed}{tau_html}
<h2>Measured figures</h2><table><tr><th></th><th>latency</th><th>quality</th></tr>{fig_rows}</table>
<h2>Chosen recipe</h2><table><tr><th>knob</th><th>setting</th><th>config</th></tr>{''.join(rows)}</table>
<h2>Pareto front</h2><img src="data:image/png;base64,{_b64(pareto_png)}" alt="Pareto front">
{front_table(result)}
<h2>Use it</h2>{load_snippet(result, final_folder or folder)}
<h2>Samples (same seeds, same labels or prompts)</h2>
{grid_html}
</body></html>
"""
    out = folder / "report.html"
    out.write_text(doc)
    return out
