"""Triton paged decode attention (single pass and split-K) against the reference, and its input checks."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from kernels import reference
from tests.kernels.kernel_cases import (
    DEVICE,
    KERNEL_DTYPES,
    assert_close,
    forbid_launch,
    gpu,
    needs_gpu,
    needs_triton,
    paged_kv,
)

pytestmark = needs_triton

CPU_CASES = [
    # (context lens, n_heads, n_kv_heads, head_dim, block_size, window, num_splits)
    ((1, 17, 40), 4, 4, 64, 16, None, 1),
    ((1, 17, 140), 9, 3, 64, 16, None, 3),  # split-K: some partitions empty for the short sequences
    ((33, 2), 8, 2, 128, 32, None, None),
    ((70, 5), 8, 2, 64, 16, 20, 4),  # window + split-K: partitions before the window stay empty
    ((129,), 4, 1, 128, 32, 7, 1),
    ((40, 3), 8, 2, 96, 16, None, 2),  # Phi-3's head: tiles padded to 128, split-K partials padded too
    ((35, 1), 4, 1, 256, 16, 9, 1),  # Gemma 3's head, with a sliding window
    ((20,), 2, 2, 80, 16, None, None),
]

GPU_CASES = [
    ((4096,) * 32, 32, 8, 128, 16, None, None),
    ((1, 17, 3000, 4096), 9, 3, 64, 16, None, None),
    ((8000, 100), 32, 8, 128, 32, 1024, None),
    ((4096, 33), 8, 1, 256, 16, 512, None),  # Gemma 3 1B's layout
    ((3000, 7), 32, 32, 96, 16, None, None),  # Phi-3-mini's
]


def run_case(
    lens: tuple[int, ...], n_heads: int, n_kv_heads: int, head_dim: int, block_size: int,
    window: int | None, num_splits: int | None, dtype: torch.dtype, softcap: float | None = None,
) -> None:  # fmt: skip
    from kernels import paged_decode

    q = torch.randn(len(lens), n_heads, head_dim, device=DEVICE).to(dtype)
    keys = [torch.randn(n, n_kv_heads, head_dim, device=DEVICE).to(dtype) for n in lens]
    values = [torch.randn(n, n_kv_heads, head_dim, device=DEVICE).to(dtype) for n in lens]
    k_cache, v_cache, table = paged_kv(keys, values, block_size)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    args = (q, k_cache, v_cache, table, context_lens, 1 / math.sqrt(head_dim))
    out = paged_decode.paged_decode_attention(
        *args, sliding_window=window, num_splits=num_splits, softcap=softcap
    )
    assert out.dtype == dtype and out.shape == q.shape
    expected = reference.paged_decode_attention(*args, sliding_window=window, softcap=softcap)
    assert_close(out, expected, dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("lens", "n_heads", "n_kv_heads", "head_dim", "block_size", "window", "splits"), CPU_CASES
)
def test_decode_matches_reference(
    lens: tuple[int, ...], n_heads: int, n_kv_heads: int, head_dim: int, block_size: int,
    window: int | None, splits: int | None, dtype: torch.dtype,
) -> None:  # fmt: skip
    run_case(lens, n_heads, n_kv_heads, head_dim, block_size, window, splits, dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("lens", "n_heads", "n_kv_heads", "head_dim", "block_size", "window", "splits"),
    [((70, 5), 8, 2, 64, 16, 20, 4), ((35, 1), 4, 2, 256, 16, 9, 1)],  # split-K; Gemma 2's head
)
def test_decode_caps_scores_like_the_reference(
    lens: tuple[int, ...], n_heads: int, n_kv_heads: int, head_dim: int, block_size: int,
    window: int | None, splits: int | None, dtype: torch.dtype,
) -> None:  # fmt: skip
    """Gemma 2's logit cap (1.0 here, so that it changes every weight) in both the split and whole forms."""
    run_case(lens, n_heads, n_kv_heads, head_dim, block_size, window, splits, dtype, softcap=1.0)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("lens", "n_heads", "n_kv_heads", "head_dim", "block_size", "window", "splits"), GPU_CASES
)
def test_decode_matches_reference_large(
    lens: tuple[int, ...], n_heads: int, n_kv_heads: int, head_dim: int, block_size: int,
    window: int | None, splits: int | None, dtype: torch.dtype,
) -> None:  # fmt: skip
    run_case(lens, n_heads, n_kv_heads, head_dim, block_size, window, splits, dtype)


def inputs(**over: object) -> dict[str, Any]:
    keys = [torch.randn(20, 2, 64, device=DEVICE), torch.randn(5, 2, 64, device=DEVICE)]
    k_cache, v_cache, table = paged_kv(keys, keys, block_size=16, extra_columns=0)
    call: dict[str, Any] = dict(
        q=torch.randn(2, 4, 64, device=DEVICE), k_cache=k_cache, v_cache=v_cache, block_tables=table,
        context_lens=torch.tensor([20, 5], dtype=torch.int32, device=DEVICE), softmax_scale=0.125,
    )  # fmt: skip
    call.update(over)
    return call


def test_valid_inputs_pass() -> None:
    from kernels import paged_decode

    call = inputs()
    assert_close(
        paged_decode.paged_decode_attention(**call), reference.paged_decode_attention(**call), torch.float32
    )


HD320 = torch.randn(6, 16, 2, 320, device=DEVICE)


def bad(name: str, match: str, **over: object) -> object:
    return pytest.param(over, match, id=name)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        bad(
            "cache-dtype",
            "k_cache dtype",
            k_cache=torch.zeros(3, 16, 2, 64, dtype=torch.float16, device=DEVICE),
        ),
        bad(
            "q-noncontig",
            "q must have a contiguous last",
            q=torch.randn(2, 64, 4, device=DEVICE).transpose(1, 2),
        ),
        bad(
            "head-dim-320",
            "head_dim 320 is not supported",
            q=torch.randn(2, 4, 320, device=DEVICE),
            k_cache=HD320,
            v_cache=HD320,
        ),
        bad("gqa-ratio", "multiple of n_kv_heads", q=torch.randn(2, 3, 64, device=DEVICE)),
        bad(
            "table-too-short",
            "block table too short",
            context_lens=torch.tensor([33, 5], dtype=torch.int32, device=DEVICE),
        ),
        bad(
            "context-0",
            "context_lens must be >= 1",
            context_lens=torch.tensor([0, 5], dtype=torch.int32, device=DEVICE),
        ),
        bad(
            "context-int64", "context_lens must have dtype", context_lens=torch.tensor([20, 5], device=DEVICE)
        ),
        bad(
            "table-rows",
            "block_tables has 1 rows",
            block_tables=torch.zeros(1, 2, dtype=torch.int32, device=DEVICE),
        ),
        bad(
            "table-bad-block",
            "entries must be in",
            block_tables=torch.full((2, 2), -1, dtype=torch.int32, device=DEVICE),
        ),
        bad("splits-0", "num_splits", num_splits=0),
        bad("softcap-negative", "softcap must be > 0", softcap=-1.0),
    ],
)
def test_bad_inputs_raise_before_launch(
    over: dict[str, Any], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernels import paged_decode

    forbid_launch(monkeypatch, paged_decode, "_paged_decode_kernel", "_reduce_kernel")
    with pytest.raises(ValueError, match=match):
        paged_decode.paged_decode_attention(**inputs(**over))


def test_too_short_table_message_names_the_problem() -> None:
    from kernels import paged_decode

    with pytest.raises(ValueError, match="block table too short: sequence 0 has 33 keys"):
        paged_decode.paged_decode_attention(
            **inputs(context_lens=torch.tensor([33, 5], dtype=torch.int32, device=DEVICE))
        )
