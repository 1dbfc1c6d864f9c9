"""Paged attention: write this step's keys/values into the block cache, attend through `kernels.dispatch`
(or, for decode steps on the CPU with the default backend, through the C++ kernel of
`llm.layers.decode_attention`)."""

from __future__ import annotations

import torch
from torch import nn

from kernels import dispatch
from llm.layers import decode_attention
from llm.layers.context import get_context


class PagedAttention(nn.Module):
    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        sliding_window: int | None,
        scale: float,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale  # of the attention scores (head_dim^-0.5 unless the model says otherwise)
        self.sliding_window = sliding_window
        self.softcap = softcap  # scaled scores capped at softcap * tanh(score / softcap) (Gemma 2)
        # (num_blocks, block_size, n_kv_heads, head_dim), bound by the model runner once the cache is sized.
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)
        self.cpu_decode_kernel = False  # decode steps attend through `llm.layers.decode_attention`

    def bind_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """Attend over these caches from now on; decided here, once, whether decode steps take the C++
        kernel (a compiled step cannot ask while it runs)."""
        self.k_cache, self.v_cache = k_cache, v_cache
        self.cpu_decode_kernel = decode_attention.serves(k_cache, v_cache)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (tokens, n_heads, head_dim), k/v (tokens, n_kv_heads, head_dim) -> like q."""
        ctx = get_context()
        dispatch.write_kv(k, v, self.k_cache, self.v_cache, ctx.slot_mapping, traceable=ctx.compiled)
        if ctx.is_decode:
            if self.cpu_decode_kernel and dispatch.get_backend() == "auto":
                return decode_attention.paged_decode(
                    q, self.k_cache, self.v_cache, ctx.block_tables, ctx.context_lens, self.scale,
                    self.sliding_window, self.softcap,
                )  # fmt: skip
            return dispatch.paged_decode_attention(
                q,
                self.k_cache,
                self.v_cache,
                ctx.block_tables,
                ctx.context_lens,
                self.scale,
                sliding_window=self.sliding_window,
                traceable=ctx.compiled,
                softcap=self.softcap,
            )
        assert ctx.cu_seqlens_q is not None and ctx.cu_seqlens_k is not None
        if ctx.cache_hit:  # some keys were computed in earlier steps: read them all from the paged cache
            k, v, block_table = self.k_cache, self.v_cache, ctx.block_tables
        else:  # every key is in this step's k/v: attend to the packed tensors directly
            block_table = None
        return dispatch.varlen_attention(
            q,
            k,
            v,
            ctx.cu_seqlens_q,
            ctx.cu_seqlens_k,
            ctx.max_seqlen_q,
            ctx.max_seqlen_k,
            self.scale,
            causal=True,
            sliding_window=self.sliding_window,
            block_table=block_table,
            softcap=self.softcap,
        )
