"""Shared helpers of the kernel tests: device, dtypes, tolerance table and paged-cache builders."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")


def _triton_status() -> str | None:
    """Why the Triton kernels cannot run in this process, or None when they can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if ON_GPU:
        return None
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if os.environ.get("TRITON_INTERPRET") != "1" or not isinstance(tl.zeros, InterpretedFunction):
        return (
            "no CUDA device, and the CPU interpreter is off: triton was imported before "
            "tests/kernels/conftest.py could set TRITON_INTERPRET=1 (export it, or set it at the top of "
            "tests/conftest.py)"
        )
    return None


TRITON_STATUS = _triton_status()
CAN_RUN_TRITON = TRITON_STATUS is None
needs_triton = pytest.mark.skipif(not CAN_RUN_TRITON, reason=f"Triton kernels cannot run: {TRITON_STATUS}")
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")

# The Triton 3.9 interpreter mis-reads bfloat16 (numpy has no bf16: a bf16 tl.dot returns garbage such as
# 2.8e10), so on the CPU the kernels are tested in float32 and float16; bf16 is covered on a GPU only.
KERNEL_DTYPES = [torch.float16, torch.bfloat16, torch.float32] if ON_GPU else [torch.float32, torch.float16]

# (atol, rtol) of kernel vs reference, per dtype. The kernels accumulate in fp32 like the reference, so the
# gap is the rounding of tl.dot inputs (e.g. softmax probabilities) and of the output: ~1e-3 for fp16,
# ~8e-3 for bf16.
TOLERANCE = {
    torch.float32: (2e-4, 2e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0
) -> None:
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol * scale, rtol=rtol * scale)


class _ForbiddenKernel:
    def __getitem__(self, grid: object) -> None:
        raise AssertionError("a kernel was launched before the input checks rejected the call")


def forbid_launch(monkeypatch: pytest.MonkeyPatch, module: object, *kernels: str) -> None:
    """Replace a module's kernels with objects that fail the test if launched, so a bad-input test shows that
    the ValueError came from the launcher's checks before any kernel ran."""
    for name in kernels:
        monkeypatch.setattr(module, name, _ForbiddenKernel())


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    out[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    return out.to(DEVICE)


def paged_kv(
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    block_size: int,
    spare_blocks: int = 3,
    extra_columns: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scatter per-sequence `(len, Hkv, D)` keys/values into shuffled paged caches → (k, v, block table).

    Blocks are assigned in a random order, with spare blocks and unused block-table columns pointing at
    garbage-filled blocks, so a kernel that reads the wrong block or past a sequence's length gets visibly
    wrong values instead of zeros.
    """
    n_kv_heads, head_dim = keys[0].shape[1:]
    dtype = keys[0].dtype
    needed = [(len(k) + block_size - 1) // block_size for k in keys]
    num_blocks = sum(needed) + spare_blocks
    shape = (num_blocks, block_size, n_kv_heads, head_dim)
    k_cache = (torch.randn(shape, device=DEVICE) * 50).to(dtype)
    v_cache = (torch.randn(shape, device=DEVICE) * 50).to(dtype)
    order = torch.randperm(num_blocks).tolist()
    table = torch.full((len(keys), max(needed) + extra_columns), order[-1], dtype=torch.int32)
    nxt = 0
    for i, (k, v) in enumerate(zip(keys, values, strict=True)):
        for b in range(needed[i]):
            block = order[nxt]
            nxt += 1
            table[i, b] = block
            rows = slice(b * block_size, (b + 1) * block_size)
            k_cache[block, : len(k[rows])] = k[rows]
            v_cache[block, : len(v[rows])] = v[rows]
    return k_cache, v_cache, table.to(DEVICE)
