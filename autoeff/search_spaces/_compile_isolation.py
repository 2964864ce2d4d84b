"""One compiled denoiser structure at a time in dynamo's per-code-object state.

Dynamo (Ansel et al., 2024, "PyTorch 2") keeps what it decided about a Python function on the function's *code
object*: its cache entries, and its frame action. A graph break inside a for/while loop makes it skip the
whole frame and run it eagerly from then on ("graph breaks in loops are not supported", torch 2.14
`torch/_dynamo/convert_frame.py`); only the frames it calls stay compiled. Every instance of a model class
shares its `forward`'s code object, so one candidate that breaks the graph in the loop over its blocks (a DiT
with torch.ao's int8 dynamic linears: their packed weights cannot be traced) leaves every later compiled
model of that class running its loop eagerly, unnoticed. Measured on the digits DiT (2-core CPU, 2026-11-30,
raw medians of one process): a compiled 2-step candidate ran in 15.8 ms, and in 22.7 ms once an int8 + pruned
compiled candidate had run (65 dynamo frames per pipeline call instead of 2); another run 24.2 -> 30.2 ms, and
23.0 ms after `torch._dynamo.reset()`. In the DiT 5 % search of `benchmarks/compare.py` it made the 2-step
compiled candidates after such a trial measure 38 ms against 24 ms before, and the final re-time failed the
2-step pick (37.8 ms against a 35.4 ms budget).

torch offers no per-module isolation of that state (`torch.compiler.reset()` / `torch._dynamo.reset()` clears
all of it), so this module keeps a key per compiled structure (classes, plain attributes, parameter shapes,
compile arguments) and resets dynamo when a call enters a compiled denoiser of another structure than the
last one that ran. The next call of the previous structure compiles again, mostly from inductor's FX graph
cache (2.4 s for the digits DiT against 4.5-5 s cold; it then ran at 22.9 and 21.0 ms, as before the switch);
candidates of one structure (steps, schedules, solvers) share their graphs as before.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

_active: str | None = None  # the key of the compiled structure that ran last in this process
_resets = 0


def _attributes(module: nn.Module) -> str:
    """A module's public plain attributes (dynamo specialises on them: flags, sizes) and the classes of its
    public helper objects (a diffusers attention processor), as text."""
    out = []
    for k, v in sorted(vars(module).items()):
        if k.startswith("_") or isinstance(v, torch.Tensor | nn.Module):
            continue
        out.append(f"{k}={v!r}" if v is None or isinstance(v, bool | int | float | str) else
                   f"{k}:{type(v).__qualname__}")
    return ",".join(out)


def structure_key(module: nn.Module, **compile_args: Any) -> str:
    """A digest of what decides `module`'s compiled graphs: its module classes by path with their plain
    attributes, its parameters' and buffers' shapes and dtypes, and the `torch.compile` arguments (not the
    weights' values: those are graph inputs)."""
    h = hashlib.sha256(repr(sorted(compile_args.items())).encode())
    for name, sub in module.named_modules():
        h.update(f"{name}:{type(sub).__module__}.{type(sub).__qualname__}({_attributes(sub)});".encode())
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()[:16]


def enter(key: str) -> None:
    """About to run the compiled structure `key`: reset dynamo when another structure ran last."""
    global _active, _resets
    if _active is not None and _active != key:
        torch._dynamo.reset()
        _resets += 1
    _active = key


def isolate(module: nn.Module, **compile_args: Any) -> nn.Module:
    """Make every call of `module` (the outermost module a pipeline calls, compiled or holding compiled
    blocks, compiled with `compile_args`) `enter` its `structure_key` first; returns `module`."""
    key = structure_key(module, **compile_args)
    module.register_forward_pre_hook(lambda _m, _args: enter(key))
    return module


def resets() -> int:
    """How many times this process has reset dynamo on a switch of structure."""
    return _resets


__all__ = ["structure_key", "enter", "isolate", "resets"]
