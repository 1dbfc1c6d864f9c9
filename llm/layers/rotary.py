"""Rotary position embeddings (rotate-half layout, as in Hugging Face checkpoints): tables and their scaling.

Scalings: linear, Llama 3 (from its parameters, or from the per-frequency divisors llama.cpp's converter
stores as the GGUF `rope_freqs` tensor), and LongRoPE (Phi-3: per-frequency divisors for contexts within the
pretraining length, others beyond it, and an attention factor on cos/sin). A model may use several tables
(Gemma 3: global layers scaled, sliding-window layers with their own base); one lookup serves all of them.
Partial rotary (Phi-4-mini) rotates the leading dimensions of each head only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def inverse_frequencies(
    rotary_dim: int, theta: float, scaling: dict[str, Any] | None, max_positions: int
) -> tuple[torch.Tensor, float]:
    """(rotary_dim // 2,) float64 angular frequencies after the checkpoint's RoPE scaling, and the factor that
    multiplies cos and sin. `max_positions`: the longest context the tables serve (LongRoPE picks its
    divisors by it, as llama.cpp does by its context size)."""
    inv = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type")
    if kind in (None, "default", "none"):
        return inv, 1.0
    assert scaling is not None
    if kind == "linear":
        return inv / scaling["factor"], 1.0
    if kind == "freq_factors":
        return inv / torch.tensor(scaling["factors"], dtype=torch.float64), 1.0
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = ((old_len / wavelen) - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv / factor, inv)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled), 1.0
    if kind in ("longrope", "su"):
        long = max_positions > scaling["original_max_position_embeddings"]
        divisors = torch.tensor(scaling["long_factor" if long else "short_factor"], dtype=torch.float64)
        return inv / divisors, scaling.get("attention_factor") or 1.0
    raise ValueError(f"unsupported rope scaling {kind!r} (supported: linear, llama3, longrope)")


class RotaryEmbedding(nn.Module):
    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(
        self,
        rotary_dim: int,
        max_positions: int,
        tables: Sequence[tuple[float, dict[str, Any] | None]],
    ) -> None:
        """`tables`: (theta, scaling) of each RoPE the model's layers use."""
        super().__init__()
        positions = torch.arange(max_positions, dtype=torch.float64)
        cos, sin = [], []
        for theta, scaling in tables:
            inv, factor = inverse_frequencies(rotary_dim, theta, scaling, max_positions)
            angles = positions[:, None] * inv[None, :]
            cos.append(torch.cat((angles.cos(), angles.cos()), -1) * factor)
            sin.append(torch.cat((angles.sin(), angles.sin()), -1) * factor)
        # (max_positions, tables, rotary_dim): cos and sin already repeated over both halves, float32.
        self.register_buffer("cos", torch.stack(cos, 1).float(), persistent=False)
        self.register_buffer("sin", torch.stack(sin, 1).float(), persistent=False)

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (tokens,) -> cos, sin (tokens, tables, 1, rotary_dim), shared by every layer of one step;
        a layer takes its table's `[:, table]`."""
        return self.cos[positions].to(dtype)[:, :, None, :], self.sin[positions].to(dtype)[:, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (tokens, heads, head_dim) rotated by its positions' angles, cos/sin (tokens, 1, rotary_dim); beyond
    rotary_dim (partial rotary) the dimensions pass through."""
    rotary_dim = cos.shape[-1]
    if rotary_dim < x.shape[-1]:
        return torch.cat((apply_rotary(x[..., :rotary_dim], cos, sin), x[..., rotary_dim:]), dim=-1)
    half = rotary_dim // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
