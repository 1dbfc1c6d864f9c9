"""What the host CPU computes fast: whether it has native bfloat16 matmuls (AVX512-BF16 or AMX).

Without them (AVX2 machines, most laptops and many cloud cores) torch emulates bfloat16 GEMMs, about 7x
slower than float32 at prefill sizes, while its packed int4 GEMV still wants bfloat16 activations. The
engine (`llm.layers.linear`) and fine-tuning (`llm.lora.train`) choose their matmul dtype with it.
"""

from __future__ import annotations

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
