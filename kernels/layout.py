"""Packed quantized weight formats, repacking from GGUF block bytes, and quantization at load time.

Torch only (no Triton): the engine builds these on any machine, the kernels in `w4a16.py` / `w8a16.py` and the
plain-torch twins in `reference.py` consume them.

`Int4Weight` layout (what the W4A16 kernel reads):

* `qweight`: uint8 `(out_features, in_features // 2)`, row-major. Byte `b` of row `n` holds input column
  `2*b` in its low nibble and column `2*b + 1` in its high nibble. Pairing neighbours (instead of GGUF's
  "j and j+16" inside a block) makes the unpacking independent of the group size, so one kernel helper serves
  group 32 and group 128: a byte's two columns are the even and odd columns of the same group.
* `scales`: `(out_features, in_features // group_size)`, float16 (GGUF's own precision) or float32.
* `mins`: same shape as `scales`, or `None`.
  With mins (GGUF Q4_1, `quantize_int4`): `w = scale * q + min`.
  Without (GGUF Q4_0): symmetric around the implicit zero point 8: `w = scale * (q - 8)`.

`Int8Weight` layout:

* `qweight`: int8 `(out_features, in_features)`, row-major.
* `scales`: float32 `(out_features,)` for per-channel (`group_size is None`), or float16
  `(out_features, in_features // 32)` for GGUF Q8_0 style groups (`group_size == 32`). `w = scale * q`.

Repacking works on the raw blocks with integer ops only: nibbles are shuffled, scales are reinterpreted from
their fp16 bytes; no float copy of the tensor is ever made.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

GGUF_BLOCK = 32  # weights per block in GGUF Q4_0, Q4_1 and Q8_0
INT4_GROUP_SIZES = (32, 128)
INT8_GROUP_SIZES = (None, 32)


@dataclass
class Int4Weight:
    """4-bit weights, two per byte, with per-group scales (and optional mins); see the module docstring."""

    qweight: torch.Tensor  # (out_features, in_features // 2) uint8
    scales: torch.Tensor  # (out_features, in_features // group_size) float16 | float32
    mins: torch.Tensor | None  # like scales, or None for symmetric (q - 8) weights
    group_size: int
    in_features: int
    out_features: int

    def __post_init__(self) -> None:
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(
                f"Int4Weight group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size}"
            )
        if self.in_features % self.group_size:
            raise ValueError(
                f"in_features={self.in_features} is not a multiple of group_size={self.group_size}"
            )
        if self.qweight.dtype != torch.uint8 or tuple(self.qweight.shape) != (
            self.out_features,
            self.in_features // 2,
        ):
            raise ValueError(
                f"Int4Weight.qweight must be uint8 {(self.out_features, self.in_features // 2)}, "
                f"got {self.qweight.dtype} {tuple(self.qweight.shape)}"
            )
        groups = (self.out_features, self.in_features // self.group_size)
        for name, t in (("scales", self.scales), ("mins", self.mins)):
            if t is None:
                continue
            if t.dtype not in (torch.float16, torch.float32) or tuple(t.shape) != groups:
                raise ValueError(
                    f"Int4Weight.{name} must be float16/float32 {groups}, got {t.dtype} {tuple(t.shape)}"
                )

    def to(self, device: torch.device | str) -> Int4Weight:
        return Int4Weight(
            self.qweight.to(device),
            self.scales.to(device),
            None if self.mins is None else self.mins.to(device),
            self.group_size,
            self.in_features,
            self.out_features,
        )


@dataclass
class Int8Weight:
    """int8 weights with per-channel or per-32-group scales; see the module docstring."""

    qweight: torch.Tensor  # (out_features, in_features) int8
    scales: torch.Tensor  # (out_features,) or (out_features, in_features // 32)
    group_size: int | None
    in_features: int
    out_features: int

    def __post_init__(self) -> None:
        if self.group_size not in INT8_GROUP_SIZES:
            raise ValueError(
                f"Int8Weight group_size must be one of {INT8_GROUP_SIZES}, got {self.group_size}"
            )
        if self.qweight.dtype != torch.int8 or tuple(self.qweight.shape) != (
            self.out_features,
            self.in_features,
        ):
            raise ValueError(
                f"Int8Weight.qweight must be int8 {(self.out_features, self.in_features)}, "
                f"got {self.qweight.dtype} {tuple(self.qweight.shape)}"
            )
        if self.group_size is None:
            expected: tuple[int, ...] = (self.out_features,)
        else:
            if self.in_features % self.group_size:
                raise ValueError(f"in_features={self.in_features} is not a multiple of 32")
            expected = (self.out_features, self.in_features // self.group_size)
        if self.scales.dtype not in (torch.float16, torch.float32) or tuple(self.scales.shape) != expected:
            raise ValueError(
                f"Int8Weight.scales must be float16/float32 {expected}, "
                f"got {self.scales.dtype} {tuple(self.scales.shape)}"
            )

    def to(self, device: torch.device | str) -> Int8Weight:
        return Int8Weight(
            self.qweight.to(device),
            self.scales.to(device),
            self.group_size,
            self.in_features,
            self.out_features,
        )


def _blocks(raw: np.ndarray | torch.Tensor, shape: tuple[int, int], block_bytes: int) -> torch.Tensor:
    """The raw bytes as a uint8 tensor `(out_features, in_features // 32, block_bytes)`, without copying."""
    out_features, in_features = shape
    if in_features % GGUF_BLOCK:
        raise ValueError(f"in_features={in_features} is not a multiple of the GGUF block size {GGUF_BLOCK}")
    if isinstance(raw, np.ndarray):
        # GGUFReader hands out read-only memmaps; every repack op below makes new tensors and never writes
        # to the source, so torch's "not writable" warning does not apply.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(np.ascontiguousarray(raw))
    else:
        t = raw.contiguous()
    if t.dtype != torch.uint8:
        raise ValueError(f"raw GGUF blocks must be uint8 bytes, got {t.dtype}")
    n_blocks = out_features * in_features // GGUF_BLOCK
    if t.numel() != n_blocks * block_bytes:
        raise ValueError(
            f"raw has {t.numel()} bytes, expected {n_blocks * block_bytes} for shape {shape} "
            f"({block_bytes} bytes per block of {GGUF_BLOCK})"
        )
    return t.reshape(out_features, in_features // GGUF_BLOCK, block_bytes)


def _fp16(raw_pairs: torch.Tensor) -> torch.Tensor:
    """Reinterpret trailing byte pairs (little-endian, as GGUF stores them) as float16."""
    return raw_pairs.contiguous().view(torch.float16).squeeze(-1)


def _gguf_nibbles_to_pairs(qs: torch.Tensor) -> torch.Tensor:
    """GGUF nibbles (per block, byte j = weight j low, j+16 high) to our pairs (byte b = 2b, 2b+1)."""
    rows, blocks, _ = qs.shape
    # (rows, blocks, 32): one 4-bit value per byte, in column order.
    q = torch.cat((qs & 0x0F, qs >> 4), dim=-1)
    return pack_int4(q.reshape(rows, blocks * GGUF_BLOCK))


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit values `(rows, cols)` into `(rows, cols // 2)` bytes: 2b low, 2b+1 high."""
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: `(rows, cols // 2)` bytes to `(rows, cols)` uint8 values in [0, 15]."""
    return torch.stack((qweight & 0x0F, qweight >> 4), dim=-1).reshape(qweight.shape[0], -1)


def repack_q4_0(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int4Weight:
    """GGUF Q4_0 blocks (fp16 d, 16 bytes of nibbles; w = d * (q - 8)) to a symmetric `Int4Weight`."""
    blocks = _blocks(raw, shape, 2 + GGUF_BLOCK // 2)
    scales = _fp16(blocks[..., :2])
    return Int4Weight(_gguf_nibbles_to_pairs(blocks[..., 2:]), scales, None, GGUF_BLOCK, shape[1], shape[0])


def repack_q4_1(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int4Weight:
    """GGUF Q4_1 blocks (fp16 d, fp16 m, 16 bytes of nibbles; w = d * q + m) to an asymmetric `Int4Weight`."""
    blocks = _blocks(raw, shape, 4 + GGUF_BLOCK // 2)
    scales = _fp16(blocks[..., 0:2])
    mins = _fp16(blocks[..., 2:4])
    return Int4Weight(_gguf_nibbles_to_pairs(blocks[..., 4:]), scales, mins, GGUF_BLOCK, shape[1], shape[0])


def repack_q8_0(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int8Weight:
    """GGUF Q8_0 blocks (fp16 d, 32 int8; w = d * q) to a group-32 `Int8Weight`."""
    blocks = _blocks(raw, shape, 2 + GGUF_BLOCK)
    scales = _fp16(blocks[..., :2])
    qweight = blocks[..., 2:].contiguous().view(torch.int8).reshape(shape)
    return Int8Weight(qweight, scales, GGUF_BLOCK, shape[1], shape[0])


def quantize_int8(w: torch.Tensor, group_size: int | None = None) -> Int8Weight:
    """Symmetric absmax int8 quantization of a float `(out, in)` weight, per output row or per 32 inputs."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize_int8 expects a 2-D float weight, got {w.dtype} {tuple(w.shape)}")
    if group_size not in INT8_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {INT8_GROUP_SIZES}, got {group_size}")
    out_features, in_features = w.shape
    wf = w.float()
    if group_size is None:
        scales = wf.abs().amax(dim=1) / 127
        q = torch.round(wf / scales.clamp_min(1e-12)[:, None])
        scale_out = scales  # float32: per-row scales cost nothing and keep small-magnitude rows precise
    else:
        if in_features % group_size:
            raise ValueError(f"in_features={in_features} is not a multiple of group_size={group_size}")
        g = wf.reshape(out_features, -1, group_size)
        # Round the scale to fp16 first (the stored precision, as Q8_0 does) so q is computed against it.
        scale_out = (g.abs().amax(dim=2) / 127).half()
        q = torch.round(g / scale_out.float().clamp_min(1e-12)[..., None]).reshape(out_features, in_features)
    qweight = q.clamp(-127, 127).to(torch.int8)
    return Int8Weight(qweight, scale_out, group_size, in_features, out_features)


def quantize_int4(w: torch.Tensor, group_size: int = 32) -> Int4Weight:
    """Asymmetric (scale + min, like GGUF Q4_1) 4-bit quantization of a float `(out, in)` weight."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize_int4 expects a 2-D float weight, got {w.dtype} {tuple(w.shape)}")
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    out_features, in_features = w.shape
    if in_features % group_size:
        raise ValueError(f"in_features={in_features} is not a multiple of group_size={group_size}")
    g = w.float().reshape(out_features, -1, group_size)
    lo = g.amin(dim=2)
    hi = g.amax(dim=2)
    # Stored in fp16 (as GGUF does); quantize against the rounded values so dequantization is self-consistent.
    scales = ((hi - lo) / 15).half()
    mins = lo.half()
    inv = torch.where(scales == 0, 0.0, 1.0 / scales.float())
    q = torch.round((g - mins.float()[..., None]) * inv[..., None]).clamp(0, 15).to(torch.uint8)
    return Int4Weight(
        pack_int4(q.reshape(out_features, in_features)), scales, mins, group_size, in_features, out_features
    )


def dequantize(w: Int4Weight | Int8Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float `(out_features, in_features)` weight. Computed in float32 (bit-exact with gguf's numpy
    dequantization for GGUF-repacked weights), then cast to `dtype`."""
    if isinstance(w, Int4Weight):
        q = unpack_int4(w.qweight).float().reshape(w.out_features, -1, w.group_size)
        scales = w.scales.float()[..., None]
        if w.mins is None:
            out = scales * (q - 8)
        else:
            out = scales * q + w.mins.float()[..., None]
        return out.reshape(w.out_features, w.in_features).to(dtype)
    q8 = w.qweight.float()
    if w.group_size is None:
        return (q8 * w.scales.float()[:, None]).to(dtype)
    out = q8.reshape(w.out_features, -1, w.group_size) * w.scales.float()[..., None]
    return out.reshape(w.out_features, w.in_features).to(dtype)
