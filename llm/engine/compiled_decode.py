"""The CPU decode step compiled by `torch.compile` (inductor): generated C++ instead of ~470 eager ops.

On a small model and a few CPU cores, an eager decode step spends more time dispatching small ops (norms,
RoPE, dtype casts, the attention gather) than in the packed int4/int8 matmuls; inductor fuses the small ops
into a handful of C++ loops around those matmuls (SmolLM2-135M on 2 cores, whole decode steps: 12.8 ms ->
7.8 ms per token, with the direct calls below; the engine's C++ kernels serve both).

What is compiled is a region of a few consecutive decoder layers, not the whole model ("regional"
compilation): every region runs the same code on weights of the same shapes, which dynamo lifts into graph
inputs, so one graph serves all of them and compiling costs a region's time instead of the whole model's
(about 6 minutes on 2 cores for SmolLM2's 30 layers, more with a LoRA mask). The embedding lookup, the
RoPE table lookup, the final norm and the output head stay eager: a few ops (a tied group-32 int8 head has a
C++ kernel of its own, `llm.layers.grouped_int8`).

After the warm-up, each region's graph is called without dynamo (`llm.engine.graph_capture`): its guards
and input gathering cost about 0.2 ms a region call, and skipping them makes SmolLM2's decode step ~1.3x
faster on 2 cores. That is safe because what the guards check cannot change: the weights, caches and LoRA
factors (read once per region) are never rebound after the engine is built, and the step's form is fixed by
`serves` and by the batch-1 / batch >= 2 split. A region whose inputs cannot be read back goes through dynamo.

Two graphs are compiled when the engine starts, so no request waits on the compiler: batch 1 (torch
specializes a size of 1) and batch >= 2 with dynamic batch size and context width. A model whose layers are
not alike (a linear quantized differently in one layer) gets a graph per kind of region. The compiling steps
write their dummy keys into a scratch block of the cache that the block manager never hands out. (Compiling
in a background thread while the eager step serves was tried: the two threads fight for the GIL, and an
answer took minutes instead of seconds.) Inside the graph (`StepContext.compiled`), attention is the C++ op
of `llm.layers.decode_attention`, or, where that does not serve (a backend chosen by `ARCHIVIST_KERNELS`, no
compiler), `kernels.reference`'s padded decode attention (no host reads). Inductor caches the generated
code on disk, so a later start compiles faster. Prefill stays eager: its cost is the dense GEMMs, not
dispatch.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.fx.experimental import _config as fx_config

from llm.engine.graph_capture import CapturingBackend, DirectCall
from llm.layers.context import StepContext, set_context
from llm.layers.linear import PACKED_CPU_MAX_ROWS
from llm.model.llama import DecoderLayer, LlamaForCausalLM

log = logging.getLogger(__name__)
MIN_TABLE_WIDTH = 2  # block tables are padded to this width: a width of 1 would be a graph of its own
# Layers per compiled region. Each region call costs inductor's wrappers and input checks; on SmolLM2-135M
# (30 layers, 2 cores, regions called directly), relative to 1 layer a region: 2 layers decode at 1.03x, 3
# at 1.05x (batch 1) / 1.03x (batch 3), 6 at 1.07x / 1.05x. Compiling cold took ~20 s for 1 layer, ~45 s for
# 3 and ~78 s for 6; the whole model ~355 s.
MAX_REGION_LAYERS = 3


class CompiledDecode:
    """`model(input_ids, positions)` for decode steps of up to `max_batch` sequences, compiled."""

    def __init__(self, model: LlamaForCausalLM, max_batch: int, mask_width: int = 0) -> None:
        self.model = model
        # The compiled steps carry a LoRA mask of this many columns (0: none). With the default adapter merged
        # into the weights, the steps that need a mask (a token on the base model or another adapter) are
        # rare and run eager rather than compile a second set of graphs.
        self.mask_width = mask_width
        # From PACKED_CPU_MAX_ROWS rows on the linear layers switch to a dense GEMM: a different graph.
        self.max_batch = min(max_batch, PACKED_CPU_MAX_ROWS - 1)
        layers = list(model.layers)
        size = region_size(len(layers))
        self._regions = [tuple(layers[i : i + size]) for i in range(0, len(layers), size)]
        self._backend = CapturingBackend(_run_region.__globals__)
        self._region: Callable[..., tuple[torch.Tensor, torch.Tensor]] = torch.compile(
            _run_region, dynamic=True, backend=self._backend
        )
        # Keyed by batch == 1 (torch specializes a size of 1): each region's graph, called without dynamo.
        self._direct: dict[bool, list[DirectCall]] = {}
        self.call_directly = True  # False: every region through dynamo, guards and all (a check in tests)

    def serves(self, ctx: StepContext, batch_size: int) -> bool:
        """Whether this decode step fits the compiled graphs."""
        return batch_size <= self.max_batch and (ctx.lora_mask is None) == (self.mask_width == 0)

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, record: list[DirectCall | None] | None = None
    ) -> torch.Tensor:
        """`LlamaForCausalLM.forward` with its layers run region by region through the compiled graphs; with
        `record`, through dynamo, noting how to call each region's graph directly."""
        model = self.model
        x = model.embed(input_ids)
        cos, sin = model.rotary.lookup(positions, x.dtype)
        # A zero residual rather than None: the first layer then takes the others' graph (x + 0 is exact).
        residual = torch.zeros_like(x)
        direct = self._direct.get(x.shape[0] == 1) if self.call_directly and record is None else None
        for index, region in enumerate(self._regions):
            if direct is not None:
                x, residual = direct[index](x=x, residual=residual, cos=cos, sin=sin)
                continue
            frame_locals = {"layers": region, "x": x, "residual": residual, "cos": cos, "sin": sin}
            x, residual = self._through_dynamo(frame_locals)
            if record is not None:
                record.append(DirectCall.of(self._backend, frame_locals, "layers", (x, residual)))
        return model.norm(x, residual)[0]

    def _through_dynamo(self, frame_locals: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """One region called through dynamo, which compiles its graph on the first call of its kind."""
        self._backend.last_call = None
        # No duck sizing: a block-table width that happens to equal a weight's dimension must stay its own
        # symbol, or the next width recompiles. Inductor's note on mixed bf16/fp16 loops is not actionable.
        with fx_config.patch(use_duck_shape=False), warnings.catch_warnings():  # type: ignore[attr-defined]
            warnings.filterwarnings("ignore", message="bf16 and fp16 are mixed")
            return self._region(**frame_locals)

    @property
    def direct_batches(self) -> list[bool]:
        """For which keys (batch == 1) the regions are called without dynamo."""
        return sorted(self._direct)

    def warm_up(self, scratch_block: int, block_size: int, device: torch.device) -> None:
        """Compile both graphs with dummy steps whose keys go to `scratch_block`, a cache block that no
        sequence ever owns."""
        for batch in sorted({1, min(2, self.max_batch)}):
            start = time.perf_counter()
            with torch.inference_mode():  # like the runner's steps: tensors made outside would not match
                first = scratch_block * block_size
                ctx = StepContext(
                    is_decode=True,
                    slot_mapping=torch.arange(first, first + batch, dtype=torch.int64, device=device),
                    block_tables=torch.full(
                        (batch, MIN_TABLE_WIDTH), scratch_block, dtype=torch.int32, device=device
                    ),
                    context_lens=torch.ones(batch, dtype=torch.int32, device=device),
                    lora_mask=self._lora_mask(batch, device),
                    compiled=True,
                )
                ids = torch.zeros(batch, dtype=torch.int64, device=device)
                record: list[DirectCall | None] = []
                set_context(ctx)
                try:
                    self(ids, torch.zeros_like(ids), record)
                finally:
                    set_context(None)
            direct = [region for region in record if region is not None]
            if len(direct) == len(record):
                self._direct[batch == 1] = direct
            else:
                log.warning("graph inputs not readable back: batch %s runs through dynamo", batch)
            log.info("compiled the decode step for batch %s in %.1f s", batch, time.perf_counter() - start)

    def _lora_mask(self, batch: int, device: torch.device) -> torch.Tensor | None:
        if not self.mask_width:
            return None
        dtype = self.model.embed_tokens.dtype
        return torch.zeros(batch, self.mask_width, dtype=dtype, device=device)


def _run_region(
    layers: tuple[DecoderLayer, ...],
    x: torch.Tensor,
    residual: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled region: a few consecutive decoder layers, taken as an argument so that every region shares
    its graph."""
    for layer in layers:
        x, residual = layer(x, residual, cos, sin)
    return x, residual


def region_size(num_layers: int) -> int:
    """Layers per compiled region: the most, up to MAX_REGION_LAYERS, that divide the model's layers evenly
    (a shorter last region would be one more graph to compile)."""
    return next(k for k in range(MAX_REGION_LAYERS, 0, -1) if num_layers % k == 0)
