"""Triton varlen flash attention (packed and paged keys) against the reference, and its input checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from kernels import reference
from tests.kernels.kernel_cases import (
    DEVICE,
    KERNEL_DTYPES,
    assert_close,
    cu_seqlens,
    forbid_launch,
    gpu,
    needs_gpu,
    needs_triton,
    paged_kv,
)

pytestmark = needs_triton


@dataclass(frozen=True)
class Case:
    lq: tuple[int, ...]
    lk: tuple[int, ...]
    n_heads: int
    n_kv_heads: int
    head_dim: int = 64
    block_size: int | None = None  # None: packed keys; else paged cache with this block size
    causal: bool = True
    window: int | None = None
    fused: bool = False  # packed k and v sliced out of wider per-token rows, with different strides
    softcap: float | None = None  # scores capped by tanh (Gemma 2); 1.0 in tests, so that it bites


def fused_slices(k: torch.Tensor, v: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k and v as the engine hands them over: k sliced from the rotated (q | k) rows, v from the (q | k | v)
    projection rows, so each has its own row stride and neither is contiguous."""
    tokens, n_kv, d = k.shape
    qk = torch.randn(tokens, n_heads + n_kv, d, device=k.device, dtype=k.dtype)
    qkv = torch.randn(tokens, n_heads + 2 * n_kv, d, device=k.device, dtype=k.dtype)
    qk[:, n_heads:] = k
    qkv[:, n_heads + n_kv :] = v
    return qk[:, n_heads:], qkv[:, n_heads + n_kv :]


CPU_CASES = [
    Case((1, 17, 40), (1, 17, 40), 4, 4),  # GQA 1, ragged incl. length 1
    Case((17, 5), (17, 5), 6, 2, head_dim=128),  # GQA 3
    Case((130,), (130,), 4, 1),  # GQA 4, 128+ tokens, many key tiles
    Case((33, 1), (33, 1), 4, 2, window=9),  # sliding window: masked lower edge, full middle, masked diagonal
    Case((20, 3), (29, 3), 3, 3, causal=False),
    Case((5, 17), (30, 17), 3, 1, block_size=16),  # queries after a cached prefix, read through a block table
    Case((4, 1, 19), (50, 33, 19), 8, 2, head_dim=128, block_size=32, window=21),
    Case((24, 9), (24, 9), 6, 2, window=11, fused=True),
    Case((21, 4), (21, 4), 4, 2, head_dim=96, fused=True),  # Phi-3's head: tiles padded to 128
    Case((3, 18), (40, 18), 4, 1, head_dim=256, block_size=16, window=13),  # Gemma 3's, paged
    Case((19,), (19,), 2, 2, head_dim=80),
    Case((33, 1), (33, 1), 4, 2, window=9, softcap=1.0),
    Case((3, 18), (40, 18), 4, 1, head_dim=256, block_size=16, window=13, softcap=1.0),  # Gemma 2's, paged
]

GPU_CASES = [
    Case((1, 1000, 2048), (1, 1000, 2048), 32, 8, head_dim=128),
    Case((513, 77), (513, 77), 9, 3),
    Case((256, 1), (4096, 1500), 32, 8, head_dim=128, block_size=16),
    Case((1024,), (1024,), 16, 4, window=256),
    Case((700, 300), (700, 300), 9, 3, fused=True),
    Case((1024, 77), (1024, 77), 8, 1, head_dim=256, window=512),  # Gemma 3 1B's layout
    Case((256, 31), (2048, 31), 32, 32, head_dim=96, block_size=16),  # Phi-3-mini's
    Case((1024, 77), (1024, 77), 8, 4, head_dim=256, window=4096, softcap=50.0),  # Gemma 2 2B's
]


def run_case(case: Case, dtype: torch.dtype) -> None:
    from kernels import flash_prefill

    d = case.head_dim
    q = torch.randn(sum(case.lq), case.n_heads, d, device=DEVICE).to(dtype)
    keys = [torch.randn(n, case.n_kv_heads, d, device=DEVICE).to(dtype) for n in case.lk]
    values = [torch.randn(n, case.n_kv_heads, d, device=DEVICE).to(dtype) for n in case.lk]
    if case.block_size is None:
        k, v, table = torch.cat(keys), torch.cat(values), None
        if case.fused:
            k, v = fused_slices(k, v, case.n_heads)
    else:
        k, v, table = paged_kv(keys, values, case.block_size)
    args = (
        q,
        k,
        v,
        cu_seqlens(list(case.lq)),
        cu_seqlens(list(case.lk)),
        max(case.lq),
        max(case.lk),
        1 / math.sqrt(d),
    )
    opts: dict[str, Any] = dict(
        causal=case.causal, sliding_window=case.window, block_table=table, softcap=case.softcap
    )
    out = flash_prefill.varlen_attention(*args, **opts)
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out, reference.varlen_attention(*args, **opts), dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("case", CPU_CASES, ids=repr)
def test_prefill_matches_reference(case: Case, dtype: torch.dtype) -> None:
    run_case(case, dtype)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=repr)
def test_prefill_matches_reference_large(case: Case, dtype: torch.dtype) -> None:
    run_case(case, dtype)


def inputs(**over: object) -> dict[str, Any]:
    """A valid paged call; each bad-input test breaks one thing."""
    keys = [torch.randn(20, 2, 64, device=DEVICE), torch.randn(5, 2, 64, device=DEVICE)]
    k, v, table = paged_kv(keys, keys, block_size=16, extra_columns=0)
    call: dict[str, Any] = dict(
        q=torch.randn(7, 4, 64, device=DEVICE), k=k, v=v,
        cu_seqlens_q=cu_seqlens([4, 3]), cu_seqlens_k=cu_seqlens([20, 5]),
        max_seqlen_q=4, max_seqlen_k=20, softmax_scale=0.125, block_table=table,
    )  # fmt: skip
    call.update(over)
    return call


def test_valid_inputs_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels import flash_prefill

    call = inputs()
    assert_close(flash_prefill.varlen_attention(**call), reference.varlen_attention(**call), torch.float32)


HD320 = torch.randn(6, 16, 2, 320, device=DEVICE)


def bad(name: str, match: str, **over: object) -> object:
    return pytest.param(over, match, id=name)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        bad("k-dtype", "k dtype", k=torch.zeros(3, 16, 2, 64, dtype=torch.float16)),
        bad("q-int", "q must have dtype", q=torch.zeros(7, 4, 64, dtype=torch.int32)),
        bad(
            "q-noncontig",
            "q must have a contiguous last",
            q=torch.randn(7, 64, 4, device=DEVICE).transpose(1, 2),
        ),
        bad(
            "head-dim-320",
            "head_dim 320 is not supported",
            q=torch.randn(7, 4, 320, device=DEVICE),
            k=HD320,
            v=HD320,
        ),
        bad("gqa-ratio", "multiple of n_kv_heads", q=torch.randn(7, 3, 64, device=DEVICE)),
        bad("cu-int64", "cu_seqlens_q must have dtype", cu_seqlens_q=torch.tensor([0, 4, 7], device=DEVICE)),
        bad("max-seqlen-q-small", "exceeds max_seqlen_q", max_seqlen_q=3),
        bad("table-too-short", "block table too short", cu_seqlens_k=cu_seqlens([33, 5]), max_seqlen_k=33),
        bad(
            "table-int64",
            "block_table must have dtype",
            block_table=torch.zeros(2, 2, dtype=torch.int64, device=DEVICE),
        ),
        bad(
            "table-bad-block",
            "entries must be in",
            block_table=torch.full((2, 2), 99, dtype=torch.int32, device=DEVICE),
        ),
        bad("q-longer-than-k", "seqlen_q <= seqlen_k", cu_seqlens_q=cu_seqlens([1, 6]), max_seqlen_q=6),
        bad("window-0", "sliding_window", sliding_window=0),
        bad("softcap-0", "softcap must be > 0", softcap=0.0),
    ],
)
def test_bad_inputs_raise_before_launch(
    over: dict[str, Any], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernels import flash_prefill

    forbid_launch(monkeypatch, flash_prefill, "_flash_prefill_kernel")
    with pytest.raises(ValueError, match=match):
        flash_prefill.varlen_attention(**inputs(**over))


def test_unpaged_k_past_cu_seqlens_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels import flash_prefill

    forbid_launch(monkeypatch, flash_prefill, "_flash_prefill_kernel")
    k = torch.randn(10, 2, 64, device=DEVICE)
    with pytest.raises(ValueError, match="k has 10 rows"):
        flash_prefill.varlen_attention(**inputs(k=k, v=k, block_table=None))
