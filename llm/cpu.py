"""What the host can do (native bfloat16 matmuls, a C++ compiler), and the C++ kernels built for it.

Without native bfloat16 matmuls (AVX2 machines, most laptops and many cloud cores) torch emulates bfloat16
GEMMs, about 7x slower than float32 at prefill sizes, while its packed int4 GEMV still wants bfloat16
activations. The engine (`llm.layers.linear`) and fine-tuning (`llm.lora.train`) choose their matmul dtype
with it. Without a compiler, `torch.compile` and the engine's CPU kernels (`llm.layers.grouped_int8`,
`llm.layers.tiled_lowbit`, `llm.layers.tiled_int4`, `llm.layers.decode_attention`) are unavailable.

`build_kernel` compiles one of the engine's C++ kernels (`llm/layers/*.cpp`) with inductor's toolchain: the
compiler, flags, OpenMP runtime and on-disk cache `torch.compile` uses on the CPU, so a kernel costs seconds
once per machine and is loaded from the cache after.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)
_BUILD_LOCKS: dict[Path, threading.Lock] = {}  # one per kernel source
_LOCKS_LOCK = threading.Lock()
# inductor builds its own kernels without loop vectorization or FMA contraction (it writes vectors itself);
# the portable halves of the engine's kernels rely on both.
KERNEL_FLAGS = ("-ftree-loop-vectorize", "-ffp-contract=fast")


@cache
def cpu_flags() -> str:
    """/proc/cpuinfo's text ("" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            return cpuinfo.read()
    except OSError:
        return ""


def native_bf16() -> bool:
    """True when /proc/cpuinfo lists AVX512-BF16 or AMX-BF16."""
    return "avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags()


def int8_dot_products() -> bool:
    """True when /proc/cpuinfo lists AVX512-VNNI (`vpdpbusd`: four int8 products a 32-bit lane)."""
    return "avx512_vnni" in cpu_flags()


def cxx_compiler_available() -> bool:
    """Whether a C++ compiler is on PATH: inductor's CPU backend and the CPU kernels it builds need one."""
    return shutil.which("g++") is not None or shutil.which("c++") is not None


def build_kernel(source: Path, argtypes: Sequence[str], *defines: str) -> Callable[..., None]:
    """Compile (or load from inductor's cache) the C++ file `source`, whose `extern "C" void kernel(...)`
    takes `argtypes` (tensors arrive as their data pointers), with `-D` `defines`: the tests build the
    portable loops on AVX-512 machines with ARCHIVIST_PORTABLE_KERNEL."""
    from torch._inductor.codecache import CppPythonBindingsCodeCache

    flags = (*KERNEL_FLAGS, *(f"-D{name}" for name in defines))
    kernel: Callable[..., None] = CppPythonBindingsCodeCache.load_pybinding(
        list(argtypes), source.read_text(encoding="utf-8"), needs_vec_isa=True, extra_flags=flags
    )
    return kernel


def kernel_or_none(source: Path, argtypes: Sequence[str], serves: str) -> Callable[..., None] | None:
    """`build_kernel(source, argtypes)`, or None (logged: the caller then takes its slower product) without a
    compiler or where the build fails. `serves`: what the kernel multiplies, for the log. One build of a
    source at a time: a second caller (an engine's load reaching a kernel its start began building in a
    thread) waits for it, then loads the result."""
    if not cxx_compiler_available():
        log.warning("no C++ compiler: %s multiplied without its kernel (slower)", serves)
        return None
    with _LOCKS_LOCK:
        lock = _BUILD_LOCKS.setdefault(source, threading.Lock())
    try:
        with lock:
            return build_kernel(source, argtypes)
    except Exception as error:  # noqa: BLE001 - any build failure leaves the slower product, never a crash
        log.warning("the kernel for %s could not be built (%s); using the slower product", serves, error)
        return None
