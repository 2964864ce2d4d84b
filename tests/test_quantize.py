"""The quantize knob and the block groups / FQN maps it shares with prune."""

from __future__ import annotations

import builtins
import json
import re

import optuna
import pytest
import torch
from torch import nn

from autoeff.evaluators.size import model_size_mb
from autoeff.models.generate import SampleSpec, generate
from autoeff.search_spaces import quantize
from autoeff.search_spaces.base import ConfigError, SpaceContext, config_from_dict, config_to_dict
from autoeff.search_spaces.groups import (
    block_groups,
    example_inputs,
    group_name_of_key,
    group_of,
    group_prefixes,
    group_regex,
    groups_to_mapping,
    resolve_fqn_map,
    searched_groups,
)


def _ctx(handle, **options) -> SpaceContext:
    return SpaceContext(family=handle.family, denoiser=handle.denoiser_name,
                        block_groups=list(block_groups(handle.denoiser)), options={"quantize": options})


def _layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# --- groups ----------------------------------------------------------------------------------------------


def test_unet_groups_cover_every_layer_once(random_digits_handle):
    unet = random_digits_handle.denoiser
    groups = block_groups(unet)
    assert list(groups) == ["embed", "down.0", "down.1", "down.2", "mid", "up.0", "up.1", "up.2", "out"]
    assert "conv_in" in groups["embed"] and "conv_out" in groups["out"]
    for fqn in _layers(unet):
        owners = [g for g, prefixes in groups.items()
                  if any(fqn == p or fqn.startswith(p + ".") for p in prefixes)]
        assert owners == [group_of(fqn, groups)] and owners[0] is not None, fqn


def test_dit_groups_are_pairs_of_blocks(random_digits_dit_handle):
    groups = block_groups(random_digits_dit_handle.denoiser)
    assert list(groups) == ["embed", "blocks.0-1", "blocks.2-3", "blocks.4-5", "out"]
    assert groups["blocks.2-3"] == ["transformer_blocks.2", "transformer_blocks.3"]
    assert set(groups["out"]) == {"norm_out", "proj_out_1", "proj_out_2"}


def test_group_regex_matches_exactly_the_group(random_digits_handle, random_digits_dit_handle):
    for handle in (random_digits_handle, random_digits_dit_handle):
        model = handle.denoiser
        groups = block_groups(model)
        for name, prefixes in groups.items():
            key = group_regex(prefixes)
            rx = re.compile(key[3:])
            matched = {f for f, _ in model.named_modules() if f and rx.fullmatch(f)}
            expected = {f for f, _ in model.named_modules() if f and group_of(f, groups) == name}
            assert matched == expected, name
            if name not in ("embed", "out"):
                assert group_prefixes(name) == prefixes
                assert group_name_of_key(key) == name


def test_group_name_of_key_rejects_other_keys():
    assert group_name_of_key("re:down_blocks\\.0.*") is None
    assert group_name_of_key("_default") is None
    assert group_name_of_key(group_regex(["conv_in", "time_embedding"])) is None
    with pytest.raises(ConfigError, match="not a block group"):
        group_prefixes("left.0")


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.b = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


def test_resolve_fqn_map_precedence():
    model = _Tiny()
    mapping = {"re:a\\..*": "int4", "a.1": "skip", "re:.*": "int8", "_default": "bf16"}
    assert resolve_fqn_map(model, mapping) == {"a.0": "int4", "a.1": "skip", "b": "int8"}
    assert resolve_fqn_map(model, {"b": "int8", "_default": "skip"}) == {"a.0": "skip", "a.1": "skip",
                                                                         "b": "int8"}
    assert resolve_fqn_map(model, {"re:a\\.0": "int8"}) == {"a.0": "int8"}  # not covered: left out
    # `re:` keys fully match, as torchao's FqnToConfig does: "a" does not match "a.0".
    assert resolve_fqn_map(model, {"re:a": "int8"}) == {}


def test_resolve_fqn_map_errors_name_the_key():
    with pytest.raises(ConfigError, match="'a.7'"):
        resolve_fqn_map(_Tiny(), {"a.7": "int8"})
    with pytest.raises(ConfigError, match="norm"):  # a LayerNorm is not a Linear/Conv2d layer
        resolve_fqn_map(_Tiny(), {"norm": "int8"})
    with pytest.raises(ConfigError, match="not a valid regex"):
        resolve_fqn_map(_Tiny(), {"re:(a": "int8"})


def test_groups_to_mapping_expands_to_regex(random_digits_handle):
    unet = random_digits_handle.denoiser
    groups = block_groups(unet)
    mapping = groups_to_mapping({"mid": "int8"}, groups, default="skip")
    resolved = resolve_fqn_map(unet, mapping)
    assert {f for f, v in resolved.items() if v == "int8"} == {f for f in _layers(unet)
                                                               if f.startswith("mid_block.")}
    with pytest.raises(ConfigError, match="middle"):
        groups_to_mapping({"middle": "int8"}, groups)


# --- config ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    ({"mapping": {"_default": "int3"}}, "int3"),
    ({"backend": "tensorrt"}, "backend"),
    ({"mapping": {"_default": "int4"}, "backend": "cpu-int8"}, "int4"),
    ({"mapping": {"_default": "fp8"}, "backend": "fake"}, "fp8"),
    ({"mapping": {}}, "mapping"),
    ({"mapping": {"re:[": "int8"}}, "regex"),
])
def test_config_validation(kwargs, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        quantize.Config(**kwargs)


def test_config_json_round_trip_keeps_mapping_order():
    cfg = quantize.Config(mapping={"re:z.*": "int8", "a.b": "skip", "_default": "int4"}, backend="fake")
    back = config_from_dict(quantize.Config, json.loads(json.dumps(config_to_dict(cfg))))
    assert back == cfg and list(back.mapping) == ["re:z.*", "a.b", "_default"]


@pytest.mark.parametrize("options", [{}, {"backend": "fake"},
                                     {"backend": "torchao", "levels": ["int8", "fp8"]}])
def test_suggest_to_params_round_trip(random_digits_handle, random_digits_dit_handle, options):
    for handle in (random_digits_handle, random_digits_dit_handle):
        ctx = _ctx(handle, **options)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
        for _ in range(6):
            cfg = quantize.suggest(study.ask(), ctx)
            assert cfg.backend == options.get("backend", "cpu-int8")
            assert quantize.suggest(optuna.trial.FixedTrial(quantize.to_params(cfg)), ctx) == cfg
        names = [g for g in block_groups(handle.denoiser) if g not in ("embed", "out")]
        per_group = quantize.Config(mapping={**{group_regex(group_prefixes(g)): ("int8" if i % 2 else "skip")
                                                for i, g in enumerate(names)}, "_default": "skip"},
                                    backend=cfg.backend)
        assert set(quantize.to_params(per_group)) == {"quantize.mode"} | {f"quantize.{g}" for g in names}


def test_modes_off_and_uniform(random_digits_handle):
    ctx = _ctx(random_digits_handle)
    off = quantize.suggest(optuna.trial.FixedTrial({"quantize.mode": "off"}), ctx)
    assert set(off.mapping.values()) == {"skip"} and not quantize.quantized_layers(random_digits_handle.denoiser, off)
    uni = quantize.suggest(optuna.trial.FixedTrial({"quantize.mode": "uniform", "quantize.uniform.level": "int8"}),
                           ctx)
    assert [v for k, v in uni.mapping.items() if k != "_default"] == ["int8"] * (len(uni.mapping) - 1)
    assert quantize.to_params(uni) == {"quantize.mode": "uniform", "quantize.uniform.level": "int8"}


def test_suggest_without_groups_draws_one_default(random_digits_handle):
    ctx = SpaceContext(family="digits", denoiser="unet", options={"quantize": {"backend": "fake"}})
    cfg = quantize.suggest(optuna.trial.FixedTrial({"quantize._default": "int4"}), ctx)
    assert cfg.mapping == {"_default": "int4"}
    assert quantize.suggest(optuna.trial.FixedTrial(quantize.to_params(cfg)), ctx) == cfg


def test_suggest_rejects_levels_the_backend_lacks(random_digits_handle):
    with pytest.raises(ConfigError, match="levels"):
        quantize.suggest(optuna.trial.FixedTrial({}), _ctx(random_digits_handle, levels=["int4"]))


# --- apply -----------------------------------------------------------------------------------------------


def test_cpu_int8_quantizes_convs_and_linears_and_leaves_base(random_digits_handle):
    pipe = random_digits_handle.pipeline
    base = pipe.unet
    before = _state(base)
    cfg = quantize.Config(mapping={group_regex(["down_blocks.1"]): "int8", "_default": "skip"})
    new = quantize.apply(pipe, cfg, _ctx(random_digits_handle))
    assert new is not pipe and new.unet is not base and pipe.unet is base
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    assert type(base.down_blocks[1].resnets[0].conv1) is nn.Conv2d
    kinds = {type(m).__module__ + "." + type(m).__name__ for m in new.unet.down_blocks[1].modules()}
    assert "torch.ao.nn.quantized.modules.conv.Conv2d" in kinds
    assert "torch.ao.nn.quantized.dynamic.modules.linear.Linear" in kinds
    assert isinstance(new.unet.down_blocks[0].resnets[0].conv1, nn.Conv2d)  # outside the map: untouched
    assert not quantize.is_simulated(cfg)
    inputs = example_inputs(base, batch=2)
    with torch.no_grad():
        ref, out = base(**inputs).sample, new.unet(**inputs).sample
    assert torch.isfinite(out).all()
    assert 0 < (out - ref).norm() / ref.norm() < 0.2


def test_cpu_int8_linear_only_on_dit_and_smaller(random_digits_dit_handle):
    handle = random_digits_dit_handle
    cfg = quantize.Config(mapping={"re:transformer_blocks\\..*": "int8"})
    new = quantize.apply(handle.pipeline, cfg, _ctx(handle))
    targets = quantize.quantized_layers(handle.denoiser, cfg)
    assert targets and all(f.startswith("transformer_blocks.") for f in targets)
    assert model_size_mb(new.transformer) < 0.4 * model_size_mb(handle.denoiser)
    images = generate(handle, new, SampleSpec(seeds=(0, 1), labels=(3, 4), batch_size=2))
    assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()


def test_fake_quant_rounds_weights_to_the_grid(random_digits_handle):
    handle = random_digits_handle
    cfg = quantize.Config(mapping={group_regex(["mid_block"]): "int4", "_default": "skip"}, backend="fake")
    new = quantize.apply(handle.pipeline, cfg, _ctx(handle))
    assert quantize.is_simulated(cfg) and "simulated" in cfg.describe()
    conv = new.unet.mid_block.resnets[0].conv1
    assert getattr(conv, quantize.FAKE_BITS_ATTR) == 4
    w = conv.weight.detach()
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 7
    q = w / scale
    assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= 7 + 1e-4
    assert len(torch.unique(q.round())) > 3
    assert not torch.equal(w, handle.denoiser.mid_block.resnets[0].conv1.weight)
    assert getattr(handle.denoiser.mid_block.resnets[0].conv1, quantize.FAKE_BITS_ATTR, None) is None
    images = generate(handle, new, SampleSpec(seeds=(0,), labels=(5,), batch_size=1))
    assert torch.isfinite(images).all()


def test_nothing_quantized_shares_the_denoiser(random_digits_handle):
    cfg = quantize.Config(mapping={"_default": "skip"})
    new = quantize.apply(random_digits_handle.pipeline, cfg, _ctx(random_digits_handle))
    assert new.unet is random_digits_handle.denoiser and not quantize.is_simulated(cfg)


def test_float_level_must_match_the_dtype(random_digits_handle):
    ctx = _ctx(random_digits_handle)
    quantize.apply(random_digits_handle.pipeline, quantize.Config(mapping={"_default": "fp32"}), ctx)
    with pytest.raises(ConfigError, match="bf16"):
        quantize.apply(random_digits_handle.pipeline, quantize.Config(mapping={"_default": "bf16"}), ctx)


def test_exact_key_without_kernel_is_an_error(random_digits_handle):
    cfg = quantize.Config(mapping={"conv_in": "int8"}, backend="torchao")
    with pytest.raises(ConfigError, match="conv_in"):
        quantize.quantized_layers(random_digits_handle.denoiser, cfg)


def test_torchao_missing_names_the_install(random_digits_dit_handle, monkeypatch):
    real_import = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name == "torchao" or name.startswith("torchao."):
            raise ImportError("No module named 'torchao'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    cfg = quantize.Config(mapping={"_default": "int8"}, backend="torchao")
    with pytest.raises(ConfigError, match=r"autoeff\[tensorrt\]"):
        quantize.apply(random_digits_dit_handle.pipeline, cfg, _ctx(random_digits_dit_handle))


def _rows_seen(model: nn.Module, batch: int) -> dict[str, int]:
    """Rows (GEMM M) each Linear layer multiplies in one forward pass at `batch`."""
    rows: dict[str, int] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: rows.__setitem__(n, a[0].numel() // a[0].shape[-1]))
             for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.inference_mode():
        model(**example_inputs(model, batch=batch))
    for h in hooks:
        h.remove()
    return rows


@pytest.mark.parametrize("model", ["random_digits_dit_handle", "random_digits_handle", "tiny_sdxl"])
def test_torchao_int8_leaves_out_the_layers_that_see_one_row_per_image(request, model):
    # torch._int_mm needs more than 16 rows: compiled torchao int8 failed on an H200 at batch <= 16 on the
    # DiT's adaLN / embedding layers, whose GEMM has one row per image
    if model == "tiny_sdxl":
        from autoeff.models.tiny import build_tiny_sdxl

        denoiser = build_tiny_sdxl().denoiser
    else:
        denoiser = request.getfixturevalue(model).denoiser
    per_image = quantize.per_image_linears(denoiser)
    rows = _rows_seen(denoiser, batch=3)
    assert per_image and per_image == {n for n, r in rows.items() if r == 3}
    assert any(r > 16 for r in rows.values())
    everything = {"_default": "int8"}
    int8 = quantize.quantized_layers(denoiser, quantize.Config(mapping=everything, backend="torchao"))
    linears = {n for n, m in denoiser.named_modules() if isinstance(m, nn.Linear)}
    assert set(int8) == linears - per_image
    fp8 = quantize.quantized_layers(denoiser, quantize.Config(mapping={"_default": "fp8"}, backend="torchao"))
    assert per_image & set(fp8)  # only int8's kernel has the row limit
    name = sorted(per_image)[0]  # naming one of them exactly is an error, as for a layer without a kernel
    with pytest.raises(ConfigError, match="no int8 kernel"):
        quantize.quantized_layers(denoiser, quantize.Config(mapping={name: "int8"}, backend="torchao"))


def test_torchao_int4_asks_for_the_packing_that_torch_itself_runs():
    import dataclasses

    @dataclasses.dataclass
    class NewInt4Config:  # torchao >= 0.15: the default packing needs the mslk package
        group_size: int = 128
        int4_packing_format: str = "plain"

    @dataclasses.dataclass
    class OldInt4Config:  # older torchao: tinygemm packing is the only one
        group_size: int = 128

    assert NewInt4Config(**quantize._int4_kwargs(NewInt4Config)).int4_packing_format == "tile_packed_to_4d"
    assert quantize._int4_kwargs(OldInt4Config) == {}


@pytest.mark.gpu  # deselected by default (pyproject addopts); `make test-gpu` runs it on a CUDA machine
@pytest.mark.parametrize("level", ["int8", "fp8"])
def test_torchao_on_cuda(random_digits_dit_handle, level):
    assert torch.cuda.is_available(), "gpu tests need a CUDA device: run `make test-gpu` on one"
    handle = random_digits_dit_handle
    handle.pipeline.to("cuda", torch.bfloat16)
    cfg = quantize.Config(mapping={"re:transformer_blocks\\..*": level}, backend="torchao")
    new = quantize.apply(handle.pipeline, cfg, _ctx(handle))
    assert model_size_mb(new.transformer) < 0.75 * model_size_mb(handle.denoiser)
    images = generate(handle, new, SampleSpec(seeds=(0, 1), labels=(3, 4), batch_size=2))
    assert torch.isfinite(images).all()


# --- size ------------------------------------------------------------------------------------------------


def test_model_size_hand_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    fp32 = (16 * 8 + 8) * 4
    assert model_size_mb(model) * 1e6 == fp32
    dyn = quantize.quantize_denoiser(model, quantize.Config(mapping={"_default": "int8"}))
    # int8 weights (1 byte each) + per-channel float64 scale and int64 zero point + fp32 bias.
    assert model_size_mb(dyn) * 1e6 == 16 * 8 + 8 * (8 + 8) + 8 * 4
    for level, weight_bytes in (("int8", 16 * 8), ("int4", 16 * 8 // 2)):
        fake = quantize.quantize_denoiser(model, quantize.Config(mapping={"_default": level}, backend="fake"))
        # packed weights + one fp32 scale per output channel + fp32 bias
        assert model_size_mb(fake) * 1e6 == weight_bytes + 8 * 4 + 8 * 4
        assert model_size_mb(fake, count_simulated=False) * 1e6 == fp32
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    assert model_size_mb(tied) * 1e6 == 16 * 4


def test_model_size_of_static_int8_conv(random_digits_handle):
    cfg = quantize.Config(mapping={"down_blocks.0.resnets.0.conv1": "int8"})
    unet = random_digits_handle.denoiser
    new = quantize.quantize_denoiser(unet, cfg, random_digits_handle.pipeline.scheduler)
    conv = unet.down_blocks[0].resnets[0].conv1
    saved = (conv.weight.numel() * 3) - conv.out_channels * 16  # 4 -> 1 byte per weight, minus the qparams
    delta = (model_size_mb(unet) - model_size_mb(new)) * 1e6
    assert saved - 64 <= delta <= saved  # the QuantStub keeps a scale and zero point of its own


def test_prune_then_quantize_compose(random_digits_handle):
    from autoeff.recipe import Recipe
    from autoeff.search_spaces import prune
    from autoeff.search_spaces.space import build_pipeline

    handle = random_digits_handle
    recipe = Recipe(model="digits", knobs={
        "prune": prune.Config(ratios={"down.0": 0.25, "up.2": 0.25}),
        "quantize": quantize.Config(mapping={group_regex(["up_blocks.2"]): "int8", "_default": "skip"})})
    pipe = build_pipeline(handle, Recipe.from_json(recipe.to_json()), _ctx(handle))
    assert pipe.unet.up_blocks[2].resnets[0].conv1.module.out_channels == 24
    images = generate(handle, pipe, SampleSpec(seeds=(0, 1), labels=(1, 2), batch_size=2))
    assert torch.isfinite(images).all()


def test_tiny_sdxl_int8_per_group_runs_end_to_end():
    from autoeff.models.tiny import build_tiny_sdxl

    handle = build_tiny_sdxl()
    ctx = _ctx(handle)
    params = {f"quantize.{g}": ("int8" if g in ("down.1", "up.0") else "skip")
              for g in searched_groups(ctx.block_groups)}
    cfg = quantize.suggest(optuna.trial.FixedTrial({"quantize.mode": "per_group", **params}), ctx)
    targets = quantize.quantized_layers(handle.denoiser, cfg)
    assert any(".attentions." in f and "attn2" in f for f in targets)  # cross-attention: dynamic int8
    assert all(f.startswith(("down_blocks.1.", "up_blocks.0.")) for f in targets)
    new = quantize.apply(handle.pipeline, cfg, ctx)
    spec = SampleSpec(seeds=(0,), prompts=("a red cube",), batch_size=1)
    images = generate(handle, new, spec)
    reference = generate(handle, handle.pipeline, spec)
    assert torch.isfinite(images).all() and images.shape == reference.shape


def test_cpu_int8_calibration_is_deterministic(random_digits_handle):
    """Export re-applies the quantize knob on load: the same weights must quantize to the same model."""
    handle = random_digits_handle
    cfg = quantize.Config(mapping={group_regex(["up_blocks.0"]): "int8", "_default": "skip"})
    a = quantize.quantize_denoiser(handle.denoiser, cfg, handle.pipeline.scheduler)
    b = quantize.quantize_denoiser(handle.denoiser, cfg, handle.pipeline.scheduler)
    inputs = example_inputs(handle.denoiser, batch=2, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(a(**inputs).sample, b(**inputs).sample)
