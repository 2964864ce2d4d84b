"""Compiled denoisers of different structures do not degrade each other (autoeff.search_spaces._compile_isolation)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoeff.search_spaces import _compile_isolation as compile_isolation
from autoeff.search_spaces import compile
from autoeff.search_spaces._compile_isolation import isolate, structure_key


class _Block(nn.Module):
    def __init__(self, breaks: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.breaks = breaks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.breaks:  # like torch.ao's packed int8 linear: dynamo cannot trace it, the graph breaks here
            torch._dynamo.graph_break()
        return torch.relu(self.lin(x))


class _Net(nn.Module):
    def __init__(self, breaks: bool = False, width: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(breaks) for _ in range(3)])
        self.head = nn.Linear(4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:  # a graph break in this loop makes dynamo skip the whole frame
            x = block(x)
        return self.head(x)


@pytest.fixture
def graph_calls():
    """A torch.compile backend that counts how many compiled graphs one call runs."""
    torch._dynamo.reset()
    calls: list[int] = []

    def backend(gm: torch.fx.GraphModule, inputs: list) -> object:
        def run(*args: object) -> object:
            calls.append(1)
            return gm.forward(*args)
        return run

    yield backend, calls
    torch._dynamo.reset()


def _calls_of(fn, x, calls) -> int:
    fn(x)  # warm: compiles if it must
    calls.clear()
    fn(x)
    return len(calls)


def test_a_model_whose_loop_breaks_the_graph_leaves_another_whole_when_isolated(graph_calls):
    backend, calls = graph_calls
    x = torch.randn(2, 4)
    plain, breaking = _Net(), _Net(breaks=True)
    a = torch.compile(plain, backend=backend, dynamic=False)
    b = torch.compile(breaking, backend=backend, dynamic=False)
    assert _calls_of(a, x, calls) == 1  # the whole forward is one graph
    assert _calls_of(b, x, calls) > 1
    # without isolation dynamo now skips the shared forward frame: the plain model's loop runs eagerly
    assert _calls_of(a, x, calls) > 1
    torch._dynamo.reset()
    a = isolate(torch.compile(plain, backend=backend, dynamic=False))
    b = isolate(torch.compile(breaking, backend=backend, dynamic=False))
    assert _calls_of(a, x, calls) == 1
    assert _calls_of(b, x, calls) > 1
    before = compile_isolation.resets()
    assert _calls_of(a, x, calls) == 1  # whole again: entering it reset dynamo, and it compiled anew
    assert compile_isolation.resets() == before + 1
    assert torch.allclose(a(x), plain(x)) and torch.allclose(b(x), breaking(x))


def test_the_key_follows_structure_and_compile_arguments_not_weights():
    net = _Net()
    same = _Net()
    assert structure_key(net) == structure_key(same)  # other weights, same graphs
    assert structure_key(net) != structure_key(_Net(width=8))  # a pruned layer's shape
    assert structure_key(net) != structure_key(_Net(), scope="blocks")
    assert structure_key(net) != structure_key(_Net(breaks=True))  # a flag the forward branches on
    quantized = _Net()
    quantized.blocks[1].lin = torch.ao.nn.quantized.dynamic.Linear(4, 4)  # a layer of another class
    assert structure_key(net) != structure_key(quantized)


def test_the_compile_knob_resets_only_when_the_structure_switches(random_digits_handle):
    unet = random_digits_handle.pipeline.unet
    config = compile.Config(mode="default", backend="eager")
    one = compile.compile_denoiser(unet, config, "cpu")
    two = compile.compile_denoiser(unet, config, "cpu")  # another candidate of the same structure
    blocks = compile.compile_denoiser(unet, compile.Config(mode="default", backend="eager", scope="blocks"), "cpu")
    x = torch.randn(1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    t = torch.tensor([10])
    kwargs = {"class_labels": torch.tensor([3])} if unet.config.num_class_embeds else {}
    one(x, t, **kwargs)
    before = compile_isolation.resets()
    two(x, t, **kwargs)
    one(x, t, **kwargs)
    assert compile_isolation.resets() == before
    blocks(x, t, **kwargs)
    one(x, t, **kwargs)
    assert compile_isolation.resets() == before + 2
