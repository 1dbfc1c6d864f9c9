"""The decoder of every supported family (Llama 2/3, Mistral, Qwen2/3, Gemma 2/3, Phi-3, SmolLM2): one model
whose differences come from the preset and config, not from subclasses.

Projections are fused (q/k/v into one matmul, gate/up into another) because on a small model each extra op per
layer costs more Python overhead than arithmetic. Attention metadata comes from the step context, so
`forward(input_ids, positions)` is the whole interface. What varies by family: q/k norms before RoPE (Qwen3,
Gemma 3), norms on the attention and MLP outputs (Gemma), the gate activation (SwiGLU / GeGLU), scaled
embeddings and capped logits (Gemma), capped attention scores (Gemma 2), a sliding window and RoPE table per
layer (Mistral, Gemma), partial rotary (Phi-4-mini).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llm.layers.attention import PagedAttention
from llm.layers.linear import Embedding, Linear
from llm.layers.norm import RMSNorm
from llm.layers.rotary import RotaryEmbedding, apply_rotary
from llm.model.presets import ModelConfig

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
}


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.qkv_proj = Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=cfg.preset.qkv_bias)
        self.o_proj = Linear(cfg.q_size, cfg.hidden_size)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.preset.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.preset.qk_norm else None
        self.attn = PagedAttention(
            cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.layer_window(layer), cfg.attention_scale,
            cfg.attn_logit_softcapping,
        )  # fmt: skip

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        qkv = self.qkv_proj(x)  # (tokens, q_size + 2 * kv_size)
        # q and k rotated together: one set of RoPE ops per layer instead of two.
        qk = qkv[:, : self.q_size + self.kv_size].view(
            tokens, self.num_heads + self.num_kv_heads, self.head_dim
        )
        if self.q_norm is not None and self.k_norm is not None:
            q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
            qk = torch.cat((self.q_norm(q)[0], self.k_norm(k)[0]), dim=1)
        qk = apply_rotary(qk, cos, sin)  # (tokens, n_heads + n_kv_heads, head_dim)
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        v = qkv[:, self.q_size + self.kv_size :].view(tokens, self.num_kv_heads, self.head_dim)
        o = self.attn(q, k, v)  # (tokens, n_heads, head_dim)
        return self.o_proj(o.reshape(tokens, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.intermediate_size = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.preset.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # (tokens, 2 * intermediate)
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        return self.down_proj(self.act(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # before the MLP
        self.mlp = MLP(cfg)
        sandwich = cfg.preset.sandwich_norms
        self.attn_output_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if sandwich else None
        self.mlp_output_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if sandwich else None
        self.rope_table = cfg.layer_rope(layer)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the previous sublayer's output, not yet added to `residual` (the add is fused into the next
        norm); cos/sin (tokens, tables, 1, rotary_dim) from `RotaryEmbedding.lookup`."""
        h, residual = self.input_layernorm(x, residual)
        x = self.self_attn(h, cos[:, self.rope_table], sin[:, self.rope_table])
        if self.attn_output_norm is not None:
            x = self.attn_output_norm(x)[0]
        h, residual = self.post_attention_layernorm(x, residual)
        x = self.mlp(h)
        if self.mlp_output_norm is not None:
            x = self.mlp_output_norm(x)[0]
        return x, residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.embed_scale = cfg.hidden_size**0.5 if cfg.preset.embed_scale else None
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size)
        self.rotary = RotaryEmbedding(cfg.rotary_dim, max_positions, cfg.rope_tables())

    def attention_layers(self) -> list[PagedAttention]:
        return [m for m in self.modules() if isinstance(m, PagedAttention)]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (tokens,) -> (tokens, hidden): the embeddings, scaled for Gemma (by the scale rounded to
        the compute dtype, as transformers does)."""
        x = self.embed_tokens(input_ids)
        if self.embed_scale is None:
            return x
        return x * float(torch.tensor(self.embed_scale, dtype=x.dtype))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions (tokens,) -> final hidden states (tokens, hidden)."""
        x = self.embed(input_ids)
        cos, sin = self.rotary.lookup(positions, x.dtype)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin)
        return self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (rows, hidden) -> float32 logits (rows, vocab), soft-capped where the model says so."""
        logits = self.lm_head(hidden).float()
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap
