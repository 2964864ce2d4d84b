"""The `compile` knob: `torch.compile` of the denoiser (Ansel et al., 2024, "PyTorch 2: Faster Machine Learning
Through Dynamic Python Bytecode Transformation and Graph Compilation"), as diffusers' "speed up inference"
guide applies it (`pipe.unet = torch.compile(pipe.unet, ...)`).

Config:

* `mode`: `off`, or an inductor mode: `default`, `max-autotune-no-cudagraphs` (autotuned kernels), and on CUDA
  `reduce-overhead` (CUDA graphs) and `max-autotune` (both).
* `backend`: `inductor` (code generation, the default); `tensorrt` (CUDA only: torch_tensorrt's
  `torch.compile(backend="tensorrt")`, needs `pip install 'autoeff[tensorrt]'`; nothing is claimed for it
  until BENCHMARKS.md has a measurement); `aot_eager` / `eager` (no code generation, never faster: they
  check that a graph captures and are what the CPU tests use). Only inductor takes a mode.
* `scope`: `model` compiles the whole denoiser; `blocks` is regional compilation (the PyTorch recipe
  "Reducing torch.compile cold start compilation time with regional compilation"): diffusers'
  `compile_repeated_blocks` where the model class declares `_repeated_blocks`, otherwise the blocks a cache
  wrapper calls (a U-Net's down/mid/up blocks, a transformer's blocks; written here because none of the
  U-Nets, DiT or PixArt of diffusers 0.42.1 declares `_repeated_blocks`). Identical blocks share one graph.

Shapes are static (`dynamic=False`): a graph per batch size and resolution, the search's own.

Composition. Compile comes last (`Stage.COMPILE`) and compiles what the earlier knobs built (pruned,
quantized, fused), on a copy sharing the weights (`_wrapped.share_copy`; `apply` never mutates). Wrappers stay
eager Python outside the compiled code: guidance's wrapper calls the model whole, so either scope goes inside
it (a cut-off's two batch sizes are two static graphs); the cache wrappers re-implement the forward over the
model's blocks, so only scope `blocks` reaches what they call, and scope `model` with a caching wrapper is
refused with a reason the study records.

Compile time is measured by `autoeff.measure.Evaluator`, which sees no knobs: it warms a pipeline up until a
call compiles nothing, stores those seconds in `Measurement.compile`, apart from the per-call latency, and
times under `torch.compiler.set_stance("fail_on_recompile")`; `--compile-budget` caps the total. Compiled
graphs are reused: in one process dynamo serves every candidate whose denoiser has the same graph (classes,
shapes, mode) without compiling again; inductor's on-disk FX graph cache (`use_cache_dir`, the output folder
in a search) serves a new process, so a resumed search compiles from cache.

Dynamo keeps `recompile_limit` (8) graphs per code object and then runs that code eagerly without a word; a
search compiles one graph per distinct denoiser (pruning ratios, batch sizes), so `apply` raises the limit
to `RECOMPILE_LIMIT`. Dynamo's state is kept per code object, which every model of a class shares: a model
whose graph breaks in its loop over blocks would leave the others running that loop eagerly, so a call that
switches to a compiled denoiser of another structure resets dynamo first (`_compile_isolation`).
`autoeff.load` re-applies the knob (compiled on the first call); `disabled()` or `AUTOEFF_COMPILE=0` skips
compiling (the pipeline is returned uncompiled, otherwise identical).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch._dynamo.eval_frame import OptimizedModule

from autoeff.search_spaces._compile_isolation import isolate
from autoeff.search_spaces._wrapped import bind_caches, caches_in, share_copy, wrapper_chain
from autoeff.search_spaces.base import ConfigError, Knob, SpaceContext, Stage, copy_pipeline
from autoeff.search_spaces.registry import register

NAME = "compile"
MODES: tuple[str, ...] = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
CUDA_MODES: tuple[str, ...] = ("reduce-overhead", "max-autotune")  # CUDA graphs
BACKENDS: tuple[str, ...] = ("inductor", "tensorrt", "aot_eager", "eager")
SCOPES: tuple[str, ...] = ("model", "blocks")
DEFAULT_MODES: dict[str, tuple[str, ...]] = {"cpu": ("default", "max-autotune-no-cudagraphs"),
                                             "cuda": ("default", "max-autotune-no-cudagraphs", "reduce-overhead")}
TENSORRT_INSTALL = "pip install 'autoeff[tensorrt]' (or: pip install torch-tensorrt)"
RECOMPILE_LIMIT = 64
ENV_SWITCH = "AUTOEFF_COMPILE"  # "0": apply leaves the denoiser uncompiled
# The blocks a cache wrapper calls (cache/deepcache_unet.py, cache/block_cache_transformer.py).
_BLOCK_LISTS: tuple[str, ...] = ("down_blocks", "up_blocks", "transformer_blocks")
_enabled = True


@dataclass
class Config:
    """How the denoiser is compiled.

    Attributes:
        mode: `off` or one of `MODES` (inductor's modes; other backends take `default`).
        backend: one of `BACKENDS`.
        scope: `model` (the whole denoiser) or `blocks` (regional compilation).
    """

    mode: str = "off"
    backend: str = "inductor"
    scope: str = "model"
    version: int = 1

    def __post_init__(self) -> None:
        if self.mode != "off" and self.mode not in MODES:
            raise ConfigError(f"compile.mode {self.mode!r} is not known; use off or one of {', '.join(MODES)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"compile.backend {self.backend!r} is not known; use one of {', '.join(BACKENDS)}")
        if self.scope not in SCOPES:
            raise ConfigError(f"compile.scope {self.scope!r} is not known; use one of {', '.join(SCOPES)}")
        if self.mode == "off" and (self.backend, self.scope) != ("inductor", "model"):
            raise ConfigError(f"compile.mode 'off' compiles nothing, so backend={self.backend!r} and "
                              f"scope={self.scope!r} have no effect; leave them at 'inductor' and 'model'")
        if self.backend != "inductor" and self.mode not in ("off", "default"):
            raise ConfigError(f"compile.mode {self.mode!r} is an inductor mode; backend {self.backend!r} takes "
                              "mode 'default'")

    def describe(self) -> str:
        """E.g. `off`, `inductor max-autotune-no-cudagraphs`, `inductor default (blocks)`."""
        if self.mode == "off":
            return "off"
        return f"{self.backend} {self.mode}" + (" (blocks)" if self.scope == "blocks" else "")


def _device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


@dataclass
class Options:
    """Restrictions of the compile space: `modes` (default `DEFAULT_MODES` of the device), `backends` (default
    inductor only), `scopes` (default both)."""

    modes: list[str] | None = None
    backends: list[str] = field(default_factory=lambda: ["inductor"])
    scopes: list[str] = field(default_factory=lambda: list(SCOPES))

    def __post_init__(self) -> None:
        for name, allowed in (("modes", MODES), ("backends", BACKENDS), ("scopes", SCOPES)):
            value = getattr(self, name)
            if value is None and name == "modes":
                continue
            if not isinstance(value, list | tuple) or not value or any(v not in allowed for v in value):
                raise ConfigError(f"compile option {name}={value!r} must be a non-empty subset of "
                                  f"{', '.join(allowed)}")
            setattr(self, name, list(value))


def _modes(context: SpaceContext, opts: Options) -> list[str]:
    kind = _device_kind(context.device)
    modes = list(opts.modes if opts.modes is not None else DEFAULT_MODES[kind])
    if kind == "cpu" and any(m in CUDA_MODES for m in modes):
        raise ConfigError(f"compile option modes={modes!r}: {', '.join(CUDA_MODES)} use CUDA graphs, which need a "
                          "CUDA device; leave them out on the CPU")
    return modes


def suggest(trial: Any, context: SpaceContext) -> Config:
    """`compile.mode` (off or a mode), then `compile.backend` and `compile.scope` when it compiles."""
    opts: Options = KNOB.options_for(context)
    mode = trial.suggest_categorical(f"{NAME}.mode", ["off", *_modes(context, opts)])
    if mode == "off":
        return Config()
    backend = trial.suggest_categorical(f"{NAME}.backend", opts.backends)
    scope = trial.suggest_categorical(f"{NAME}.scope", opts.scopes)
    return Config(mode=mode if backend == "inductor" else "default", backend=backend, scope=scope)


def to_params(config: Config) -> dict[str, Any]:
    """The trial parameters `suggest` turns into `config`."""
    if config.mode == "off":
        return {f"{NAME}.mode": "off"}
    return {f"{NAME}.mode": config.mode, f"{NAME}.backend": config.backend, f"{NAME}.scope": config.scope}


def off(context: SpaceContext) -> Config:
    """Nothing compiled."""
    return Config()


def typical(context: SpaceContext) -> Config:
    """What a user would try first (warm starts): diffusers' "speed up inference" guide, the whole denoiser
    compiled by inductor, within the options given (their first mode, backend and scope otherwise)."""
    opts: Options = KNOB.options_for(context)
    backend = "inductor" if "inductor" in opts.backends else opts.backends[0]
    scope = "model" if "model" in opts.scopes else opts.scopes[0]
    modes = _modes(context, opts)
    mode = "default" if "default" in modes or backend != "inductor" else modes[0]
    return Config(mode=mode, backend=backend, scope=scope)


# --- switches ----------------------------------------------------------------------------------------------


def enabled() -> bool:
    """Whether `apply` compiles (`disabled()` and `AUTOEFF_COMPILE=0` turn it off)."""
    return _enabled and os.environ.get(ENV_SWITCH, "1") != "0"


@contextmanager
def disabled() -> Iterator[None]:
    """Within the block, `apply` returns the pipeline uncompiled (`autoeff.load(path, compile=False)`)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def use_cache_dir(path: str | Path) -> Path:
    """Keep inductor's compiled artifacts (its FX graph cache) in `path`, so a later process compiling the
    same graph reuses them; inductor reads `TORCHINDUCTOR_CACHE_DIR` whenever it looks up its cache."""
    folder = Path(path).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


# --- compiling ---------------------------------------------------------------------------------------------


def compile_kwargs(config: Config, device: str) -> dict[str, Any]:
    """The `torch.compile` arguments of `config`, after checking that `device` can run them."""
    cuda = _device_kind(device) == "cuda"
    if config.mode in CUDA_MODES and not cuda:
        raise ConfigError(f"compile.mode {config.mode!r} uses CUDA graphs and needs a CUDA device, not {device!r}; "
                          "use default or max-autotune-no-cudagraphs")
    if config.backend == "tensorrt":
        if not cuda:
            raise ConfigError(f"compile.backend 'tensorrt' runs on CUDA only, not {device!r}; use inductor")
        try:
            import torch_tensorrt  # noqa: F401  # lazy: optional extra (CUDA); importing registers the backend
        except ImportError as e:
            raise ConfigError(f"compile.backend 'tensorrt' needs torch_tensorrt ({e}); install it with "
                              f"{TENSORRT_INSTALL}, or use backend inductor") from None
    kwargs: dict[str, Any] = {"backend": config.backend, "dynamic": False}
    if config.backend == "inductor":
        kwargs["mode"] = config.mode
    return kwargs


def compile_blocks(model: nn.Module, **kwargs: Any) -> int:
    """Compile `model`'s blocks in place (`Module.compile`), returning how many: diffusers'
    `compile_repeated_blocks` where the class declares `_repeated_blocks`, else the down/mid/up blocks of a
    U-Net and the blocks of a transformer. Call it on a copy the caller owns."""
    if getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(**kwargs)  # type: ignore[operator]  # diffusers ModelMixin
        return sum(type(m).__name__ in model._repeated_blocks for m in model.modules())  # type: ignore[operator]
    blocks: list[nn.Module] = []
    for name in _BLOCK_LISTS:
        blocks += list(getattr(model, name, None) or [])
    if isinstance(getattr(model, "mid_block", None), nn.Module):
        blocks.append(model.mid_block)  # type: ignore[arg-type]  # checked on the line above
    if not blocks:
        raise ConfigError(f"compile.scope 'blocks': {type(model).__name__} has no down/mid/up or transformer blocks "
                          "and declares no _repeated_blocks; use scope 'model'")
    for block in blocks:
        block.compile(**kwargs)
    return len(blocks)


def compile_denoiser(denoiser: nn.Module, config: Config, device: str) -> nn.Module:
    """A compiled copy of `denoiser` (which is not modified): wrappers stay outside the compiled code."""
    kwargs = compile_kwargs(config, device)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if isinstance(denoiser, OptimizedModule):  # compiled before: compile the module inside, as configured
        denoiser = denoiser._orig_mod
    tree = share_copy(denoiser)
    chain, model = wrapper_chain(tree)
    if config.scope == "blocks":
        compile_blocks(model, **kwargs)
        return isolate(tree, scope=config.scope, **kwargs)
    if caches_in(tree):
        raise ConfigError("compile.scope 'model' cannot reach inside the cache wrapper (it calls the denoiser's "
                          "blocks, not its forward); use compile.scope 'blocks' with the cache knob")
    compiled = cast(nn.Module, torch.compile(model, **kwargs))  # an OptimizedModule
    if not chain:
        return isolate(compiled, scope=config.scope, **kwargs)
    chain[-1].base = compiled
    return isolate(tree, scope=config.scope, **kwargs)


def apply(pipe: Any, config: Config, context: SpaceContext) -> Any:
    """A copy of `pipe` whose denoiser is compiled by `config` (compiled on its first call); `pipe` and its
    modules are untouched. Off, or under `disabled()`, a plain copy."""
    new = copy_pipeline(pipe)
    if config.mode == "off" or not enabled():
        return new
    denoiser = getattr(pipe, context.denoiser, None)
    if denoiser is None:
        raise ConfigError(f"the pipeline {type(pipe).__name__} has no {context.denoiser!r} component")
    compiled = compile_denoiser(denoiser, config, context.device)
    new.register_modules(**{context.denoiser: compiled})
    bind_caches(compiled, new)
    return new


KNOB = register(Knob(
    name=NAME, stage=Stage.COMPILE, config=Config, options=Options, suggest=suggest, to_params=to_params,
    apply=apply, off=off, keeps_images=True, typical=typical,
    help="torch.compile of the denoiser (inductor modes, whole or regional; tensorrt on CUDA)"))

__all__ = ["NAME", "KNOB", "Config", "Options", "MODES", "BACKENDS", "SCOPES", "suggest", "to_params", "off", "typical",
           "apply", "enabled", "disabled", "use_cache_dir", "compile_kwargs", "compile_blocks", "compile_denoiser"]
