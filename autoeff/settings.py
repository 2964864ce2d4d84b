"""One schema for a search: the CLI's `optimize` options, the API's keywords and what a study stores.

`SearchSettings` is what defines a search (stored in the study; its `IDENTITY_FIELDS` must match to resume).
`RunOptions` is how this process runs it (where it writes, which storage, threads, heartbeats). Each field
carries its CLI flag and help in its metadata: `autoeff.cli` builds the `optimize` options from these two
dataclasses, and `autoeff.api.optimize` takes the same names as keywords (a test keeps them equal). Every
value is checked here, once, in `__post_init__`, before anything is loaded or written; a bad value raises
`SettingsError` naming the flag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoeff.budget import Budget, parse_budget
from autoeff.errors import SettingsError
from autoeff.evaluators.digest import folder_digest
from autoeff.evaluators.metric_names import METRICS
from autoeff.models.handle import ModelHandle

SAMPLERS: tuple[str, ...] = ("nsga2", "tpe", "gp", "fill", "random")
DEFAULT_SPACE: tuple[str, ...] = ("solver", "schedule", "cache")
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds
MAX_STUDY_NAME = 128  # it names a folder of the worker registry (NAME_MAX 255) and a database row
# Upper bounds of the counts (beyond them a typo allocates until the machine swaps, or runs for weeks).
_MOST = {"seed": MAX_SEED, "batch_size": 4096, "trials": 100_000, "top_k": 1000, "proxy_samples": 1_000_000,
         "final_samples": 1_000_000, "min_steps": 100_000, "max_steps": 100_000}
# Optuna heartbeats of every RDB storage: a running trial beats every interval; one silent for the grace period
# (default: this many intervals) is failed and retried (`autoeff.storage`, `autoeff.workers`).
HEARTBEAT_INTERVAL_S = 20
GRACE_FACTOR = 3


@dataclass(frozen=True)
class Flag:
    """How a settings field appears on the command line.

    `kind`: `int`, `float`, `str`, `dir` (a folder path), `choice` (from `choices`), `flag` (on when given),
    `off-flag` (the field is True unless the flag is given), `space` (comma-separated knob names).
    """

    name: str
    help: str
    kind: str = "str"
    choices: tuple[str, ...] = ()
    required: bool = False


def _flag(name: str, help: str, kind: str = "str", **kw: Any) -> dict[str, Flag]:
    return {"flag": Flag(name, help, kind, **kw)}


def flag_of(cls: type, name: str) -> Flag | None:
    """The CLI flag of field `name` of a settings dataclass, if it has one."""
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    return None if f is None else f.metadata.get("flag")


def _whole(value: Any, flag: str, least: int, most: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{flag} {value!r} must be a whole number")
    if value < least:
        raise SettingsError(f"{flag} {value} must be at least {least}")
    if most is not None and value > most:
        raise SettingsError(f"{flag} {value} must be at most {most}")


def default_metric(handle: ModelHandle, reference: str | None = None) -> str:
    """FID against the real data for the built-in models and against the user's `--reference` images; fidelity
    (SSIM to the baseline's own images on the same seeds and prompts) for others, which needs no extra weights
    and no data set."""
    return "fid" if handle.family in ("digits", "digits-dit") or reference is not None else "fidelity"


DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16")
MAX_PROMPTS = 100_000
MAX_PROMPT_CHARS = 10_000
# The workload fields: what the baseline and every candidate are called with. They were added after studies
# existed, so a study's identity holds them only when they are set (an older study resumes unchanged).
WORKLOAD_FIELDS: tuple[str, ...] = ("prompts", "negative_prompt", "labels", "resolution", "guidance_scale", "steps",
                                    "dtype", "reference")


def read_prompts(path: str | Path, flag: str = "--prompts") -> list[str]:
    """The prompts of a text file, one per line (blank lines skipped); SettingsError when the file is missing,
    empty, not UTF-8 text, or too large."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SettingsError(f"{flag} {str(path)!r} is not a file; give a text file with one prompt per line")
    if p.stat().st_size > 64 * 2**20:
        raise SettingsError(f"{flag} {str(path)!r} is larger than 64 MiB; give a text file with one prompt per line")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SettingsError(f"{flag} {str(path)!r} is not UTF-8 text; give a text file with one prompt per "
                            "line") from None
    if "\x00" in text:
        raise SettingsError(f"{flag} {str(path)!r} holds binary data (NUL bytes), not text; give a text file with "
                            "one prompt per line")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SettingsError(f"{flag} {str(path)!r} holds no prompt; write one prompt per line")
    return prompts


def _check_prompts(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str | Path):
        value = read_prompts(value)
    if (not isinstance(value, list | tuple) or not value or not all(isinstance(p, str) and p.strip() for p in value)):
        raise SettingsError("--prompts must be a text file (or, from the API, a non-empty list of non-empty strings)")
    if len(value) > MAX_PROMPTS or any(len(p) > MAX_PROMPT_CHARS for p in value):
        raise SettingsError(f"--prompts: at most {MAX_PROMPTS} prompts of at most {MAX_PROMPT_CHARS} characters each")
    return [str(p) for p in value]


def _check_labels(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = [v.strip() for v in value.split(",") if v.strip()]
        try:
            value = [int(v) for v in parts]
        except ValueError:
            raise SettingsError(f"--labels {value!r} must be class numbers separated by commas, e.g. 3,1,4") from None
    if (not isinstance(value, list | tuple) or not value
            or any(isinstance(v, bool) or not isinstance(v, int) for v in value)):
        raise SettingsError(f"--labels {value!r} must be class numbers separated by commas, e.g. 3,1,4")
    if any(v < 0 for v in value):
        raise SettingsError(f"--labels {','.join(map(str, value))}: a class number is at least 0")
    return list(value)


def default_samples(handle: ModelHandle) -> tuple[int, int]:
    """Images scored per trial and per finalist when the user gives none: `(proxy, final)`."""
    return (128, 1000) if handle.family.startswith("digits") else (16, 64)


@dataclass
class SearchSettings:
    """Everything that defines a search. Fields in `IDENTITY_FIELDS` must match to resume a study.

    `metric`, `proxy_samples` and `final_samples` may be left `None` and are filled per model by `resolved`;
    a stored study always holds resolved settings.
    """

    model: str = field(metadata=_flag("--model", "digits, digits-dit, sd15, sd21, sdxl, pixart, or a folder holding "
                                      "any diffusers pipeline of a covered kind.", required=True))
    budget: Budget = field(metadata=_flag("--budget", "Latency of one pipeline call: 200ms, 0.2s, or 10% of "
                                          "baseline.", required=True))
    device: str = field(default="cpu", metadata=_flag("--device", "cpu, cuda or cuda:N."))
    space: list[str] = field(default_factory=lambda: list(DEFAULT_SPACE),
                             metadata=_flag("--space", "Knobs to search, comma-separated.", "space"))
    metric: str | None = field(default=None, metadata=_flag(
        "--metric", f"{', '.join(METRICS)} (default per model)."))
    trials: int = field(default=30, metadata=_flag("--trials", "Candidates measured.", "int"))
    sampler: str = field(default="fill", metadata=_flag(
        "--sampler", "fill: the budget-filling loop (step counts from the measured latency model, timestep "
        "positions searched at few steps); or an Optuna sampler.", "choice", choices=SAMPLERS))
    seed: int = field(default=0, metadata=_flag("--seed", "Sampler seed and sample-set seed.", "int"))
    batch_size: int = field(default=1, metadata=_flag("--batch", "Images per call.", "int"))
    proxy_samples: int | None = field(default=None, metadata=_flag("--proxy-samples", "Images scored per trial.",
                                                                   "int"))
    final_samples: int | None = field(default=None, metadata=_flag("--final-samples",
                                                                   "Images scored per finalist.", "int"))
    top_k: int = field(default=3, metadata=_flag("--top-k", "Candidates each selection rung keeps at least, when "
                                                 "that many are within its noise of the best.", "int"))
    size_objective: bool = field(default=False, metadata=_flag("--size-objective", "Also minimize model size.",
                                                               "flag"))
    min_steps: int = field(default=2, metadata=_flag("--min-steps", "Fewest denoising steps searched.", "int"))
    max_steps: int = field(default=50, metadata=_flag("--max-steps", "Most denoising steps searched.", "int"))
    warm_start: bool = field(default=True, metadata=_flag("--no-warm-start", "Do not enqueue hand-picked "
                                                          "configurations first.", "off-flag"))
    trial_timeout_s: float | None = field(default=None, metadata=_flag(
        "--trial-timeout", "Seconds; a slower candidate fails its trial.", "float"))
    compile_budget_s: float | None = field(default=None, metadata=_flag(
        "--compile-budget", "Seconds the search may spend compiling (torch.compile); once spent, candidates that "
        "compile are not measured.", "float"))
    prompts: list[str] | None = field(default=None, metadata=_flag(
        "--prompts", "Text file, one prompt per line: what a text-to-image model is measured on (default: 16 "
        "ordinary prompts)."))
    negative_prompt: str | None = field(default=None, metadata=_flag(
        "--negative-prompt", "Negative prompt for every image (text-to-image models that take one)."))
    labels: list[int] | None = field(default=None, metadata=_flag(
        "--labels", "Class labels to draw, comma-separated (class-conditional models; default: every class in "
        "turn)."))
    resolution: int | None = field(default=None, metadata=_flag(
        "--resolution", "Image side in pixels (default: the model's).", "int"))
    guidance_scale: float | None = field(default=None, metadata=_flag(
        "--guidance-scale", "Classifier-free guidance scale (default: the pipeline's).", "float"))
    steps: int | None = field(default=None, metadata=_flag(
        "--steps", "Denoising steps of the baseline, the pipeline as you run it today (default: the pipeline's).",
        "int"))
    dtype: str | None = field(default=None, metadata=_flag(
        "--dtype", "Weights' precision (default: fp16 for text-to-image on CUDA, else fp32).", "choice",
        choices=DTYPES))
    reference: str | None = field(default=None, metadata=_flag(
        "--reference", "Folder of real images: FID/KID against them (default metric then fid).", "dir"))
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    IDENTITY_FIELDS = ("model", "device", "space", "metric", "batch_size", "proxy_samples", "size_objective",
                       "min_steps", "max_steps", "options", "seed", *WORKLOAD_FIELDS)

    def __post_init__(self) -> None:
        if isinstance(self.budget, str):
            self.budget = parse_budget(self.budget)
        elif not isinstance(self.budget, Budget):
            raise SettingsError(f"budget={self.budget!r} must be a latency string such as '200ms', '0.2s' or "
                                "'10%' (of the baseline)")
        # lazy: the knob registry imports torch and diffusers, and the CLI builds its options from this module
        from autoeff.search_spaces.base import ConfigError
        from autoeff.search_spaces.registry import knob_names
        from autoeff.search_spaces.space import parse_space

        raw_space = self.space
        try:
            self.space = parse_space(raw_space)
        except ConfigError as e:
            text = raw_space if isinstance(raw_space, str) else ",".join(map(str, raw_space))
            raise SettingsError(f"--space {text!r}: {e}") from None
        for name in ("trials", "top_k", "batch_size", "proxy_samples", "final_samples", "min_steps", "max_steps",
                     "seed"):
            value = getattr(self, name)
            if value is not None:
                least = {"proxy_samples": 2, "final_samples": 2, "seed": 0}.get(name, 1)
                _whole(value, self._flag(name), least, _MOST.get(name))
        if self.proxy_samples is not None and self.final_samples is not None and \
                self.final_samples < self.proxy_samples:
            raise SettingsError(f"--final-samples {self.final_samples} is below --proxy-samples "
                                f"{self.proxy_samples}; the finalists need at least as many images as the search")
        if self.max_steps < self.min_steps:
            raise SettingsError(f"--max-steps {self.max_steps} is below --min-steps {self.min_steps}; give "
                                "--max-steps >= --min-steps")
        t = self.trial_timeout_s
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < math.inf):
            raise SettingsError(f"--trial-timeout {t} must be a positive number of seconds")
        c = self.compile_budget_s
        if c is not None and (isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c < math.inf):
            raise SettingsError(f"--compile-budget {c} must be a number of seconds >= 0")
        if self.metric is not None and self.metric not in METRICS:
            raise SettingsError(f"--metric {self.metric!r} is not known; use one of {', '.join(METRICS)}")
        if self.sampler not in SAMPLERS:
            raise SettingsError(f"--sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if not isinstance(self.device, str) or not self.device:
            raise SettingsError(f"--device {self.device!r} must be cpu, cuda or cuda:N")
        self._check_workload()
        if not isinstance(self.options, dict) or not all(isinstance(v, dict) for v in self.options.values()):
            raise SettingsError("options must map knob names to objects of that knob's options, e.g. "
                                "{'solver': {'names': ['dpmpp']}}")
        unknown = sorted(set(self.options) - set(knob_names()))
        if unknown:
            raise SettingsError(f"options name unknown knob(s) {unknown}; known knobs: {', '.join(knob_names())}")

    def _check_workload(self) -> None:
        """The workload fields' own values (what they mean for the model is checked by `preflight`)."""
        self.prompts = _check_prompts(self.prompts)
        self.labels = _check_labels(self.labels)
        if self.negative_prompt is not None and (not isinstance(self.negative_prompt, str)
                                                 or len(self.negative_prompt) > MAX_PROMPT_CHARS):
            raise SettingsError(f"--negative-prompt must be text of at most {MAX_PROMPT_CHARS} characters")
        if self.resolution is not None:
            _whole(self.resolution, "--resolution", 8, 8192)
        if self.steps is not None:
            _whole(self.steps, "--steps", 1, 100_000)
        g = self.guidance_scale
        if g is not None and (isinstance(g, bool) or not isinstance(g, int | float) or not 0 <= g <= 100):
            raise SettingsError(f"--guidance-scale {g!r} must be a number in [0, 100] (1 turns guidance off)")
        if self.dtype is not None:
            key = str(self.dtype).lower().removeprefix("torch.")
            key = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}.get(key, key)
            if key not in DTYPES:
                raise SettingsError(f"--dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
            self.dtype = key
        if self.reference is not None:
            if not isinstance(self.reference, str | Path) or not Path(self.reference).expanduser().is_dir():
                raise SettingsError(f"--reference {str(self.reference)!r} is not a folder; give a folder of real "
                                    "images (png, jpg, webp)")
            self.reference = str(Path(self.reference).expanduser().resolve())

    @staticmethod
    def _flag(name: str) -> str:
        flag = flag_of(SearchSettings, name)
        return flag.name if flag is not None else name

    def resolved(self, handle: ModelHandle) -> SearchSettings:
        """These settings with the per-model defaults filled in (metric, sample counts) and the model's spec."""
        proxy, final = default_samples(handle)
        proxy = self.proxy_samples if self.proxy_samples is not None else proxy
        final = self.final_samples if self.final_samples is not None else max(final, proxy)
        metric = self.metric or default_metric(handle, self.reference)
        return dataclasses.replace(self, model=handle.spec, metric=metric,
                                   proxy_samples=proxy, final_samples=final, space=list(self.space),
                                   options=dict(self.options))

    @property
    def proxy_n(self) -> int:
        """The proxy sample count of resolved settings."""
        if self.proxy_samples is None:
            raise SettingsError("settings are not resolved for a model (proxy_samples is None)")
        return self.proxy_samples

    @property
    def final_n(self) -> int:
        """The final sample count of resolved settings."""
        if self.final_samples is None:
            raise SettingsError("settings are not resolved for a model (final_samples is None)")
        return self.final_samples

    def identity(self, model_identity: str) -> dict[str, Any]:
        """What must match for trials to be comparable (budget excluded: feasibility is recomputed). A workload
        field is in it only when set; the reference folder by the digest of its images, not its path (a worker
        on another machine has its own copy)."""
        d = {k: getattr(self, k) for k in self.IDENTITY_FIELDS
             if k not in WORKLOAD_FIELDS or getattr(self, k) is not None}
        if self.reference is not None:
            d["reference"] = folder_digest(Path(self.reference))
        d["model_identity"] = model_identity
        return json.loads(json.dumps(d, sort_keys=True, default=str))

    def identity_hash(self, model_identity: str) -> str:
        return hashlib.sha256(json.dumps(self.identity(model_identity), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (the budget as the text the user gave)."""
        d = dataclasses.asdict(self)
        d["budget"] = self.budget.text
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSettings:
        """Settings stored by `to_dict` (fields a newer autoeff added are refused, older missing ones default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SettingsError(f"stored settings have unknown field(s) {unknown}; upgrade autoeff")
        return cls(**data)


@dataclass
class RunOptions:
    """How this process runs a search: where it writes, which storage, and its own resources."""

    out: Path = field(default=Path("autoeff-out"), metadata=_flag("--out", "Output folder (study, export).", "dir"))
    storage: str | None = field(default=None, metadata=_flag("--storage", "Optuna storage URL (default: SQLite in "
                                                              "--out)."))
    study_name: str = field(default="autoeff", metadata=_flag("--study-name", "The study's name in the storage."))
    model_path: str | None = field(default=None, metadata=_flag("--model-path", "Local folder holding the weights "
                                                                 "of a named model."))
    offline: bool = field(default=False, metadata=_flag(
        "--offline", "Hub models from the local Hugging Face cache only (as HF_HUB_OFFLINE=1); by default a hub "
        "id not cached is downloaded, as diffusers does.", "flag"))
    threads: int | None = field(default=None, metadata=_flag("--threads", "CPU threads used for timing (default: "
                                                              "torch's).", "int"))
    join: bool = field(default=False, metadata=_flag("--join", "Join an existing --storage/--study-name study; "
                                                      "never create one.", "flag"))
    heartbeat_interval: int | None = field(default=None, metadata=_flag(
        "--heartbeat-interval", "Seconds between a running trial's heartbeats (default 20).", "int"))
    grace_period: int | None = field(default=None, metadata=_flag(
        "--grace-period", "Seconds without a heartbeat before a trial is failed and retried (default 3 "
        "intervals).", "int"))
    best_effort: bool = field(default=False, metadata=_flag("--best-effort", "Export the fastest candidate when "
                                                             "none meets the budget.", "flag"))
    mlflow_uri: str | None = field(default=None, metadata=_flag(
        "--mlflow-uri", "Log the settings, every trial and the export to this MLflow tracking URI (e.g. "
        "sqlite:///mlflow.db); needs the [mlflow] extra."))
    recover_steps: int = field(default=0, metadata=_flag(
        "--recover-steps", "Distil the chosen candidate's pruned denoiser towards the unpruned one for this many "
        "steps (kept only if it scores at least as well).", "int"))
    export: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.threads is not None:
            _whole(self.threads, "--threads", 1)
        _whole(self.recover_steps, "--recover-steps", 0)
        if self.heartbeat_interval is not None:
            _whole(self.heartbeat_interval, "--heartbeat-interval", 1)
        if self.grace_period is not None:
            _whole(self.grace_period, "--grace-period", 1)
            interval = self.heartbeat_interval or HEARTBEAT_INTERVAL_S
            if self.grace_period <= interval:
                raise SettingsError(f"--grace-period {self.grace_period} must be longer than the heartbeat "
                                    f"interval ({interval} s); e.g. {GRACE_FACTOR * interval}")
        if not isinstance(self.study_name, str) or not self.study_name:
            raise SettingsError("--study-name must be a non-empty name")
        if len(self.study_name) > MAX_STUDY_NAME or not self.study_name.isprintable():
            raise SettingsError(f"--study-name must be at most {MAX_STUDY_NAME} printable characters (got "
                                f"{len(self.study_name)})")



def settings_fields() -> list[str]:
    """The keyword names of `autoeff.api.optimize` besides `model`: every settings and run-option field."""
    names = [f.name for f in dataclasses.fields(SearchSettings) if f.name != "model"]
    return names + [f.name for f in dataclasses.fields(RunOptions)]


def split_fields(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`values` split into SearchSettings keywords and RunOptions keywords (anything else is refused)."""
    s_names = {f.name for f in dataclasses.fields(SearchSettings)}
    r_names = {f.name for f in dataclasses.fields(RunOptions)}
    unknown = sorted(set(values) - s_names - r_names)
    if unknown:
        raise SettingsError(f"unknown setting(s) {unknown}")
    return ({k: v for k, v in values.items() if k in s_names}, {k: v for k, v in values.items() if k in r_names})


__all__ = ["SearchSettings", "RunOptions", "Flag", "flag_of", "SAMPLERS", "DEFAULT_SPACE", "default_metric",
           "default_samples", "settings_fields", "split_fields", "read_prompts", "folder_digest", "DTYPES",
           "WORKLOAD_FIELDS",
           "HEARTBEAT_INTERVAL_S", "GRACE_FACTOR"]
