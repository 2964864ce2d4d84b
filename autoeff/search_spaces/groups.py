"""Block groups of a denoiser, and torchao-style FQN maps over its layers (shared by `quantize` and `prune`).

A per-layer search over a diffusion denoiser has hundreds of dimensions; the knobs search per *block group*
instead: a handful of named groups of consecutive blocks. Group names (a fixed grammar other code may parse):

* U-Nets (`UNet2DModel`, `UNet2DConditionModel`): `down.<i>` (= `down_blocks.<i>`), `mid` (= `mid_block`),
  `up.<i>` (= `up_blocks.<i>`);
* transformers (DiT, PixArt, SD3, Sana, Flux): `blocks.<a>-<b>` (= `transformer_blocks.<a>` ... `.<b>`, at most
  `MAX_TRANSFORMER_GROUPS` groups of consecutive blocks) or `blocks.<a>` for a single block; Flux's
  single-stream blocks likewise as `single.<a>-<b>` (= `single_transformer_blocks.<a>` ... `.<b>`);
* both: `embed` (stem, time/class/text embeddings) and `out` (final norm and projection), normally kept.

`resolve_fqn_map` implements the key semantics of torchao's `FqnToConfig` (an ordered map from an exact
module FQN, a `re:<regex>` fully matched against the FQN, or `_default`, to a value). It is written here
because torchao is an optional extra (and maps only to torchao configs); `group_regex` expands a group to one
such key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import regex
import torch
from torch import nn

from autoeff.search_spaces.base import ConfigError

V = TypeVar("V")

DEFAULT_KEY = "_default"
REGEX_PREFIX = "re:"
# `re:` keys come from recipes, i.e. from files: matched with the `regex` package (no catastrophic backtracking on
# patterns like `(.|.)*Z`, which hang the stdlib `re`), within a time limit, and of a bounded length.
MAX_REGEX_LENGTH = 1000
MATCH_TIMEOUT_S = 0.1
KEPT_GROUPS: tuple[str, ...] = ("embed", "out")
MAX_TRANSFORMER_GROUPS = 4
# Top-level children of a denoiser that belong to `out` (all other non-block children are `embed`).
_OUT_NAMES = frozenset({"conv_norm_out", "conv_act", "conv_out", "norm_out", "proj_out", "proj_out_1",
                        "proj_out_2"})
_BLOCK_CONTAINERS = frozenset({"down_blocks", "mid_block", "up_blocks", "transformer_blocks",
                               "single_transformer_blocks"})
# transformer block lists and the group-name prefix of each
_BLOCK_LISTS: tuple[tuple[str, str], ...] = (("transformer_blocks", "blocks"), ("single_transformer_blocks", "single"))
# A group key: "re:(?:p1|p2)" + this suffix matches the prefixes' modules and everything below them.
_SUFFIX = r")(?:\..+)?"
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
Denoiser = Any  # a diffusers ModelMixin: its blocks and config are attributes mypy cannot see


def is_layer(module: nn.Module, fqn: str = "") -> bool:
    """The layers FQN maps assign values to by default: `nn.Linear` and `nn.Conv2d`."""
    return isinstance(module, LAYER_TYPES)


def block_groups(denoiser: nn.Module) -> dict[str, list[str]]:
    """Group name -> FQN prefixes of the top-level submodules it holds, in forward order.

    Every module of the denoiser lies under exactly one group's prefixes (`group_of`).
    """
    # The block containers are diffusers' ModuleLists (sized); a plain nn.Module value type would hide that.
    children: dict[str, Any] = dict(denoiser.named_children())
    body: dict[str, list[str]] = {}
    if "down_blocks" in children and "up_blocks" in children:
        for i in range(len(children["down_blocks"])):
            body[f"down.{i}"] = [f"down_blocks.{i}"]
        if children.get("mid_block") is not None:
            body["mid"] = ["mid_block"]
        for i in range(len(children["up_blocks"])):
            body[f"up.{i}"] = [f"up_blocks.{i}"]
    elif "transformer_blocks" in children:
        for container, prefix in _BLOCK_LISTS:
            n = len(children.get(container) or [])
            size = max(1, math.ceil(n / MAX_TRANSFORMER_GROUPS))
            for a in range(0, n, size):
                b = min(n, a + size) - 1
                body[f"{prefix}.{a}" if a == b else f"{prefix}.{a}-{b}"] = [f"{container}.{i}"
                                                                            for i in range(a, b + 1)]
    else:
        raise ConfigError(f"{type(denoiser).__name__} has neither down_blocks/up_blocks (a U-Net) nor "
                          "transformer_blocks (a DiT/PixArt transformer); autoeff cannot group its layers "
                          "for quantize/prune: leave those knobs out of the search space")
    embed = [n for n in children if n not in _BLOCK_CONTAINERS and n not in _OUT_NAMES]
    out = [n for n in children if n in _OUT_NAMES]
    return {"embed": embed, **body, "out": out}


def searched_groups(names: Iterable[str]) -> list[str]:
    """The group names a knob searches by default: all but `embed` and `out`."""
    return [g for g in names if g not in KEPT_GROUPS]


def group_of(fqn: str, groups: Mapping[str, list[str]]) -> str | None:
    """The group whose prefixes contain module `fqn` (`None` for the root module `""`)."""
    for name, prefixes in groups.items():
        if any(fqn == p or fqn.startswith(p + ".") for p in prefixes):
            return name
    return None


def group_prefixes(name: str) -> list[str]:
    """FQN prefixes of a block group from its name alone (`down.1` -> `["down_blocks.1"]`).

    `embed` and `out` depend on the model: take them from `block_groups(denoiser)`.
    """
    if m := re.fullmatch(r"(down|up)\.(\d+)", name):
        return [f"{m.group(1)}_blocks.{int(m.group(2))}"]
    if name == "mid":
        return ["mid_block"]
    if m := re.fullmatch(r"(blocks|single)\.(\d+)(?:-(\d+))?", name):
        a = int(m.group(2))
        b = int(m.group(3)) if m.group(3) is not None else a
        container = dict((p, c) for c, p in _BLOCK_LISTS)[m.group(1)]
        if b >= a:
            return [f"{container}.{i}" for i in range(a, b + 1)]
    raise ConfigError(f"{name!r} is not a block group name; use down.<i>, mid, up.<i>, blocks.<a>-<b>, blocks.<a> "
                      "or single.<a>-<b> (embed/out: read their prefixes from block_groups(denoiser))")


def group_regex(prefixes: Iterable[str]) -> str:
    """The `re:` key matching the modules under `prefixes` (and the prefixes themselves)."""
    prefixes = list(prefixes)
    if not prefixes:
        raise ConfigError("a group regex needs at least one module prefix")
    return REGEX_PREFIX + "(?:" + "|".join(re.escape(p) for p in prefixes) + _SUFFIX


def group_name_of_key(key: str) -> str | None:
    """Inverse of `group_regex(group_prefixes(name))` for block groups; `None` for any other key."""
    if not (key.startswith(REGEX_PREFIX + "(?:") and key.endswith(_SUFFIX)):
        return None
    inner = key[len(REGEX_PREFIX) + 3:-len(_SUFFIX)]
    prefixes = [p.replace("\\.", ".") for p in inner.split("|")]
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)", prefixes[0]):
        name = f"{m.group(1)}.{int(m.group(2))}"
    elif prefixes[0] == "mid_block":
        name = "mid"
    elif m := re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)", prefixes[0]):
        container, prefix = m.group(1), dict(_BLOCK_LISTS)[m.group(1)]
        last = re.fullmatch(re.escape(container) + r"\.(\d+)", prefixes[-1])
        b = int(last.group(1)) if last else -1
        name = f"{prefix}.{int(m.group(2))}" if len(prefixes) == 1 else f"{prefix}.{int(m.group(2))}-{b}"
    else:
        return None
    try:
        return name if group_regex(group_prefixes(name)) == key else None
    except ConfigError:
        return None


def groups_to_mapping(values: Mapping[str, V], groups: Mapping[str, list[str]],
                      default: V | None = None) -> dict[str, V]:
    """Expand a per-group map (`{"down.0": v}`) to an FQN map of `re:` keys (plus `_default` if given)."""
    unknown = [g for g in values if g not in groups]
    if unknown:
        raise ConfigError(f"unknown block group(s) {unknown}; this model's groups: {', '.join(groups)}")
    mapping = {group_regex(groups[g]): v for g, v in values.items() if groups[g]}
    if default is not None:
        mapping[DEFAULT_KEY] = default
    return mapping


def check_fqn_keys(mapping: Mapping[str, Any], field: str) -> None:
    """Raise ConfigError unless every key is `_default`, a compilable `re:` regex or a non-empty FQN."""
    if not isinstance(mapping, Mapping) or not mapping:
        raise ConfigError(f"{field} must be a non-empty object of FQN / 're:<regex>' / '_default' keys")
    for key in mapping:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{field} key {key!r} must be a non-empty string")
        if key.startswith(REGEX_PREFIX):
            if len(key) > MAX_REGEX_LENGTH:
                raise ConfigError(f"{field} key {key[:40]!r}... is longer than {MAX_REGEX_LENGTH} characters; "
                                  "name block groups or layers more simply")
            try:
                regex.compile(key[len(REGEX_PREFIX):])
            except regex.error as e:
                raise ConfigError(f"{field} key {key!r} is not a valid regex ({e}); "
                                  "escape dots as \\. and check brackets") from None
        elif key != DEFAULT_KEY and (key.startswith(".") or key.endswith(".") or " " in key):
            raise ConfigError(f"{field} key {key!r} is not a module FQN "
                              "(like 'down_blocks.0.resnets.0.conv1')")


def _fullmatch(key: str, rx: Any, fqn: str) -> bool:
    """`rx.fullmatch(fqn)` within `MATCH_TIMEOUT_S`: a crafted pattern (`re:(.|.)*Z`) must not hang a load."""
    try:
        return rx.fullmatch(fqn, timeout=MATCH_TIMEOUT_S) is not None
    except TimeoutError:
        raise ConfigError(f"mapping key {key[:60]!r} took more than {MATCH_TIMEOUT_S} s to match {fqn!r}; use a "
                          "simpler pattern (block group keys look like 're:(?:down_blocks\\.0)(?:\\..+)?')") from None


def resolve_fqn_map(model: nn.Module, mapping: Mapping[str, V],
                    filter_fn: Callable[[nn.Module, str], bool] = is_layer) -> dict[str, V]:
    """`{fqn: value}` for the modules of `model` passing `filter_fn`, read the way torchao's `FqnToConfig` is.

    Precedence: an exact FQN key, then the first `re:` key (in mapping order) whose regex fully matches the
    FQN, then `_default`. Modules no key covers are left out. An exact key that names no filtered module is
    an error (a typo would otherwise silently do nothing).
    """
    check_fqn_keys(mapping, "mapping")
    modules = [fqn for fqn, m in model.named_modules() if fqn and filter_fn(m, fqn)]
    exact = {k for k in mapping if not k.startswith(REGEX_PREFIX) and k != DEFAULT_KEY}
    missing = sorted(exact - set(modules))
    if missing:
        kinds = "/".join(t.__name__ for t in LAYER_TYPES)
        raise ConfigError(f"mapping key(s) {missing} name no {kinds} layer of {type(model).__name__}; "
                          "use exact names from model.named_modules() or 're:' keys")
    regexes = [(k, regex.compile(k[len(REGEX_PREFIX):])) for k in mapping if k.startswith(REGEX_PREFIX)]
    out: dict[str, V] = {}
    for fqn in modules:
        if fqn in exact:
            out[fqn] = mapping[fqn]
            continue
        key = next((k for k, rx in regexes if _fullmatch(k, rx, fqn)), None)
        if key is not None:
            out[fqn] = mapping[key]
        elif DEFAULT_KEY in mapping:
            out[fqn] = mapping[DEFAULT_KEY]
    return out


def example_inputs(denoiser: Denoiser, batch: int = 1, generator: torch.Generator | None = None,
                   timesteps: torch.Tensor | None = None) -> dict[str, Any]:
    """Keyword inputs for one forward pass of a diffusers denoiser (for tracing and calibration).

    Supports `UNet2DModel`, `UNet2DConditionModel` (with SDXL's `text_time` added conditioning), DiT, PixArt,
    SD3, Flux and Sana transformers; the shapes come from the model's config. Values are seeded random numbers;
    `timesteps` are in [0, 1000) (Flux, which takes fractions, gets them divided by 1000).
    """
    cfg = denoiser.config
    param = next(denoiser.parameters())
    kw = {"device": param.device, "dtype": param.dtype if param.is_floating_point() else torch.float32}
    gen = generator if generator is not None else torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(**kw)

    raw_size = getattr(cfg, "sample_size", None) or 8
    size = raw_size if isinstance(raw_size, int) else int(raw_size[0])
    name = type(denoiser).__name__
    if timesteps is None:
        timesteps = torch.randint(0, 1000, (batch,), generator=gen)
    t = timesteps.to(param.device)
    if name == "UNet2DModel":
        out: dict[str, Any] = {"sample": randn(batch, cfg.in_channels, size, size), "timestep": t}
        if cfg.num_class_embeds is not None or cfg.class_embed_type is not None:
            out["class_labels"] = torch.randint(0, max(1, cfg.num_class_embeds or 1), (batch,),
                                                generator=gen).to(param.device)
        return out
    if name == "UNet2DConditionModel":
        size = min(size, 32)  # any multiple of the total downsampling traces the same graph
        cross = cfg.cross_attention_dim
        cross = cross[0] if isinstance(cross, list | tuple) else cross
        out = {"sample": randn(batch, cfg.in_channels, size, size), "timestep": t,
               "encoder_hidden_states": randn(batch, 8, cross)}
        if cfg.addition_embed_type == "text_time":
            n_ids = 6
            text = cfg.projection_class_embeddings_input_dim - n_ids * cfg.addition_time_embed_dim
            out["added_cond_kwargs"] = {"text_embeds": randn(batch, text), "time_ids": randn(batch, n_ids)}
        elif cfg.addition_embed_type is not None:
            raise ConfigError(f"UNet2DConditionModel addition_embed_type {cfg.addition_embed_type!r} is not "
                              "supported by quantize/prune; leave those knobs out of the search space")
        return out
    if name == "DiTTransformer2DModel":
        return {"hidden_states": randn(batch, cfg.in_channels, size, size), "timestep": t,
                "class_labels": torch.randint(0, max(1, cfg.num_embeds_ada_norm or 1), (batch,),
                                              generator=gen).to(param.device)}
    if name == "PixArtTransformer2DModel":
        out = {"hidden_states": randn(batch, cfg.in_channels, size, size), "timestep": t,
               "encoder_hidden_states": randn(batch, 8, cfg.caption_channels)}
        extra = None
        if getattr(denoiser, "use_additional_conditions", False):
            extra = {"resolution": randn(batch, 2).abs() * 64, "aspect_ratio": randn(batch, 1).abs()}
        out["added_cond_kwargs"] = extra or {"resolution": None, "aspect_ratio": None}
        return out
    size = min(size, 16)  # the transformers below interpolate or index positions: any small side traces the same
    if name == "SD3Transformer2DModel":
        return {"hidden_states": randn(batch, cfg.in_channels, size, size), "timestep": t,
                "encoder_hidden_states": randn(batch, 8, cfg.joint_attention_dim),
                "pooled_projections": randn(batch, cfg.pooled_projection_dim)}
    if name == "SanaTransformer2DModel":
        return {"hidden_states": randn(batch, cfg.in_channels, size, size), "timestep": t,
                "encoder_hidden_states": randn(batch, 8, cfg.caption_channels)}
    if name == "FluxTransformer2DModel":
        side = 4  # packed latents: (batch, side * side, in_channels) with position ids per token
        ids = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
        img_ids = torch.cat([torch.zeros(side * side, 1), ids.float()], dim=1).to(**kw)
        out = {"hidden_states": randn(batch, side * side, cfg.in_channels), "timestep": t.float() / 1000,
               "encoder_hidden_states": randn(batch, 8, cfg.joint_attention_dim),
               "pooled_projections": randn(batch, cfg.pooled_projection_dim), "img_ids": img_ids,
               "txt_ids": torch.zeros(8, 3).to(**kw)}
        if cfg.guidance_embeds:
            out["guidance"] = torch.full((batch,), 3.5).to(**kw)
        return out
    raise ConfigError(f"quantize/prune cannot build example inputs for a {name}; supported: UNet2DModel, "
                      "UNet2DConditionModel, DiTTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel, "
                      "FluxTransformer2DModel, SanaTransformer2DModel")


def has_example_inputs(denoiser: nn.Module) -> bool:
    """Whether `example_inputs` can build inputs for `denoiser` (the wrapped model of a wrapper)."""
    try:
        example_inputs(denoiser, batch=1)
    except (ConfigError, AttributeError, TypeError, StopIteration):
        return False
    return True


def noised_inputs(denoiser: nn.Module, scheduler: Any, batch: int, t: int | torch.Tensor,
                  generator: torch.Generator) -> dict[str, Any]:
    """`example_inputs` whose sample is x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, x0 ~ U(-1, 1) (a stand-in
    for data), with the scheduler's `alphas_cumprod`; on a flow-matching model (a scheduler without them)
    x_t = (1 - s) x0 + s eps with s = t / 1000 (rectified flow's path): realistic ranges at every noise level,
    for calibration and distillation without a dataset."""
    timesteps = t if isinstance(t, torch.Tensor) else torch.full((batch,), int(t))
    inputs = example_inputs(denoiser, batch=batch, generator=generator, timesteps=timesteps)
    key = "sample" if "sample" in inputs else "hidden_states"
    eps = inputs[key]
    shape = (-1,) + (1,) * (eps.dim() - 1)
    x0 = torch.rand(eps.shape, generator=generator).to(eps) * 2 - 1
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is not None and not _is_flow(scheduler):
        a = alphas[timesteps.long().cpu()].reshape(shape).to(eps)
        inputs[key] = a.sqrt() * x0 + (1 - a).sqrt() * eps
    elif scheduler is not None:
        s = (timesteps.float() / 1000).clamp(0, 1).reshape(shape).to(eps)
        inputs[key] = (1 - s) * x0 + s * eps
    return inputs


def _is_flow(scheduler: Any) -> bool:
    config = getattr(scheduler, "config", None) or {}
    return ("FlowMatch" in type(scheduler).__name__ or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction")


def denoiser_output(out: Any) -> torch.Tensor:
    """The prediction tensor of a diffusers denoiser's output (`.sample`, or the first tuple item)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    return out[0]
