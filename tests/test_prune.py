"""The prune knob: DepGraph channel pruning per block group, and the plan that rebuilds a pruned model."""

from __future__ import annotations

import copy
import json

import optuna
import pytest
import torch
from torch import nn

from autoeff.models.generate import SampleSpec, generate
from autoeff.search_spaces import prune
from autoeff.search_spaces.base import ConfigError, SpaceContext, config_from_dict, config_to_dict
from autoeff.search_spaces.groups import block_groups, example_inputs, searched_groups


def _ctx(handle, **options) -> SpaceContext:
    return SpaceContext(family=handle.family, denoiser=handle.denoiser_name,
                        block_groups=list(block_groups(handle.denoiser)), options={"prune": options})


def _all(handle, ratio: float, **kwargs) -> prune.Config:
    return prune.Config(ratios={g: ratio for g in searched_groups(block_groups(handle.denoiser))}, **kwargs)


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _fresh(model: nn.Module, seed: int = 123) -> nn.Module:
    torch.manual_seed(seed)
    return type(model).from_config(model.config).eval()


def _round_trip(pruned: nn.Module) -> nn.Module:
    """state_dict + JSON plan -> fresh random model from the unpruned config -> apply_plan -> load."""
    plan = json.loads(json.dumps(prune.prune_plan(pruned)))
    rebuilt = prune.apply_plan(_fresh(pruned), plan)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    return rebuilt


@pytest.fixture(scope="module")
def tiny_sdxl():
    from autoeff.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl()


@pytest.fixture(scope="module")
def tiny_pixart():
    from autoeff.models.tiny import build_tiny_pixart

    return build_tiny_pixart()


# --- config and search -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    ({"ratios": {"down.0": 1.0}}, "down.0"),
    ({"ratios": {"down.0": -0.1}}, "down.0"),
    ({"ratios": {"embed": 0.25}}, "embed"),
    ({"ratios": {"mid": True}}, "mid"),
    ({"importance": "taylor"}, "importance"),
    ({"round_to": 0}, "round_to"),
])
def test_config_validation(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        prune.Config(**kwargs)


def test_config_json_round_trip():
    cfg = prune.Config(ratios={"down.0": 0.25, "mid": 0.5, "out": 0}, importance="l1", round_to=4)
    assert config_from_dict(prune.Config, json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    assert cfg.describe() == "l1/4: down.0=1/4 mid=1/2"
    assert prune.Config().describe() == "none" and prune.Config().is_identity()


@pytest.mark.parametrize("options", [{}, {"importance": ["l1", "l2"], "round_to": 4}])
def test_suggest_to_params_round_trip(random_digits_handle, random_digits_dit_handle, options):
    for handle in (random_digits_handle, random_digits_dit_handle):
        ctx = _ctx(handle, **options)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(6):
            cfg = prune.suggest(study.ask(), ctx)
            assert set(cfg.ratios) == set(searched_groups(ctx.block_groups))
            assert set(cfg.ratios.values()) <= set(prune.RATIO_CHOICES)
            assert prune.suggest(optuna.trial.FixedTrial(prune.to_params(cfg)), ctx) == cfg


@pytest.mark.parametrize("channels, ratio, groups, round_to, kept", [
    (32, 0.25, 8, 8, 24), (32, 0.125, 8, 8, 32), (64, 0.125, 8, 8, 56), (512, 0.25, 1, 8, 384),
    (24, 0.5, 8, 8, 16), (64, 0.5, 32, 8, 32), (96, 0.5, 1, 1, 48), (16, 0.9, 8, 8, 8), (36, 0.25, 4, 8, 28),
])
def test_kept_channels(channels, ratio, groups, round_to, kept):
    assert prune.kept_channels(channels, ratio, groups, round_to) == kept


# --- digits U-Net ----------------------------------------------------------------------------------------


def test_unet_prune_shrinks_and_keeps_base(random_digits_handle):
    handle = random_digits_handle
    base = handle.denoiser
    before = {k: v.clone() for k, v in base.state_dict().items()}
    n0 = _n(base)
    new = prune.apply(handle.pipeline, _all(handle, 0.25), _ctx(handle))
    assert new.unet is not base and handle.pipeline.unet is base and _n(base) == n0
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    # Conv weights scale with in x out channels: 3/4 of both gives ~9/16; the attention-coupled streams stay.
    assert 0.55 * n0 < _n(new.unet) < 0.75 * n0
    for name, m in new.unet.named_modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0 and m.num_channels == m.weight.numel(), name
        if isinstance(m, nn.Conv2d) and name != "conv_out":
            assert m.out_channels % 8 == 0, name
    assert new.unet.conv_out.out_channels == 1 and new.unet.time_embedding.linear_2.out_features == 128
    inputs = example_inputs(base, batch=2)
    with torch.no_grad():
        assert torch.isfinite(new.unet(**inputs).sample).all()
    images = generate(handle, new, SampleSpec(seeds=(0, 1), labels=(3, 8), batch_size=2))
    assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all()


def test_unet_ratio_one_half_prunes_more(random_digits_handle):
    handle = random_digits_handle
    quarter = prune.apply(handle.pipeline, _all(handle, 0.25), _ctx(handle)).unet
    half = prune.apply(handle.pipeline, _all(handle, 0.5), _ctx(handle)).unet
    assert _n(half) < 0.75 * _n(quarter)
    assert half.down_blocks[0].resnets[0].conv1.out_channels == 16


def test_only_the_named_group_is_pruned(random_digits_handle):
    handle = random_digits_handle
    base = handle.denoiser
    pruned = prune.apply(handle.pipeline, prune.Config(ratios={"up.2": 0.5}), _ctx(handle)).unet
    changed = {n for n, p in pruned.named_parameters() if p.shape != base.get_parameter(n).shape}
    assert changed and all(n.startswith("up_blocks.2.") or n.startswith("conv_norm_out")
                           or n.startswith("conv_out") for n in changed)
    assert pruned.up_blocks[2].resnets[0].conv1.out_channels == 16


def test_resampler_channels_follow_the_pruned_width(random_digits_handle):
    handle = random_digits_handle
    pruned = prune.apply(handle.pipeline, prune.Config(ratios={"down.0": 0.5}), _ctx(handle)).unet
    down = pruned.down_blocks[0].downsamplers[0]
    assert down.channels == down.conv.in_channels == 16


def test_unet_plan_rebuilds_identical_model(random_digits_handle):
    handle = random_digits_handle
    pruned = prune.apply(handle.pipeline, _all(handle, 0.25, importance="l1"), _ctx(handle)).unet
    rebuilt = _round_trip(pruned)
    inputs = example_inputs(pruned, batch=2)
    with torch.no_grad():
        assert torch.equal(rebuilt(**inputs).sample, pruned(**inputs).sample)
    assert prune.prune_plan(rebuilt) == prune.prune_plan(pruned)


def test_apply_plan_refuses_a_plan_that_does_not_fit(random_digits_handle, random_digits_dit_handle):
    handle = random_digits_handle
    plan = prune.prune_plan(prune.apply(handle.pipeline, _all(handle, 0.5), _ctx(handle)).unet)
    with pytest.raises(ConfigError, match="DiTTransformer2DModel"):
        prune.apply_plan(_fresh(random_digits_dit_handle.denoiser), plan)
    wider = type(handle.denoiser)(**{**handle.denoiser.config, "layers_per_block": 2})
    with pytest.raises(ConfigError, match="parameters"):
        prune.apply_plan(wider, plan)
    with pytest.raises(ConfigError, match="version"):
        prune.apply_plan(_fresh(handle.denoiser), {**plan, "version": 99})


def test_unpruned_plan_is_empty(random_digits_handle):
    model = copy.deepcopy(random_digits_handle.denoiser)
    plan = prune.prune_plan(model)
    assert plan["history"] == [] and prune.apply_plan(_fresh(model), plan) is not None
    new = prune.apply(random_digits_handle.pipeline, prune.Config(ratios={"mid": 0.0}),
                      _ctx(random_digits_handle))
    assert new.unet is random_digits_handle.denoiser


def test_unknown_group_is_an_error(random_digits_handle):
    with pytest.raises(ConfigError, match="blocks.0-1"):
        prune.apply(random_digits_handle.pipeline, prune.Config(ratios={"blocks.0-1": 0.5}),
                    _ctx(random_digits_handle))


# --- transformers ----------------------------------------------------------------------------------------


def test_dit_prunes_mlp_width_only(random_digits_dit_handle):
    handle = random_digits_dit_handle
    base = handle.denoiser
    new = prune.apply(handle.pipeline, prune.Config(ratios={"blocks.0-1": 0.25, "blocks.4-5": 0.5}),
                      _ctx(handle))
    dit = new.transformer
    widths = [b.ff.net[0].proj.out_features for b in dit.transformer_blocks]
    assert widths == [384, 384, 512, 512, 256, 256]
    assert all(b.ff.net[2].in_features == w for b, w in zip(dit.transformer_blocks, widths, strict=True))
    assert all(b.attn1.to_q.weight.shape == (128, 128) for b in dit.transformer_blocks)
    mlp = 2 * 128 * 512 + 512  # the MLP parameters of one block that scale with its hidden width
    assert _n(base) - _n(dit) == round(mlp * (2 * 0.25 + 2 * 0.5))
    assert base.transformer_blocks[0].ff.net[0].proj.out_features == 512
    rebuilt = _round_trip(dit)
    inputs = example_inputs(dit, batch=2)
    with torch.no_grad():
        assert torch.equal(rebuilt(**inputs).sample, dit(**inputs).sample)
    images = generate(handle, new, SampleSpec(seeds=(0, 1), labels=(0, 9), batch_size=2))
    assert torch.isfinite(images).all()


def test_tiny_pixart_prunes_and_runs(tiny_pixart):
    handle = tiny_pixart
    new = prune.apply(handle.pipeline, _all(handle, 0.5), _ctx(handle))
    assert _n(new.transformer) < _n(handle.denoiser)
    assert _round_trip(new.transformer) is not None
    images = generate(handle, new, SampleSpec(seeds=(0,), prompts=("a red cube",), batch_size=1))
    assert torch.isfinite(images).all()


def test_tiny_sdxl_prunes_resnets_not_cross_attention(tiny_sdxl):
    handle = tiny_sdxl
    base = handle.denoiser
    new = prune.apply(handle.pipeline, _all(handle, 0.5), _ctx(handle))
    unet = new.unet
    assert _n(unet) < 0.9 * _n(base)
    for name, m in base.named_modules():
        if "attentions" in name and isinstance(m, nn.Linear):
            assert unet.get_submodule(name).weight.shape == m.weight.shape, name
    assert unet.down_blocks[1].resnets[0].conv1.out_channels == 32
    rebuilt = _round_trip(unet)
    inputs = example_inputs(unet, batch=1)
    with torch.no_grad():
        assert torch.equal(rebuilt(**inputs).sample, unet(**inputs).sample)
    images = generate(handle, new, SampleSpec(seeds=(0,), prompts=("a red cube",), batch_size=1))
    assert torch.isfinite(images).all()


def test_pruned_unet_saves_and_loads_from_its_folder(random_digits_handle, tmp_path):
    from safetensors.torch import load_file

    handle = random_digits_handle
    pruned = prune.apply(handle.pipeline, _all(handle, 0.5), _ctx(handle)).unet
    pruned.save_pretrained(str(tmp_path), safe_serialization=True)
    (tmp_path / "plan.json").write_text(json.dumps(prune.prune_plan(pruned)))
    config = json.loads((tmp_path / "config.json").read_text())  # the unpruned architecture
    model = type(pruned).from_config(config)
    prune.apply_plan(model, json.loads((tmp_path / "plan.json").read_text()))
    model.load_state_dict(load_file(str(tmp_path / "diffusion_pytorch_model.safetensors")), strict=True)
    inputs = example_inputs(pruned, batch=2)
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs).sample, pruned(**inputs).sample)


def test_recover_distils_towards_the_teacher(random_digits_handle):
    from autoeff.search_spaces.groups import denoiser_output, noised_inputs

    handle = random_digits_handle
    ctx = _ctx(handle)
    pruned = prune.apply(handle.pipeline, _all(handle, 0.5), ctx)
    before = {k: v.clone() for k, v in pruned.unet.state_dict().items()}
    recovered = prune.recover(pruned, handle.pipeline, ctx, steps=25, lr=1e-3, batch_size=4, seed=0)
    assert all(torch.equal(v, pruned.unet.state_dict()[k]) for k, v in before.items())
    assert prune.prune_plan(recovered.unet) == prune.prune_plan(pruned.unet)

    held_out = noised_inputs(handle.denoiser, handle.pipeline.scheduler, 8, torch.arange(0, 1000, 125),
                             torch.Generator().manual_seed(99))
    with torch.no_grad():
        target = denoiser_output(handle.denoiser(**held_out))
        err_before = torch.mean((denoiser_output(pruned.unet(**held_out)) - target) ** 2)
        err_after = torch.mean((denoiser_output(recovered.unet(**held_out)) - target) ** 2)
    assert err_after < 0.8 * err_before
    with pytest.raises(ConfigError, match="steps"):
        prune.recover(pruned, handle.pipeline, ctx, steps=0)


def test_modes_keep_unpruned_and_uniform_draws_likely(random_digits_handle):
    ctx = _ctx(random_digits_handle)
    off = prune.suggest(optuna.trial.FixedTrial({"prune.mode": "off"}), ctx)
    assert set(off.ratios.values()) == {0.0}
    uni = prune.suggest(optuna.trial.FixedTrial({"prune.mode": "uniform", "prune.uniform.ratio": 0.25}), ctx)
    assert set(uni.ratios.values()) == {0.25} and set(uni.ratios) == set(off.ratios)
    assert prune.to_params(uni) == {"prune.mode": "uniform", "prune.uniform.ratio": 0.25, "prune.importance": "l2"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    draws = [prune.suggest(study.ask(), ctx) for _ in range(60)]
    unpruned = sum(set(c.ratios.values()) == {0.0} for c in draws)
    assert unpruned >= 10  # about a third of random draws; per-group ratios alone gave almost none
