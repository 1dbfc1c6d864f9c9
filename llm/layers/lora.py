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

On a few CPU cores those two small matmuls per layer cost as much as the layer's int4 matmul at batch 1
(call overhead, not arithmetic): decode runs at ~0.6x the base model's speed. The engine therefore folds
its *default* adapter into the base weights (`merged`): each adapted linear's weight becomes `W + B @ A`,
dense in the compute dtype when it was quantized (rounding the small delta back onto the int4 grid would
erase most of it), and every other slot carries the difference instead: the base model `-B_d A_d`, another
adapter `B_i A_i - B_d A_d` (its factors side by side with the default's negated). A step whose tokens all
use the default adapter then needs no mask and no LoRA matmul at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from llm.lora.adapter import AdapterError, LoraAdapter

if TYPE_CHECKING:
    from llm.layers.linear import Linear
    from llm.model.llama import LlamaForCausalLM

log = logging.getLogger(__name__)

# Projections of a checkpoint fused into each of our linear layers, in row order.
FUSED = {
    "self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "self_attn.o_proj": ("o_proj",),
    "mlp.gate_up_proj": ("gate_proj", "up_proj"),
    "mlp.down_proj": ("down_proj",),
}


# Quantized weights are expanded to dense for merging only while the dense copy stays this small (a ~1B
# model in bfloat16); larger models keep their quantized weights and serve the default adapter unmerged.
MERGE_DENSE_MAX_BYTES = 2 * 2**30


@dataclass(frozen=True)
class LoraLayout:
    """How a model's adapters are served. `slots`: the engine slots (0 is the base model) whose tokens get a
    delta, in the order of the step mask's columns; `merged`: the slot folded into the base weights."""

    slots: tuple[int, ...] = ()
    merged: int | None = None

    @property
    def always_masked(self) -> bool:
        """Every step carries a mask (adapters loaded, none merged); with a merged adapter only the steps
        with a token on another slot do."""
        return bool(self.slots) and self.merged is None

    def mask(
        self, token_slots: torch.Tensor, columns: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """(tokens, len(slots)) one-hot rows of each token's slot among `columns` (`slots` as a tensor), or
        None when no token needs a delta."""
        if not self.slots or (self.merged is not None and bool((token_slots == self.merged).all())):
            return None
        # Contiguous like the compiled step's warm-up mask (a strided view would be another graph).
        return (token_slots[:, None] == columns).to(dtype)


NO_LORA = LoraLayout()


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


def _part_rows(linear: Linear, path: str, model: LlamaForCausalLM) -> list[tuple[str, int, int]]:
    """(projection, first row, row count) of each projection fused into the linear at `path`; where several
    are, also the fused projection as a Phi-3 checkpoint names it (`qkv_proj`, `gate_up_proj`), all rows."""
    cfg = model.config
    sizes = {
        "q_proj": cfg.q_size,
        "k_proj": cfg.kv_size,
        "v_proj": cfg.kv_size,
        "gate_proj": cfg.intermediate_size,
        "up_proj": cfg.intermediate_size,
    }
    rows, start = [], 0
    for part in FUSED[path]:
        count = sizes.get(part, linear.out_features)
        rows.append((part, start, count))
        start += count
    if len(rows) > 1:
        rows.append((path.rpartition(".")[2], 0, linear.out_features))
    return rows


Factor = tuple[int, int, torch.Tensor, torch.Tensor]  # (first row, row count, A, B) of one projection
Adapted = list[tuple["Linear", dict[int, list[Factor]]]]  # one layer's linears, the factors of each slot


def install_adapters(
    model: LlamaForCausalLM,
    adapters: Sequence[LoraAdapter],
    dtype: torch.dtype,
    device: torch.device,
    merge: int | None = None,
) -> LoraLayout:
    """Give each adapted linear of `model` the deltas of `adapters` (slot i + 1 is `adapters[i]`; slot 0 is
    the base model) and fold slot `merge` into the base weights where that is allowed (see the module
    docstring). Raises AdapterError when an adapter does not fit the model."""
    layers = model.layers
    for adapter in adapters:
        if adapter.num_layers > len(layers):
            raise AdapterError(
                f"adapter {adapter.name!r} adapts {adapter.num_layers} layers, the model has {len(layers)}"
            )
    adapted: list[Adapted] = [
        [(_linear(model, index, path), _factors(model, index, path, adapters)) for path in FUSED]
        for index in range(len(layers))
    ]
    merged = merge if merge is not None and _may_merge(adapted, merge, dtype) else None
    slots = tuple(s for s in range(len(adapters) + 1) if s != merged and (s > 0 or merged is not None))
    for linears in adapted:
        for linear, factors in linears:
            if merged is not None and factors[merged]:
                linear.add_to_weight(_product(linear, factors[merged]), dtype)
                undo = [(first, size, a, -b) for first, size, a, b in factors[merged]]
                factors = {s: ([] if s == merged else [*parts, *undo]) for s, parts in factors.items()}
                factors[0] = undo
            width = max((sum(a.shape[0] for _, _, a, _ in factors.get(s, [])) for s in slots), default=0)
            if width == 0:
                continue
            a_all = torch.zeros(len(slots) * width, linear.in_features)
            b_all = torch.zeros(linear.out_features, len(slots) * width)
            for column, slot in enumerate(slots):
                offset = column * width
                for first, size, a, b in factors.get(slot, []):
                    rank = a.shape[0]
                    a_all[offset : offset + rank] = a
                    b_all[first : first + size, offset : offset + rank] = b
                    offset += rank
            linear.lora = LoraDelta(a_all.to(device, dtype), b_all.to(device, dtype), len(slots))
    if merged is not None:
        log.info("LoRA adapter %r merged into the base weights", adapters[merged - 1].name)
    return LoraLayout(slots, merged)


def _factors(
    model: LlamaForCausalLM, index: int, path: str, adapters: Sequence[LoraAdapter]
) -> dict[int, list[Factor]]:
    """slot -> the factors each adapter has for the projections fused into layer `index`'s `path`."""
    linear = _linear(model, index, path)
    rows = _part_rows(linear, path, model)
    factors: dict[int, list[Factor]] = {}
    for slot, adapter in enumerate(adapters, start=1):
        parts = factors[slot] = []
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
            parts.append((first, size, lora_a, lora_b))
    return factors


def _linear(model: LlamaForCausalLM, index: int, path: str) -> Linear:
    return cast("Linear", model.layers[index].get_submodule(path))


def _product(linear: Linear, parts: list[Factor]) -> torch.Tensor:
    """The dense (out, in) float32 delta `B @ A` of `parts`, each in its rows of the fused weight."""
    delta = torch.zeros(linear.out_features, linear.in_features)
    for first, size, a, b in parts:
        delta[first : first + size] += b @ a
    return delta


def _may_merge(adapted: list[Adapted], slot: int, dtype: torch.dtype) -> bool:
    """Merging expands the quantized linears the adapter touches to dense: only while that stays small."""
    expanded = sum(
        linear.in_features * linear.out_features * dtype.itemsize
        for linears in adapted
        for linear, factors in linears
        if factors[slot] and linear.kind != "dense"
    )
    if expanded > MERGE_DENSE_MAX_BYTES:
        log.info(
            "LoRA adapter in slot %d served unmerged: merging would expand %.1f GiB of quantized weights",
            slot, expanded / 2**30,
        )  # fmt: skip
        return False
    return True
