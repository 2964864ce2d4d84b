"""The torchao backend of the quantize knob on CUDA, with and without torch.compile: correctness and latency
per level.

    python benchmarks/gpu_quantize.py        # needs a CUDA device and torchao

Rows per model and batch: bf16 eager (the reference), bf16 compiled (inductor max-autotune-no-cudagraphs, whole
model), and per level the quantized model uncompiled (`compile.disabled()`), as the quantize knob builds it
(torchao candidates are built compiled: blocks, inductor default) and compiled whole (what the compile knob
does on top). torchao's dynamic int8/fp8 kernels are meant to run compiled (diffusers-torchao: Flux-dev int8
dynamic 3.41 s compiled, 130.5 s uncompiled). Latency: CUDA events, median of 20 calls after warm-up until a call
compiles nothing (`autoeff.measure.compile_warmup`, whose seconds are printed apart). Results are recorded by
hand in BENCHMARKS.md with the device, torch and torchao versions.
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from diffusers import DiTTransformer2DModel

from autoeff.evaluators.size import model_size_mb
from autoeff.measure import compile_warmup
from autoeff.models.digits.architectures import build_dit
from autoeff.search_spaces import compile as C
from autoeff.search_spaces import quantize as Q
from autoeff.search_spaces.groups import block_groups, example_inputs, groups_to_mapping, searched_groups

warnings.simplefilter("ignore")


def timeit(fn, n: int = 20, warm: int = 5) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


WHOLE = C.Config(mode="max-autotune-no-cudagraphs")


def measure(label: str, m: torch.nn.Module, call, ref: torch.Tensor | None, base: float | None) -> float:
    """Compile warm-up (its seconds printed apart), then CUDA-event latency; relative error against `ref`."""
    with torch.inference_mode():
        record, out = compile_warmup(lambda: call(m), "cuda")
        ms = timeit(lambda: call(m))
    compiled = "" if record is None else f", compile {record.seconds:.1f}s ({record.frames} frames)"
    speed = "" if base is None else f" (x{base / ms:.2f})"
    err = "" if ref is None else f", rel err {((out.float() - ref.float()).norm() / ref.float().norm()).item():.4f}"
    print(f"  {label}: {ms:.3f} ms{speed}{err}{compiled}", flush=True)
    return ms


def bench(name: str, model: torch.nn.Module, batch: int, levels: list[str]) -> None:
    model = model.to("cuda", torch.bfloat16).eval()
    groups = block_groups(model)
    ex = example_inputs(model, batch=batch)

    def call(m: torch.nn.Module) -> torch.Tensor:
        return m(**ex).sample

    with torch.inference_mode():
        ref = call(model)
    print(f"{name} batch {batch}: size {model_size_mb(model):.1f} MB", flush=True)
    base = measure("bf16 eager", model, call, None, None)
    measure("bf16 compiled (whole, max-autotune-no-cudagraphs)", C.compile_denoiser(model, WHOLE, "cuda"), call,
            ref, base)
    for level in levels:
        cfg = Q.Config(mapping=groups_to_mapping({k: level for k in searched_groups(groups)}, groups,
                                                 default="skip"), backend="torchao")
        try:
            print(f"  {level}: {len(Q.quantized_layers(model, cfg))} layers", flush=True)
            t0 = time.time()
            with C.disabled():
                eager = Q.quantize_denoiser(model, cfg)
            print(f"  {level}: quantize {time.time() - t0:.1f}s, size {model_size_mb(eager):.1f} MB", flush=True)
            measure(f"{level} uncompiled", eager, call, ref, base)
            built = Q.quantize_denoiser(model, cfg)  # as the knob builds it: blocks compiled
            measure(f"{level} as built (blocks compiled, default)", built, call, ref, base)
            measure(f"{level} compiled whole (max-autotune-no-cudagraphs)", C.compile_denoiser(built, WHOLE, "cuda"),
                    call, ref, base)
            del eager, built
        except Exception as e:  # report and go on to the next level
            print(f"  {level}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        torch._dynamo.reset()
        torch.cuda.empty_cache()


def main() -> None:
    import diffusers
    import torchao

    print(torch.__version__, torch.cuda.get_device_name(), "torchao", torchao.__version__, "diffusers",
          diffusers.__version__, flush=True)
    torch.manual_seed(0)
    bench("digits DiT (2.1M)", build_dit(), 16, ["int8", "fp8", "int4"])
    bench("digits DiT (2.1M)", build_dit(), 1024, ["int8", "fp8"])
    torch.manual_seed(0)
    xl = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                               num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
    bench("DiT-XL/2-shaped (random, 32x32 latent)", xl, 8, ["int8", "fp8", "int4"])
    bench("DiT-XL/2-shaped (random, 32x32 latent)", xl, 64, ["int8", "fp8"])


if __name__ == "__main__":
    main()
