"""Linear layers whose weights keep the checkpoint's format, and the matmul chosen for the device.

`WeightPolicy` decides once per model what a weight becomes at load time:

* CUDA: int4/int8 weights stay `kernels.layout` `Int4Weight`/`Int8Weight` and go through the W4A16/W8A16
  kernels of `kernels.dispatch`; float weights are dense in the compute dtype.
* CPU, packed (the default, fastest on the 2-core benchmark): int4 weights are converted to the tile layout of
  torch's `_weight_int4pack_mm_for_cpu` and int8 weights to per-channel `_weight_int8pack_mm`, with bfloat16
  activations; with `int4_dot_products` (the engine's "int8-activations"), 4-bit weights on a CPU with
  AVX512-VNNI instead take `llm.layers.tiled_int4`'s tiles, multiplied by int8 dot products (activations
  quantized per block of 32, as llama.cpp does: about 2x faster, a slight perplexity cost). 5- and 6-bit
  weights (GGUF Q5_*, Q6_K), which torch has no kernel for, keep their bits in `llm.layers.tiled_lowbit`'s
  tiles, with a C++ kernel of their own (a custom op, so compiled decode steps call it too). A tied output
  head of group-32 int8 (GGUF Q8_0) keeps its values in the tiles of `llm.layers.grouped_int8` (a C++ kernel
  too), so that the embedding reads its rows from the same table rather than keeping a copy; other grouped
  int8 weights are requantized to per-channel int8. Those kernels are GEMVs at heart and their cost grows with
  the rows of `x`; from `PACKED_CPU_MAX_ROWS` rows on (prefill chunks) expanding the weight once and running a
  dense bfloat16 GEMM is faster (2-3x at 1,000 rows on AVX512-BF16), which is exactly the dispatch reference,
  so prefill goes through `kernels.dispatch` with the `kernels.layout` weight kept beside torch's packed one
  (or expands a tiled table itself). On CPUs without native bfloat16 matmuls (`llm.cpu.native_bf16`) those
  prefill GEMMs run in float32 and the result is rounded back: torch emulates bfloat16 GEMMs there, 7x slower
  at 1,000 rows on AVX2.
* CPU, dequantized: every weight dense in the compute dtype, bit-identical to the checkpoint's float values
  (what the parity tests compare against transformers).
* CPU, kernels: quantized weights laid out exactly as on CUDA and multiplied through `kernels.dispatch`, so
  the GPU path (the Triton kernels under `TRITON_INTERPRET=1`) runs inside the engine without a GPU. Slow;
  for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kernels import dispatch
from kernels.layout import (
    GGUF_BLOCK,
    Int4Weight,
    Int8Weight,
    concat_rows,
    dequantize,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from llm.cpu import native_bf16
from llm.layers import grouped_int8, tiled_int4, tiled_lowbit
from llm.layers.context import get_context
from llm.layers.grouped_int8 import GroupedInt8
from llm.layers.lora import LoraDelta
from llm.layers.tiled_int4 import TiledInt4
from llm.layers.tiled_lowbit import TiledLowBit

Weight = torch.Tensor | Int4Weight | Int8Weight
Tiled = GroupedInt8 | TiledLowBit  # CPU tables in tiles of 64 outputs, multiplied by C++ kernels of their own
PACKED_CPU_MAX_ROWS = 128  # measured crossover (1 core): 96-128 rows
REQUANTIZE_ROWS = 8192  # rows expanded to float32 at a time when requantizing (a 262k-token head: 670 MB)
CPU_INT4_GROUP_SIZES = (32, 128)  # of `Int4Weight`'s, those torch's CPU int4 matmul takes


@dataclass(frozen=True)
class WeightPolicy:
    device: torch.device
    dtype: torch.dtype
    # CPU only, what quantized weights become: packed for torch's int4/int8 matmuls, dense float, or kept in
    # the CUDA layout and multiplied through `kernels.dispatch` (see the module docstring).
    cpu_weights: Literal["packed", "dequantized", "kernels"]
    quantize: Literal["int8", "int4"] | None = None  # quantize float weights at load
    group_size: int = 32
    # CPU, packed: 4-bit weights multiplied by int8 dot products (`llm.layers.tiled_int4`) where the host has
    # AVX512-VNNI, their activations quantized to int8 per block of 32 as llama.cpp does (slightly lossy).
    int4_dot_products: bool = False

    def quantize_float(self, w: torch.Tensor) -> Weight:
        if self.quantize == "int8":
            return quantize_int8(w)
        if self.quantize == "int4":
            return quantize_int4(w, self.group_size)
        return w


class Linear(nn.Module):
    """y = x @ W.T (+ b); fused projections (q/k/v, gate/up) are one Linear over the concatenated rows."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.has_bias = bias
        self.kind = "unloaded"
        self.bias: torch.Tensor | None = None
        self.weight: torch.Tensor = torch.empty(0)
        self.quantized: Int4Weight | Int8Weight | None = None
        self.tiled: Tiled | None = None  # a CPU table with a kernel of its own (then no weight, no quantized)
        # A 4-bit weight ("cpu_int4") in the int8-dot-product tiles instead of torch's packed layout.
        self.int4_tiles: TiledInt4 | None = None
        self.cpu_scales: torch.Tensor = torch.empty(0)  # the packed CPU matmuls' scales (and zeros)
        self.group_size = 0
        self.lora: LoraDelta | None = None  # the deltas of LoRA adapters served unmerged (`llm.layers.lora`)

    def set_weight(self, w: Weight, policy: WeightPolicy, *, tied: bool = False) -> None:
        """`tied`: the weight is also the embedding table (`exact_table()` then serves both)."""
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else (w.out_features, w.in_features)
        if shape != (self.out_features, self.in_features):
            raise ValueError(
                f"weight of shape {shape} does not fit a {self.in_features}->{self.out_features} linear"
            )
        if isinstance(w, torch.Tensor):
            w = policy.quantize_float(w)
        self.int4_tiles = None  # set again below where the new weight takes the tiles
        device, dtype = policy.device, policy.dtype
        layout = policy.cpu_weights if device.type == "cpu" else "kernels"
        if isinstance(w, torch.Tensor) or layout == "dequantized":
            dense = w if isinstance(w, torch.Tensor) else dequantize(w, torch.float32)
            self.kind, self.weight = "dense", dense.to(device, dtype).contiguous()
        elif layout == "kernels":
            self.kind, self.quantized = ("int4" if isinstance(w, Int4Weight) else "int8"), w.to(device)
        elif isinstance(w, Int4Weight) and w.bits == 4 and w.group_size in CPU_INT4_GROUP_SIZES:
            self._pack_int4_cpu(w, dtype, policy.int4_dot_products)
        elif isinstance(w, Int4Weight) and w.bits > 4 and (tiled := _tiled_lowbit(w)) is not None:
            self.kind, self.tiled = "cpu_lowbit", tiled
            tiled_lowbit.cpu_kernel()  # built now (seconds, then from inductor's cache), not on a request
        elif tied and isinstance(w, Int8Weight) and w.group_size == GGUF_BLOCK:
            self.kind, self.tiled = "cpu_int8_grouped", GroupedInt8.pack(w)
            grouped_int8.cpu_kernel()
        else:
            self._pack_int8_cpu(w, dtype)

    def set_bias(self, b: torch.Tensor, policy: WeightPolicy) -> None:
        self.bias = b.to(policy.device, policy.dtype)

    def _pack_int4_cpu(self, w: Int4Weight, dtype: torch.dtype, dot_products: bool) -> None:
        self.kind, self.group_size, self.quantized = "cpu_int4", w.group_size, w
        if dot_products and tiled_int4.available() and (tiles := TiledInt4.pack(w)) is not None:
            self.int4_tiles = tiles
            self.weight, self.cpu_scales = torch.empty(0), torch.empty(0)  # no torch-packed copy beside it
            return
        # torch's CPU int4 matmul computes w = (q - 8) * scale + zero per group, with scales/zeros in the
        # activations' dtype laid out (in // group, out, 2); Q4_1-style mins become zero = min + 8 * scale.
        q = unpack_int4(w.qweight).to(torch.int32)
        self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        scales, mins = w.group_scales()
        zeros = torch.zeros_like(scales) if mins is None else mins + 8 * scales
        self.cpu_scales = torch.stack((scales.t(), zeros.t()), dim=-1).to(dtype).contiguous()

    def _pack_int8_cpu(self, w: Int4Weight | Int8Weight, dtype: torch.dtype) -> None:
        # torch's CPU int8 matmul takes one scale per output channel: grouped int8 and the group-16 int4
        # layout torch has no kernel for are requantized to that.
        if not isinstance(w, Int8Weight) or w.group_size is not None:
            w = per_channel_int8(w)
        self.weight = w.qweight.contiguous()
        self.cpu_scales = w.scales.to(dtype)  # the matmuls want scales in the activations' dtype
        self.kind, self.quantized = "cpu_int8", w

    def add_to_weight(self, delta: torch.Tensor, dtype: torch.dtype) -> None:
        """Fold a dense (out, in) float32 delta into the weight (a merged LoRA adapter): the sum is dense in
        `dtype`, whatever the weight was."""
        if self.kind == "dense":
            base = self.weight.float()
        elif self.tiled is not None:
            base = self.tiled.rows()
        elif self.quantized is not None:
            base = dequantize(self.quantized, torch.float32)
        else:
            raise RuntimeError("linear layer merged into before its weight was loaded")
        self.weight = (base + delta.to(base.device)).to(dtype).contiguous()
        self.kind, self.quantized, self.tiled, self.int4_tiles = "dense", None, None, None
        self.cpu_scales, self.group_size = torch.empty(0), 0

    def exact_table(self) -> Int4Weight | Int8Weight | Tiled | None:
        """The packed weight when it holds the checkpoint's values exactly, for a tied embedding to read its
        rows from instead of keeping a copy; None when the weight is dense or was requantized."""
        if self.kind in ("cpu_int4", "int4", "int8"):
            return self.quantized
        return self.tiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (tokens, in_features) -> (tokens, out_features), plus the LoRA delta of each token's adapter."""
        y = self._base(x)
        if self.lora is None:
            return y
        mask = get_context().lora_mask
        return y if mask is None else y + self.lora(x, mask)

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.shape[0] >= PACKED_CPU_MAX_ROWS
            and x.device.type == "cpu"
            and x.dtype != torch.float32
            and not native_bf16()
        ):
            bias = None if self.bias is None else self.bias.float()
            return self._matmul(x.float(), bias).to(x.dtype)
        return self._matmul(x, self.bias)

    def _matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        kind = self.kind
        if kind == "dense":
            return F.linear(x, self.weight.to(x.dtype), bias)
        if self.tiled is not None:
            if x.shape[0] < PACKED_CPU_MAX_ROWS:
                y = self.tiled.matmul(x)
                return y if bias is None else y + bias
            return F.linear(x, self.tiled.dense(x.dtype), bias)
        if kind.startswith("cpu_") and x.shape[0] < PACKED_CPU_MAX_ROWS:
            aten = torch.ops.aten
            if kind == "cpu_int4" and self.int4_tiles is not None:
                y = self.int4_tiles.matmul(x)
            elif kind == "cpu_int4":
                y = aten._weight_int4pack_mm_for_cpu(x, self.weight, self.group_size, self.cpu_scales)
            else:
                y = aten._weight_int8pack_mm(x, self.weight, self.cpu_scales)
            return y if bias is None else y + bias
        w = self.quantized
        if isinstance(w, Int4Weight):
            return dispatch.linear_w4a16(x, w, bias)
        if isinstance(w, Int8Weight):
            return dispatch.linear_w8a16(x, w, bias)
        raise RuntimeError("linear layer used before its weight was loaded")


def _tiled_lowbit(w: Int4Weight) -> TiledLowBit | None:
    """`w` in its own bits, unless float32 scales and mins of small groups (a Q4_K + Q6_K fusion widened to
    6 bits, group 16, with mins) make it larger than per-channel int8."""
    tiled = TiledLowBit.pack(w)
    return tiled if tiled.nbytes <= w.out_features * (w.in_features + 4) else None


def per_channel_int8(w: Int4Weight | Int8Weight) -> Int8Weight:
    """`w` requantized to per-channel int8, `REQUANTIZE_ROWS` rows at a time: expanding a whole vocabulary
    to float32 at once would take gigabytes of temporaries for the few hundred megabytes it ends up in."""
    rows = torch.arange(w.out_features)
    parts: list[Int4Weight | Int8Weight] = [
        quantize_int8(dequantize(w.select_rows(chunk))) for chunk in rows.split(REQUANTIZE_ROWS)
    ]
    merged = concat_rows(parts)
    assert isinstance(merged, Int8Weight)
    return merged


class Embedding(nn.Module):
    """Token embeddings; quantized tables stay quantized and only the looked-up rows are expanded."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.table: Weight | Tiled = torch.empty(0)
        self.dtype = torch.float32

    def set_weight(self, w: Weight | Tiled, policy: WeightPolicy) -> None:
        """The table: a checkpoint's weight, or the tied output head's `Linear.exact_table()` (shared)."""
        self.dtype = policy.dtype
        if isinstance(w, torch.Tensor):
            self.table = w.to(policy.device, policy.dtype).contiguous()
        else:
            self.table = w if isinstance(w, Tiled) else w.to(policy.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (tokens,) -> (tokens, dim)."""
        t = self.table
        if isinstance(t, torch.Tensor):
            return F.embedding(input_ids, t)
        if isinstance(t, Tiled):
            return t.rows(input_ids).to(self.dtype)
        return dequantize(t.select_rows(input_ids), self.dtype)


def weight_nbytes(model: nn.Module) -> int:
    """Bytes the weights of `model`'s layers hold, each storage counted once (a weight kept in two layouts
    counts twice; views and tables shared by tied layers count once)."""
    tensors: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, Linear):
            tensors += [module.weight, module.cpu_scales, *([] if module.bias is None else [module.bias])]
            for packed in (module.quantized, module.tiled):
                tensors += [] if packed is None else packed.tensors().values()
        elif isinstance(module, Embedding):
            table = module.table
            tensors += [table] if isinstance(table, torch.Tensor) else table.tensors().values()
        else:
            tensors += module.parameters(recurse=False)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())
