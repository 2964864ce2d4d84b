"""The torchao backend of the quantize knob on CUDA: correctness and latency per level.

    python benchmarks/gpu_quantize.py        # needs a CUDA device and torchao

Latency: CUDA events, median of 20 calls after 5 warm-ups, bf16 reference. Results are recorded by hand in
BENCHMARKS.md with the device, torch and torchao versions.
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
from diffusers import DiTTransformer2DModel

from autoeff.evaluators.size import model_size_mb
from autoeff.models.digits.architectures import build_dit
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


def bench(name: str, model: torch.nn.Module, batch: int, levels: list[str]) -> None:
    model = model.to("cuda", torch.bfloat16).eval()
    groups = block_groups(model)
    ex = example_inputs(model, batch=batch)

    def call(m: torch.nn.Module) -> torch.Tensor:
        return m(**ex).sample

    with torch.inference_mode():
        ref = call(model)
        base = timeit(lambda: call(model))
    print(f"{name} batch {batch}: bf16 {base:.3f} ms, size {model_size_mb(model):.1f} MB", flush=True)
    for level in levels:
        cfg = Q.Config(mapping=groups_to_mapping({k: level for k in searched_groups(groups)}, groups,
                                                 default="skip"), backend="torchao")
        try:
            t0 = time.time()
            qm = Q.quantize_denoiser(model, cfg)
            tq = time.time() - t0
            with torch.inference_mode():
                out = call(qm)
                ms = timeit(lambda qm=qm: call(qm))
            rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            print(f"  {level}: {ms:.3f} ms (x{base / ms:.2f}), rel err {rel:.4f}, size {model_size_mb(qm):.1f} MB, "
                  f"{len(Q.quantized_layers(model, cfg))} layers, quantize {tq:.1f}s", flush=True)
            del qm
        except Exception as e:  # report and go on to the next level
            print(f"  {level}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
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
