"""Triton KV-cache write and fused residual RMSNorm against the reference, and their input checks."""

from __future__ import annotations

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
)

pytestmark = needs_triton


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize(("n_kv_heads", "head_dim", "block_size"), [(2, 64, 16), (3, 128, 32), (1, 64, 32)])
def test_write_kv_matches_reference(
    n_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> None:
    from kernels import kv_write

    tokens, num_blocks = 23, 4
    k = torch.randn(tokens, n_kv_heads, head_dim, device=DEVICE).to(dtype)
    v = torch.randn(tokens, n_kv_heads, head_dim, device=DEVICE).to(dtype)
    slots = torch.randperm(num_blocks * block_size, device=DEVICE)[:tokens]
    slots[[3, 11]] = -1  # padding tokens are skipped
    cache = torch.randn(num_blocks, block_size, n_kv_heads, head_dim, device=DEVICE).to(dtype)
    k_ref, v_ref = cache.clone(), cache.clone() * 2
    k_out, v_out = k_ref.clone(), v_ref.clone()
    reference.write_kv(k, v, k_ref, v_ref, slots)
    kv_write.write_kv(k, v, k_out, v_out, slots)
    torch.testing.assert_close(k_out, k_ref, atol=0, rtol=0)  # a copy: bit exact
    torch.testing.assert_close(v_out, v_ref, atol=0, rtol=0)


def test_write_kv_strided_inputs() -> None:
    """k and v as views of a fused qkv projection (row stride > n_kv_heads * head_dim)."""
    from kernels import kv_write

    qkv = torch.randn(5, 3 * 2 * 64, device=DEVICE)
    k = qkv[:, 128:256].view(5, 2, 64)
    v = qkv[:, 256:].view(5, 2, 64)
    cache_ref = torch.zeros(2, 16, 2, 64, device=DEVICE)
    caches = [cache_ref.clone() for _ in range(4)]
    slots = torch.tensor([0, 1, 17, 30, -1], device=DEVICE)
    reference.write_kv(k, v, caches[0], caches[1], slots)
    kv_write.write_kv(k, v, caches[2], caches[3], slots)
    torch.testing.assert_close(caches[2], caches[0])
    torch.testing.assert_close(caches[3], caches[1])


def kv_inputs(**over: object) -> dict[str, Any]:
    call: dict[str, Any] = dict(
        k=torch.randn(3, 2, 64, device=DEVICE), v=torch.randn(3, 2, 64, device=DEVICE),
        k_cache=torch.zeros(2, 16, 2, 64, device=DEVICE), v_cache=torch.zeros(2, 16, 2, 64, device=DEVICE),
        slot_mapping=torch.tensor([0, 5, -1], device=DEVICE),
    )  # fmt: skip
    call.update(over)
    return call


@pytest.mark.parametrize(
    ("over", "match"),
    [
        pytest.param(dict(k=torch.randn(3, 2, 64, device=DEVICE).half()), "k dtype", id="dtype"),
        pytest.param(dict(k=torch.randn(3, 4, 32, device=DEVICE)), "v shape", id="shape"),
        pytest.param(
            dict(slot_mapping=torch.tensor([0, 32, -1], device=DEVICE)), "slot_mapping values", id="slot"
        ),
        pytest.param(
            dict(slot_mapping=torch.tensor([0.0, 1.0, 2.0], device=DEVICE)), "slot_mapping must", id="fp"
        ),
        pytest.param(dict(slot_mapping=torch.tensor([0, 1], device=DEVICE)), "2 entries for 3", id="length"),
        pytest.param(
            dict(k_cache=torch.zeros(2, 2, 16, 64, device=DEVICE).transpose(1, 2)),
            "contiguous",
            id="cache-strided",
        ),
    ],
)
def test_write_kv_bad_inputs(over: dict[str, Any], match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels import kv_write

    forbid_launch(monkeypatch, kv_write, "_write_kv_kernel")
    with pytest.raises(ValueError, match=match):
        kv_write.write_kv(**kv_inputs(**over))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 576), (3, 5, 100), (17, 64)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_rms_norm_matches_reference(shape: tuple[int, ...], with_residual: bool, dtype: torch.dtype) -> None:
    from kernels import rmsnorm

    x = torch.randn(shape, device=DEVICE).to(dtype)
    residual = torch.randn(shape, device=DEVICE).to(dtype) if with_residual else None
    weight = torch.randn(shape[-1], device=DEVICE)
    out, h = rmsnorm.rms_norm(x, weight, 1e-5, residual)
    out_ref, h_ref = reference.rms_norm(x, weight, 1e-5, residual)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close(out, out_ref, dtype)
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_rms_norm_large(dtype: torch.dtype) -> None:
    from kernels import rmsnorm

    x, r = (torch.randn(4096, 8192, device=DEVICE).to(dtype) for _ in range(2))
    w = torch.randn(8192, device=DEVICE)
    out, h = rmsnorm.rms_norm(x, w, 1e-6, r)
    out_ref, h_ref = reference.rms_norm(x, w, 1e-6, r)
    assert_close(out, out_ref, dtype)
    torch.testing.assert_close(h, h_ref)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param((torch.randn(2, 8).int(), torch.ones(8), 1e-5, None), "x must have dtype", id="x-int"),
        pytest.param((torch.randn(2, 8), torch.ones(9), 1e-5, None), "weight has 9", id="weight-size"),
        pytest.param((torch.randn(8, 2).T, torch.ones(8), 1e-5, None), "contiguous last", id="x-strided"),
        pytest.param(
            (torch.randn(2, 8), torch.ones(8), 1e-5, torch.randn(2, 8).half()), "residual dtype", id="res"
        ),
    ],
)
def test_rms_norm_bad_inputs(args: tuple[Any, ...], match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels import rmsnorm

    forbid_launch(monkeypatch, rmsnorm, "_rms_norm_kernel")
    moved: tuple[Any, ...] = tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)
    with pytest.raises(ValueError, match=match):
        rmsnorm.rms_norm(*moved)
