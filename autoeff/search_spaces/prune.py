"""The `prune` knob: structured channel pruning per block group, physically shrinking the denoiser's weights.

Channels are removed with torch-pruning's `DependencyGraph` (Fang et al., 2023, "DepGraph: Towards Any
Structural Pruning"), which finds every layer coupled to a channel (residual adds, skip concatenations,
GroupNorms, the time-embedding projections) and slices them together; channels are ranked by group
magnitude (L1 or L2 norm over the coupled weights). The diffusion-specific choices follow Diff-Pruning
(Fang, Ma & Wang, 2023, "Structural Pruning for Diffusion Models"): attention modules and the output
convolution are never pruned; channel counts stay multiples of `round_to` and of each GroupNorm's group count.

What is pruned:

* U-Nets (`UNet2DModel`, `UNet2DConditionModel`): every coupled channel set rooted at a Conv2d/Linear
  outside the attention blocks (`Attention`, `Transformer2DModel`), the time/class/text embeddings and
  `conv_out`. A set belongs to the block group of its first layer outside `embed`/`out` (the down block
  that writes a skip connection owns it, its up-block reader is sliced along).
* Transformers (DiT, PixArt, SD3, Flux's double-stream blocks, any whose `transformer_blocks` hold a diffusers
  `FeedForward`): the MLP hidden width of each block (`ff.net.0.proj` out / `ff.net.2` in). Attention heads
  are not pruned (DiT's adaLN modulation ties the residual width to every block). Sana's convolutional MLP
  (GLUMBConv) and Flux's single-stream blocks have no such projection: nothing there is pruned.

The pruned model keeps its original diffusers config, so `prune_plan(model)` (torch-pruning's pruning history:
root layer FQN, out/in, removed indices) plus the unpruned config rebuild it: `apply_plan(fresh_model, plan)`
replays the history deterministically and the pruned `state_dict` then loads with `strict=True`.

`recover` optionally distils the pruned denoiser towards the unpruned one (for the chosen candidate only).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import nn
from tqdm.auto import tqdm

from autoeff.search_spaces.base import (
    ConfigError,
    Knob,
    SpaceContext,
    Stage,
    StoredInWeights,
    copy_pipeline,
    features_of,
)
from autoeff.search_spaces.groups import (
    KEPT_GROUPS,
    Denoiser,
    block_groups,
    denoiser_output,
    example_inputs,
    group_of,
    noised_inputs,
    searched_groups,
)
from autoeff.search_spaces.registry import register

NAME = "prune"
RATIO_CHOICES: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5)
IMPORTANCES: dict[str, int] = {"l1": 1, "l2": 2}
PLAN_FORMAT = "torch-pruning-history"
PLAN_VERSION = 1
PLAN_ATTR = "_autoeff_prune_plan"
_UNETS = ("UNet2DModel", "UNet2DConditionModel")


@dataclass
class Config:
    """Per-group pruning ratios.

    Attributes:
        ratios: block group -> fraction of its prunable channels to remove, in [0, 1); groups not listed
            keep all channels (`embed` and `out` must stay 0).
        importance: channel ranking, `l1` or `l2` group magnitude.
        round_to: kept channel counts are multiples of this (and of each GroupNorm's group count).
    """

    ratios: dict[str, float] = field(default_factory=dict)
    importance: str = "l2"
    round_to: int = 8
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.ratios, dict):
            raise ConfigError(f"prune.ratios must be an object of group -> ratio, got {self.ratios!r}")
        for group, ratio in self.ratios.items():
            if not isinstance(group, str) or not group:
                raise ConfigError(f"prune.ratios key {group!r} must be a block group name like 'down.0'")
            if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio < 1.0:
                raise ConfigError(f"prune.ratios[{group!r}] = {ratio!r} must be a number in [0, 1); "
                                  f"the search uses {list(RATIO_CHOICES)}")
            if group in KEPT_GROUPS and ratio > 0:
                raise ConfigError(f"prune.ratios[{group!r}] = {ratio}: the {group} group is never pruned "
                                  "(embeddings and output layers fix the model's interface); set it to 0")
        self.ratios = {g: float(r) for g, r in self.ratios.items()}
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"prune.importance {self.importance!r} is not known; use one of "
                              f"{', '.join(IMPORTANCES)}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"prune.round_to {self.round_to!r} must be a positive integer (8 keeps "
                              "GroupNorm groups and tensor-core tiles whole)")

    def is_identity(self) -> bool:
        return all(r == 0 for r in self.ratios.values())

    def describe(self) -> str:
        """E.g. `l2/8: down.0=1/4 mid=1/2` or `none`."""
        parts = [f"{g}={_fraction(r)}" for g, r in self.ratios.items() if r > 0]
        return f"{self.importance}/{self.round_to}: " + " ".join(parts) if parts else "none"


def _fraction(r: float) -> str:
    for d in (2, 4, 8, 16):
        if abs(r * d - round(r * d)) < 1e-9:
            return f"{round(r * d)}/{d}"
    return f"{r:g}"


@dataclass
class Options:
    """Restrictions of the prune space: `ratios` (the choices per group), `importance` (`l1`, `l2`, or a list of
    both to search it), `round_to` (kept channel counts are multiples of it)."""

    ratios: list[float] = field(default_factory=lambda: list(RATIO_CHOICES))
    importance: str | list[str] = "l2"
    round_to: int = 8

    def __post_init__(self) -> None:
        ratios = self.ratios
        if (not isinstance(ratios, list | tuple) or not ratios
                or any(isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r < 1 for r in ratios)):
            raise ConfigError(f"prune option ratios={ratios!r} must be a non-empty list of numbers in [0, 1)")
        self.ratios = [float(r) for r in ratios]
        imp = [self.importance] if isinstance(self.importance, str) else self.importance
        if not isinstance(imp, list | tuple) or not imp or any(i not in IMPORTANCES for i in imp):
            raise ConfigError(f"prune option importance={self.importance!r} must be one of, or a list of, "
                              f"{', '.join(IMPORTANCES)}")
        self.importance = list(imp)
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"prune option round_to={self.round_to!r} must be a positive integer")

    @property
    def importances(self) -> list[str]:
        return [self.importance] if isinstance(self.importance, str) else list(self.importance)


def suggest(trial: Any, context: SpaceContext) -> Config:
    """`prune.mode` first: `off` (no pruning), `uniform` (one ratio, `prune.uniform.ratio`, for every block
    group) or `per_group` (one ratio per block group, `prune.<group>`, from `RATIO_CHOICES`); `embed`/`out`
    are kept. The mode keeps unpruned and uniformly pruned models a likely draw: with independent per-group
    ratios alone, almost every random draw prunes something.

    Options (`context.options["prune"]`): `ratios` (choices), `importance` (`l1`, `l2` or a list of both to
    search it as `prune.importance`), `round_to` (default 8).
    """
    opts: Options = KNOB.options_for(context)
    groups = searched_groups(context.block_groups)
    nonzero = [r for r in opts.ratios if r > 0]
    modes = ["off"] + (["uniform", "per_group"] if nonzero else [])
    mode = trial.suggest_categorical(f"{NAME}.mode", modes)
    if mode == "off":
        ratios = {g: 0.0 for g in groups}
    elif mode == "uniform":
        r = float(trial.suggest_categorical(f"{NAME}.uniform.ratio", nonzero))
        ratios = {g: r for g in groups}
    else:
        ratios = {g: float(trial.suggest_categorical(f"{NAME}.{g}", opts.ratios)) for g in groups}
    importance = opts.importances[0]
    if len(opts.importances) > 1:
        importance = trial.suggest_categorical(f"{NAME}.importance", opts.importances)
    return Config(ratios=ratios, importance=importance, round_to=opts.round_to)


def off(context: SpaceContext) -> Config:
    """No block group pruned (with the options' importance and rounding, so `to_params` fits `suggest`)."""
    opts: Options = KNOB.options_for(context)
    return Config(ratios={g: 0.0 for g in searched_groups(context.block_groups)}, importance=opts.importances[0],
                  round_to=opts.round_to)


def to_params(config: Config) -> dict[str, Any]:
    """The trial parameters `suggest` turns into `config` (`round_to` comes from the context's options)."""
    values = set(config.ratios.values())
    if not config.ratios or values == {0.0}:
        params: dict[str, Any] = {f"{NAME}.mode": "off"}
    elif len(values) == 1:
        params = {f"{NAME}.mode": "uniform", f"{NAME}.uniform.ratio": values.pop()}
    else:
        params = {f"{NAME}.mode": "per_group", **{f"{NAME}.{g}": r for g, r in config.ratios.items()}}
    params[f"{NAME}.importance"] = config.importance
    return params


# --- pruning ---------------------------------------------------------------------------------------------


def _ignored_modules(model: nn.Module) -> list[nn.Module]:
    """Modules whose channels are never pruned (a coupled set touching their outputs is skipped)."""

    name = type(model).__name__
    groups = block_groups(model)
    ignored: list[nn.Module] = []
    # Interface layers: embeddings (time, class, text, added conditioning) and the output projection.
    for child in groups["embed"] + groups["out"]:
        if child not in ("conv_in", "conv_norm_out", "conv_act"):
            ignored.append(model.get_submodule(child))
    if name in _UNETS:
        attention_types: tuple[type, ...] = (Attention,)
        try:

            attention_types = (Attention, Transformer2DModel)
        except ImportError:  # pragma: no cover - older diffusers layout
            pass
        ignored += [m for m in model.modules() if isinstance(m, attention_types)]
    return [m for layer in ignored for m in layer.modules()]


def _allowed_roots(model: Denoiser) -> set[nn.Module] | None:
    """Transformers: only the first MLP projection of each block may root a pruned set; U-Nets: any layer."""
    if type(model).__name__ in _UNETS:
        return None
    roots: set[nn.Module] = set()
    for block in getattr(model, "transformer_blocks", None) or []:
        ff = getattr(block, "ff", None)
        net = getattr(ff, "net", None)
        proj = getattr(net[0], "proj", None) if isinstance(net, nn.ModuleList) and len(net) else None
        if isinstance(proj, nn.Linear):
            roots.add(proj)
    return roots


def prunable(model: nn.Module, trace: bool = False) -> bool:
    """Whether this knob has channels to remove in `model`: a U-Net, or a transformer with MLP projections; with
    `trace`, also whether torch-pruning can build its dependency graph (it cannot for Flux's transformer, whose
    text and image tokens are concatenated: `IndexError` in its index mapping). The trace is remembered per
    model class, config and size."""
    if type(model).__name__ not in _UNETS and not _allowed_roots(model):
        return False
    if not trace:
        return True
    config = getattr(model, "config", {})
    key = (type(model).__name__, json.dumps(dict(config), sort_keys=True, default=str), _num_params(model))
    if key not in _TRACEABLE:
        try:
            graph = _dependency_graph(model)
            list(graph.get_all_groups(ignored_layers=_ignored_modules(model), root_module_types=[nn.Conv2d, nn.Linear]))
            _TRACEABLE[key] = True
        except Exception:  # any failure of torch-pruning's tracing means the knob cannot prune this model
            _TRACEABLE[key] = False
    return _TRACEABLE[key]


_TRACEABLE: dict[tuple[str, str, int], bool] = {}


def _check_supported(model: nn.Module) -> None:
    if not prunable(model):
        raise ConfigError(f"the prune knob has nothing to prune in a {type(model).__name__} (it prunes U-Nets and the "
                          "MLP width of transformer blocks); leave 'prune' out of the search space")


def _dependency_graph(model: nn.Module) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()
    inputs = example_inputs(model, batch=1)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs,
                                                  output_transform=denoiser_output, verbose=False)
    model.train(was_training)
    return graph


def _channel_groups(graph: tp.DependencyGraph, group: Any) -> int:
    """How many equal slices the coupled channels come in (a GroupNorm's groups); torch-pruning's rule."""
    n = 1
    for dep, _ in group:
        module = dep.target.module
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or (isinstance(module, nn.Conv2d) and module.groups == module.out_channels > 1):
            continue
        if graph.is_out_channel_pruning_fn(dep.handler):
            n = max(n, pruner.get_out_channel_groups(module) or 1)
        elif graph.is_in_channel_pruning_fn(dep.handler):
            n = max(n, pruner.get_in_channel_groups(module) or 1)
    return n


def kept_channels(channels: int, ratio: float, channel_groups: int = 1, round_to: int = 1) -> int:
    """Channels kept from `channels` at `ratio`: the nearest multiple of lcm(channel_groups, round_to)
    (ties keep more), at least one multiple; multiples of `channel_groups` alone when the lcm does not
    divide `channels`."""
    unit = math.lcm(channel_groups, round_to)
    if channels % unit:
        unit = channel_groups
    keep = math.floor(channels * (1.0 - ratio) / unit + 0.5) * unit
    return min(channels, max(unit, keep))


def _fix_resamplers(model: nn.Module) -> None:
    """Set `channels`/`out_channels` of diffusers Upsample2D/Downsample2D to the widths they now receive.

    They assert `hidden_states.shape[1] == self.channels`, an attribute torch-pruning cannot know about: a
    forward pass with pre-hooks reads the real input width.
    """

    resamplers = [m for m in model.modules() if isinstance(m, Downsample2D | Upsample2D)]
    if not resamplers:
        return

    # `module` is a diffusers Downsample2D/Upsample2D (Any): its `channels` are plain int attributes.
    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        module.channels = int(x.shape[1])
        conv = getattr(module, "conv", None)
        module.out_channels = int(conv.out_channels) if isinstance(conv, nn.Conv2d) else module.channels

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in resamplers]
    try:
        with torch.no_grad():
            model(**example_inputs(model, batch=1))
    finally:
        for h in handles:
            h.remove()


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_model(model: nn.Module, config: Config) -> dict[str, Any]:
    """Prune `model` in place by `config`; returns the plan (also kept on the model for `prune_plan`)."""
    _check_supported(model)
    groups = block_groups(model)
    unknown = [g for g in config.ratios if g not in groups]
    if unknown:
        raise ConfigError(f"prune.ratios names unknown block group(s) {unknown}; {type(model).__name__} has "
                          f"{', '.join(groups)}")
    graph = _dependency_graph(model)
    names = {m: n for n, m in model.named_modules()}
    order = {m: i for i, m in enumerate(names)}
    allowed = _allowed_roots(model)
    importance = tp.importance.GroupMagnitudeImportance(p=IMPORTANCES[config.importance])
    planned: list[tuple[nn.Module, Any, list[int]]] = []
    with torch.no_grad():
        for group in graph.get_all_groups(ignored_layers=_ignored_modules(model),
                                          root_module_types=[nn.Conv2d, nn.Linear]):
            root, handler = group[0].dep.target.module, group[0].dep.handler
            if allowed is not None and root not in allowed:
                continue
            layers = sorted({dep.target.module for dep, _ in group
                             if graph.is_out_channel_pruning_fn(dep.handler)
                             and isinstance(dep.target.module, nn.Conv2d | nn.Linear)}, key=order.__getitem__)
            owners = [group_of(names[m], groups) for m in layers]
            owner = next((g for g in owners if g not in KEPT_GROUPS), owners[0] if owners else None)
            ratio = config.ratios.get(owner, 0.0) if owner is not None else 0.0
            if ratio <= 0:
                continue
            scores = importance(group)
            if scores is None:
                continue
            n_groups = _channel_groups(graph, group)
            channels = len(scores)
            if channels % n_groups:
                continue
            keep = kept_channels(channels, ratio, n_groups, config.round_to)
            if keep >= channels:
                continue
            per = channels // n_groups
            # Equal slices of every GroupNorm group go (torch-pruning's MetaPruner does the same).
            ranked = torch.argsort(scores.view(n_groups, per).mean(0).cpu(), stable=True)
            drop = ranked[: per - keep // n_groups]
            planned.append((root, handler, sorted(int(i) + g * per for g in range(n_groups) for i in drop)))
        for root, handler, idxs in planned:
            pruning_group = graph.get_pruning_group(root, handler, idxs)
            if not graph.check_pruning_group(pruning_group):
                raise ConfigError(f"torch-pruning refused to prune {names[root]!r}; lower its group's ratio")
            pruning_group.prune()
    _fix_resamplers(model)
    plan = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "model": type(model).__name__,
            "history": [[str(n), bool(out), [int(getattr(i, "idx", i)) for i in idxs]]
                        for n, out, idxs in graph.pruning_history()],
            "num_params": _num_params(model)}
    setattr(model, PLAN_ATTR, plan)
    return copy.deepcopy(plan)


def prune_plan(model: nn.Module) -> dict[str, Any]:
    """The JSON-serializable plan that rebuilds `model`'s pruned architecture from its unpruned config.

    An unpruned model has an empty history.
    """
    plan = getattr(model, PLAN_ATTR, None)
    if plan is None:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "model": type(model).__name__, "history": [],
                "num_params": _num_params(model)}
    return copy.deepcopy(plan)


def apply_plan(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """Shrink a freshly built (unpruned) `model` in place to the architecture `plan` describes; returns it.

    The weights of kept channels are whatever `model` had; load the pruned `state_dict` afterwards.
    """
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ConfigError(f"not a pruning plan (expected format {PLAN_FORMAT!r})")
    if plan.get("version") != PLAN_VERSION:
        raise ConfigError(f"pruning plan version {plan.get('version')!r} is not the version this autoeff "
                          f"reads ({PLAN_VERSION}); upgrade autoeff")
    if plan.get("model") != type(model).__name__:
        raise ConfigError(f"the pruning plan is for a {plan.get('model')}, not a {type(model).__name__}")
    history = plan.get("history")
    if not isinstance(history, list):
        raise ConfigError("pruning plan history must be a list of [layer, is_out_channels, indices]")
    if history:
        _check_supported(model)
        graph = _dependency_graph(model)
        try:
            graph.load_pruning_history([[str(n), bool(o), [int(i) for i in idxs]] for n, o, idxs in history])
        except (AttributeError, IndexError, RuntimeError, ValueError) as e:
            raise ConfigError(f"the pruning plan does not fit this {type(model).__name__}: {e}") from None
        _fix_resamplers(model)
    if _num_params(model) != plan.get("num_params"):
        raise ConfigError(f"after the pruning plan the model has {_num_params(model)} parameters, the plan "
                          f"says {plan.get('num_params')}: the unpruned config differs from the one pruned")
    setattr(model, PLAN_ATTR, copy.deepcopy(plan))
    return model


def apply(pipe: Any, config: Config, context: SpaceContext) -> Any:
    """A copy of `pipe` whose denoiser is a pruned deep copy; `pipe` and its denoiser are untouched."""
    new = copy_pipeline(pipe)
    denoiser = getattr(pipe, context.denoiser, None)
    if denoiser is None:
        raise ConfigError(f"the pipeline {type(pipe).__name__} has no {context.denoiser!r} component")
    if config.is_identity():
        return new
    pruned = copy.deepcopy(denoiser)
    prune_model(pruned, config)
    new.register_modules(**{context.denoiser: pruned.eval()})
    return new


def recover(pipe_pruned: Any, pipe_teacher: Any, context: SpaceContext, steps: int = 200, lr: float = 1e-4,
            batch_size: int = 16, seed: int = 0, show_progress: bool = False) -> Any:
    """A copy of `pipe_pruned` whose denoiser is distilled towards `pipe_teacher`'s (both are untouched).

    Loss: MSE between student and teacher predictions on seeded random timesteps, noise and labels/text
    states (`groups.noised_inputs`) -- Diff-Pruning's recovery step (Fang, Ma & Wang, 2023) with the teacher's
    output in place of the data's noise, so no dataset is needed. Meant for the chosen candidate only.
    """

    if steps < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError(f"recover needs steps >= 1, lr > 0 and batch_size >= 1 (got {steps}, {lr}, "
                          f"{batch_size})")
    teacher = getattr(pipe_teacher, context.denoiser)
    student = copy.deepcopy(getattr(pipe_pruned, context.denoiser))
    scheduler = pipe_teacher.scheduler
    n_train = len(getattr(scheduler, "alphas_cumprod", range(context.num_train_timesteps)))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    teacher_was_training = teacher.training
    teacher.eval()
    student.requires_grad_(True).train()
    for _ in tqdm(range(steps), disable=not show_progress, desc="recover"):
        t = torch.randint(0, n_train, (batch_size,), generator=gen)
        inputs = noised_inputs(student, scheduler, batch_size, t, gen)
        with torch.no_grad():
            target = denoiser_output(teacher(**inputs))
        loss = torch.nn.functional.mse_loss(denoiser_output(student(**inputs)).float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    teacher.train(teacher_was_training)
    new = copy_pipeline(pipe_pruned)
    new.register_modules(**{context.denoiser: student.eval().requires_grad_(False)})
    return new


def applies_to(context: SpaceContext) -> bool:
    """Models with channels to prune and inputs to trace them with (the `prune` feature)."""
    return "prune" in features_of(context)


KNOB = register(Knob(
    name=NAME, stage=Stage.STRUCTURE, config=Config, options=Options, suggest=suggest, to_params=to_params,
    apply=apply, off=off, applies_to=applies_to, stored_in_weights=StoredInWeights(plan=prune_plan, restore=apply_plan),
    help="structured channel pruning per block group (torch-pruning DepGraph), weights physically smaller"))
