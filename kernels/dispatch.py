"""Picks the Triton kernel or its plain-torch twin for each call; the engine calls kernels through here.

Every function has the name and signature of its twin in `kernels/reference.py`. Backends:

* `"auto"` (default): the Triton launcher when the call's tensors are on CUDA and `triton` is importable,
  the reference otherwise.
* `"triton"`: always the Triton launcher. On CPU tensors this only works under the Triton interpreter
  (`TRITON_INTERPRET=1` set before the kernel modules are imported), which is how the tests run the kernels.
* `"reference"`: always the plain-torch twin.

The starting backend comes from `ARCHIVIST_KERNELS` (`auto`, `triton` or `reference`); `set_backend` and the
`use_backend` context manager override it. Kernel modules are imported lazily so that a machine without Triton
never imports it. `set_data_checks(False)` drops the launchers' data-dependent checks (one GPU→CPU sync per
call on CUDA; see `kernels/validation.py`) once the caller's block manager is trusted.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import torch

from kernels import reference
from kernels.layout import Int4Weight, Int8Weight
from kernels.validation import set_data_checks

__all__ = [
    "BACKENDS",
    "get_backend",
    "linear_w4a16",
    "linear_w8a16",
    "paged_decode_attention",
    "rms_norm",
    "set_backend",
    "set_data_checks",
    "triton_available",
    "use_backend",
    "varlen_attention",
    "write_kv",
]

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "ARCHIVIST_KERNELS"

# The Triton launcher of each reference function: (module under kernels/, function name).
_LAUNCHERS = {
    "varlen_attention": ("flash_prefill", "varlen_attention"),
    "paged_decode_attention": ("paged_decode", "paged_decode_attention"),
    "write_kv": ("kv_write", "write_kv"),
    "linear_w4a16": ("w4a16", "linear_w4a16"),
    "linear_w8a16": ("w8a16", "linear_w8a16"),
    "rms_norm": ("rmsnorm", "rms_norm"),
}


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernels backend {name!r}; expected one of {BACKENDS}")
    return name


_backend = _check_backend(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto")


def set_backend(name: str) -> None:
    """Select `"auto"`, `"triton"` or `"reference"` for every later call."""
    global _backend
    _backend = _check_backend(name)


def get_backend() -> str:
    return _backend


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily select a backend (tests); restores the previous one on exit."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


@cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@cache
def _launcher(function: str) -> Callable[..., Any]:
    module, name = _LAUNCHERS[function]
    return getattr(importlib.import_module(f"kernels.{module}"), name)


def _pick(function: str, device_tensor: torch.Tensor) -> Callable[..., Any]:
    if _backend == "reference":
        return getattr(reference, function)
    if _backend == "auto" and not (device_tensor.is_cuda and triton_available()):
        return getattr(reference, function)
    if not triton_available():
        raise RuntimeError("kernels backend 'triton' was requested but the triton package is not installed")
    if not device_tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "kernels backend 'triton' on CPU tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before the kernel modules are imported"
        )
    return _launcher(function)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    *,
    causal: bool = True,
    sliding_window: int | None = None,
    block_table: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """See `reference.varlen_attention`."""
    return _pick("varlen_attention", q)(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
        causal=causal, sliding_window=sliding_window, block_table=block_table, softcap=softcap,
    )  # fmt: skip


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    softmax_scale: float,
    *,
    sliding_window: int | None = None,
    traceable: bool = False,
    softcap: float | None = None,
) -> torch.Tensor:
    """See `reference.paged_decode_attention`. `traceable` (inside a `torch.compile` graph, which only the CPU
    decode step has): always the reference's traceable form."""
    if traceable:
        return reference.paged_decode_attention(
            q, k_cache, v_cache, block_tables, context_lens, softmax_scale, sliding_window=sliding_window,
            traceable=True, softcap=softcap,
        )  # fmt: skip
    return _pick("paged_decode_attention", q)(
        q, k_cache, v_cache, block_tables, context_lens, softmax_scale, sliding_window=sliding_window,
        softcap=softcap,
    )  # fmt: skip


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    traceable: bool = False,
) -> None:
    """See `reference.write_kv`; `traceable` as for `paged_decode_attention`."""
    if traceable:
        reference.write_kv(k, v, k_cache, v_cache, slot_mapping, traceable=True)
        return
    _pick("write_kv", k)(k, v, k_cache, v_cache, slot_mapping)


def linear_w4a16(x: torch.Tensor, w: Int4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """See `reference.linear_w4a16`."""
    return _pick("linear_w4a16", x)(x, w, bias)


def linear_w8a16(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """See `reference.linear_w8a16`."""
    return _pick("linear_w8a16", x)(x, w, bias)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """See `reference.rms_norm`."""
    return _pick("rms_norm", x)(x, weight, eps, residual)
