"""CUDA checks of the compile knob and of compiled quantization (`make test-gpu`; deselected by default, CI has
no GPU): inductor modes including CUDA graphs reproduce the eager images within rounding and their compile time
is recorded apart from the latency; torchao candidates are built compiled; the tensorrt backend compiles where
torch_tensorrt imports and says how to install it where it does not."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from autoeff.measure import EvaluationSpec, Evaluator, uses_compile
from autoeff.models.generate import SampleSpec, generate
from autoeff.search import context_for
from autoeff.search_spaces import compile, quantize
from autoeff.search_spaces.base import ConfigError
from autoeff.settings import SearchSettings

pytestmark = pytest.mark.gpu  # `make test-gpu` runs these on a CUDA machine
SPEC = SampleSpec(seeds=(0, 1, 2, 3), labels=(3, 4, 5, 6), batch_size=4)
# bf16 images after a few steps: inductor's fused kernels round differently from eager ones
TOLERANCE = 0.05


def _cuda(handle, dtype=torch.float32):
    assert torch.cuda.is_available(), "gpu tests need a CUDA device: run `make test-gpu` on one"
    handle.pipeline.to("cuda", dtype)
    handle.default_steps = 4
    return context_for(handle, SearchSettings(model=handle.spec, budget="1s", device="cuda", space=["compile"]))


@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs", "reduce-overhead"])
def test_inductor_modes_on_cuda_reproduce_the_images_and_record_their_compile_time(random_digits_handle, mode):
    ctx = _cuda(random_digits_handle)
    eager = generate(random_digits_handle, random_digits_handle.pipeline, SPEC)
    torch._dynamo.reset()
    pipe = compile.apply(random_digits_handle.pipeline, compile.Config(mode=mode), ctx)
    evaluator = Evaluator(random_digits_handle, EvaluationSpec(metric="fid", device="cuda", batch_size=4,
                                                               proxy_samples=4, final_samples=4))
    latency, record = evaluator.timed(pipe)
    assert record is not None and record.seconds > 0 and record.retimed == 0 and latency.median_s > 0
    assert (generate(random_digits_handle, pipe, SPEC) - eager).abs().max() < TOLERANCE


@pytest.mark.parametrize("level", ["int8", "fp8"])
def test_torchao_candidates_are_built_compiled(random_digits_dit_handle, level):
    ctx = _cuda(random_digits_dit_handle, torch.bfloat16)
    reference = generate(random_digits_dit_handle, random_digits_dit_handle.pipeline, SPEC)
    cfg = quantize.Config(mapping={"re:transformer_blocks\\..*": level}, backend="torchao")
    pipe = quantize.apply(random_digits_dit_handle.pipeline, cfg, ctx)
    assert uses_compile(pipe) and not uses_compile(random_digits_dit_handle.pipeline)
    images = generate(random_digits_dit_handle, pipe, SPEC)
    assert torch.isfinite(images).all() and (images - reference).abs().mean() < TOLERANCE
    with compile.disabled():  # autoeff.load(..., compile=False): quantized, not compiled
        assert not uses_compile(quantize.apply(random_digits_dit_handle.pipeline, cfg, ctx))
    # the compile knob compiles the quantized denoiser its own way (whole model) instead of by blocks
    whole = compile.apply(pipe, compile.Config(mode="max-autotune-no-cudagraphs"), ctx)
    assert not any(m._compiled_call_impl is not None for m in whole.transformer.modules())
    assert torch.isfinite(generate(random_digits_dit_handle, whole, SPEC)).all()


def test_the_tensorrt_backend_compiles_where_torch_tensorrt_imports(random_digits_dit_handle):
    ctx = _cuda(random_digits_dit_handle)
    config = compile.Config(mode="default", backend="tensorrt")
    if importlib.util.find_spec("torch_tensorrt") is None:
        with pytest.raises(ConfigError, match=r"autoeff\[tensorrt\]"):
            compile.apply(random_digits_dit_handle.pipeline, config, ctx)
        return
    eager = generate(random_digits_dit_handle, random_digits_dit_handle.pipeline, SPEC)
    pipe = compile.apply(random_digits_dit_handle.pipeline, config, ctx)
    assert (generate(random_digits_dit_handle, pipe, SPEC) - eager).abs().max() < TOLERANCE
