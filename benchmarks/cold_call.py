"""Is a pipeline call slower right after a call of another pipeline? (the yardstick's pairing, checked)

`autoeff.evaluators.latency` pairs every timed call with a yardstick call (the base pipeline at a few steps) and
keeps their ratio. If a call that follows another pipeline's ran cold (caches, allocator, thread wake-up), the
pairing would inflate short candidates against the 50-step baseline. This times each configuration three ways,
per round: back to back; each call right after a yardstick call; each call after a yardstick call and one
untimed call of its own. Medians of the round medians are printed.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/cold_call.py digits 1    # model, batch; run it alone
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see latency.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import autoeff  # noqa: E402
from autoeff.recipe import Recipe  # noqa: E402
from autoeff.search_spaces import compile as compile_knob  # noqa: E402
from autoeff.search_spaces import schedule, solver  # noqa: E402
from benchmarks._common import build, latency_call, make_context, quiet  # noqa: E402


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "digits"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    quiet()
    torch.set_num_threads(2)
    handle = autoeff.load_model(model, device="cpu")
    ctx = make_context(handle, "cpu")

    def recipe(name: str, order: int, family: str, k: int, **extra: Any) -> Recipe:
        return Recipe(model=model, knobs={"solver": solver.Config(name=name, order=order),
                                         "schedule": schedule.Config(family=family, steps=k), **extra})

    compiled = compile_knob.Config(mode="default", backend="inductor", scope="model")
    rows = {"eager UniPC-2 k=4": recipe("unipc", 2, "quadratic", 4), "eager 2M k=2": recipe("dpmpp", 2, "quadratic", 2),
            "compiled 2M k=3": recipe("dpmpp", 2, "quadratic", 3, compile=compiled),
            "50-step reference": recipe("dpmpp", 1, "uniform", 50)}
    fns = {k: latency_call(handle, build(handle, r, ctx), batch) for k, r in rows.items()}
    yard = latency_call(handle, build(handle, recipe("dpmpp", 1, "uniform", 4), ctx), batch)

    def timed(f: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0

    res: dict[str, dict[str, list[float]]] = {}
    for _ in range(3):
        for name, f in fns.items():
            n = 3 if name == "50-step reference" else 9
            f()
            f()
            back = [timed(f) for _ in range(n)]
            after, settled = [], []
            for _ in range(n):
                yard()
                after.append(timed(f))
            for _ in range(n):
                yard()
                f()
                settled.append(timed(f))
            for key, xs in (("back to back", back), ("after a yardstick", after),
                            ("after a yardstick and one own call", settled)):
                res.setdefault(name, {}).setdefault(key, []).append(statistics.median(xs))
    for name, d in res.items():
        print(f"{name}: " + "; ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms (rounds "
                                      f"{', '.join(f'{x * 1e3:.1f}' for x in v)})" for k, v in d.items()))


if __name__ == "__main__":
    main()
