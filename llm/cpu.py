"""What the host can do: native bfloat16 matmuls on its CPU (AVX512-BF16 or AMX), a C++ compiler.

Without native bfloat16 matmuls (AVX2 machines, most laptops and many cloud cores) torch emulates bfloat16
GEMMs, about 7x slower than float32 at prefill sizes, while its packed int4 GEMV still wants bfloat16
activations. The engine (`llm.layers.linear`) and fine-tuning (`llm.lora.train`) choose their matmul dtype
with it. Without a compiler, `torch.compile` and the CPU kernel inductor builds (`llm.layers.grouped_int8`)
are unavailable.
"""

from __future__ import annotations

import shutil
from functools import cache


@cache
def native_bf16() -> bool:
    """True when /proc/cpuinfo lists AVX512-BF16 or AMX-BF16 (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cxx_compiler_available() -> bool:
    """Whether a C++ compiler is on PATH: inductor's CPU backend and the CPU kernels it builds need one."""
    return shutil.which("g++") is not None or shutil.which("c++") is not None
