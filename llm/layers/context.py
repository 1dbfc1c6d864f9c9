"""The per-step attention metadata, set once by the model runner and read by every attention layer.

Travelling in one object keeps `forward(input_ids, positions)` the only model signature (nano-vllm's pattern).
The worker thread that steps the engine is the only one running the model, but the context is thread-local so
that two engines in one process never see each other's step.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch


@dataclass
class StepContext:
    is_decode: bool  # one query token per sequence: paged decode attention (and CUDA graphs)
    slot_mapping: torch.Tensor  # (tokens,) int64: flat cache slot of each token's key/value
    block_tables: torch.Tensor  # (batch, max_blocks) int32
    context_lens: torch.Tensor  # (batch,) int32: keys per sequence, this step's tokens included
    cu_seqlens_q: torch.Tensor | None = None  # (batch + 1,) int32; prefill only
    cu_seqlens_k: torch.Tensor | None = None  # (batch + 1,) int32; prefill only
    max_seqlen_q: int = 1
    max_seqlen_k: int = 1
    cache_hit: bool = False  # some sequence starts past position 0: keys must come from the paged cache
    # (tokens, slots) 0/1 in the compute dtype: the LoRA delta each token's sequence gets (`LoraLayout.slots`;
    # a row of zeros: none). None when no token of the step needs one.
    lora_mask: torch.Tensor | None = None
    # Run by the compiled CPU decode step (`CompiledDecode`): the kernels take their traceable forms, which
    # read nothing back to the host and take every slot as valid. Set per step, never inferred from
    # `torch.compiler.is_compiling()`, which is process-wide: while one thread compiles, another thread's
    # eager steps would take those forms too.
    compiled: bool = False


_local = threading.local()


def set_context(ctx: StepContext | None) -> None:
    _local.ctx = ctx


def get_context() -> StepContext:
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        raise RuntimeError("attention called outside a model-runner step (no StepContext set)")
    return ctx
