"""Benchmark of the Triton kernels against same-run torch baselines (not part of pytest).

Run from the repository root: `python -m bench.kernels` (or `python bench/kernels.py`).

On a CUDA machine it prints, per kernel, a markdown table: shape, kernel time, baseline time, achieved TFLOP/s
or GB/s, % of the device's spec peak, and the speed-up over the baseline measured in the same run:

* prefill flash attention vs `scaled_dot_product_attention` with the flash backend;
* paged decode attention vs a torch gather of the paged cache + SDPA;
* W4A16 / W8A16 vs a bf16 `torch.matmul` on the dense weight;
* KV write and fused residual RMSNorm vs their plain-torch twins.

Without CUDA it says so, runs a tiny correctness smoke of every kernel under the Triton CPU interpreter, and
exits 0: CPU timings of the interpreter say nothing about GPU performance.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, sys.path[0] is bench/, where this file would shadow the `kernels` package.
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
if not torch.cuda.is_available():
    # Must precede the first import of a kernel module: @triton.jit reads it when decorating.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.machine import git_revision  # noqa: E402
from kernels import reference  # noqa: E402
from kernels.layout import Int4Weight, Int8Weight, quantize_int4, quantize_int8  # noqa: E402

# Spec-sheet peaks: (HBM bytes/s, dense bf16 FLOP/s), matched on the device name.
PEAKS = {
    "H200": (4.8e12, 989e12),
    "H100 SXM": (3.35e12, 989e12),
    "H100 80GB HBM3": (3.35e12, 989e12),
    "H100 PCIe": (2.0e12, 756e12),
    "H100 NVL": (3.9e12, 835e12),
    "A100-SXM4-80GB": (2.04e12, 312e12),
    "A100-SXM4-40GB": (1.56e12, 312e12),
    "A100-PCIE-40GB": (1.56e12, 312e12),
    "L4": (0.3e12, 121e12),
}


def print_header() -> None:
    import triton

    print("# Kernel benchmark\n")
    print(f"- git revision: {git_revision()}")
    print(f"- python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"- CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        memory = props.total_memory / 2**30
        print(
            f"- GPU: {props.name}, {memory:.0f} GiB, {props.multi_processor_count} SMs, "
            f"CUDA {torch.version.cuda}"
        )
        bw, flops = device_peaks()
        print(f"- spec peaks used for %: {fmt(bw, 1e-9, 'GB/s')}, {fmt(flops, 1e-12, 'TFLOP/s')} bf16 dense")
    else:
        print("- GPU: none (CUDA is not available)")
    print()


def device_peaks() -> tuple[float | None, float | None]:
    name = torch.cuda.get_device_name(0)
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks
    return None, None


def fmt(value: float | None, scale: float, unit: str) -> str:
    return "n/a" if value is None else f"{value * scale:,.1f} {unit}"


def bench_ms(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


class Table:
    """One markdown table: our kernel vs the baseline, with throughput and % of the spec peak."""

    def __init__(self, title: str, baseline: str, unit: str) -> None:
        self.unit = unit  # "TFLOP/s" or "GB/s"
        print(f"## {title}\n\nbaseline: {baseline}\n")
        print(f"| shape | kernel ms | baseline ms | kernel {unit} | % of peak | speed-up vs baseline |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")

    def row(self, shape: str, ours: Callable[[], object], base: Callable[[], object], work: float) -> None:
        """`work`: FLOPs for TFLOP/s tables, bytes moved for GB/s tables."""
        ours_ms, base_ms = bench_ms(ours), bench_ms(base)
        rate = work / (ours_ms * 1e-3)
        bw_peak, flop_peak = device_peaks()
        peak = flop_peak if self.unit == "TFLOP/s" else bw_peak
        scale = 1e-12 if self.unit == "TFLOP/s" else 1e-9
        pct = "n/a" if peak is None else f"{100 * rate / peak:.0f} %"
        speedup = base_ms / ours_ms
        print(f"| {shape} | {ours_ms:.3f} | {base_ms:.3f} | {rate * scale:,.1f} | {pct} | {speedup:.2f}× |")

    @staticmethod
    def end() -> None:
        print()


def _sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def _gather_sdpa(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor, scale: float
) -> torch.Tensor:
    """The decode baseline: materialize each sequence's keys from the paged cache, then SDPA."""
    import torch.nn.functional as F

    batch, n_heads, head_dim = q.shape
    group = n_heads // k_cache.shape[2]

    def gather(cache: torch.Tensor) -> torch.Tensor:
        dense = cache[tables].reshape(batch, -1, cache.shape[2], head_dim)
        return dense.repeat_interleave(group, 2).transpose(1, 2)

    return F.scaled_dot_product_attention(q[:, :, None], gather(k_cache), gather(v_cache), scale=scale)


def bench_prefill() -> None:
    from kernels import flash_prefill

    table = Table(
        "Prefill flash attention (causal, bf16)", "SDPA flash backend, kv heads repeated", "TFLOP/s"
    )
    for n_heads, n_kv_heads, head_dim in ((32, 8, 128), (16, 4, 64)):
        for seq in (1024, 2048, 4096, 8192):
            q = torch.randn(seq, n_heads, head_dim, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(seq, n_kv_heads, head_dim, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            cu = torch.tensor([0, seq], dtype=torch.int32, device="cuda")
            scale = 1 / math.sqrt(head_dim)
            group = n_heads // n_kv_heads
            qb = q.transpose(0, 1)[None]
            kb = k.repeat_interleave(group, dim=1).transpose(0, 1)[None]
            vb = v.repeat_interleave(group, dim=1).transpose(0, 1)[None]
            flops = 4 * seq * seq * n_heads * head_dim / 2  # causal: half of QK^T and PV
            table.row(
                f"seq {seq}, heads {n_heads}/{n_kv_heads}, d {head_dim}",
                partial(flash_prefill.varlen_attention, q, k, v, cu, cu, seq, seq, scale),
                partial(_sdpa_flash, qb, kb, vb, scale),
                flops,
            )
    table.end()


def bench_decode() -> None:
    from kernels import paged_decode

    table = Table("Paged decode attention (bf16, block 16)", "torch gather of the paged cache + SDPA", "GB/s")
    n_heads, n_kv_heads, head_dim, block_size = 32, 8, 128, 16
    for batch, ctx in ((1, 4096), (8, 4096), (32, 4096), (64, 4096), (32, 8192)):
        blocks_per_seq = ctx // block_size
        num_blocks = batch * blocks_per_seq
        shape = (num_blocks, block_size, n_kv_heads, head_dim)
        k_cache = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        v_cache = torch.randn_like(k_cache)
        tables = torch.randperm(num_blocks, device="cuda", dtype=torch.int32).reshape(batch, blocks_per_seq)
        lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, n_heads, head_dim, device="cuda", dtype=torch.bfloat16)
        scale = 1 / math.sqrt(head_dim)
        kv_bytes = 2 * batch * ctx * n_kv_heads * head_dim * 2
        table.row(
            f"batch {batch}, ctx {ctx}, heads {n_heads}/{n_kv_heads}, d {head_dim}",
            partial(paged_decode.paged_decode_attention, q, k_cache, v_cache, tables, lens, scale),
            partial(_gather_sdpa, q, k_cache, v_cache, tables, scale),
            kv_bytes,
        )
    table.end()


def bench_quant_matmul() -> None:
    from kernels import w4a16, w8a16

    shapes = ((4096, 4096), (11008, 4096), (4096, 11008))
    titles = {4: "W4A16 (int4 group 32 with mins, bf16 activations)", 8: "W8A16 (int8 per-channel)"}
    for bits, title in titles.items():
        table = Table(title, "bf16 torch.matmul on the dense weight", "GB/s")
        for n, k in shapes:
            dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / math.sqrt(k)
            qw: Int4Weight | Int8Weight
            if bits == 4:
                qw = quantize_int4(dense.float(), 32)
                launcher: Callable[..., torch.Tensor] = w4a16.linear_w4a16
            else:
                qw = quantize_int8(dense.float())
                launcher = w8a16.linear_w8a16
            weight_bytes = sum(t.numel() * t.element_size() for t in vars(qw).values() if torch.is_tensor(t))
            for m in (1, 4, 16, 256):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                # Decode (M <= 4) is bandwidth bound: report GB/s of weight + activations; larger M: TFLOP/s.
                table.unit = "GB/s" if m <= 4 else "TFLOP/s"
                work = weight_bytes + 2 * m * (n + k) if m <= 4 else 2 * m * n * k
                table.row(
                    f"M {m}, N {n}, K {k} ({table.unit})",
                    partial(launcher, x, qw),
                    partial(torch.matmul, x, dense.T),
                    work,
                )
        table.end()


def bench_small() -> None:
    from kernels import kv_write, rmsnorm

    table = Table("KV write (bf16, block 16)", "reference.write_kv (torch index_put)", "GB/s")
    for tokens in (32, 4096):
        k = torch.randn(tokens, 8, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        caches = [
            torch.zeros(tokens // 16 + 1, 16, 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2)
        ]
        slots = torch.randperm(tokens, device="cuda")
        table.row(
            f"tokens {tokens}, kv heads 8, d 128",
            partial(kv_write.write_kv, k, v, *caches, slots),
            partial(reference.write_kv, k, v, *caches, slots),
            4 * k.numel() * 2,  # read k and v, write both caches
        )
    table.end()

    table = Table("Fused residual add + RMSNorm (bf16)", "reference.rms_norm (torch, unfused)", "GB/s")
    for rows, hidden in ((1, 4096), (4096, 4096), (4096, 576)):
        x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
        r = torch.randn_like(x)
        w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
        table.row(
            f"rows {rows}, hidden {hidden}",
            partial(rmsnorm.rms_norm, x, w, 1e-6, r),
            partial(reference.rms_norm, x, w, 1e-6, r),
            4 * x.numel() * 2,  # read x and r, write out and the new residual
        )
    table.end()


def cpu_smoke() -> None:
    """Tiny shapes of every kernel under the Triton interpreter, compared with the reference."""
    from kernels import flash_prefill, kv_write, paged_decode, rmsnorm, w4a16, w8a16

    torch.manual_seed(0)
    rows: list[tuple[str, str, float]] = []
    q = torch.randn(20, 4, 64)
    k, v = torch.randn(20, 2, 64), torch.randn(20, 2, 64)
    cu = torch.tensor([0, 3, 20], dtype=torch.int32)
    args = (q, k, v, cu, cu, 17, 17, 0.125)
    err = (flash_prefill.varlen_attention(*args) - reference.varlen_attention(*args)).abs().max()
    rows.append(("flash_prefill", "lens 3+17, heads 4/2, d 64", float(err)))

    k_cache, v_cache = torch.randn(6, 16, 2, 64), torch.randn(6, 16, 2, 64)
    tables = torch.tensor([[4, 1], [0, 5]], dtype=torch.int32)
    lens = torch.tensor([1, 30], dtype=torch.int32)
    qd = torch.randn(2, 4, 64)
    dargs = (qd, k_cache, v_cache, tables, lens, 0.125)
    err = paged_decode.paged_decode_attention(*dargs, num_splits=2) - reference.paged_decode_attention(*dargs)
    rows.append(
        ("paged_decode (split-K 2)", "ctx 1 and 30, heads 4/2, d 64, block 16", float(err.abs().max()))
    )

    caches = [torch.zeros(2, 16, 2, 64) for _ in range(4)]
    slots = torch.tensor([3, -1, 17, 0, 31])
    kn, vn = torch.randn(5, 2, 64), torch.randn(5, 2, 64)
    kv_write.write_kv(kn, vn, caches[0], caches[1], slots)
    reference.write_kv(kn, vn, caches[2], caches[3], slots)
    rows.append(("kv_write", "5 tokens, one skipped", float((caches[0] - caches[2]).abs().max())))

    x = torch.randn(3, 128) / 12
    w = torch.randn(48, 128)
    linears: list[
        tuple[str, Int4Weight | Int8Weight, Callable[..., torch.Tensor], Callable[..., torch.Tensor]]
    ]
    linears = [
        ("w4a16 group 32", quantize_int4(w, 32), w4a16.linear_w4a16, reference.linear_w4a16),
        ("w4a16 group 128", quantize_int4(w, 128), w4a16.linear_w4a16, reference.linear_w4a16),
        ("w8a16 per-channel", quantize_int8(w), w8a16.linear_w8a16, reference.linear_w8a16),
    ]
    for name, qw, launcher, ref in linears:
        for m in (1, 3):  # GEMV path
            err = (launcher(x[:m], qw) - ref(x[:m], qw)).abs().max()
            rows.append((name, f"M {m}, N 48, K 128", float(err)))
    xg = torch.randn(9, 128) / 12
    qw4 = quantize_int4(torch.randn(48, 128), 32)
    err = (w4a16.linear_w4a16(xg, qw4) - reference.linear_w4a16(xg, qw4)).abs().max()
    rows.append(("w4a16 group 32 (GEMM path)", "M 9, N 48, K 128", float(err)))

    xr, rr, wr = torch.randn(4, 576), torch.randn(4, 576), torch.randn(576)
    err = (rmsnorm.rms_norm(xr, wr, 1e-6, rr)[0] - reference.rms_norm(xr, wr, 1e-6, rr)[0]).abs().max()
    rows.append(("rmsnorm (+ residual)", "4 x 576", float(err)))

    tolerance = 1e-4
    print("## CPU interpreter correctness smoke (float32, TRITON_INTERPRET=1)\n")
    print("| kernel | shape | max abs error vs reference | ok (< 1e-4) |")
    print("| --- | --- | ---: | :---: |")
    for name, shape, err_value in rows:
        print(f"| {name} | {shape} | {err_value:.2e} | {'yes' if err_value < tolerance else 'NO'} |")
    print()
    if any(e >= tolerance for _, _, e in rows):
        raise SystemExit("a kernel disagrees with its reference")


def main() -> None:
    print_header()
    if not torch.cuda.is_available():
        print(
            "CUDA is not available: the GPU benchmark needs a CUDA device; running the CPU interpreter smoke."
        )
        print()
        cpu_smoke()
        return
    bench_prefill()
    bench_decode()
    bench_quant_matmul()
    bench_small()


if __name__ == "__main__":
    main()
