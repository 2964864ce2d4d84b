"""One settings schema: the API's keywords, the CLI's flags and the stored study all come from
`autoeff.settings`, and every value is checked there before anything loads."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import autoeff
import autoeff.api
from autoeff.budget import BudgetError
from autoeff.cli import optimize as optimize_command
from autoeff.errors import SettingsError
from autoeff.settings import RunOptions, SearchSettings, flag_of, settings_fields


def test_autoeff_optimize_is_the_typed_api_function_with_every_setting_as_a_keyword():
    assert autoeff.optimize is autoeff.api.optimize
    params = inspect.signature(autoeff.optimize).parameters
    assert list(params)[0] == "model"
    keywords = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert sorted(keywords) == sorted([*settings_fields(), "callbacks", "progress"])
    for f in dataclasses.fields(SearchSettings) + dataclasses.fields(RunOptions):
        if f.name == "model":
            continue
        default = params[f.name].default
        expected = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty)
        if f.name == "space":
            default = list(default)
        if f.name == "options":
            default = default or {}
        assert default == expected or str(default) == str(expected), f.name
        assert params[f.name].annotation != inspect.Parameter.empty


def test_the_cli_options_are_the_schema_fields_with_a_flag():
    options = {p.name: p for p in optimize_command.params}
    for cls in (SearchSettings, RunOptions):
        for f in dataclasses.fields(cls):
            flag = flag_of(cls, f.name)
            if flag is None:
                assert f.name not in options
                continue
            assert flag.name in options[f.name].opts
    # besides the schema, optimize takes only how it reads its input and what it prints (issue 15)
    presentation = {"config_file", "as_json", "verbose", "quiet", "log_file"}
    assert set(options) - presentation == {f.name for cls in (SearchSettings, RunOptions)
                                           for f in dataclasses.fields(cls) if flag_of(cls, f.name) is not None}
    assert presentation <= set(options)


@pytest.mark.parametrize("changes, message", [
    ({"trials": 0}, "--trials 0 must be at least 1"),
    ({"trials": 1.0}, "--trials 1.0 must be a whole number"),
    ({"seed": -1}, "--seed -1 must be at least 0"),
    ({"seed": 2**32}, f"--seed {2**32} must be at most {2**32 - 1}"),
    ({"batch_size": 0}, "--batch 0 must be at least 1"),
    ({"proxy_samples": 64, "final_samples": 32}, "--final-samples 32 is below --proxy-samples 64"),
    ({"min_steps": 20, "max_steps": 10}, "--max-steps 10 is below --min-steps 20"),
    ({"metric": "bogus"}, "--metric 'bogus' is not known"),
    ({"sampler": "grid"}, "--sampler 'grid' is not one of"),
    ({"space": "solver,warp"}, r"--space 'solver,warp': unknown knob\(s\) \['warp'\]"),
    ({"trial_timeout_s": -1.0}, "--trial-timeout -1.0 must be a positive number"),
    ({"budget": 0.2}, "budget=0.2 must be a latency string"),
    ({"options": {"solver": "dpmpp"}}, "options must map knob names to objects"),
])
def test_settings_refuse_bad_values_naming_the_flag(changes, message):
    with pytest.raises(SettingsError, match=message):
        SearchSettings(**{"model": "digits", "budget": "10%", **changes})


def test_a_budget_string_is_parsed_and_refused_like_the_cli_does():
    assert SearchSettings(model="digits", budget="200ms").budget.seconds == pytest.approx(0.2)
    with pytest.raises(BudgetError, match="has no unit"):
        SearchSettings(model="digits", budget="200")


@pytest.mark.parametrize("changes, message", [
    ({"threads": 0}, "--threads 0 must be at least 1"),
    ({"recover_steps": -5}, "--recover-steps -5 must be at least 0"),
    ({"heartbeat_interval": 0}, "--heartbeat-interval 0 must be at least 1"),
    ({"grace_period": 5, "heartbeat_interval": 5}, "--grace-period 5 must be longer than the heartbeat interval"),
])
def test_run_options_refuse_bad_values(changes, message):
    with pytest.raises(SettingsError, match=message):
        RunOptions(**changes)


def test_api_arguments_are_checked_before_anything_is_written(tmp_path):
    out = tmp_path / "never"
    for bad in ({"budget": 0.2}, {"seed": -1}, {"trials": 1.0}):
        with pytest.raises(SettingsError):
            autoeff.optimize("digits", **{"budget": "10%", "out": out, **bad})
    assert not out.exists()


def test_stored_settings_round_trip(random_digits_handle):
    s = SearchSettings(model="digits", budget="10%", space="cache,solver", options={"solver": {"max_order": 2}})
    r = s.resolved(random_digits_handle)
    assert r.space == ["solver", "cache"] and r.metric == "fid" and (r.proxy_samples, r.final_samples) == (128, 1000)
    assert SearchSettings.from_dict(r.to_dict()) == r
    with pytest.raises(SettingsError, match="unknown field"):
        SearchSettings.from_dict({**r.to_dict(), "new_field": 1})


def test_workload_fields_enter_the_identity_only_when_set(tmp_path):
    """A study made before the workload flags existed has none of them in its identity, and a search without them
    has the same identity, so it resumes; set, each one makes another study. The reference folder counts by its
    images' digest, not its path (another machine's copy matches)."""
    from PIL import Image

    from autoeff.settings import WORKLOAD_FIELDS

    plain = SearchSettings(model="digits", budget="50%").identity("m")
    assert not set(WORKLOAD_FIELDS) & set(plain)
    for changes in ({"prompts": ["a cat"]}, {"negative_prompt": "blurry"}, {"labels": "1,2"}, {"resolution": 64},
                    {"guidance_scale": 3.0}, {"steps": 20}, {"dtype": "bf16"}):
        changed = SearchSettings(model="digits", budget="50%", **changes).identity("m")
        assert changed != plain and set(changed) - set(plain) == set(changes)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name / "x.png")
    ids = [SearchSettings(model="digits", budget="50%", reference=str(tmp_path / n)).identity("m") for n in "ab"]
    assert ids[0] == ids[1] and ids[0]["reference"] != str(tmp_path / "a")
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "b" / "x.png")
    assert SearchSettings(model="digits", budget="50%", reference=str(tmp_path / "b")).identity("m") != ids[0]


@pytest.mark.parametrize("changes, message", [
    ({"labels": "1,x"}, "--labels '1,x' must be class numbers"),
    ({"labels": [-1]}, "a class number is at least 0"),
    ({"dtype": "int8"}, "--dtype 'int8' is not one of fp32, fp16, bf16"),
    ({"guidance_scale": -1}, "--guidance-scale -1 must be a number in"),
    ({"reference": "/nonexistent/images"}, "is not a folder"),
])
def test_workload_values_are_refused_naming_the_flag(changes, message):
    with pytest.raises(SettingsError, match=message):
        SearchSettings(model="digits", budget="50%", **changes)
