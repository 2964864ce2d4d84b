"""`autoeff` command line: a thin layer over the Python API.

User mistakes print one line (`error: ...`) and exit with status 2; no traceback.
"""

from __future__ import annotations

import os

# Set before torch is imported anywhere in this process: OpenMP spin-waiting made CPU forward passes ~35x
# slower when another process was busy (FACTS.md). The value in effect is recorded with every latency.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import click  # noqa: E402


def _quiet_libraries() -> None:
    """No per-component loading bars or library warnings in a CLI run (errors still show)."""
    import warnings

    import optuna
    from diffusers.utils import logging as dlog

    # failed candidates are reported in the progress line and in summary.json, not as Optuna tracebacks
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

EXIT_USAGE = 2


class UsageError(Exception):
    """A user mistake; printed as one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from autoeff.budget import BudgetError
    from autoeff.devices import DeviceError
    from autoeff.export import ExportError
    from autoeff.search import SearchError
    from autoeff.search_spaces.base import ConfigError

    errs: list[type[BaseException]] = [UsageError, BudgetError, DeviceError, ExportError, SearchError,
                                       ConfigError]
    try:
        from autoeff.models.registry import ModelNotAvailableError

        errs.append(ModelNotAvailableError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_guarded(fn: Any) -> Any:
    """Run `fn()`, turning user errors into one line and exit 2 (and Ctrl-C into exit 130)."""
    try:
        return fn()
    except KeyboardInterrupt:
        click.echo("interrupted: every completed trial is saved; run the same command again to resume",
                   err=True)
        sys.exit(130)
    except _user_errors() as e:
        from autoeff.api import NoFeasibleCandidateError

        code = 3 if isinstance(e, NoFeasibleCandidateError) else EXIT_USAGE
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, code)


class _OneLineUsageErrors(click.Group):
    """Click's usage errors (a bad option value, a missing option, an unknown command) print one line too."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            where = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            _fail(" ".join(e.format_message().split()) + where, e.exit_code)


@click.group(cls=_OneLineUsageErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autoeff")
def main() -> None:
    """autoeff: find the fastest diffusion pipeline that keeps quality, measured on your device."""
    _quiet_libraries()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def env(as_json: bool) -> None:
    """Print versions of torch, diffusers, optuna, ... and the devices visible."""
    from autoeff.env import environment

    info = environment()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"python {info['python']} on {info['platform']}")
    click.echo(f"cpu: {info['cpu']} ({info['cpu_count']} cores, torch threads {info['torch_threads']}, "
               f"OMP_WAIT_POLICY={info['omp_wait_policy']})")
    if info["cuda_devices"]:
        for d in info["cuda_devices"]:
            click.echo(f"cuda:{d['index']}: {d['name']} ({d['memory_gib']} GiB, sm {d['capability']})")
    else:
        click.echo(f"cuda: not available (torch built with CUDA {info['cuda_version']})")
    for name, v in info["versions"].items():
        click.echo(f"{name}: {v or 'not installed'}")


def _space_option(f: Any) -> Any:
    return click.option("--space", default="solver,schedule,cache", show_default=True,
                        help="Knobs to search: any of prune,quantize,solver,schedule,cache.")(f)


@main.command()
@click.option("--model", "model", required=True, help="digits, digits-dit, sd15, sd21, sdxl, pixart or a folder.")
@click.option("--model-path", default=None, help="Local folder holding the weights of a named model.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--budget", required=True, help="Latency of one pipeline call: 200ms, 0.2s, or 10% of baseline.")
@_space_option
@click.option("--metric", default=None, help="fid, kid, fidelity, clip, class_acc (default per model).")
@click.option("--trials", default=30, show_default=True, type=int)
@click.option("--sampler", default="nsga2", show_default=True, type=click.Choice(["nsga2", "tpe", "random"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--batch", "batch_size", default=1, show_default=True, type=int, help="Images per call.")
@click.option("--proxy-samples", default=None, type=int, help="Images scored per trial.")
@click.option("--final-samples", default=None, type=int, help="Images scored per finalist.")
@click.option("--top-k", default=3, show_default=True, type=int, help="Finalists re-measured.")
@click.option("--min-steps", default=2, show_default=True, type=int)
@click.option("--max-steps", default=50, show_default=True, type=int)
@click.option("--size-objective", is_flag=True, help="Also minimize model size.")
@click.option("--storage", default=None, help="Optuna storage URL (default: SQLite in --out).")
@click.option("--study-name", default="autoeff", show_default=True)
@click.option("--out", default="autoeff-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--best-effort", is_flag=True, help="Export the fastest candidate when none meets the budget.")
@click.option("--no-warm-start", is_flag=True, help="Do not enqueue hand-picked configurations first.")
@click.option("--trial-timeout", default=None, type=float, help="Seconds; a slower candidate fails its trial.")
@click.option("--threads", default=None, type=int, help="CPU threads used for timing (default: torch's).")
@click.option("--join", is_flag=True, help="Join an existing --storage/--study-name study; never create one.")
@click.option("--heartbeat-interval", default=None, type=int,
              help="Seconds between a running trial's heartbeats (default 20).")
@click.option("--grace-period", default=None, type=int,
              help="Seconds without a heartbeat before a trial is failed and retried (default 3 intervals).")
@click.option("--recover-steps", default=0, show_default=True, type=int,
              help="Distil the chosen candidate's pruned denoiser towards the unpruned one for this many steps "
                   "(kept only if it scores at least as well).")
def optimize(**kw: Any) -> None:
    """Search for the best-quality pipeline within a latency budget and export it."""
    run_guarded(lambda: _optimize(**kw))


def _optimize(model: str, model_path: str | None, device: str, budget: str, space: str, metric: str | None,
              trials: int, sampler: str, seed: int, batch_size: int, proxy_samples: int | None,
              final_samples: int | None, top_k: int, min_steps: int, max_steps: int, size_objective: bool,
              storage: str | None, study_name: str, out: str, best_effort: bool, no_warm_start: bool,
              trial_timeout: float | None, threads: int | None, join: bool = False,
              heartbeat_interval: int | None = None, grace_period: int | None = None,
              recover_steps: int = 0) -> None:
    from autoeff.budget import format_seconds, parse_budget
    from autoeff.devices import validate_device
    from autoeff.search_spaces.space import parse_space

    parsed_budget = parse_budget(budget)  # validate everything before anything is loaded or written
    device = validate_device(device)
    try:
        knobs = parse_space(space)
    except ValueError as e:
        raise UsageError(f"--space {space!r}: {e}") from None
    _check_numbers(trials=trials, top_k=top_k, threads=threads, batch=batch_size, proxy_samples=proxy_samples,
                   final_samples=final_samples, min_steps=min_steps, max_steps=max_steps, seed=seed,
                   trial_timeout=trial_timeout, metric=metric)
    if recover_steps < 0:
        raise UsageError(f"--recover-steps {recover_steps} must be at least 0")
    out_path = _safe_out(out)
    from autoeff.api import resolve_model
    from autoeff.distributed import normalize_storage_url
    from autoeff.search import default_storage

    storage_url = normalize_storage_url(storage) if storage else default_storage(out_path)
    has_studies = _check_storage(storage_url, "--storage" if storage else "the study in --out",
                                 new_parent_must_exist=storage is not None)
    handle = resolve_model(model, model_path=model_path, device=device)  # model errors before any output
    metric = _check_metric_fits(metric, handle, device)
    if has_studies:
        _check_existing_study(storage_url, study_name, handle, parsed_budget.text, {
            "device": device, "space": knobs, "metric": metric, "batch_size": batch_size,
            "size_objective": size_objective, "min_steps": min_steps, "max_steps": max_steps, "options": {},
            "seed": seed,
            **({"proxy_samples": proxy_samples} if proxy_samples is not None else {})})
    # what this run creates, removed again if it fails before its first trial (never what existed before)
    created = [p for p in (out_path, _sqlite_file(storage_url)) if p is not None and not p.exists()]
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    import autoeff

    console = Console(stderr=True)
    console.print(f"autoeff: optimizing [bold]{model}[/] on {device} within {budget} "
                  f"(space {','.join(knobs)}, {trials} trials, sampler {sampler}, seed {seed})")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as prog:
        task = prog.add_task("trials", total=trials, info="measuring baseline...")

        finished = {"trials": 0}

        def on_progress(p: dict[str, Any]) -> None:
            finished["trials"] = max(finished["trials"], p["done"])  # trials in the study (any worker's)
            best = "-" if p["best_score"] is None else f"{p['best_score']:.4g}"
            info = f"feasible {p['feasible']}, best score {best}"
            if p.get("last_state") == "WAITING":  # the target is reached here; other workers still measure
                info += f"; {p['last_reason']}"
            prog.update(task, completed=p["done"], info=info)

        result = None
        try:
            result = autoeff.optimize(
                handle, budget=parsed_budget, device=device, out=out_path, space=knobs, metric=metric,
                trials=trials, sampler=sampler, seed=seed, batch_size=batch_size, proxy_samples=proxy_samples,
                final_samples=final_samples, top_k=top_k, size_objective=size_objective, storage=storage,
                study_name=study_name, min_steps=min_steps, max_steps=max_steps, warm_start=not no_warm_start,
                trial_timeout_s=trial_timeout, model_path=model_path, best_effort=best_effort,
                progress=on_progress, threads=threads, join=join, heartbeat_interval=heartbeat_interval,
                grace_period=grace_period, recover_steps=recover_steps)
        except Exception:
            if not finished["trials"] and not (out_path / "summary.json").exists():
                _remove_created(created)
            raise
        finally:
            prog.update(task, info="done" if result is not None else "stopped")
    base = result.baseline
    best = result.best
    assert best is not None
    q = best.final.quality or {}
    bq = base.get("final_quality") or base.get("quality") or {}
    click.echo(f"baseline: {format_seconds(base['latency_s'])} per call, {bq.get('metric')} "
               f"{bq.get('value', float('nan')):.4g} (n={bq.get('n')})")
    click.echo(f"chosen:   {format_seconds(best.final.latency_s)} per call, {q.get('metric')} "
               f"{q.get('value', float('nan')):.4g} (n={q.get('n')}) "
               f"-> {base['latency_s'] / best.final.latency_s:.1f}x faster; trial {best.record.number}: "
               f"{best.record.recipe.describe()}")
    rec = result.recovery
    if rec is not None and not rec.get("applied"):
        click.echo(f"recovery: not applied ({rec.get('reason')})")
    elif rec is not None:
        before, after = (rec[k].get("quality") or {} for k in ("before", "after"))
        click.echo(f"recovery: {rec['steps']} steps, {before.get('metric')} {before.get('value', float('nan')):.4g}"
                   f" -> {after.get('value', float('nan')):.4g} ("
                   + ("kept" if rec["kept"] else "not kept: no better or over budget") + ")")
    click.echo(f"exported: {result.export_path}  (report: {result.export_path / 'report.html'})")


def _safe_out(out: str) -> Path:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {out!r} is a file; give a folder")
    return p


def _check_numbers(*, trials: int, top_k: int, threads: int | None, batch: int, proxy_samples: int | None,
                   final_samples: int | None, min_steps: int, max_steps: int, seed: int,
                   trial_timeout: float | None, metric: str | None) -> None:
    """Refuse out-of-range counts and an unknown metric name before anything is loaded or written."""
    from autoeff.evaluators.quality import METRICS

    for flag, value, least in (("--trials", trials, 1), ("--top-k", top_k, 1), ("--threads", threads, 1),
                               ("--batch", batch, 1), ("--proxy-samples", proxy_samples, 2),
                               ("--final-samples", final_samples, 2), ("--min-steps", min_steps, 1),
                               ("--seed", seed, 0)):
        if value is not None and value < least:
            raise UsageError(f"{flag} {value} must be at least {least}")
    if proxy_samples is not None and final_samples is not None and final_samples < proxy_samples:
        raise UsageError(f"--final-samples {final_samples} is below --proxy-samples {proxy_samples}; the "
                         "finalists need at least as many images as the search")
    if max_steps < min_steps:
        raise UsageError(f"--max-steps {max_steps} is below --min-steps {min_steps}; give --max-steps >= "
                         "--min-steps")
    if trial_timeout is not None and not 0 < trial_timeout < float("inf"):
        raise UsageError(f"--trial-timeout {trial_timeout} must be a positive number of seconds")
    if metric is not None and metric not in METRICS:
        raise UsageError(f"--metric {metric!r} is not known; use one of {', '.join(METRICS)}")


def _check_metric_fits(metric: str | None, handle: Any, device: str) -> str:
    """The metric for this model (the default one always fits); a chosen one is built once to check it fits
    the model and its weights are here, before any output is written."""
    from autoeff.api import default_metric

    if metric is None:
        return default_metric(handle)
    from autoeff.evaluators.quality import make_quality

    try:
        make_quality(metric, handle, device=device)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--metric {metric}: {' '.join(str(e).split())}") from None
    except ImportError as e:
        raise UsageError(f"--metric {metric} needs {e.name or 'an optional package'}, which is not installed; "
                         "pip install 'autoeff[clip]'") from None
    return metric


def _sqlite_file(url: str) -> Path | None:
    """The file of a `sqlite:///path` URL (None for other databases and in-memory SQLite)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError:
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def _masked(url: str) -> str:
    from autoeff.distributed import mask_url

    return mask_url(url)


def _check_storage(url: str, what: str, new_parent_must_exist: bool = True) -> bool:
    """Refuse a storage URL that cannot hold a study, reading only (nothing is created or written).

    Returns whether it already holds Optuna's tables (so a study of that name may exist).
    """
    import sqlite3

    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception as e:  # sqlalchemy ArgumentError (and ValueError for a bad port)
        raise UsageError(f"{what} {_masked(url)!r} is not a database URL ({' '.join(str(e).split())}); write "
                         "sqlite:///path/study.db or postgresql://user@host/db") from None
    if u.get_backend_name() == "sqlite":
        path = _sqlite_file(url)
        if path is None:
            raise UsageError(f"{what} {_masked(url)!r} keeps the study in memory, where it is lost at exit; write "
                             "sqlite:///path/study.db")
        if not path.exists():
            if new_parent_must_exist and not path.parent.is_dir():
                raise UsageError(f"{what} {_masked(url)!r}: folder {path.parent} does not exist; create it or choose "
                                 "another path")
            return False
        with open(path, "rb") as f:
            head = f.read(16)
        if not head:
            return False  # an empty file is an empty SQLite database
        if head != b"SQLite format 3\x00":
            raise UsageError(f"{what} {_masked(url)!r}: {path} is not an SQLite database; give a new file or an "
                             "Optuna study database")
        try:
            with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as con:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.Error as e:
            raise UsageError(f"{what} {_masked(url)!r}: {path} cannot be read as SQLite ({e})") from None
        if tables and "studies" not in tables:
            raise UsageError(f"{what} {_masked(url)!r}: {path} is another program's SQLite database (no Optuna "
                             "tables); give a new file")
        return "studies" in tables
    try:
        engine = sqlalchemy.create_engine(url)
    except ImportError as e:
        raise UsageError(f"{what} {_masked(url)!r} needs the database driver {e.name!r}, which is not installed; pip "
                         "install it, or name an installed driver in the URL (e.g. postgresql+psycopg2://)"
                         ) from None
    except Exception as e:  # unknown dialect (NoSuchModuleError), bad URL
        raise UsageError(f"{what} {_masked(url)!r} cannot be used: {type(e).__name__}: {' '.join(str(e).split())}; "
                         "write sqlite:///path/study.db or postgresql://user@host/db") from None
    try:
        with engine.connect() as con:
            return bool(sqlalchemy.inspect(con).has_table("studies"))
    except Exception as e:  # unreachable server, refused login, ...
        raise UsageError(f"{what} {_masked(url)!r}: cannot connect ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]})") from None
    finally:
        engine.dispose()


def _check_existing_study(url: str, study_name: str, handle: Any, budget_text: str,
                          settings: dict[str, Any]) -> None:
    """Refuse to resume a study made for another model, budget or search settings, before any output (the API
    checks again when it opens the study; this only reads)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=url)
    except KeyError:
        return
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise UsageError(f"cannot open storage {_masked(url)!r}: {type(e).__name__}: {first}") from None
    stored = study.user_attrs.get("settings_identity") or {}
    mine = json.loads(json.dumps({"model": handle.spec, "model_identity": handle.identity, **settings},
                                 default=str))
    diff = sorted(k for k in mine if k in stored and stored[k] != mine[k])
    if diff:
        raise UsageError(f"study {study_name!r} in {_masked(url)} was made with different {', '.join(diff)} ("
                         + ", ".join(f"{k}={stored[k]!r}, not {mine[k]!r}" for k in diff)
                         + "); use another --study-name or --out")
    old = study.user_attrs.get("budget")
    if old is not None and old != budget_text:
        raise UsageError(f"study {study_name!r} in {_masked(url)} was made for --budget {old}, not {budget_text}; "
                         "resume with --budget " + old + ", or use another --study-name or --out")


def _remove_created(paths: list[Path]) -> None:
    """Remove what this run created (a new --out folder, a new SQLite file) after it failed during setup."""
    import shutil

    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


@main.command()
@click.option("--out", default="autoeff-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--storage", default=None)
@click.option("--study-name", default="autoeff", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Every trial, not only the Pareto front.")
def show(out: str, storage: str | None, study_name: str, show_all: bool) -> None:
    """Print the Pareto front (or every trial) of a study."""
    run_guarded(lambda: _show(out, storage, study_name, show_all))


def _open_study(out: str, storage: str | None, study_name: str) -> dict[str, Any]:
    from autoeff.api import load_result
    from autoeff.search import default_storage

    if storage is None and not (Path(out) / "study.db").is_file():
        raise UsageError(f"no study in {out!r} (no study.db); pass --out of an optimize run or --storage")
    from autoeff.distributed import normalize_storage_url

    url = normalize_storage_url(storage) if storage else default_storage(Path(out))
    if not _check_storage(url, "--storage" if storage else "the study in --out"):  # reads only
        raise UsageError(f"no study in {url}; pass the --out or --storage an optimize run used")
    try:
        return load_result(out, storage=url, study_name=study_name)
    except KeyError:
        import optuna

        names = ", ".join(optuna.get_all_study_names(url)) or "none"
        raise UsageError(f"no study named {study_name!r} in {url}; pass --study-name (studies there: "
                         f"{names})") from None


def _show(out: str, storage: str | None, study_name: str, show_all: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from autoeff.search import pareto_front

    res = _open_study(out, storage, study_name)
    budget_s = res["budget_s"]
    if budget_s is None:
        raise UsageError(f"study {study_name!r} has no baseline yet (the run stopped while measuring it); run "
                         "`autoeff optimize` again with the same options to measure it and start the search")
    records = res["records"] if show_all else pareto_front(res["records"], budget_s)
    table = Table(title=f"{'trials' if show_all else 'Pareto front'} (budget {budget_s * 1000:.1f} ms)")
    for col in ("trial", "latency ms", "score", "metric", "size MB", "feasible", "recipe"):
        table.add_column(col)
    for r in sorted(records, key=lambda r: r.latency_s):
        q = r.measurement.quality or {}
        table.add_row(str(r.number), f"{r.latency_s * 1000:.2f}", "-" if r.score is None else f"{r.score:.4g}",
                      str(q.get("metric", "-")), f"{r.measurement.size_mb or 0:.2f}",
                      "yes" if r.feasible(budget_s) else "no", r.recipe.describe())
    Console().print(table)


@main.command("export")
@click.option("--out", default="autoeff-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--storage", default=None)
@click.option("--study-name", default="autoeff", show_default=True)
@click.option("--trial", "trial_number", required=True, type=int, help="Trial number (see `autoeff show`).")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--model-path", default=None)
def export_cmd(out: str, storage: str | None, study_name: str, trial_number: int, dest: str,
               model_path: str | None) -> None:
    """Export any trial of a study as a frozen pipeline folder."""
    run_guarded(lambda: _export(out, storage, study_name, trial_number, dest, model_path))


def _export(out: str, storage: str | None, study_name: str, trial_number: int, dest: str,
            model_path: str | None) -> None:
    from autoeff.api import resolve_model
    from autoeff.export import export_pipeline
    from autoeff.search import SearchSettings, context_for

    res = _open_study(out, storage, study_name)
    rec = next((r for r in res["records"] if r.number == trial_number), None)
    if rec is None:
        raise UsageError(f"trial {trial_number} is not a completed trial of this study (see `autoeff show --all`)")
    study = res["study"]
    ident = study.user_attrs.get("settings_identity", {})
    # exporting only prunes and saves weights: the CPU does it on any machine, whatever device was searched
    handle = resolve_model(rec.recipe.model, model_path=model_path, device="cpu")
    if ident.get("model_identity") and handle.identity != ident["model_identity"]:
        raise UsageError(f"model {rec.recipe.model!r} loaded here differs from the one the study searched")
    from autoeff.budget import Budget

    settings = SearchSettings(model=handle.spec, budget=Budget(text="export", seconds=1.0),
                              device=ident.get("device", "cpu"), space=ident.get("space", ["solver"]),
                              min_steps=ident.get("min_steps", 2), max_steps=ident.get("max_steps", 50),
                              options=ident.get("options", {}))
    path = export_pipeline(handle, rec.recipe, context_for(handle, settings), dest,
                           measured={"trial": rec.number, "proxy": rec.measurement.to_dict(), "final": None,
                                     "batch_size": ident.get("batch_size", 1), "metric": ident.get("metric"),
                                     "seed": ident.get("seed", 0)},
                           baseline=res["baseline"], device=settings.device)
    click.echo(f"exported trial {rec.number} to {path}")


@main.command()
@click.argument("path", type=click.Path())
@click.option("--device", default=None, help="Default: the device the export was measured on.")
@click.option("--samples", default=None, type=int, help="Quality sample count (default: the export's).")
@click.option("--threads", default=None, type=int)
@click.option("--model-path", default=None, help="The base model's folder, for metrics that compare to its images.")
def bench(path: str, device: str | None, samples: int | None, threads: int | None, model_path: str | None) -> None:
    """Re-measure an exported pipeline on this device: claimed vs measured latency and quality."""
    run_guarded(lambda: _bench(path, device, samples, threads, model_path))


def _bench(path: str, device: str | None, samples: int | None, threads: int | None,
           model_path: str | None = None) -> None:
    from autoeff.bench import bench_export
    from autoeff.devices import validate_device
    from autoeff.export import verify_folder

    if samples is not None and samples < 2:
        raise UsageError(f"--samples {samples} must be at least 2")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads} must be at least 1")
    if device is not None:
        device = validate_device(device)
    info = verify_folder(path)
    dev = validate_device(device or info.get("device") or "cpu")
    rows = bench_export(path, device=dev, samples=samples, threads=threads, model_path=model_path)
    for row in rows:
        click.echo(f"{row['what']:<10} claimed {row['claimed']:<24} measured {row['measured']}")


@main.command()
@click.option("--model", "model", default="digits", show_default=True)
@click.option("--model-path", default=None)
@click.option("--n", default=64, show_default=True, type=int)
@click.option("--steps", default=None, type=int, help="Default: the model's default step count.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "dest", default="samples.png", show_default=True, type=click.Path(dir_okay=False))
def generate(model: str, model_path: str | None, n: int, steps: int | None, seed: int, device: str,
             dest: str) -> None:
    """Generate a sample grid from a model (or an exported folder) and save it as a PNG."""
    run_guarded(lambda: _generate(model, model_path, n, steps, seed, device, dest))


def _generate(model: str, model_path: str | None, n: int, steps: int | None, seed: int, device: str,
              dest: str) -> None:
    from autoeff.devices import validate_device
    from autoeff.models.generate import default_spec, generate
    from autoeff.report import save_grid

    if n < 1:
        raise UsageError(f"--n {n} must be at least 1")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps {steps} must be at least 1")
    device = validate_device(device)
    if Path(model).is_dir() and (Path(model) / "autoeff.json").is_file():
        import autoeff

        pipe = autoeff.load(model, device=device)
        handle = pipe.autoeff_handle
    else:
        from autoeff.api import resolve_model

        handle = resolve_model(model, model_path=model_path, device=device)
        pipe = handle.pipeline
    if steps is not None:
        handle.default_steps = steps
    images = generate(handle, pipe, default_spec(handle, n, seed=seed, batch_size=min(n, 64)))
    save_grid(images, dest)
    click.echo(f"wrote {dest} ({n} images from {model})")


@main.command()
@click.option("--storage", default=None, help="The study's Optuna storage URL (postgresql://... or sqlite:///...).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Instead of --storage: the --out folder of an optimize run on this machine (its SQLite).")
@click.option("--study-name", default="autoeff", show_default=True)
@click.option("--model-path", default=None, help="Local folder holding the weights of the study's model.")
@click.option("--threads", default=None, type=int, help="CPU threads used for timing (default: torch's).")
@click.option("--heartbeat-interval", default=None, type=int, help="Default: the coordinator's.")
@click.option("--grace-period", default=None, type=int, help="Default: the coordinator's.")
def worker(storage: str | None, out: str | None, study_name: str, model_path: str | None, threads: int | None,
           heartbeat_interval: int | None, grace_period: int | None) -> None:
    """Run trials of a study that `autoeff optimize --storage ...` created, until it has its trial count."""
    run_guarded(lambda: _worker(storage, out, study_name, model_path, threads, heartbeat_interval, grace_period))


def _worker(storage: str | None, out: str | None, study_name: str, model_path: str | None, threads: int | None,
            heartbeat_interval: int | None, grace_period: int | None) -> None:
    from autoeff.api import join
    from autoeff.search import default_storage

    if (storage is None) == (out is None):
        raise UsageError("give the study's --storage URL (or the --out folder of an optimize run on this machine)")
    if out is not None and not (Path(out) / "study.db").is_file():
        raise UsageError(f"no study in {out!r} (no study.db); pass --out of an optimize run or --storage")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads} must be at least 1")
    from autoeff.distributed import normalize_storage_url

    url = normalize_storage_url(storage) if storage else default_storage(Path(out or "."))

    def on_trial(study: Any, trial: Any) -> None:
        m = trial.user_attrs.get("measurement") or {}
        what = (f"{m['latency_s'] * 1000:.2f} ms, score {m.get('score')}" if trial.state.name == "COMPLETE" and m
                else trial.user_attrs.get("fail_reason", ""))
        click.echo(f"trial {trial.number} {trial.state.name}: {what}", err=True)

    res = join(url, study_name, model_path=model_path, threads=threads, heartbeat_interval=heartbeat_interval,
               grace_period=grace_period, callbacks=[on_trial])
    click.echo(f"worker {res['worker']}: ran {res['ran']} trial(s); the study has {res['done']}/{res['target']} "
               "finished")


if __name__ == "__main__":  # pragma: no cover
    main()
