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
from click.core import ParameterSource  # noqa: E402

from autoeff.budget import BudgetError, format_seconds, parse_budget  # noqa: E402
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
    if flag.required:  # checked after --config is read: the file may give it
        kw["help"] = flag.help + "  [required: here or in --config]"
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


def _go_offline(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:  # read per call by autoeff.models.hub (huggingface_hub itself reads it once, at import)
        os.environ["HF_HUB_OFFLINE"] = "1"
    return value


_offline_option = click.option(
    "--offline", is_flag=True, expose_value=False, callback=_go_offline,
    help="Hub models from the local Hugging Face cache only (as HF_HUB_OFFLINE=1).")


def _logging_options(fn: Any) -> Any:
    """`-v`/`-q`/`--log-file` on a command (see `autoeff.log`)."""
    fn = click.option("--log-file", type=click.Path(dir_okay=False), default=None,
                      help="Also write the log to this file (INFO; DEBUG with -vv).")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="Show warnings and errors only.")(fn)
    return click.option("-v", "--verbose", count=True,
                        help="One line per finished trial even on a terminal; -vv adds debug lines.")(fn)


def _configure_logging(verbose: int, quiet: bool, log_file: str | None) -> int:
    """Set up the autoeff logger for this command; returns the verbosity (-1 quiet .. 2 debug)."""
    from autoeff.log import configure  # lazy: keeps this module's import light (logging only, no torch)

    verbosity = -1 if quiet else min(verbose, 2)
    try:
        configure(verbosity, log_file)
    except OSError:  # the reason (EACCES, ENOENT, EROFS) varies with the user and the file system, not the fix
        raise UsageError(f"--log-file {log_file!r} cannot be written; give a file in a folder you can write") from None
    return verbosity


def _logged(verbose: int, quiet: bool, log_file: str | None, fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` run after the command's logging is set up (inside `run_guarded`, so a bad --log-file is one line)."""
    def run() -> Any:
        _configure_logging(verbose, quiet, log_file)
        return fn()
    return run


def _human(as_json: bool) -> Callable[[str], None]:
    """Where human-readable lines go: stdout, or stderr when stdout carries the JSON document."""
    return (lambda line: click.echo(line, err=True)) if as_json else click.echo


@main.command()
@_schema_options(SearchSettings, RunOptions)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="A TOML or YAML file of these options (keys: the flags without dashes); flags given here win. "
                   "Every run writes the one it ran as OUT/run.toml.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document on stdout.")
@_logging_options
def optimize(config_file: str | None, as_json: bool, verbose: int, quiet: bool, log_file: str | None,
             **kw: Any) -> None:
    """Search for the best-quality pipeline within a latency budget and export it."""
    ctx = click.get_current_context()
    given = {k for k in kw if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE,
                                                              ParameterSource.ENVIRONMENT)}

    def run() -> None:
        values = dict(kw)
        if config_file is not None:
            from autoeff.config_file import read_config  # lazy: yaml

            from_file = read_config(config_file)
            values.update({k: v for k, v in from_file.items() if k not in given})
        for name in ("model", "budget"):
            if values.get(name) is None:
                raise click.UsageError(f"Missing option '--{name}'.", ctx)
        _optimize(values, as_json, _configure_logging(verbose, quiet, log_file))

    run_guarded(run)


def _optimize(values: dict[str, Any], as_json: bool, verbosity: int) -> None:
    settings = SearchSettings(**_split(SearchSettings, values))  # every value checked before anything loads
    run = RunOptions(**_split(RunOptions, values))
    _quiet_libraries()
    from rich.console import Console  # lazy: the progress display
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from autoeff.evaluators.quality import describe  # lazy: heavy
    from autoeff.preflight import preflight
    from autoeff.run import optimize as run_optimize

    pre = preflight(settings.model, settings, run)  # model, storage, metric, space, study: before any output
    s = pre.settings
    if s.reference is not None:
        from autoeff.evaluators.features import MissingWeightsError, inception_weights_path  # lazy: heavy

        try:
            inception_weights_path()
        except MissingWeightsError as e:  # said once here; every figure names its features too
            click.echo(f"note: FID/KID against --reference use weight-free 8x8-pixel features: {e}", err=True)
    left_out = [k for k in s.space if k not in pre.searched]
    header = (f"autoeff: optimizing {settings.model} on {s.device} within {s.budget.text} (space "
              f"{','.join(pre.searched)}, {s.trials} trials, sampler {s.sampler}, seed {s.seed})"
              + (f"; left out, not applicable to this model: {','.join(left_out)}" if left_out else ""))
    console = Console(stderr=True)
    bar = console.is_terminal and verbosity == 0  # off a terminal (or with -v) the log's per-trial lines show
    if verbosity >= 0:
        click.echo(header, err=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=False, disable=not bar) as prog:
        task = prog.add_task("trials", total=s.trials, info="measuring baseline...")

        def on_progress(p: Any) -> None:
            best = "-" if p.best_score is None else f"{p.best_score:.4g}"
            info = f"feasible {p.feasible}, best score {best}"
            if p.last_state == "WAITING":  # the target is reached here; other workers still measure
                info += f"; {p.last_reason}"
            prog.update(task, completed=p.done, info=info)

        result = None
        try:
            result = run_optimize(pre, progress=on_progress)
        finally:
            prog.update(task, info="done" if result is not None else "stopped")
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2, default=str))
    if result.best is None:
        _fail(result.infeasible or "no candidate met the budget", EXIT_NO_FEASIBLE)
    echo = _human(as_json)
    base, best = result.baseline, result.best
    assert best is not None and best.final.quality is not None
    q, bq = best.final.quality, base.final_quality
    echo(f"baseline: {format_seconds(base.latency_s)} per call, {describe(bq)}")
    echo(f"chosen:   {format_seconds(best.final.latency_s)} per call, {describe(q)} "
         f"-> {base.latency_s / best.final.latency_s:.1f}x faster; trial {best.record.number}: "
         f"{best.record.recipe.describe()}")
    rec = result.recovery
    if rec is not None and not rec.applied:
        echo(f"recovery: not applied ({rec.reason})")
    elif rec is not None and rec.before is not None and rec.after is not None:
        before, after = rec.before.quality, rec.after.quality
        echo(f"recovery: {rec.steps} steps, {before.metric if before else '-'} "
             f"{before.value if before else float('nan'):.4g} -> {after.value if after else float('nan'):.4g} ("
             + ("kept" if rec.kept else "not kept: no better or over budget") + ")")
    if result.export_path is not None:
        echo(f"exported: {result.export_path}  (report: {result.export_path / 'report.html'})")


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@_logging_options
def show(out: str, storage: str | None, study_name: str, show_all: bool, as_json: bool, verbose: int, quiet: bool,
         log_file: str | None) -> None:
    """Print the Pareto front (or every trial) of a study."""
    run_guarded(_logged(verbose, quiet, log_file, lambda: _show(out, storage, study_name, show_all, as_json)))


def _show(out: str, storage: str | None, study_name: str, show_all: bool, as_json: bool = False) -> None:
    _quiet_libraries()
    from rich.console import Console  # lazy: the table display
    from rich.table import Table

    from autoeff.selection import pareto_front  # lazy: heavy

    stored, records = _open_study(out, storage, study_name)
    budget_s = stored.budget_s
    if budget_s is None:
        raise UsageError(f"study {study_name!r} has no baseline yet (the run stopped while measuring it); run "
                         "`autoeff optimize` again with the same options to measure it and start the search")
    front = pareto_front(records, budget_s)
    shown = sorted(records if show_all else front, key=lambda r: r.latency_s)
    if as_json:
        click.echo(json.dumps({"study": study_name, "budget_s": budget_s, "pareto": [r.number for r in front],
                               "trials": [r.to_dict() for r in shown]}, indent=2, default=str))
        return
    console = Console()
    title = f"{'trials' if show_all else 'Pareto front'} (budget {budget_s * 1000:.1f} ms)"
    columns = ("trial", "latency ms", "quality", "size MB", "feasible", "recipe")
    rows = []
    for r in shown:
        q = r.measurement.quality
        rows.append((str(r.number), f"{r.latency_s * 1000:.2f}",
                     "not measured" if q is None else f"{q.metric} {q.value:.4g}", f"{r.measurement.size_mb or 0:.2f}",
                     "yes" if r.feasible(budget_s) else "no", r.recipe.describe()))
    if not console.is_terminal:  # piped: plain tab-separated lines, nothing cut to a terminal's width
        click.echo(f"# {title}")
        for line in (columns, *rows):
            click.echo("\t".join(line))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@main.command("export")
@_offline_option
@click.option("--out", default="autoeff-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--storage", default=None)
@click.option("--study-name", default="autoeff", show_default=True)
@click.option("--trial", "trial_number", default=None, type=int, help="Trial number (see `autoeff show`).")
@click.option("--budget", default=None, help="Instead of --trial: the best stored candidate that meets this "
              "latency (200ms, 0.2s, or 10% of the baseline), re-timed on this machine first.")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--model-path", default=None)
@click.option("--threads", default=None, type=int, help="CPU threads used to re-time (default: torch's).")
@_logging_options
def export_cmd(out: str, storage: str | None, study_name: str, trial_number: int | None, budget: str | None,
               dest: str, model_path: str | None, threads: int | None, verbose: int, quiet: bool,
               log_file: str | None) -> None:
    """Export a trial of a study (by number, or the best for a latency budget) as a frozen pipeline folder."""
    if (trial_number is None) == (budget is None):
        raise click.UsageError("give --trial N or --budget B (not both)", click.get_current_context())
    run_guarded(_logged(verbose, quiet, log_file,
                        lambda: _export(out, storage, study_name, trial_number, dest, model_path, budget, threads)))


def _export(out: str, storage: str | None, study_name: str, trial_number: int | None, dest: str,
            model_path: str | None, budget: str | None = None, threads: int | None = None) -> None:
    _quiet_libraries()
    from autoeff.export import claim, export_pipeline  # lazy: heavy
    from autoeff.models.registry import resolve_model
    from autoeff.pick import budget_seconds, pick_under_budget
    from autoeff.search import context_for

    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads} must be at least 1")
    stored, records = _open_study(out, storage, study_name)
    settings = stored.settings()
    if budget is not None:
        budget_s = budget_seconds(budget, stored)  # the budget is refused before the model is loaded
    rec = next((r for r in records if r.number == trial_number), None) if trial_number is not None else None
    if trial_number is not None and rec is None:
        raise UsageError(f"trial {trial_number} is not a completed trial of this study (see `autoeff show --all`)")
    # a trial is exported on the CPU (it only prunes and saves weights); a budget is re-timed on the study's device
    device = settings.device if budget is not None else "cpu"
    if budget is not None:
        from autoeff.devices import validate_device  # lazy: torch

        device = validate_device(device)
    handle = resolve_model(settings.model, model_path=model_path, device=device)
    identity = (stored.identity or {}).get("model_identity")
    if identity and handle.identity != identity:
        raise UsageError(f"model {settings.model!r} loaded here differs from the one the study searched")
    measured_extra: dict[str, Any] = {}
    if budget is not None:
        relative = parse_budget(budget).fraction is not None
        pick = pick_under_budget(records, budget_s, handle, settings, threads=threads,
                                 baseline=stored.baseline if relative else None)
        rec = pick.record
        measured_extra = {"retimed": pick.retimed.to_dict(), "budget_s": budget_s}
        click.echo(f"trial {rec.number} meets {budget_s * 1000:.1f} ms: re-timed {pick.retimed.median_s * 1000:.1f} ms "
                   f"here ({rec.recipe.describe()})", err=True)
    assert rec is not None
    baseline = stored.baseline
    measured = {**claim(rec.number, rec.measurement, None, settings), **measured_extra}
    path = export_pipeline(handle, rec.recipe, context_for(handle, settings), dest, measured=measured,
                           baseline=None if baseline is None else baseline.to_dict(), device=settings.device)
    click.echo(f"exported trial {rec.number} to {path}")


@main.command()
@click.argument("path", type=click.Path())
@_offline_option
@click.option("--device", default=None, help="Default: the device the export was measured on.")
@click.option("--samples", default=None, type=int, help="Quality sample count (default: the export's).")
@click.option("--threads", default=None, type=int)
@click.option("--model-path", default=None, help="The base model's folder, for metrics that compare to its images.")
@click.option("--reference", default=None, help="The folder of reference images the claim was scored against, "
              "if it has moved since the search.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (the rows) on stdout.")
@_logging_options
def bench(path: str, device: str | None, samples: int | None, threads: int | None, model_path: str | None,
          reference: str | None, as_json: bool, verbose: int, quiet: bool, log_file: str | None) -> None:
    """Re-measure an exported pipeline on this device: claimed vs measured latency and quality."""
    run_guarded(_logged(verbose, quiet, log_file,
                        lambda: _bench(path, device, samples, threads, model_path, as_json, reference)))


def _bench(path: str, device: str | None, samples: int | None, threads: int | None,
           model_path: str | None = None, as_json: bool = False, reference: str | None = None) -> None:
    if samples is not None and samples < 2:
        raise UsageError(f"--samples {samples} must be at least 2")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads} must be at least 1")
    if reference is not None and not Path(reference).is_dir():
        raise UsageError(f"--reference {reference}: not a folder")
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
        rows = bench_export(path, device=dev, samples=samples, threads=threads, model_path=model_path,
                            reference=reference)
    for w in caught:
        if issubclass(w.category, PlainDiffusersWarning):
            click.echo(f"note: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if as_json:
        click.echo(json.dumps({"export": str(path), "device": dev, "rows": rows}, indent=2, default=str))
        return
    for row in rows:
        click.echo(f"{row['what']:<10} claimed {row['claimed']:<24} measured {row['measured']}")
        if row["what"] == "quality" and row["measured_value"] is None:
            click.echo(f"note: {row['note']}", err=True)  # why quality was not measured


@main.command()
@click.option("--model", "model", default="digits", show_default=True)
@_offline_option
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
@_offline_option
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
