"""`autoeff` command line: a thin layer over the Python API.

`optimize`'s options are built from the settings schema (`autoeff.settings.SearchSettings` and `RunOptions`):
a new setting is a new field there, and appears here, in the API and in the stored study at once. User
mistakes print one line (`error: ...`) and exit with status 2 (3 when nothing met the budget); no traceback.

Imports of torch-heavy modules are lazy, inside the commands: the environment below must be set before torch
is first imported, and `autoeff --help` or a refused flag should not wait for torch.
"""

from __future__ import annotations

import os

# Set before torch is imported anywhere in this process: OpenMP spin-waiting made CPU forward passes ~35x
# slower when another process was busy (FACTS.md). The value in effect is recorded with every latency.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import click  # noqa: E402

from autoeff.budget import BudgetError, format_seconds  # noqa: E402
from autoeff.devices import DeviceError  # noqa: E402
from autoeff.errors import NoFeasibleCandidateError, SearchError  # noqa: E402
from autoeff.settings import Flag, RunOptions, SearchSettings  # noqa: E402

EXIT_USAGE = 2
EXIT_NO_FEASIBLE = 3


class UsageError(Exception):
    """A user mistake; printed as one line, exit status 2."""


def _quiet_libraries() -> None:
    """No per-component loading bars or library warnings in a CLI run (errors still show)."""
    import optuna  # lazy: heavy (see the module docstring)
    from diffusers.utils import logging as dlog  # lazy: heavy

    # failed candidates are reported in the progress line and in summary.json, not as Optuna tracebacks
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _user_errors() -> tuple[type[BaseException], ...]:
    from autoeff.export import ExportError  # lazy: heavy
    from autoeff.models.registry import ModelNotAvailableError  # lazy: heavy
    from autoeff.search_spaces.base import ConfigError  # lazy: importing the package registers the knobs

    return (UsageError, BudgetError, DeviceError, ExportError, SearchError, ConfigError, ModelNotAvailableError)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run `fn()`, turning user errors into one line and exit 2 (and Ctrl-C into exit 130)."""
    try:
        return fn()
    except KeyboardInterrupt:
        click.echo("interrupted: every completed trial is saved; run the same command again to resume",
                   err=True)
        sys.exit(130)
    except (UsageError, BudgetError, DeviceError, SearchError) as e:  # before anything heavy is imported
        _fail(_one_line(e), EXIT_NO_FEASIBLE if isinstance(e, NoFeasibleCandidateError) else EXIT_USAGE)
    except Exception as e:
        if isinstance(e, _user_errors()):
            _fail(_one_line(e))
        raise


def _one_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


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


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def env(as_json: bool) -> None:
    """Print versions of torch, diffusers, optuna, ... and the devices visible."""
    from autoeff.env import environment  # lazy: heavy

    info = environment()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"python {info['python']} on {info['platform']}")
    click.echo(f"cpu: {info['cpu']} ({info['cpu_count']} cores, torch threads {info['torch_threads']}, "
               f"OMP_WAIT_POLICY={info['omp_wait_policy']})")
    devices = info["cuda_devices"]
    if isinstance(devices, list) and devices:
        for d in devices:
            click.echo(f"cuda:{d['index']}: {d['name']} ({d['memory_gib']} GiB, sm {d['capability']})")
    else:
        click.echo(f"cuda: not available (torch built with CUDA {info['cuda_version']})")
    versions = info["versions"]
    assert isinstance(versions, dict)
    for name, v in versions.items():
        click.echo(f"{name}: {v or 'not installed'}")


# -- optimize: options from the settings schema -------------------------------------------------------------
class _KnobHelpOption(click.Option):
    """`--space`, whose help lists the registered knobs, built only when help is shown (it imports torch)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from autoeff.search_spaces.registry import help_lines  # lazy: the registry imports torch

        self.help = (self.help or "") + " Registered: " + "; ".join(help_lines()) + "."
        return super().get_help_record(ctx)


def _click_option(field: dataclasses.Field[Any], flag: Flag) -> Callable[[Any], Any]:
    """The click option for one settings field (its flag, type, default and help from the schema)."""
    default: Any = None
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    kw: dict[str, Any] = {"help": flag.help}
    if flag.kind in ("flag", "off-flag"):
        return click.option(flag.name, field.name, is_flag=True, flag_value=flag.kind == "flag",
                            default=default, **kw)
    if flag.required:
        kw["required"] = True
    else:
        kw["default"] = ",".join(default) if flag.kind == "space" else (str(default) if isinstance(default, Path)
                                                                         else default)
        kw["show_default"] = default is not None
    types: dict[str, Any] = {"int": int, "float": float, "str": str, "space": str,
                             "dir": click.Path(file_okay=False), "choice": click.Choice(list(flag.choices))}
    cls = _KnobHelpOption if flag.kind == "space" else click.Option
    return click.option(flag.name, field.name, type=types[flag.kind], cls=cls, **kw)


def _schema_options(*classes: type) -> Callable[[Any], Any]:
    """Decorate a command with one option per field (of `classes`) that has a CLI flag."""
    def decorate(fn: Any) -> Any:
        fields = [(f, f.metadata["flag"]) for cls in classes for f in dataclasses.fields(cls) if "flag" in f.metadata]
        for f, flag in reversed(fields):
            fn = _click_option(f, flag)(fn)
        return fn
    return decorate


def _split(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


@main.command()
@_schema_options(SearchSettings, RunOptions)
def optimize(**kw: Any) -> None:
    """Search for the best-quality pipeline within a latency budget and export it."""
    run_guarded(lambda: _optimize(kw))


def _optimize(values: dict[str, Any]) -> None:
    settings = SearchSettings(**_split(SearchSettings, values))  # every value checked before anything loads
    run = RunOptions(**_split(RunOptions, values))
    _quiet_libraries()
    from rich.console import Console  # lazy: the progress display
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from autoeff.evaluators.quality import describe  # lazy: heavy
    from autoeff.preflight import preflight
    from autoeff.run import BusyMachineWarning
    from autoeff.run import optimize as run_optimize

    pre = preflight(settings.model, settings, run)  # model, storage, metric, space, study: before any output
    s = pre.settings
    console = Console(stderr=True)
    if s.reference is not None:
        from autoeff.evaluators.features import MissingWeightsError, inception_weights_path  # lazy: heavy

        try:
            inception_weights_path()
        except MissingWeightsError as e:  # said once here; every figure names its features too
            console.print(f"note: FID/KID against --reference use weight-free 8x8-pixel features: {e}",
                          markup=False)
    left_out = [k for k in s.space if k not in pre.searched]
    console.print(f"autoeff: optimizing [bold]{settings.model}[/] on {s.device} within {s.budget.text} "
                  f"(space {','.join(pre.searched)}, {s.trials} trials, sampler {s.sampler}, seed {s.seed})"
                  + (f"; left out, not applicable to this model: {','.join(left_out)}" if left_out else ""))
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as prog:
        task = prog.add_task("trials", total=s.trials, info="measuring baseline...")

        def on_progress(p: Any) -> None:
            best = "-" if p.best_score is None else f"{p.best_score:.4g}"
            info = f"feasible {p.feasible}, best score {best}"
            if p.last_state == "WAITING":  # the target is reached here; other workers still measure
                info += f"; {p.last_reason}"
            prog.update(task, completed=p.done, info=info)

        result = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BusyMachineWarning)
            try:
                result = run_optimize(pre, progress=on_progress)
            finally:
                prog.update(task, info="done" if result is not None else "stopped")
                for w in caught:
                    if issubclass(w.category, BusyMachineWarning):
                        click.echo(f"warning: {w.message}", err=True)
    base, best = result.baseline, result.best
    assert best is not None and best.final.quality is not None
    q, bq = best.final.quality, base.final_quality
    click.echo(f"baseline: {format_seconds(base.latency_s)} per call, {describe(bq)}")
    click.echo(f"chosen:   {format_seconds(best.final.latency_s)} per call, {describe(q)} "
               f"-> {base.latency_s / best.final.latency_s:.1f}x faster; trial {best.record.number}: "
               f"{best.record.recipe.describe()}")
    rec = result.recovery
    if rec is not None and not rec.applied:
        click.echo(f"recovery: not applied ({rec.reason})")
    elif rec is not None and rec.before is not None and rec.after is not None:
        before, after = rec.before.quality, rec.after.quality
        click.echo(f"recovery: {rec.steps} steps, {before.metric if before else '-'} "
                   f"{before.value if before else float('nan'):.4g} -> "
                   f"{after.value if after else float('nan'):.4g} ("
                   + ("kept" if rec.kept else "not kept: no better or over budget") + ")")
    assert result.export_path is not None
    click.echo(f"exported: {result.export_path}  (report: {result.export_path / 'report.html'})")


# -- reading a study back -----------------------------------------------------------------------------------
def _open_study(out: str, storage: str | None, study_name: str) -> tuple[Any, list[Any]]:
    import optuna  # lazy: heavy

    from autoeff.api import load_result  # lazy: heavy
    from autoeff.storage import check_storage, storage_url  # lazy: sqlalchemy

    if storage is None and not (Path(out) / "study.db").is_file():
        raise UsageError(f"no study in {out!r} (no study.db); pass --out of an optimize run or --storage")
    url = storage_url(storage, Path(out))
    if not check_storage(url, "--storage" if storage else "the study in --out"):  # reads only
        raise UsageError(f"no study in {url}; pass the --out or --storage an optimize run used")
    if study_name not in optuna.get_all_study_names(url):
        names = ", ".join(optuna.get_all_study_names(url)) or "none"
        raise UsageError(f"no study named {study_name!r} in {url}; pass --study-name (studies there: {names})")
    return load_result(out, storage=url, study_name=study_name)


@main.command()
@click.option("--out", default="autoeff-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--storage", default=None)
@click.option("--study-name", default="autoeff", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Every trial, not only the Pareto front.")
def show(out: str, storage: str | None, study_name: str, show_all: bool) -> None:
    """Print the Pareto front (or every trial) of a study."""
    run_guarded(lambda: _show(out, storage, study_name, show_all))


def _show(out: str, storage: str | None, study_name: str, show_all: bool) -> None:
    _quiet_libraries()
    from rich.console import Console  # lazy: the table display
    from rich.table import Table

    from autoeff.selection import pareto_front  # lazy: heavy

    stored, records = _open_study(out, storage, study_name)
    budget_s = stored.budget_s
    if budget_s is None:
        raise UsageError(f"study {study_name!r} has no baseline yet (the run stopped while measuring it); run "
                         "`autoeff optimize` again with the same options to measure it and start the search")
    shown = records if show_all else pareto_front(records, budget_s)
    table = Table(title=f"{'trials' if show_all else 'Pareto front'} (budget {budget_s * 1000:.1f} ms)")
    for col in ("trial", "latency ms", "score", "metric", "size MB", "feasible", "recipe"):
        table.add_column(col)
    for r in sorted(shown, key=lambda r: r.latency_s):
        q = r.measurement.quality
        table.add_row(str(r.number), f"{r.latency_s * 1000:.2f}", "-" if r.score is None else f"{r.score:.4g}",
                      q.metric if q is not None else "-", f"{r.measurement.size_mb or 0:.2f}",
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
    _quiet_libraries()
    from autoeff.export import claim, export_pipeline  # lazy: heavy
    from autoeff.models.registry import resolve_model
    from autoeff.search import context_for

    stored, records = _open_study(out, storage, study_name)
    rec = next((r for r in records if r.number == trial_number), None)
    if rec is None:
        raise UsageError(f"trial {trial_number} is not a completed trial of this study (see `autoeff show --all`)")
    settings = stored.settings()
    # exporting only prunes and saves weights: the CPU does it on any machine, whatever device was searched
    handle = resolve_model(rec.recipe.model, model_path=model_path, device="cpu")
    identity = (stored.identity or {}).get("model_identity")
    if identity and handle.identity != identity:
        raise UsageError(f"model {rec.recipe.model!r} loaded here differs from the one the study searched")
    baseline = stored.baseline
    path = export_pipeline(handle, rec.recipe, context_for(handle, settings), dest,
                           measured=claim(rec.number, rec.measurement, None, settings),
                           baseline=None if baseline is None else baseline.to_dict(), device=settings.device)
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
    if samples is not None and samples < 2:
        raise UsageError(f"--samples {samples} must be at least 2")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads} must be at least 1")
    _quiet_libraries()
    from autoeff.bench import bench_export  # lazy: heavy
    from autoeff.devices import validate_device
    from autoeff.export import PlainDiffusersWarning, verify_folder

    if device is not None:
        device = validate_device(device)
    info = verify_folder(path)
    dev = validate_device(device or info.get("device") or "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PlainDiffusersWarning)
        rows = bench_export(path, device=dev, samples=samples, threads=threads, model_path=model_path)
    for w in caught:
        if issubclass(w.category, PlainDiffusersWarning):
            click.echo(f"note: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
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
    if n < 1:
        raise UsageError(f"--n {n} must be at least 1")
    if n > 4096:
        raise UsageError(f"--n {n} is more than 4096 images for one grid; give at most 4096")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps {steps} must be at least 1")
    if Path(dest).suffix.lower() != ".png":
        raise UsageError(f"--out {dest!r} must name a .png file (the grid is written as PNG)")
    _quiet_libraries()
    from autoeff.devices import validate_device  # lazy: heavy
    from autoeff.export import load
    from autoeff.manifest import AUTOEFF_JSON, MANIFEST_JSON
    from autoeff.models.generate import default_spec, generate
    from autoeff.models.registry import resolve_model
    from autoeff.report import save_grid

    device = validate_device(device)
    folder = Path(model)
    if folder.is_dir() and ((folder / MANIFEST_JSON).is_file() or (folder / AUTOEFF_JSON).is_file()):
        pipe = load(model, device=device)  # an export, or what is left of one: checked against its manifest
        handle = pipe.autoeff_handle
    else:
        handle = resolve_model(model, model_path=model_path, device=device)
        pipe = handle.pipeline
    if steps is not None and steps > handle.num_train_timesteps:
        raise UsageError(f"--steps {steps} is more than the {handle.num_train_timesteps} training timesteps of "
                         f"{model}; give at most {handle.num_train_timesteps}")
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
    if (storage is None) == (out is None):
        raise UsageError("give the study's --storage URL (or the --out folder of an optimize run on this machine)")
    if out is not None and not (Path(out) / "study.db").is_file():
        raise UsageError(f"no study in {out!r} (no study.db); pass --out of an optimize run or --storage")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads} must be at least 1")
    _quiet_libraries()
    from autoeff.api import join  # lazy: heavy
    from autoeff.storage import storage_url
    from autoeff.study import fail_reason, measurement_of

    url = storage_url(storage, Path(out or "."))

    def on_trial(study: Any, trial: Any) -> None:
        m = measurement_of(trial)
        what = (f"{m.latency_s * 1000:.2f} ms, score {m.score}" if trial.state.name == "COMPLETE" and m
                else fail_reason(trial) or "")
        click.echo(f"trial {trial.number} {trial.state.name}: {what}", err=True)

    res = join(url, study_name, model_path=model_path, threads=threads, heartbeat_interval=heartbeat_interval,
               grace_period=grace_period, callbacks=[on_trial])
    click.echo(f"worker {res.worker}: ran {res.ran} trial(s); the study has {res.done}/{res.target} finished")


if __name__ == "__main__":  # pragma: no cover
    main()
