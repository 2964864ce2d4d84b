"""Adding a knob is one file plus its tests: a knob defined only here, registered from here, goes through the
search, warm starts, export and `autoeff.load` with no other module edited, and its options are checked before
a study starts. Also: every built-in knob keeps the protocol's promises."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner

import autoeff
from autoeff.cli import main
from autoeff.errors import SettingsError
from autoeff.export import export_pipeline, load
from autoeff.models.generate import default_spec, generate
from autoeff.recipe import Recipe
from autoeff.search import context_for
from autoeff.search_spaces import registry
from autoeff.search_spaces.base import ConfigError, Knob, SpaceContext, Stage, copy_pipeline
from autoeff.search_spaces.space import SearchSpace, build_pipeline
from autoeff.settings import SearchSettings
from autoeff.study import recipe_of

NAME = "test_gain"


# -- the whole knob: a denoiser wrapper that scales its prediction --------------------------------------------
@dataclass
class Config:
    gain: float = 1.0
    version: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.gain, bool) or not isinstance(self.gain, int | float) or not 0 < self.gain <= 2:
            raise ConfigError(f"{NAME}.gain {self.gain!r} must be a number in (0, 2]")
        self.gain = float(self.gain)

    def describe(self) -> str:
        return f"x{self.gain:g}"


@dataclass
class Options:
    gains: list[float] = field(default_factory=lambda: [1.0, 0.9])

    def __post_init__(self) -> None:
        if not self.gains or any(not 0 < g <= 2 for g in self.gains):
            raise ConfigError(f"{NAME} option gains={self.gains!r} must be numbers in (0, 2]")


class Gain(torch.nn.Module):
    """The base denoiser (shared, untouched) with its prediction scaled."""

    def __init__(self, base: torch.nn.Module, gain: float) -> None:
        super().__init__()
        self.base = base
        self.gain = gain

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base(*args, **kwargs)
        return type(out)(sample=out.sample * self.gain)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base"], name)


def suggest(trial: Any, context: SpaceContext) -> Config:
    return Config(gain=trial.suggest_categorical(f"{NAME}.gain", KNOB.options_for(context).gains))


def to_params(config: Config) -> dict[str, Any]:
    return {f"{NAME}.gain": config.gain}


def apply(pipe: Any, config: Config, context: SpaceContext) -> Any:
    new = copy_pipeline(pipe)
    if config.gain != 1.0:
        new.register_modules(**{context.denoiser: Gain(getattr(pipe, context.denoiser), config.gain)})
    return new


KNOB = Knob(name=NAME, stage=Stage.WRAP, help="scale the denoiser's prediction (a test knob)", config=Config,
            options=Options, suggest=suggest, to_params=to_params, apply=apply, off=lambda context: Config())


@pytest.fixture
def gain_knob():
    registry.register(KNOB)
    yield KNOB
    registry.unregister(NAME)


@pytest.fixture
def digits10():
    h = autoeff.load_model("digits")
    h.default_steps = 10
    return h


def test_a_knob_defined_in_a_test_goes_through_search_export_and_load(gain_knob, digits10, tmp_path):
    names = registry.knob_names()
    assert names.index("cache") < names.index(NAME) < names.index("compile")  # its stage and name place it
    res = autoeff.optimize(digits10, budget="300%", trials=3, out=tmp_path / "run", space=f"solver,schedule,{NAME}",
                           options={NAME: {"gains": [1.0, 0.5]}}, proxy_samples=16, final_samples=32, max_steps=6,
                           top_k=2, sampler="random")
    trials = res.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert trials and all(f"{NAME}.gain" in t.params for t in trials)  # drawn through its own suggest
    assert all(isinstance(recipe_of(t).knobs[NAME], Config) for t in trials)  # stored and read back typed
    # warm starts (the first trials) turn the knob off through its `off`
    warm = [r for r in res.records if r.warm_start]
    assert warm and all(r.recipe.knobs[NAME].gain == 1.0 for r in warm)
    assert res.export_path is not None and load(res.export_path).autoeff_info["recipe"]["knobs"][NAME]
    # an export with the knob on: re-applied by autoeff.load (it is not stored in the weights)
    recipe = Recipe(model=digits10.spec, knobs={**res.best.record.recipe.knobs, NAME: Config(gain=0.5)})
    dest = export_pipeline(digits10, recipe, res.context, tmp_path / "half")
    info = json.loads((dest / "autoeff.json").read_text())
    assert info["recipe"]["knobs"][NAME]["_data"] == {"gain": 0.5} and info["weights"] == {}
    pipe = load(dest)
    spec = default_spec(digits10, 8, seed=3, batch_size=8)
    searched = generate(digits10, SearchSpace(digits10, res.settings.space, res.context).build(recipe), spec)
    reloaded = generate(pipe.autoeff_handle, pipe, spec)
    without = Recipe(model=digits10.spec, knobs={k: c for k, c in recipe.knobs.items() if k != NAME})
    plain = generate(digits10, build_pipeline(digits10, without, res.context), spec)
    assert torch.equal(reloaded, searched) and not torch.equal(reloaded, plain)


def test_a_registered_knob_is_in_the_cli_space_and_its_options_are_checked_before_the_study(gain_knob, tmp_path):
    out = tmp_path / "never"
    res = CliRunner().invoke(main, ["optimize", "--model", "digits", "--budget", "50%", "--space", "solver,warp",
                                    "--out", str(out)])
    assert res.exit_code == 2 and f"known: {','.join(registry.knob_names())}" in res.stderr and NAME in res.stderr
    help_text = CliRunner().invoke(main, ["optimize", "--help"]).stdout
    assert f"{NAME}: scale the denoiser" in " ".join(help_text.split())
    with pytest.raises(SettingsError, match=rf"unknown {NAME} option\(s\) \['gian'\]; known: gains"):
        autoeff.optimize("digits", budget="50%", space=f"solver,{NAME}", options={NAME: {"gian": [1.0]}},
                         out=out)
    with pytest.raises(SettingsError, match=f"{NAME} option gains"):
        autoeff.optimize("digits", budget="50%", space=f"solver,{NAME}", options={NAME: {"gains": [3.0]}},
                         out=out)
    with pytest.raises(SettingsError, match=r"options name unknown knob\(s\) \['solvr'\]"):
        autoeff.optimize("digits", budget="50%", options={"solvr": {"names": ["dpmpp"]}}, out=out)
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("name", ["prune", "kernels", "quantize", "solver", "schedule", "cache", "guidance", "compile"])
def test_every_builtin_knob_keeps_the_protocol(name, random_digits_handle):
    """`to_params(config)` makes `suggest` return `config`; `off()` (where there is one) round-trips too and
    changes nothing about the images; unknown options are refused with the knob's name."""
    knob = registry.get_knob(name)
    ctx = context_for(random_digits_handle, SearchSettings(model="digits", budget="1s", space=[name], max_steps=6))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        cfg = knob.suggest(study.ask(), ctx)
        assert knob.suggest(optuna.trial.FixedTrial(knob.to_params(cfg)), ctx) == cfg
    with pytest.raises(ConfigError, match=f"unknown {name} option"):
        knob.options_for(dataclasses.replace(ctx, options={name: {"no_such_option": 1}}))
    if knob.off is None:
        assert name in ("solver", "schedule")  # every candidate chooses one
        return
    off = knob.off(ctx)
    assert knob.suggest(optuna.trial.FixedTrial(knob.to_params(off)), ctx) == off
    spec = default_spec(random_digits_handle, 2, seed=0, batch_size=2)
    base = generate(random_digits_handle, random_digits_handle.pipeline, spec)
    turned_off = knob.apply(random_digits_handle.pipeline, off, ctx)
    assert torch.equal(generate(random_digits_handle, turned_off, spec), base)


def test_registering_a_second_knob_of_the_same_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(dataclasses.replace(registry.get_knob("solver"), help="another"))
