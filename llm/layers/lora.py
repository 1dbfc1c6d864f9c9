"""LoRA served unmerged: every loaded adapter's delta on the linear layers, chosen per token.

The base weights stay as loaded (quantized or not) and each adapted `Linear` gets a `LoraDelta` holding the
low-rank factors of all loaded adapters side by side: `A` (adapters * width, in) and `B` (out, adapters *
width), where `width` is the widest adapter's rank summed over the projections fused into that linear (q/k/v
into `qkv_proj`, gate/up into `gate_up_proj`; narrower adapters are zero-padded, and a projection an adapter
does not adapt has zero factors). A step computes `x @ A.T` once for every adapter, zeroes the blocks of the
adapters a token's sequence does not use with the step's `lora_mask` (tokens, adapters), and expands with
`B`: one shrink and one expand matmul per layer whatever the mix of adapters in the batch, static shapes for
the compiled and graph-captured decode steps, and a cost of `adapters * width * (in + out)` per token, a few
percent of the layer for rank-16 adapters on a small model. (S-LoRA/Punica gather per-token factors
instead, which pays off with many adapters on a GPU.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from llm.lora.adapter import AdapterError, LoraAdapter

if TYPE_CHECKING:
    from llm.layers.linear import Linear
    from llm.model.llama import LlamaForCausalLM

# Projections of a checkpoint fused into each of our linear layers, in row order.
FUSED = {
    "self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "self_attn.o_proj": ("o_proj",),
    "mlp.gate_up_proj": ("gate_proj", "up_proj"),
    "mlp.down_proj": ("down_proj",),
}


class LoraDelta(nn.Module):
    def __init__(self, a: torch.Tensor, b: torch.Tensor, num_adapters: int) -> None:
        super().__init__()
        self.a, self.b = a, b  # (adapters * width, in), (out, adapters * width)
        self.num_adapters = num_adapters
        self.width = a.shape[0] // num_adapters

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (tokens, in), mask (tokens, adapters) 0/1 in x's dtype -> delta (tokens, out)."""
        shrunk = F.linear(x, self.a).view(-1, self.num_adapters, self.width) * mask[:, :, None]
        return F.linear(shrunk.view(-1, self.num_adapters * self.width), self.b)


def _part_rows(linear: Linear, parts: Sequence[str], model: LlamaForCausalLM) -> list[tuple[str, int, int]]:
    """(projection, first row, row count) of each projection fused into `linear`."""
    cfg = model.config
    sizes = {
        "q_proj": cfg.q_size,
        "k_proj": cfg.kv_size,
        "v_proj": cfg.kv_size,
        "gate_proj": cfg.intermediate_size,
        "up_proj": cfg.intermediate_size,
    }
    rows, start = [], 0
    for part in parts:
        count = sizes.get(part, linear.out_features)
        rows.append((part, start, count))
        start += count
    return rows


def install_adapters(
    model: LlamaForCausalLM, adapters: Sequence[LoraAdapter], dtype: torch.dtype, device: torch.device
) -> None:
    """Give each adapted linear of `model` the deltas of `adapters` (slot i + 1 is `adapters[i]`; slot 0,
    the base model, has none). Raises AdapterError when an adapter does not fit the model."""
    layers = model.layers
    for adapter in adapters:
        if adapter.num_layers > len(layers):
            raise AdapterError(
                f"adapter {adapter.name!r} adapts {adapter.num_layers} layers, the model has {len(layers)}"
            )
    count = len(adapters)
    for index, layer in enumerate(layers):
        for path, parts in FUSED.items():
            linear = cast("Linear", layer.get_submodule(path))
            rows = _part_rows(linear, parts, model)
            ranks = [
                sum(adapter.weights[(index, p)][0].shape[0] for p in parts if (index, p) in adapter.weights)
                for adapter in adapters
            ]
            width = max(ranks, default=0)
            if width == 0:
                continue
            a = torch.zeros(count * width, linear.in_features)
            b = torch.zeros(linear.out_features, count * width)
            for slot, adapter in enumerate(adapters):
                column = slot * width
                for part, first, size in rows:
                    pair = adapter.weights.get((index, part))
                    if pair is None:
                        continue
                    lora_a, lora_b = pair
                    if lora_a.shape[1] != linear.in_features or lora_b.shape[0] != size:
                        raise AdapterError(
                            f"adapter {adapter.name!r}: layer {index} {part} maps {lora_a.shape[1]} -> "
                            f"{lora_b.shape[0]} features, the model's {linear.in_features} -> {size}"
                        )
                    rank = lora_a.shape[0]
                    a[column : column + rank] = lora_a
                    b[first : first + size, column : column + rank] = lora_b
                    column += rank
            linear.lora = LoraDelta(a.to(device, dtype), b.to(device, dtype), count)
