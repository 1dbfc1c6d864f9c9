"""Calling a graph that `torch.compile` built without going through dynamo at each call.

A call through dynamo checks the graph's guards on every input and gathers the inputs anew from the frame's
locals and globals; for a region of decoder layers that is over a hundred weight tensors, about 0.2 ms a
call on 2 cores, more than the fused element-wise work of the region. `CapturingBackend` is inductor that
also keeps, for each graph it compiles, where dynamo read each graph input: its `Source`, a Python expression
over the frame's locals `L` and globals `G`. After one call through dynamo, `DirectCall.of` checks that every
input read back is the one dynamo passed, reads those that never change (weights, caches, constants) once
and the others at each call, and calls the compiled graph itself. Skipping the guards is the caller's
promise that whatever they checked cannot have changed; inductor's checks of every input's size and stride
still run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch._dynamo.backends.registry import lookup_backend


class InputReader:
    """Reads one graph input from the frame's locals as dynamo did; a Python float that the graph takes as
    a 0-d tensor is wrapped as one, in the graph's dtype."""

    def __init__(self, expression: str, frame_globals: dict[str, Any], as_tensor: torch.dtype | None) -> None:
        self.expression = expression
        self._read = eval(f"lambda L, G: {expression}", {})  # noqa: S307 (dynamo's own source text)
        self._globals = frame_globals
        self._as_tensor = as_tensor

    def __call__(self, frame_locals: dict[str, Any]) -> Any:
        value = self._read(frame_locals, self._globals)
        return value if self._as_tensor is None else torch.as_tensor(value, dtype=self._as_tensor)

    def reads_only(self, local: str) -> bool:
        """Whether the input comes from the frame's local `local` alone (and none of its other locals or
        globals)."""
        return self.expression.startswith(f"L[{local!r}]")

    @staticmethod
    def of(node: torch.fx.Node, frame_globals: dict[str, Any]) -> InputReader | None:
        """The reader of a placeholder of a dynamo graph, or None where dynamo left no readable source."""
        arg = node.meta.get("grapharg")
        if arg is None or arg.source is None:
            return None
        as_tensor = arg.fake_tensor.dtype if arg.pass_arg_as_tensor and arg.fake_tensor is not None else None
        try:
            return InputReader(arg.source.name, frame_globals, as_tensor)
        except SyntaxError:
            return None


class CompiledGraph:
    """One graph compiled by inductor, with a reader per input (None: some input cannot be read back)."""

    def __init__(
        self, backend: CapturingBackend, compiled: Callable[..., Any], readers: list[InputReader] | None
    ) -> None:
        self.backend, self.compiled, self.readers = backend, compiled, readers

    def __call__(self, *args: Any) -> Any:
        """Dynamo's call: noted on the backend with its inputs and outputs, so the caller can tell which
        graph ran and check the readers against what dynamo passed."""
        outputs = self.compiled(*args)
        self.backend.last_call = LastCall(self, args, outputs)
        return outputs


@dataclass
class LastCall:
    """A graph's call by dynamo: the inputs it passed and the outputs the graph returned."""

    graph: CompiledGraph
    args: Sequence[Any]
    outputs: Sequence[Any]


class CapturingBackend:
    """The inductor backend for a function whose module globals are `frame_globals`, keeping how to read
    each compiled graph's inputs back; `last_call` is dynamo's last call of a graph it compiled."""

    def __init__(self, frame_globals: dict[str, Any]) -> None:
        self.frame_globals = frame_globals
        self.last_call: LastCall | None = None

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> CompiledGraph:
        found = [InputReader.of(node, self.frame_globals) for node in gm.graph.find_nodes(op="placeholder")]
        readers = [reader for reader in found if reader is not None]
        compiled = lookup_backend("inductor")(gm, example_inputs)
        return CompiledGraph(self, compiled, readers if len(readers) == len(found) else None)


class DirectCall:
    """A compiled graph called without dynamo: the inputs read from one local were read once, the others are
    read from the locals of each call."""

    def __init__(
        self, graph: CompiledGraph, template: list[Any], per_call: list[tuple[int, InputReader]],
        output_index: list[int],
    ) -> None:  # fmt: skip
        self.graph, self.template, self.per_call, self.output_index = graph, template, per_call, output_index

    def __call__(self, **frame_locals: Any) -> list[Any]:
        """The function's outputs, as `of` found them among the graph's."""
        args = self.template.copy()
        for index, reader in self.per_call:
            args[index] = reader(frame_locals)
        outputs = self.graph.compiled(*args)
        return [outputs[index] for index in self.output_index]

    @staticmethod
    def of(
        backend: CapturingBackend, frame_locals: dict[str, Any], fixed_local: str, result: Sequence[Any]
    ) -> DirectCall | None:
        """From the call dynamo has just made through `backend` with `frame_locals`, which returned `result`;
        the inputs read from `frame_locals[fixed_local]` alone are read now, once. None where an input
        cannot be read back as dynamo passed it, or a returned value is not among the graph's outputs."""
        call, backend.last_call = backend.last_call, None
        if call is None or call.graph.readers is None:
            return None
        outputs = call.outputs
        output_index = [next((i for i, out in enumerate(outputs) if out is value), -1) for value in result]
        if -1 in output_index:
            return None
        template: list[Any] = []
        per_call: list[tuple[int, InputReader]] = []
        for index, (reader, passed) in enumerate(zip(call.graph.readers, call.args, strict=True)):
            try:
                value = reader(frame_locals)
            except Exception:  # an expression this module cannot evaluate (a helper of dynamo's guards)
                return None
            if not _same(value, passed):
                return None
            once = reader.reads_only(fixed_local)
            template.append(value if once else None)
            if not once:
                per_call.append((index, reader))
        return DirectCall(call.graph, template, per_call, output_index)


def _same(value: Any, passed: Any) -> bool:
    """Whether a reader's value is what dynamo passed: the same tensor (or an equal 0-d one that dynamo made
    from a Python number), or an equal number."""
    if isinstance(passed, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            return False
        made = passed.dim() == 0 and value.dtype == passed.dtype and bool(value == passed)
        return value is passed or made
    return bool(value == passed)
