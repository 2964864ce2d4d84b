"""The `quantize` knob: a per-layer (or per-block-group) precision map over a denoiser's Linear/Conv2d layers.

The map has the shape of torchao's `FqnToConfig` (an ordered map from an exact FQN, a `re:` regex or
`_default` to a level; see `groups.resolve_fqn_map`); the search fills it per block group. Levels: `int8`,
`int4`, `fp8` (quantize), `skip` (leave the layer alone), and `fp32`/`bf16`/`fp16` (keep the layer in
floating point; must equal the denoiser's own dtype, since this knob does not cast single layers).

Backends (only real low-precision kernels count as speed):

* `cpu-int8` (CPU, stock torch): `nn.Linear` -> dynamic int8 (`torch.ao.quantization.quantize_dynamic`,
  per-channel weights; Jacob et al., 2018, "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference"); `nn.Conv2d` -> static int8: each conv is wrapped in
  `torch.ao.quantization.QuantWrapper` (quantize -> int8 conv -> dequantize), observed on seeded calibration
  inputs and converted with `torch.ao.quantization.prepare/convert`, so the rest of the diffusers forward
  stays float and nothing is rewritten. `torch.ao.quantization` is deprecated in favour of torchao but is
  what runs int8 kernels on this CPU (torchao 0.18's int8 configs ran slower than fp32 here).
* `torchao` (CUDA): torchao's `quantize_` with `Int8DynamicActivationInt8WeightConfig` (int8; not on the
  layers that see one row per image, `per_image_linears`), `Int4WeightOnlyConfig` (int4, bf16 models, tinygemm
  packing) and `Float8DynamicActivationFloat8WeightConfig` (fp8 per row, Hopper or newer); Linear layers only.
  Needs `pip install 'autoeff[tensorrt]'` (or `pip install torchao`).
  A torchao candidate is built compiled: its dynamic int8/fp8 kernels are fast only under `torch.compile`
  (diffusers-torchao, Flux-dev on an H100: int8 dynamic + compile 3.41 s, uncompiled 130.5 s; BENCHMARKS.md
  measured uncompiled torchao at 0.05-0.32x of bf16 on an H200). The rule is built in rather than left for the
  study to learn because an uncompiled torchao candidate is never worth a trial: the quantized copy's blocks
  are compiled in place (`compile.compile_blocks`, inductor `default`), which composes with the cache
  wrappers; the compile knob, when on, compiles the denoiser its own way instead (`compile.disabled()` and
  `AUTOEFF_COMPILE=0` skip both).
* `fake` (any device): weight-only fake quantization (per-output-channel symmetric int8/int4, rounded and
  stored back in float with `torch.fake_quantize_per_channel_affine`). It scores *quality* only: no
  low-precision kernel runs, so `is_simulated(config)` is True and its latency must never count as a speedup.

`autoeff.evaluators.size.model_size_mb` counts the bytes the weights occupy (quantized modules through their
packed parameters; fake-quantized layers at their simulated width).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import (
    HistogramObserver,
    QConfig,
    QuantWrapper,
    convert,
    default_per_channel_weight_observer,
    get_default_qconfig,
    per_channel_dynamic_qconfig,
    prepare,
    quantize_dynamic,
)

from autoeff.evaluators.size import FAKE_BITS_ATTR
from autoeff.search_spaces._compile_isolation import isolate
from autoeff.search_spaces.base import ConfigError, Knob, SpaceContext, Stage, copy_pipeline
from autoeff.search_spaces.compile import Config as CompileConfig
from autoeff.search_spaces.compile import compile_blocks, compile_kwargs, enabled
from autoeff.search_spaces.groups import (
    DEFAULT_KEY,
    check_fqn_keys,
    example_inputs,
    group_name_of_key,
    group_prefixes,
    group_regex,
    has_example_inputs,
    noised_inputs,
    resolve_fqn_map,
    searched_groups,
)
from autoeff.search_spaces.registry import register

NAME = "quantize"
FLOAT_LEVELS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANT_LEVELS: tuple[str, ...] = ("int8", "int4", "fp8")
LEVELS: tuple[str, ...] = (*FLOAT_LEVELS, *QUANT_LEVELS, "skip")
BACKENDS: tuple[str, ...] = ("cpu-int8", "torchao", "fake")
# Levels each backend implements, and the levels the search tries by default (besides `skip`).
BACKEND_LEVELS: dict[str, tuple[str, ...]] = {"cpu-int8": ("int8",), "torchao": ("int8", "int4", "fp8"),
                                              "fake": ("int8", "int4")}
DEFAULT_SEARCH_LEVELS: dict[str, tuple[str, ...]] = {"cpu-int8": ("int8",), "torchao": ("int8",),
                                                     "fake": ("int8", "int4")}
TORCHAO_INSTALL = "pip install 'autoeff[tensorrt]' (or: pip install torchao)"
_BITS = {"int8": 8, "int4": 4, "fp8": 8}
_CALIBRATION_SEED = 1234
_CALIBRATION_STEPS = 8
_CALIBRATION_BATCH = 4


@dataclass
class Config:
    """A precision map.

    Attributes:
        mapping: ordered FQN / `re:<regex>` / `_default` -> level (`LEVELS`); layers no key covers are kept.
        backend: one of `BACKENDS`.
    """

    mapping: dict[str, str] = field(default_factory=lambda: {DEFAULT_KEY: "skip"})
    backend: str = "cpu-int8"
    version: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"quantize.backend {self.backend!r} is not known; "
                              f"use one of {', '.join(BACKENDS)}")
        check_fqn_keys(self.mapping, "quantize.mapping")
        for key, level in self.mapping.items():
            if level not in LEVELS:
                raise ConfigError(f"quantize.mapping[{key!r}] = {level!r} is not a level; use one of "
                                  f"{', '.join(LEVELS)}")
            if level in QUANT_LEVELS and level not in BACKEND_LEVELS[self.backend]:
                raise ConfigError(f"quantize.mapping[{key!r}] = {level!r} is not available with backend "
                                  f"{self.backend!r} (it has {', '.join(BACKEND_LEVELS[self.backend])}); "
                                  "change the level or the backend")

    def describe(self) -> str:
        """E.g. `cpu-int8: down.0=int8 mid=int8 up.0=skip` or `fake: 3 rules, _default=int4`."""
        if set(self.mapping.values()) == {"skip"}:
            return "off"
        parts = []
        for key, level in self.mapping.items():
            group = group_name_of_key(key)
            if key == DEFAULT_KEY and level == "skip" and len(self.mapping) > 1:
                continue
            parts.append(f"{group or key}={level}")
        tag = " (simulated)" if is_simulated(self) else ""
        return f"{self.backend}{tag}: " + " ".join(parts)


def is_simulated(config: Config) -> bool:
    """True when no real low-precision kernel runs (fake quantization): its latency is not a real speedup."""
    return config.backend == "fake" and any(v in QUANT_LEVELS for v in config.mapping.values())


def default_backend(device: str) -> str:
    """`torchao` on CUDA, `cpu-int8` on the CPU."""
    return "torchao" if str(device).startswith("cuda") else "cpu-int8"


@dataclass
class Options:
    """Restrictions of the quantize space: `backend` (default: `default_backend(device)`), `levels` (the
    quantized levels to try; default `DEFAULT_SEARCH_LEVELS[backend]`)."""

    backend: str | None = None
    levels: list[str] | None = None

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"quantize option backend={self.backend!r} is not known; "
                              f"use one of {', '.join(BACKENDS)}")
        if self.levels is not None and (not isinstance(self.levels, list | tuple) or not self.levels):
            raise ConfigError(f"quantize option levels={self.levels!r} must be a non-empty list of levels")


def _options(context: SpaceContext) -> tuple[str, list[str]]:
    """The backend and the level choices (`skip` first) for this context."""
    opts: Options = KNOB.options_for(context)
    backend = opts.backend or default_backend(context.device)
    levels = list(opts.levels if opts.levels is not None else DEFAULT_SEARCH_LEVELS[backend])
    bad = [lv for lv in levels if lv not in BACKEND_LEVELS[backend]]
    if bad or not levels:
        raise ConfigError(f"quantize option levels={levels!r} must be a non-empty subset of "
                          f"{list(BACKEND_LEVELS[backend])} for backend {backend!r}")
    return backend, ["skip", *levels]


def level_choices(context: SpaceContext) -> list[str]:
    """The levels `suggest` draws from for this context (`skip` first)."""
    return _options(context)[1]


def suggest(trial: Any, context: SpaceContext) -> Config:
    """`quantize.mode` first: `off`, `uniform` (one level, `quantize.uniform.level`, for every block group)
    or `per_group` (one level per block group, `quantize.<group>`); `embed`/`out` are kept. A single
    `quantize._default` choice when the context has no block groups.

    Options (`context.options["quantize"]`): `backend` (default: `default_backend(context.device)`), `levels`
    (the quantized levels to try, default int8, plus int4 for `fake`).
    """
    backend, choices = _options(context)
    groups = searched_groups(context.block_groups)
    if not groups:
        return Config(mapping={DEFAULT_KEY: trial.suggest_categorical(f"{NAME}.{DEFAULT_KEY}", choices)},
                      backend=backend)
    mode = trial.suggest_categorical(f"{NAME}.mode", ["off", "uniform", "per_group"])
    if mode == "off":
        levels = {g: "skip" for g in groups}
    elif mode == "uniform":
        level = trial.suggest_categorical(f"{NAME}.uniform.level", [c for c in choices if c != "skip"])
        levels = {g: level for g in groups}
    else:
        levels = {g: trial.suggest_categorical(f"{NAME}.{g}", choices) for g in groups}
    mapping = {group_regex(group_prefixes(g)): levels[g] for g in groups}
    mapping[DEFAULT_KEY] = "skip"
    return Config(mapping=mapping, backend=backend)


def off(context: SpaceContext) -> Config:
    """Nothing quantized, in the form `suggest` draws for this context (per group, or one `_default`)."""
    backend, _ = _options(context)
    groups = searched_groups(context.block_groups)
    mapping = {group_regex(group_prefixes(g)): "skip" for g in groups}
    mapping[DEFAULT_KEY] = "skip"
    return Config(mapping=mapping, backend=backend)


def to_params(config: Config) -> dict[str, Any]:
    """The trial parameters `suggest` turns into `config` (the backend comes from the context's options)."""
    if list(config.mapping) == [DEFAULT_KEY]:
        return {f"{NAME}.{DEFAULT_KEY}": config.mapping[DEFAULT_KEY]}
    levels: dict[str, str] = {}
    for key, level in config.mapping.items():
        if key == DEFAULT_KEY and level == "skip":
            continue
        group = group_name_of_key(key)
        if group is None:
            raise ConfigError(f"quantize.mapping key {key!r} is not in the per-group form suggest() draws; "
                              "only per-group maps have trial parameters")
        levels[group] = level
    values = set(levels.values())
    if not levels or values == {"skip"}:
        return {f"{NAME}.mode": "off"}
    if len(values) == 1:
        return {f"{NAME}.mode": "uniform", f"{NAME}.uniform.level": values.pop()}
    return {f"{NAME}.mode": "per_group", **{f"{NAME}.{g}": lv for g, lv in levels.items()}}


# --- which layers a backend quantizes --------------------------------------------------------------------


def _supports(backend: str, module: nn.Module, level: str) -> bool:
    """Whether `backend` has a kernel for `module` at `level`."""
    if backend == "fake":
        return isinstance(module, nn.Linear | nn.Conv2d)
    if backend == "cpu-int8":
        return isinstance(module, nn.Linear | nn.Conv2d) and level == "int8"
    if not isinstance(module, nn.Linear):  # torchao
        return False
    if level == "int4":  # tinygemm int4 packs groups of 128 input features
        return module.in_features % 128 == 0 and module.out_features % 8 == 0
    if level == "fp8":  # torch._scaled_mm needs multiples of 16
        return module.in_features % 16 == 0 and module.out_features % 16 == 0
    return True


# torch._int_mm (the int8 GEMM inductor emits for torchao's dynamic int8) needs more than 16 rows; with torch
# 2.11 + torchao 0.18 on an H200 a compiled candidate failed at run time ("self.size(0) needs to be greater than
# 16") on the DiT's per-image layers (adaLN, time and class embeddings: one row per image, so M = batch). Those
# layers are found structurally (one row per image at batch 1) rather than by a row threshold, because the
# example inputs are smaller than real ones (8 text tokens, latents capped at 32): a threshold would also drop
# token-wise layers that see hundreds of rows at the real sizes.


def per_image_linears(denoiser: nn.Module) -> set[str]:
    """FQNs of the Linear layers that see one row per image (time/class/pooled-text embeddings, adaLN
    modulation): one batch-1 forward pass on `groups.example_inputs` with pre-hooks counting each layer's rows.

    Their GEMMs have M = batch (times 2 under classifier-free guidance), too few for the int8 GEMM kernel below
    17 images and too small to gain from any kernel. Token-wise layers see rows per image (tokens, pixels) at
    batch 1 and stay searchable. Empty when no example inputs can be built for this denoiser (nothing known).
    """
    if not has_example_inputs(denoiser):
        return set()
    rows: dict[str, int] = {}
    handles = []
    for fqn, module in denoiser.named_modules():
        if isinstance(module, nn.Linear):
            def count(m: nn.Module, args: tuple[Any, ...], fqn: str = fqn) -> None:
                if args and isinstance(args[0], torch.Tensor):
                    rows[fqn] = max(rows.get(fqn, 0), args[0].numel() // max(1, args[0].shape[-1]))
            handles.append(module.register_forward_pre_hook(count))
    try:
        with torch.inference_mode():
            denoiser(**example_inputs(denoiser, batch=1))
    finally:
        for h in handles:
            h.remove()
    return {fqn for fqn, n in rows.items() if n <= 1}


def quantized_layers(denoiser: nn.Module, config: Config) -> dict[str, str]:
    """`{fqn: level}` of the layers `apply` will quantize (after the backend's kernel coverage).

    Layers a `re:`/`_default` key covers but the backend has no kernel for are left in float (torchao int8: also
    the layers that see one row per image, `per_image_linears`); an exact FQN key naming such a layer is an
    error. A float level other than the denoiser's dtype is an error.
    """
    resolved = resolve_fqn_map(denoiser, config.mapping)
    modules = dict(denoiser.named_modules())
    dtype = next((p.dtype for p in denoiser.parameters() if p.is_floating_point()), torch.float32)
    # static int8 convolutions are calibrated on example inputs (`groups.example_inputs`): without them, a
    # `re:`/`_default` key leaves convolutions in float (Linear layers need no calibration)
    calibratable = config.backend != "cpu-int8" or has_example_inputs(denoiser)
    torchao_int8 = config.backend == "torchao" and "int8" in resolved.values()
    per_image = per_image_linears(denoiser) if torchao_int8 else set()
    out: dict[str, str] = {}
    for fqn, level in resolved.items():
        if level in FLOAT_LEVELS and FLOAT_LEVELS[level] != dtype:
            raise ConfigError(f"quantize.mapping puts {fqn!r} at {level!r} but the denoiser is {dtype}; this "
                              "knob does not cast single layers: use 'skip' or cast the whole pipeline")
        if level not in QUANT_LEVELS:
            continue
        small_gemm = level == "int8" and fqn in per_image  # torchao int8: see per_image_linears
        if _supports(config.backend, modules[fqn], level) and not small_gemm and \
                (calibratable or not isinstance(modules[fqn], nn.Conv2d)):
            out[fqn] = level
        elif fqn in config.mapping:
            raise ConfigError(f"quantize backend {config.backend!r} has no {level} kernel for "
                              f"{type(modules[fqn]).__name__} {fqn!r}; map it to 'skip'")
    return out


# --- backends --------------------------------------------------------------------------------------------


def _fake_quantize(denoiser: nn.Module, targets: dict[str, str], **_: Any) -> None:
    """Round each target weight to a symmetric per-output-channel int grid and store it back in float."""
    modules = dict(denoiser.named_modules())
    with torch.no_grad():
        for fqn, level in targets.items():
            layer = modules[fqn]
            bits = _BITS[level]
            qmax = 2 ** (bits - 1) - 1
            w = layer.weight.detach().float()
            amax = w.abs().amax(dim=tuple(range(1, w.dim())))
            scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
            zero = torch.zeros_like(scale, dtype=torch.int32)
            fq = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -qmax - 1, qmax)
            layer.weight.copy_(fq.to(layer.weight.dtype))
            setattr(layer, FAKE_BITS_ATTR, bits)


def _calibration_batches(denoiser: nn.Module, scheduler: Any) -> list[dict[str, Any]]:
    """Seeded denoiser inputs at timesteps spread over the training range (`groups.noised_inputs`)."""
    gen = torch.Generator().manual_seed(_CALIBRATION_SEED)
    alphas = getattr(scheduler, "alphas_cumprod", None)
    n_train = len(alphas) if alphas is not None else 1000
    steps = [int((i + 0.5) * n_train / _CALIBRATION_STEPS) for i in range(_CALIBRATION_STEPS)]
    return [noised_inputs(denoiser, scheduler, _CALIBRATION_BATCH, t, gen) for t in steps]


def _static_qconfig() -> Any:
    """torch's default static qconfig for the active engine; on x86/fbgemm the same observers with the
    7-bit activation range spelled as quant_min/quant_max (its `reduce_range=True` form is deprecated)."""
    engine = torch.backends.quantized.engine
    if engine not in ("x86", "fbgemm"):
        return get_default_qconfig(engine)
    return QConfig(activation=HistogramObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=127),
                   weight=default_per_channel_weight_observer)


def _cpu_int8(denoiser: nn.Module, targets: dict[str, str], scheduler: Any = None, **_: Any) -> None:
    """Static int8 Conv2d (observed on `_calibration_batches`) and dynamic int8 Linear, in place."""
    if any(p.device.type != "cpu" for p in denoiser.parameters()):
        raise ConfigError("quantize backend 'cpu-int8' runs on the CPU only; use 'torchao' on CUDA")
    modules = dict(denoiser.named_modules())
    convs = [f for f in targets if isinstance(modules[f], nn.Conv2d)]
    linears = [f for f in targets if isinstance(modules[f], nn.Linear)]
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is deprecated (torchao replaces it) once per call and per layer;
        # it is still the only int8 kernel path on CPU here (see the module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*deprecated.*")
        if convs:
            qconfig = _static_qconfig()
            for fqn in convs:
                parent_name, _dot, leaf = fqn.rpartition(".")
                parent = denoiser.get_submodule(parent_name) if parent_name else denoiser
                wrapper = QuantWrapper(getattr(parent, leaf))
                wrapper.qconfig = qconfig
                setattr(parent, leaf, wrapper)
            prepare(denoiser, inplace=True)
            with torch.no_grad():
                for inputs in _calibration_batches(denoiser, scheduler):
                    denoiser(**inputs)
            convert(denoiser, inplace=True)
        if linears:
            quantize_dynamic(denoiser, {f: per_channel_dynamic_qconfig for f in linears}, dtype=torch.qint8,
                             inplace=True)


def _int4_kwargs(config_class: type) -> dict[str, Any]:
    """torchao int4 in tinygemm's packing (`torch.ops.aten._weight_int4pack_mm`, in torch itself). From torchao
    0.15 the default packing (`plain`) needs the separate `mslk` kernel package ("Requires mslk >= 1.0.0", seen
    with torchao 0.18 on an H200); older torchao has no such field and packs for tinygemm already."""
    names = {f.name for f in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) else set()
    return {"int4_packing_format": "tile_packed_to_4d"} if "int4_packing_format" in names else {}


def _torchao(denoiser: nn.Module, targets: dict[str, str], **_: Any) -> None:
    """torchao `quantize_` per level on the target Linear layers (CUDA).

    fp8 scales per row (activations per token, weights per output channel; `PerRow`), as diffusers' torchao
    guide recommends on Hopper. torchao 0.18's per-tensor default failed on a 128x128 weight: its block size
    (the whole 128x128 tensor) reads as 128x128 *blockwise* scaling, which then asserts 1x128-scaled
    activations ("input_tensor must be 1x128 scaled"; torchao/float8/inference.py `_is_128_128_scaled`).
    """
    try:
        from torchao.quantization import (  # lazy: torchao is an optional extra (CUDA)
            Float8DynamicActivationFloat8WeightConfig,
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            PerRow,
            quantize_,
        )
    except ImportError as e:
        raise ConfigError(f"quantize backend 'torchao' needs torchao ({e}); install it with "
                          f"{TORCHAO_INSTALL}, or use backend 'fake' to score quality only") from None
    configs: dict[str, Callable[[], Any]] = {"int8": Int8DynamicActivationInt8WeightConfig,
                                             "int4": lambda: Int4WeightOnlyConfig(**_int4_kwargs(Int4WeightOnlyConfig)),
                                             "fp8": lambda: Float8DynamicActivationFloat8WeightConfig(
                                                 granularity=PerRow())}
    for level in QUANT_LEVELS:
        names = {f for f, lv in targets.items() if lv == level}
        if names:
            quantize_(denoiser, configs[level](), filter_fn=lambda m, fqn, names=names: fqn in names)


_BACKEND_FNS: dict[str, Callable[..., None]] = {"cpu-int8": _cpu_int8, "torchao": _torchao,
                                                "fake": _fake_quantize}


def quantize_denoiser(denoiser: nn.Module, config: Config, scheduler: Any = None) -> nn.Module:
    """A quantized deep copy of `denoiser` (the argument is untouched); itself if nothing is quantized."""
    targets = quantized_layers(denoiser, config)
    if not targets:
        wanted = sorted({lv for lv in config.mapping.values() if lv in QUANT_LEVELS})
        if wanted:  # the recipe would claim a quantization that does not happen
            raise ConfigError(f"quantize: no layer of {type(denoiser).__name__} has a {config.backend} kernel for "
                              f"{', '.join(wanted)} under this mapping; nothing would be quantized")
        return denoiser
    new = copy.deepcopy(denoiser)
    _BACKEND_FNS[config.backend](new, targets, scheduler=scheduler)
    if config.backend == "torchao" and enabled():  # fast only compiled (module docstring)
        kwargs = compile_kwargs(CompileConfig(mode="default"), "cuda")
        compile_blocks(new, **kwargs)
        isolate(new, scope="blocks", **kwargs)
    return new.eval()


def apply(pipe: Any, config: Config, context: SpaceContext) -> Any:
    """A copy of `pipe` whose denoiser is quantized by `config`; `pipe` and its denoiser are untouched."""
    new = copy_pipeline(pipe)
    denoiser = getattr(pipe, context.denoiser, None)
    if denoiser is None:
        raise ConfigError(f"the pipeline {type(pipe).__name__} has no {context.denoiser!r} component")
    quantized = quantize_denoiser(denoiser, config, scheduler=getattr(pipe, "scheduler", None))
    if quantized is not denoiser:
        new.register_modules(**{context.denoiser: quantized})
    return new


KNOB = register(Knob(
    name=NAME, stage=Stage.PRECISION, config=Config, options=Options, suggest=suggest, to_params=to_params,
    apply=apply, off=off, is_simulated=is_simulated,
    help="per-block-group weight precision (int8 on the CPU; torchao int8/int4/fp8 on CUDA)"))
