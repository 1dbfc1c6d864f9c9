"""The reference attention, KV write and RMSNorm checked against naive loops, so the kernels' ground truth is
not trusted blindly."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import reference
from tests.kernels.kernel_cases import DEVICE, cu_seqlens, paged_kv


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    causal: bool,
    window: int | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """One sequence, one head and one query at a time in float64: softmax(q k^T) v over the visible keys,
    each scaled score capped at `cap * tanh(score / cap)` when `softcap` is given."""
    sq, n_heads, _ = q.shape
    sk, n_kv_heads, _ = k.shape
    out = torch.zeros(q.shape, dtype=torch.float64)
    for h in range(n_heads):
        kv = h // (n_heads // n_kv_heads)
        for j in range(sq):
            p = sk - sq + j
            visible = [t for t in range(sk) if (not causal or t <= p) and (window is None or t > p - window)]
            if not visible:
                continue
            scores = torch.stack([q[j, h].double() @ k[t, kv].double() * scale for t in visible])
            if softcap is not None:
                scores = softcap * torch.tanh(scores / softcap)
            weights = torch.softmax(scores, dim=0)
            out[j, h] = sum(w * v[t, kv].double() for w, t in zip(weights, visible, strict=True))
    return out


CASES = [
    # (q lengths, k lengths, n_heads, n_kv_heads, causal, window)
    ([1, 5, 3], [1, 5, 3], 2, 2, True, None),
    ([4, 2], [7, 9], 6, 2, True, None),  # queries attend to a cached prefix (bottom-right causal)
    ([5], [5], 4, 1, True, 2),
    ([3, 1], [6, 4], 3, 3, False, None),
    ([3], [6], 4, 2, False, 2),
]


@pytest.mark.parametrize(("lq", "lk", "n_heads", "n_kv_heads", "causal", "window"), CASES)
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("softcap", [None, 0.5], ids=["uncapped", "capped"])
def test_varlen_reference_matches_naive(
    lq: list[int],
    lk: list[int],
    n_heads: int,
    n_kv_heads: int,
    causal: bool,
    window: int | None,
    paged: bool,
    softcap: float | None,
) -> None:
    d = 8
    scale = 1 / math.sqrt(d)
    q = torch.randn(sum(lq), n_heads, d, device=DEVICE)
    keys = [torch.randn(n, n_kv_heads, d, device=DEVICE) for n in lk]
    values = [torch.randn(n, n_kv_heads, d, device=DEVICE) for n in lk]
    if paged:
        k, v, table = paged_kv(keys, values, block_size=4)
    else:
        k, v, table = torch.cat(keys), torch.cat(values), None
    out = reference.varlen_attention(
        q, k, v, cu_seqlens(lq), cu_seqlens(lk), max(lq), max(lk), scale,
        causal=causal, sliding_window=window, block_table=table, softcap=softcap,
    )  # fmt: skip
    start = 0
    for i, n in enumerate(lq):
        expected = naive_attention(
            q[start : start + n].cpu(), keys[i].cpu(), values[i].cpu(), scale, causal, window, softcap
        )
        torch.testing.assert_close(out[start : start + n].cpu().double(), expected, atol=1e-5, rtol=1e-5)
        start += n


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("padded", [False, True], ids=["per_sequence", "padded_for_compile"])
@pytest.mark.parametrize("softcap", [None, 0.5], ids=["uncapped", "capped"])
def test_decode_reference_matches_naive(window: int | None, padded: bool, softcap: float | None) -> None:
    d, n_heads, n_kv_heads = 8, 4, 2
    lens = [1, 6, 0, 9]
    q = torch.randn(len(lens), n_heads, d, device=DEVICE)
    keys = [torch.randn(n, n_kv_heads, d, device=DEVICE) for n in lens]
    values = [torch.randn(n, n_kv_heads, d, device=DEVICE) for n in lens]
    k_cache, v_cache, table = paged_kv(keys, values, block_size=4)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    if padded:  # the form traced under torch.compile
        out = reference._paged_decode_padded(q, k_cache, v_cache, table, context_lens, 0.3, window, softcap)
    else:
        out = reference.paged_decode_attention(
            q, k_cache, v_cache, table, context_lens, 0.3, sliding_window=window, softcap=softcap
        )
    for i in range(len(lens)):
        expected = naive_attention(
            q[i : i + 1].cpu(), keys[i].cpu(), values[i].cpu(), 0.3, True, window, softcap
        )
        torch.testing.assert_close(out[i : i + 1].cpu().double(), expected, atol=1e-5, rtol=1e-5)


def test_write_kv_reference_scatters_and_skips() -> None:
    k_cache = torch.zeros(3, 4, 2, 8, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    k = torch.randn(3, 2, 8, device=DEVICE)
    v = torch.randn(3, 2, 8, device=DEVICE)
    reference.write_kv(k, v, k_cache, v_cache, torch.tensor([9, -1, 0], device=DEVICE))
    torch.testing.assert_close(k_cache[2, 1], k[0])
    torch.testing.assert_close(v_cache[0, 0], v[2])
    assert k_cache.count_nonzero() == 2 * k[0].numel()


def test_rms_norm_reference_matches_formula() -> None:
    x = torch.randn(3, 16, device=DEVICE)
    r = torch.randn(3, 16, device=DEVICE)
    w = torch.randn(16, device=DEVICE)
    out, h = reference.rms_norm(x, w, 1e-6, r)
    torch.testing.assert_close(h, x + r)
    expected = (x + r) / ((x + r).pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * w
    torch.testing.assert_close(out, expected)
    out2, h2 = reference.rms_norm(x, w, 1e-6)
    assert h2 is x
    torch.testing.assert_close(out2, x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * w)
