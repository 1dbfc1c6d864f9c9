"""Reading a GGUF file: its metadata as Python values and each tensor as a read-only view of the file.

gguf's own `GGUFReader` builds numpy views for every element of every metadata array, about 10 s of CPU per
open of a 262k-token vocabulary (Gemma 3's tokens, scores and token types: 786k elements). Here a numeric
array is one `np.frombuffer` and a string array one loop of `struct` reads over the memory map. Tensors come
out as gguf hands them out: float types as their dtype, quantized types (and BF16) as (rows, bytes per row)
uint8 blocks. Little-endian GGUF versions 2 and 3 (what every converter of the last years writes).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_STRING, _ARRAY = 8, 9
# GGUF metadata value types with a fixed size (8: string, 9: array), as numpy dtypes.
_SCALARS = {
    kind: np.dtype(code)
    for kind, code in enumerate(
        ("<u1", "<i1", "<u2", "<i2", "<u4", "<i4", "<f4", "?", "", "", "<u8", "<i8", "<f8")
    )
    if code
}
# GGML types whose tensors are plain arrays of this dtype; every other type is handed out as bytes.
_ELEMENT_DTYPES = {
    "F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"
}  # fmt: skip


class GGUFFormatError(ValueError):
    """The file is not a GGUF file this reader understands, or it is truncated."""


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    qtype: str  # the GGML type name: "F32", "Q4_K", ...
    shape: tuple[int, ...]  # logical, outermost first (the file lists dimensions innermost first)
    data: np.ndarray  # a read-only view of the file


class GGUFFile:
    """A GGUF file opened read-only: `fields` (metadata key -> value: str, int, float, bool or a list of
    them) and `tensors` (name -> `GGUFTensor`, in file order)."""

    def __init__(self, path: str | Path) -> None:
        with open(path, "rb") as file:
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self._offset = 0
        try:
            self.fields, self.tensors = self._parse()
        except GGUFFormatError:
            raise
        except (struct.error, ValueError, IndexError, KeyError) as exc:  # ValueError: a short read, bad UTF-8
            raise GGUFFormatError(f"malformed or truncated GGUF ({exc})") from exc

    def _parse(self) -> tuple[dict[str, Any], dict[str, GGUFTensor]]:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        if self._map[:4] != _MAGIC:
            raise GGUFFormatError("no GGUF magic number at the start of the file")
        self._offset = 4
        version = self._scalar(4)
        if version not in _VERSIONS:
            raise GGUFFormatError(f"GGUF version {version} (supported: 2, 3; little-endian only)")
        tensor_count, field_count = self._scalar(10), self._scalar(10)
        fields: dict[str, Any] = {}
        for _ in range(field_count):
            key = self._string()
            fields[key] = self._value(self._scalar(4))
        infos = []
        for _ in range(tensor_count):
            name = self._string()
            dims = [self._scalar(10) for _ in range(self._scalar(4))]
            infos.append((name, dims, GGMLQuantizationType(self._scalar(4)), self._scalar(10)))
        alignment = fields.get("general.alignment", 32)
        start = -(-self._offset // alignment) * alignment
        tensors = {}
        for name, dims, qtype, offset in infos:
            block, block_bytes = GGML_QUANT_SIZES[qtype]
            shape, offset = tuple(reversed(dims)), start + offset
            nbytes = int(np.prod(dims)) * block_bytes // block
            if offset + nbytes > len(self._map):
                raise GGUFFormatError(f"tensor {name!r} runs past the end of the file")
            dtype = np.dtype(_ELEMENT_DTYPES.get(qtype.name, "u1"))
            view = shape if dtype.kind != "u" else (*shape[:-1], dims[0] * block_bytes // block)  # blocks
            data = np.frombuffer(self._map, dtype, nbytes // dtype.itemsize, offset).reshape(view)
            tensors[name] = GGUFTensor(name, qtype.name, shape, data)
        return fields, tensors

    def _scalar(self, kind: int) -> Any:
        dtype = _SCALARS[kind]
        value = np.frombuffer(self._map, dtype, 1, self._offset)[0].item()
        self._offset += dtype.itemsize
        return value

    def _string(self) -> str:
        (length,) = struct.unpack_from("<Q", self._map, self._offset)
        start = self._offset + 8
        if start + length > len(self._map):
            raise GGUFFormatError("a string runs past the end of the file")
        self._offset = start + length
        return self._map[start : self._offset].decode("utf-8")

    def _value(self, kind: int) -> Any:
        if kind == _STRING:
            return self._string()
        if kind != _ARRAY:
            return self._scalar(kind)
        item_kind, count = self._scalar(4), self._scalar(10)
        if item_kind in _SCALARS:
            dtype = _SCALARS[item_kind]
            values = np.frombuffer(self._map, dtype, count, self._offset).tolist()
            self._offset += count * dtype.itemsize
            return values
        return [self._value(item_kind) for _ in range(count)]
