"""Corrupt copies of a GGUF for the load-time checks: one tensor's bytes overwritten with 0xFF, which reads as
NaN (every float and every quantized block's scale becomes 0xFFFF...)."""

from __future__ import annotations

import shutil
from pathlib import Path

CORRUPTED_TENSOR = "blk.0.attn_q.weight"


def corrupt_copy(source: Path, destination: Path, tensor: str = CORRUPTED_TENSOR) -> Path:
    from gguf import GGUFReader

    info = next(t for t in GGUFReader(source).tensors if t.name == tensor)
    shutil.copyfile(source, destination)
    with destination.open("r+b") as file:
        file.seek(int(info.data_offset))
        file.write(b"\xff" * int(info.n_bytes))
    return destination
