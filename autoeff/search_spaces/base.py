"""The knob protocol: what a knob declares, what it may know about the model, and strict JSON for its config.

A knob is one module in this package that builds a `Knob` and registers it (`registry.register`), in the shape
of torchao's config -> handler registration: the config dataclass names the technique, the handler functions
say how to search and apply it. Everything else in autoeff (the search space, warm starts, the recipe, export,
load, the CLI's `--space` help and the error messages) iterates the registry; nothing outside a knob spells
its parameter names.

    KNOB = register(Knob(
        name="solver", stage=Stage.SCHEDULER, help="...",
        config=Config, options=Options,                  # @dataclasses with a `version` / plain fields
        suggest=suggest, to_params=to_params, apply=apply, off=None))

`apply` never mutates modules of the pipeline it receives: it copies what it changes (the search builds every
candidate from the same base pipeline). Serialization follows torchao's `{"_type", "_version", "_data"}` shape;
types are resolved only from the registry, never imported by name.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Generic, TypeVar

ConfigT = TypeVar("ConfigT")
OptionsT = TypeVar("OptionsT")


class ConfigError(ValueError):
    """A knob config (or a recipe, or a knob's options) is invalid; the message names the field and the fix."""


class Stage(IntEnum):
    """A knob's place in the application order (knobs of one stage are applied in name order)."""

    STRUCTURE = 10
    KERNELS = 15
    PRECISION = 20
    SCHEDULER = 30
    TIMESTEPS = 40
    WRAP = 50
    COMPILE = 60

    @property
    def reason(self) -> str:
        """Why a knob of this stage comes where it does, in one line."""
        return _STAGE_REASONS[self]


_STAGE_REASONS: dict[Stage, str] = {
    Stage.STRUCTURE: "changes the denoiser's architecture, so every later knob sees the final shapes",
    Stage.KERNELS: "swaps the final architecture's kernels (fused projections, memory format, attention backend) "
                   "before its precision is set, so quantization sees the fused layers",
    Stage.PRECISION: "changes how the final weights are stored and multiplied, once the architecture is fixed",
    Stage.SCHEDULER: "replaces the pipeline's scheduler, before anything configures the scheduler",
    Stage.TIMESTEPS: "configures the scheduler it is given, so it comes after the scheduler is chosen",
    Stage.WRAP: "wraps the denoiser module, after every knob that changes the module it wraps",
    Stage.COMPILE: "compiles the modules it is given, so it comes last, over the final modules",
}


@dataclass
class SpaceContext:
    """What a knob may know about the model when it suggests or applies a config.

    Attributes:
        family: model family (`digits`, `digits-dit`, `sd15`, `sdxl`, `pixart`, or a kind's label such as
            `flow-text-latent-transformer`; see `autoeff.models.kinds`).
        denoiser: `unet` or `transformer` (the pipeline attribute the knobs act on).
        num_train_timesteps: length of the training schedule (usually 1000).
        default_steps: the baseline's step count.
        min_steps / max_steps: the range the schedule knob searches.
        block_groups: names of the denoiser's block groups (for per-group bit-widths and pruning ratios).
        device: `cpu` or `cuda[:i]`.
        options: per-knob options from the user as plain JSON (e.g. {"solver": {"names": ["dpmpp"]}}); each
            knob reads its own through `Knob.options_for`, which validates them into its `Options` dataclass.
        noise: `ddpm` or `flow` (the model's noise process: which solvers and schedules exist).
        features: what the model and its denoiser can do, as `search_spaces.capabilities` finds it (`attention`,
            `fuse_qkv`, `groups`, `prune`, `example_inputs`, `guidance:batched`, `cache:<method>`); `None` for a
            context stored before features existed, read from its named family (`features_of`).
        flow_shift: a flow model's static shift (its scheduler's `shift` / `flow_shift`); `None` when the shift
            depends on the resolution (Flux's dynamic shifting) or the model is not a flow model.
    """

    family: str
    denoiser: str
    num_train_timesteps: int = 1000
    default_steps: int = 50
    min_steps: int = 4
    max_steps: int = 50
    block_groups: list[str] = field(default_factory=list)
    device: str = "cpu"
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    noise: str = "ddpm"
    features: list[str] | None = None
    flow_shift: float | None = None


# The features of the named families, for contexts stored before `SpaceContext.features` existed.
_FAMILY_FEATURES: dict[str, frozenset[str]] = {
    "digits": frozenset({"cache:reuse", "groups", "prune", "example_inputs"}),
    "digits-dit": frozenset({"cache:reuse", "attention", "groups", "prune", "example_inputs"}),
    "sd15": frozenset({"cache:reuse", "attention", "fuse_qkv", "groups", "prune", "example_inputs",
                       "guidance:batched"}),
    "sdxl": frozenset({"cache:reuse", "attention", "fuse_qkv", "groups", "prune", "example_inputs",
                       "guidance:batched"}),
    "pixart": frozenset({"cache:reuse", "attention", "fuse_qkv", "groups", "prune", "example_inputs",
                         "guidance:batched"}),
}


def features_of(context: SpaceContext) -> frozenset[str]:
    """The context's features (`SpaceContext.features`, or its named family's when it has none)."""
    if context.features is not None:
        return frozenset(context.features)
    return _FAMILY_FEATURES.get(context.family, frozenset())


@dataclass(frozen=True)
class StoredInWeights:
    """How a knob whose effect lives in the weights (pruning) is exported and loaded.

    `plan(denoiser)` returns the JSON that rebuilds the changed architecture from the denoiser's unchanged
    config; `restore(fresh_denoiser, plan)` rebuilds it (in place, returning it) before the stored weights are
    loaded into it. Knobs without it are re-applied from the recipe by `autoeff.load`.
    """

    plan: Callable[[Any], dict[str, Any]]
    restore: Callable[[Any, dict[str, Any]], Any]


def _never_simulated(config: Any) -> bool:
    return False


def _applies_everywhere(context: SpaceContext) -> bool:
    return True


@dataclass(frozen=True)
class Knob(Generic[ConfigT, OptionsT]):
    """One searchable technique.

    Attributes:
        name: the knob's name in `--space`, recipes and trial parameters (`solver`, `cache`, ...).
        stage: its place in the application order (`Stage`, whose `reason` says why).
        help: one line for `--space` help and the docs.
        config: the `@dataclass` a recipe stores (with a `version: int` field; validated in `__post_init__`).
        options: the `@dataclass` of the user's restrictions of its space (validated before a study starts).
        suggest: `(trial, context) -> config`, drawing Optuna parameters named `<name>...`.
        to_params: `config -> trial params` that make `suggest` return that config (for enqueued trials).
        apply: `(pipe, config, context) -> new pipe`; never mutates the pipeline it gets.
        off: `context -> config` that turns the knob off (warm starts use it for knobs a pick leaves out);
            `None` when every candidate must choose one (a solver, a schedule).
        is_simulated: whether a config's latency is not a real speed-up (fake quantization).
        stored_in_weights: how an export stores its effect; `None` means `autoeff.load` re-applies it.
        applies_to: `context -> bool`, whether the technique exists for that model (classifier-free guidance
            does not for a model without it); a knob that does not apply is left out of that model's search
            space (`space.SearchSpace`). Default: it applies to every model.
        keeps_images: whether the knob changes how the images are computed, not which (compiling, fused
            kernels: equal up to rounding); the budget-filling loop gives the best candidate's schedule the
            steps such a knob's speed allows (`planner.FillPlanner.transfer`).
        typical: `context -> config` a user would try first, or `None`.
    """

    name: str
    stage: Stage
    help: str
    config: type[ConfigT]
    options: type[OptionsT]
    suggest: Callable[[Any, SpaceContext], ConfigT]
    to_params: Callable[[ConfigT], dict[str, Any]]
    apply: Callable[[Any, ConfigT, SpaceContext], Any]
    off: Callable[[SpaceContext], ConfigT] | None = None
    is_simulated: Callable[[ConfigT], bool] = _never_simulated
    stored_in_weights: StoredInWeights | None = None
    applies_to: Callable[[SpaceContext], bool] = _applies_everywhere
    keeps_images: bool = False
    typical: Callable[[SpaceContext], ConfigT] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"knob name {self.name!r} must be an identifier")
        if not dataclasses.is_dataclass(self.config) or "version" not in {f.name for f in
                                                                          dataclasses.fields(self.config)}:
            raise TypeError(f"knob {self.name!r}: config must be a @dataclass with a `version` field")
        if not dataclasses.is_dataclass(self.options):
            raise TypeError(f"knob {self.name!r}: options must be a @dataclass")

    @property
    def exported(self) -> str:
        """`stored in the weights` or `re-applied on load`."""
        return "stored in the weights" if self.stored_in_weights is not None else "re-applied on load"

    def options_for(self, context: SpaceContext) -> OptionsT:
        """This knob's options from `context.options`, validated (unknown keys and bad values refused)."""
        return parse_options(self.name, self.options, context.options.get(self.name))


def parse_options(knob: str, cls: type[OptionsT], raw: Mapping[str, Any] | None) -> OptionsT:
    """`cls(**raw)`, refusing what is not a mapping, unknown keys and bad values with a one-line ConfigError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{knob} options must be an object of option -> value, got {raw!r}"[:300])
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"unknown {knob} option(s) {unknown}; known: {', '.join(names)}")
    try:
        return cls(**copy.deepcopy(dict(raw)))
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{knob} options: {e}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """`{"_type", "_version", "_data"}` for a dataclass config (lists stay lists, tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"{config!r} is not a dataclass config")
    data = dataclasses.asdict(config)
    version = data.pop("version", None)
    return {"_type": type(config).__name__, "_version": version, "_data": data}


def config_from_dict(cls: type[ConfigT], payload: Any) -> ConfigT:
    """Rebuild a config of class `cls` from `config_to_dict` output, refusing anything unexpected."""
    if not isinstance(payload, dict) or set(payload) != {"_type", "_version", "_data"}:
        raise ConfigError(f"a {cls.__name__} entry must be an object with exactly _type, _version, _data")
    if payload["_type"] != cls.__name__:
        raise ConfigError(f"expected _type {cls.__name__!r}, got {payload['_type']!r}")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    known_version = next((f.default for f in fields if f.name == "version"), None)
    if payload["_version"] != known_version:
        raise ConfigError(
            f"{cls.__name__} version {payload['_version']!r} is not the version this autoeff reads "
            f"({known_version}); upgrade autoeff or re-run the search")
    data = payload["_data"]
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}._data must be an object")
    names = {f.name for f in fields if f.name != "version"}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known: {sorted(names)}")
    try:
        return cls(**copy.deepcopy(data))
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None


def share_copy(module: Any) -> Any:
    """A copy of `module`'s tree (an `nn.Module`) sharing its parameters and buffers; regions compiled in place
    (`Module.compile()`) are dropped from the copy, since their compiled function calls the original module."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    new = copy.deepcopy(module, memo)
    for m in new.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    return new


def copy_pipeline(pipe: Any, **replace: Any) -> Any:
    """A new pipeline object sharing the same component modules (knobs copy what they change), with the
    components in `replace` swapped in.

    Every component stays exactly what was given: some pipelines replace one in `__init__` (`DDIMPipeline` turns
    any scheduler into a `DDIMScheduler`), which would silently undo a solver or a pinned schedule.
    """
    kwargs = {**dict(pipe.components), **replace}
    if "requires_safety_checker" in pipe.config:  # keeps SD pipelines from warning on every copy
        kwargs["requires_safety_checker"] = pipe.config.requires_safety_checker
    new = type(pipe)(**kwargs)
    changed = {k: v for k, v in kwargs.items() if k in new.components and getattr(new, k, None) is not v}
    if changed:
        new.register_modules(**changed)
    cfg = getattr(pipe, "_progress_bar_config", None)
    if cfg is not None:
        new.set_progress_bar_config(**cfg)
    bind_wrappers(new)
    return new


def bind_wrappers(pipe: Any) -> None:
    """Point every wrapper in `pipe`'s components that reads the pipeline (a cache wrapper reads its scheduler's
    step count: `bind_pipeline`) at `pipe`. Only wrapped components (a `base` or a compiled `_orig_mod`) are
    searched, so a plain model costs nothing."""
    for component in pipe.components.values():
        children = getattr(component, "_modules", None)
        if not children or not ("base" in children or "_orig_mod" in children):
            continue
        for module in component.modules():
            bind = getattr(type(module), "bind_pipeline", None)
            if callable(bind):
                bind(module, pipe)
