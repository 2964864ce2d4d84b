"""The compile knob and compile time: off reproduces the images bit for bit; eager/aot_eager backends (dynamo
capture without code generation: cheap on this CPU) reproduce them too and never touch the base; scope `blocks`
composes with DeepCache and `model` is refused with it; compiling is measured apart from latency, a candidate that
compiles inside its timed calls is timed again or fails; `--compile-budget` stops compiling candidates; load
re-applies it and `AUTOEFF_COMPILE=0` skips it; one small inductor compile checks numerics and the on-disk cache.
"""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from torch import nn
from torch._dynamo.eval_frame import OptimizedModule
from torch._dynamo.utils import counters

import autoeff
from autoeff.errors import SettingsError
from autoeff.export import export_pipeline, load
from autoeff.measure import EvaluationSpec, Evaluator, compile_warmup, uses_compile
from autoeff.measurement import CompileRecord, Measurement
from autoeff.models.generate import default_spec, generate
from autoeff.recipe import Recipe
from autoeff.search import CandidateFailed, Objective, context_for
from autoeff.search_spaces import cache, compile, solver
from autoeff.search_spaces.base import ConfigError
from autoeff.search_spaces.space import SearchSpace
from autoeff.settings import SearchSettings
from autoeff.study import fail_reason, set_measurement, skip_reason
from autoeff.workers import trial_counts

EAGER = compile.Config(mode="default", backend="eager")


@pytest.fixture
def fresh_dynamo():
    """For tests that must see a compilation: dynamo otherwise reuses a graph another test compiled (which is
    what makes the other tests cheap, and what a search relies on)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def digits(random_digits_handle):
    random_digits_handle.default_steps = 3
    return random_digits_handle


def _ctx(handle, device="cpu", options=None):
    settings = SearchSettings(model="digits", budget="1s", space=["compile"], options=options or {})
    return dataclasses.replace(context_for(handle, settings), device=device)


def _images(handle, pipe, n=2):
    return generate(handle, pipe, default_spec(handle, n, seed=0, batch_size=n))


def test_off_and_disabled_reproduce_the_uncompiled_images_bit_for_bit(digits, monkeypatch):
    ctx = _ctx(digits)
    base = _images(digits, digits.pipeline)
    assert torch.equal(_images(digits, compile.apply(digits.pipeline, compile.Config(), ctx)), base)
    with compile.disabled():
        skipped = compile.apply(digits.pipeline, EAGER, ctx)
    monkeypatch.setenv(compile.ENV_SWITCH, "0")
    by_env = compile.apply(digits.pipeline, EAGER, ctx)
    for pipe in (skipped, by_env):
        assert not uses_compile(pipe) and torch.equal(_images(digits, pipe), base)


@pytest.mark.parametrize("config", [EAGER, compile.Config(mode="default", backend="aot_eager", scope="blocks")],
                         ids=["eager-model", "aot_eager-blocks"])
def test_capturing_backends_reproduce_the_images_and_leave_the_base_alone(digits, config):
    ctx = _ctx(digits)
    base_unet = digits.pipeline.unet
    base = _images(digits, digits.pipeline)
    pipe = compile.apply(digits.pipeline, config, ctx)
    assert uses_compile(pipe) and torch.equal(_images(digits, pipe), base)
    assert isinstance(pipe.unet, OptimizedModule) == (config.scope == "model")
    # the base pipeline still runs its own, uncompiled modules; the copy shares their weights
    assert digits.pipeline.unet is base_unet and not uses_compile(digits.pipeline)
    assert all(m._compiled_call_impl is None for m in base_unet.modules())
    shared = dict(base_unet.named_parameters())
    assert all(p is shared[n] for n, p in pipe.unet.named_parameters() if n in shared)


def test_blocks_scope_compiles_what_deepcache_calls_and_model_scope_is_refused_with_it(digits):
    ctx = _ctx(digits)
    cached = cache.apply(digits.pipeline, cache.Config(interval=2, branch=1, schedule="nonuniform", power=2.0), ctx)
    reference = _images(digits, cached)
    pipe = compile.apply(cached, dataclasses.replace(EAGER, scope="blocks"), ctx)
    del cached  # the nonuniform schedule reads the run length from the pipeline it runs in, not the dead one
    assert torch.equal(_images(digits, pipe), reference)
    assert pipe.unet.stats.shallow_steps == 2 and pipe.unet.base.down_blocks[0]._compiled_call_impl is not None
    with pytest.raises(ConfigError, match="cannot reach inside the cache wrapper.*scope 'blocks'"):
        compile.apply(cache.apply(digits.pipeline, cache.Config(interval=2), ctx), EAGER, ctx)


def test_config_options_and_devices_are_checked_in_one_line(digits):
    with pytest.raises(ConfigError, match="mode 'off' compiles nothing"):
        compile.Config(scope="blocks")
    with pytest.raises(ConfigError, match="takes mode 'default'"):
        compile.Config(mode="max-autotune-no-cudagraphs", backend="eager")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        compile.apply(digits.pipeline, compile.Config(mode="reduce-overhead"), _ctx(digits))
    with pytest.raises(ConfigError, match="tensorrt' runs on CUDA only"):
        compile.apply(digits.pipeline, compile.Config(mode="default", backend="tensorrt"), _ctx(digits))
    with pytest.raises(ConfigError, match="need a CUDA device; leave them out on the CPU"):
        compile.suggest(optuna.trial.FixedTrial({"compile.mode": "off"}),
                        _ctx(digits, options={"compile": {"modes": ["reduce-overhead"]}}))
    # the CUDA space draws CUDA graphs; a non-inductor backend always takes mode default
    cuda = _ctx(digits, device="cuda", options={"compile": {"backends": ["inductor", "tensorrt"]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [compile.suggest(study.ask(), cuda) for _ in range(40)]
    assert "reduce-overhead" in {c.mode for c in drawn}
    assert all(c.mode == "default" for c in drawn if c.backend == "tensorrt")
    for c in drawn:
        assert compile.suggest(optuna.trial.FixedTrial(compile.to_params(c)), cuda) == c


class _Flaky(nn.Module):
    """A denoiser whose compiled tail specializes on a Python number that changes at chosen pipeline calls
    (`values[k]` for pipeline call k): each new value makes torch.compile compile again."""

    def __init__(self, base: nn.Module, values: list[int], steps: int) -> None:
        super().__init__()
        self.base = base
        self.values = values
        self.steps = steps
        self.calls = 0
        self.tail = torch.compile(lambda x, c: x + 0.0 * c, backend="eager", dynamic=False)

    @property
    def config(self):
        return self.base.config

    @property
    def device(self):
        return self.base.device

    @property
    def dtype(self):
        return self.base.dtype

    def forward(self, sample, t, class_labels=None):
        out = self.base(sample, t, class_labels=class_labels)
        c = self.values[min(self.calls // self.steps, len(self.values) - 1)]
        self.calls += 1
        return type(out)(sample=self.tail(out.sample, c))


def _flaky_evaluator(digits, values):
    digits.pipeline.register_modules(unet=_Flaky(digits.pipeline.unet, values, digits.default_steps))
    return Evaluator(digits, EvaluationSpec(metric="fid", batch_size=1, proxy_samples=2, final_samples=2))


def test_compile_time_is_measured_apart_from_the_timed_calls(digits, fresh_dynamo):
    evaluator = Evaluator(digits, EvaluationSpec(metric="fid", batch_size=1, proxy_samples=2, final_samples=2))
    latency, record = evaluator.timed(compile.apply(digits.pipeline, EAGER, _ctx(digits)))
    assert isinstance(record, CompileRecord) and record.frames >= 1 and record.retimed == 0
    assert record.warmup_calls >= 2  # the first call compiled, a later one compiled nothing
    # tracing the U-Net takes seconds; a compiled call at batch 1 takes milliseconds, and no timed call compiled
    assert record.seconds > 5 * latency.median_s and max(latency.samples_s) < record.seconds
    again, none = evaluator.timed(compile.apply(digits.pipeline, EAGER, _ctx(digits)))
    assert none is None  # the same denoiser graph: dynamo's compiled graph is reused, nothing compiles
    m = Measurement(latency_s=again.median_s, latency=again, compile=record)
    assert Measurement.from_dict(m.to_dict()) == m and Measurement.from_dict({"latency_s": 1.0}).compile is None


def test_a_candidate_that_compiles_inside_its_timed_calls_is_timed_again_once_then_fails(digits, fresh_dynamo):
    # pipeline calls: 0 compiles, 1 compiles nothing (warm), 2 is the eager check, 3 is the timing's first and
    # needs a new value: refused under fail_on_recompile, warmed up again (4 compiles, 5 does not), 6 eager check,
    # then timed for good
    unet = digits.pipeline.unet
    _, record = _flaky_evaluator(digits, [0, 0, 0, 1]).timed(digits.pipeline)
    assert record is not None and record.retimed == 1 and record.frames >= 2
    digits.pipeline.register_modules(unet=unet)
    torch._dynamo.reset()  # forget the graphs of values 0 and 1
    # ... and if the timing's first call (7) compiles again, the candidate fails with that reason
    with pytest.raises(RuntimeError, match="compiled again inside its timed calls 2 times"):
        _flaky_evaluator(digits, [0, 0, 0, 1, 1, 1, 1, 2]).timed(digits.pipeline)


def test_a_pipeline_that_never_stops_compiling_is_refused(fresh_dynamo):
    step = iter(range(100))
    fn = torch.compile(lambda x, c: x * c, backend="eager", dynamic=False)
    with pytest.raises(RuntimeError, match="still compiled on warm-up call 4 of 4"):
        compile_warmup(lambda: fn(torch.ones(2), next(step)), "cpu", max_calls=4)
    record, out = compile_warmup(lambda: fn(torch.ones(2), 50), "cpu")
    assert record is not None and record.warmup_calls == 2 and torch.equal(out, torch.full((2,), 50.0))


def test_the_compile_budget_stops_candidates_that_compile(digits, fresh_dynamo):
    settings = SearchSettings(model="digits", budget="10s", space=["solver", "compile"], compile_budget_s=30.0,
                              proxy_samples=2, final_samples=2).resolved(digits)
    ctx = context_for(digits, settings)
    evaluator = Evaluator(digits, EvaluationSpec.of(settings))
    # a budget every candidate misses: timed, never scored (quality is not what this test is about)
    objective = Objective(SearchSpace(digits, settings.space, ctx), evaluator, 1e-4, settings)
    compiled = Recipe(model="digits", knobs={"solver": solver.Config(), "compile": EAGER})
    plain = Recipe(model="digits", knobs={"solver": solver.Config(), "compile": compile.Config()})
    with pytest.raises(RuntimeError, match=r"compile budget is spent \(31 s of --compile-budget 30 s\) and this "
                                           "candidate would compile"):
        objective.evaluate(compiled, compile_spent_s=31.0)
    assert objective.evaluate(plain, compile_spent_s=31.0).compile is None  # uncompiled candidates go on
    first = objective.evaluate(compiled, compile_spent_s=0.0).compile  # within the budget: compiled and measured
    assert first is not None and first.seconds > 0
    # spent, but the same denoiser graph is compiled already: measured, nothing compiled
    assert objective.evaluate(compiled, compile_spent_s=31.0).compile is None
    # what the study's trials spent: their stored measurements' compile seconds
    study = optuna.create_study(directions=["minimize", "maximize"])
    for seconds in (12.0, 8.5):
        t = study.ask()
        set_measurement(t, Measurement(latency_s=0.1, compile=CompileRecord(seconds, 2, 1)), 10.0)
    assert objective.compile_spent(study.ask()) == pytest.approx(20.5)
    with pytest.raises(SettingsError, match="--compile-budget -1 must be a number of seconds >= 0"):
        SearchSettings(model="digits", budget="1s", compile_budget_s=-1)


def test_load_recompiles_an_export_and_the_switch_skips_it(tmp_path, monkeypatch):
    digits = autoeff.load_model("digits")  # from its folder: the scheduler config a load reads back
    digits.default_steps = 3
    ctx = _ctx(digits)
    recipe = Recipe(model="digits", knobs={"solver": solver.Config(), "compile": EAGER})
    dest = export_pipeline(digits, recipe, ctx, tmp_path / "exported")
    searched = _images(digits, SearchSpace(digits, ["solver", "compile"], ctx).build(recipe))
    pipe = load(dest)
    assert isinstance(pipe.unet, OptimizedModule)  # compiled on its first call
    assert torch.equal(_images(pipe.autoeff_handle, pipe), searched)
    plain = load(dest, compile=False)
    assert not uses_compile(plain) and torch.equal(_images(plain.autoeff_handle, plain), searched)
    assert isinstance(load(dest).unet, OptimizedModule)  # the switch lasts for that one load only
    monkeypatch.setenv(compile.ENV_SWITCH, "0")  # the environment's switch, for any process
    plain = load(dest)
    assert not uses_compile(plain) and torch.equal(_images(plain.autoeff_handle, plain), searched)


@pytest.mark.slow  # one small inductor compile: ~15-30 s cold on 2 CPU cores
def test_inductor_compiles_within_tolerance_into_the_cache_folder_and_a_new_process_would_reuse_it(tmp_path,
                                                                                                     monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))
    folder = compile.use_cache_dir(tmp_path / "out" / "inductor-cache")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 1, 3, padding=1)).eval()
    x = torch.randn(2, 1, 16, 16)
    config = compile.Config(mode="default")
    with torch.no_grad():
        out = compile.compile_denoiser(model, config, "cpu")(x)
        assert (out - model(x)).abs().max() < 1e-5  # inductor reorders floating-point sums: rounding only
    assert any((folder / "fxgraph").rglob("*"))  # the compiled artifacts are in the output folder
    torch._dynamo.reset()  # what a new process starts with: no graph in memory
    hits = counters["inductor"]["fxgraph_cache_hit"]
    with torch.no_grad():
        again = compile.compile_denoiser(model, config, "cpu")(x)
    assert counters["inductor"]["fxgraph_cache_hit"] > hits and torch.equal(again, out)


def test_a_combination_the_knobs_refuse_ends_pruned_with_its_reason_and_is_not_counted(digits):
    settings = SearchSettings(model="digits", budget="10s", space=["cache", "compile"], proxy_samples=2,
                              final_samples=2, options={"compile": {"backends": ["eager"]}}).resolved(digits)
    ctx = context_for(digits, settings)
    objective = Objective(SearchSpace(digits, settings.space, ctx), Evaluator(digits, EvaluationSpec.of(settings)),
                          10.0, settings)
    study = optuna.create_study(directions=["minimize", "minimize"])
    # DeepCache's wrapper calls the U-Net's blocks, so compiling the whole U-Net would compile nothing it runs
    study.enqueue_trial({**cache.to_params(cache.Config(interval=2)), **compile.to_params(EAGER)})
    study.optimize(objective, n_trials=1, catch=(CandidateFailed,))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and fail_reason(trial) is None
    assert "refused: build: compile.scope 'model' cannot reach inside the cache wrapper" in (skip_reason(trial) or "")
    counts = trial_counts(study, free_skips=5)
    assert counts.skipped == 1 and counts.done == 0
