"""Compiled graphs called without dynamo (`llm/engine/graph_capture.py`), on a small function of the shape the
decode step has: modules passed in, a float attribute dynamo lifts as a tensor, a thread-local read."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from llm.cpu import cxx_compiler_available
from llm.engine.graph_capture import CapturingBackend, DirectCall

pytestmark = pytest.mark.skipif(not cxx_compiler_available(), reason="inductor needs a C++ compiler (g++)")

_step = threading.local()  # like the engine's step context: read by the function, set by its caller


class Scale(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width), requires_grad=False)
        self.eps = eps  # a Python float: dynamo passes it to the graph as a 0-d float64 tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def blocks(layers: tuple[Scale, ...], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for layer in layers:
        x = layer(x) + _step.bias
    return x, x.sum(-1)


def passthrough(layers: tuple[Scale, ...], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return layers[0](x), x  # x is no output of the graph: dynamo returns the input itself


def compiled(function):
    backend = CapturingBackend(function.__globals__)
    return backend, torch.compile(function, dynamic=True, backend=backend)


def test_direct_calls_give_dynamos_results_for_other_weights_and_inputs():
    backend, run = compiled(blocks)
    first = (Scale(8, 1e-5), Scale(8, 1e-5))
    second = (Scale(8, 1e-5), Scale(8, 1e-5))  # same shapes, other weights: the same graph serves both
    _step.bias = torch.randn(8)
    with torch.inference_mode():
        direct = []
        for layers in (first, second):
            frame = {"layers": layers, "x": torch.randn(3, 8)}
            backend.last_call = None
            call = DirectCall.of(backend, frame, "layers", run(**frame))
            assert call is not None
            direct.append(call)
        assert direct[0].graph is direct[1].graph
        # The weights were read once; the activations and the thread-local bias are read at each call.
        _step.bias = torch.randn(8)
        for layers, call in zip((first, second), direct, strict=True):
            for rows in (2, 5):
                x = torch.randn(rows, 8)
                ours = call(x=x)
                theirs = run(layers, x)
                assert len(ours) == 2 and all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
        # The weights' values, not copies, were taken: an in-place change is seen.
        first[0].weight.mul_(2)
        x = torch.randn(2, 8)
        assert torch.equal(direct[0](x=x)[0], run(first, x)[0])


def test_a_result_the_graph_does_not_return_is_not_called_directly():
    backend, run = compiled(passthrough)
    layers = (Scale(8, 1e-6),)
    with torch.inference_mode():
        frame = {"layers": layers, "x": torch.randn(2, 8)}
        backend.last_call = None
        result = run(**frame)
        assert DirectCall.of(backend, frame, "layers", result) is None
        assert DirectCall.of(CapturingBackend({}), frame, "layers", result) is None  # no graph ran


def test_an_input_not_read_back_as_dynamo_passed_it_is_not_called_directly():
    backend, run = compiled(blocks)
    layers = (Scale(8, 1e-5),)
    _step.bias = torch.randn(8)
    with torch.inference_mode():
        frame = {"layers": layers, "x": torch.randn(3, 8)}
        backend.last_call = None
        result = run(**frame)
        call = backend.last_call
        assert DirectCall.of(backend, dict(frame, x=torch.randn(3, 8)), "layers", result) is None
        backend.last_call = call
        assert DirectCall.of(backend, frame, "layers", result) is not None
