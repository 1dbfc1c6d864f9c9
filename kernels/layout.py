"""Packed quantized weight formats, repacking from GGUF block bytes, and quantization at load time.

Torch only (no Triton): the engine builds these on any machine, the kernels in `w4a16.py` / `w8a16.py` and the
plain-torch twins in `reference.py` consume them.

`Int4Weight` layout (what the W4A16 kernel reads): 4-, 5- or 6-bit weights in a plane of low nibbles plus, for
5 and 6 bits, a plane of the bits above them, with one scale (and optional min) per group of inputs.

* `qweight`: uint8 `(out_features, in_features // 2)`, row-major: the low 4 bits of every weight. Byte `b`
  of row `n` holds input column `2*b` in its low nibble and column `2*b + 1` in its high nibble. Pairing
  neighbours (instead of GGUF's runs of low nibbles then high nibbles) makes the unpacking independent of the
  group size, so one kernel helper serves every group: a byte's two columns are the even and odd columns of
  the same group.
* `qhigh` (`bits` 5 or 6 only): uint8 `(out_features, in_features * (bits - 4) // 8)`, the bits above the low
  nibble, little-endian: column `k`'s `bits - 4` bits start at bit `(k * (bits - 4)) % 8` of byte
  `k * (bits - 4) // 8`. Columns `2*b` and `2*b + 1` always share one byte.
* `scales`: `(out_features, in_features // group_size)` with `group_size` 16, 32 or 128; float16 (GGUF's own
  precision) or float32. Two-level (GGUF K-quants): with `super_scales` float16 `(out_features,
  in_features // 256)`, `scales` holds small int8 integers and a group's scale is
  `super_scales[n, k // 256] * scales[n, k // group_size]`, a product exact in float32 (at most 11 + 8
  significant bits), so the kernel and `dequantize` compute the very number GGUF's own dequantization does.
* `mins`: like `scales` (integers times `super_mins` when two-level), or `None`.
  With mins: `w = scale * q + min`. Without: symmetric around the implicit zero point `2 ** (bits - 1)`:
  `w = scale * (q - 2 ** (bits - 1))`.

`Int8Weight` layout:

* `qweight`: int8 `(out_features, in_features)`, row-major.
* `scales`: float32 `(out_features,)` for per-channel (`group_size is None`), or float16
  `(out_features, in_features // 32)` for GGUF Q8_0 style groups (`group_size == 32`). `w = scale * q`.

GGUF types and their layouts (bits per weight in memory, GGUF's own in brackets). Every mapping is exact:
`dequantize` equals `gguf.quants.dequantize` bit for bit.

* Q4_0: 4 bits, group 32, fp16 scale: 4.5 (4.5). Q4_1: plus fp16 mins: 5.0 (5.0).
* Q5_0: 5 bits (4 + 1 high), group 32, fp16 scale, zero point 16: 5.5 (5.5). Q5_1: plus fp16 mins: 6.0 (6.0).
* Q4_K: 4 bits, group 32, int8 sub-scales and sub-mins (6 significant bits) under fp16 `d` / `-dmin` per
  256: 4.625 (4.5; the sub-scales take a byte each instead of 6 bits).
* Q5_K: the same with 5 bits: 5.625 (5.5).
* Q6_K: 6 bits (4 + 2 high), group 16, int8 sub-scales under an fp16 `d` per 256, zero point 32: 6.5625
  (6.5625).
* Q8_0: `Int8Weight`, group 32, fp16 scale: 8.5 (8.5).

Repacking works on the raw blocks with integer ops only: nibbles and high bits are shuffled, scales are
reinterpreted from their fp16 bytes (and K-quant sub-scales unpacked from their 6-bit fields); no float copy
of the tensor is ever made.

Fused projections (q/k/v, gate/up) often mix types (Q4_K_M stores some `attn_v` as Q6_K beside Q4_K `attn_q`):
`concat_rows` stacks such shards in the narrowest `Int4Weight` layout that holds every one of them exactly
(the most bits, the smallest group, mins if any shard has them), e.g. Q4_K + Q6_K as 6 bits, group 16, with
mins: 7.125 bits per weight instead of 16 or 32 for a float copy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import numpy as np
import torch

GGUF_BLOCK = 32  # weights per block in GGUF Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0
K_SUPER_BLOCK = 256  # weights per super-block in the GGUF K-quants
INT4_GROUP_SIZES = (16, 32, 128)
INT4_BITS = (4, 5, 6)
INT8_GROUP_SIZES = (None, 32)
_FLOAT_SCALES = (torch.float16, torch.float32)
_INT_SCALES = (torch.int8,)

_P = TypeVar("_P", bound="_Packed")


@dataclass
class _Packed:
    """What both packed weights offer: their tensors, each with `out_features` rows, moved, row-selected or
    stacked."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weight's tensors by field name (fields that are `None` left out)."""
        return {f.name: v for f in fields(self) if isinstance(v := getattr(self, f.name), torch.Tensor)}

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors().values())

    def to(self: _P, device: torch.device | str) -> _P:
        return replace(self, **{name: t.to(device) for name, t in self.tensors().items()})

    def select_rows(self: _P, rows: torch.Tensor) -> _P:
        """The weight of output rows `rows` only (an embedding lookup)."""
        selected: dict[str, Any] = {name: t[rows] for name, t in self.tensors().items()}
        selected["out_features"] = len(rows)
        return replace(self, **selected)


def _check_tensor(
    name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...], shape: tuple[int, ...]
) -> None:
    if t.dtype not in dtypes or tuple(t.shape) != shape:
        allowed = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} must be {allowed} {shape}, got {t.dtype} {tuple(t.shape)}")


@dataclass
class Int4Weight(_Packed):
    """4-, 5- or 6-bit weights: low nibbles two per byte, optional high-bit plane, per-group scales
    (optionally two-level) and optional mins; see the module docstring."""

    qweight: torch.Tensor  # (out_features, in_features // 2) uint8: the low 4 bits of every weight
    scales: torch.Tensor  # (out_features, in_features // group_size) float, or integers under super_scales
    mins: torch.Tensor | None  # like scales, or None for symmetric (q - 2 ** (bits - 1)) weights
    group_size: int
    in_features: int
    out_features: int
    bits: int = 4
    qhigh: torch.Tensor | None = None  # (out_features, in_features * (bits - 4) // 8) uint8 for bits 5 and 6
    super_scales: torch.Tensor | None = None  # (out_features, in_features // 256) float16: K-quant d
    super_mins: torch.Tensor | None = None  # like super_scales: K-quant -dmin, with integer mins

    def __post_init__(self) -> None:
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(
                f"Int4Weight group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size}"
            )
        if self.in_features % self.group_size:
            raise ValueError(
                f"in_features={self.in_features} is not a multiple of group_size={self.group_size}"
            )
        if self.bits not in INT4_BITS:
            raise ValueError(f"Int4Weight bits must be one of {INT4_BITS}, got {self.bits}")
        rows, cols = self.out_features, self.in_features
        _check_tensor("Int4Weight.qweight", self.qweight, (torch.uint8,), (rows, cols // 2))
        if self.bits > 4:
            if self.qhigh is None:
                raise ValueError(f"Int4Weight.qhigh is required for bits={self.bits}")
            _check_tensor("Int4Weight.qhigh", self.qhigh, (torch.uint8,), (rows, cols * (self.bits - 4) // 8))
        elif self.qhigh is not None:
            raise ValueError("Int4Weight.qhigh is only for bits 5 and 6")
        if self.super_scales is None:
            if self.super_mins is not None:
                raise ValueError("Int4Weight.super_mins need super_scales")
            group_dtypes: tuple[torch.dtype, ...] = _FLOAT_SCALES
        else:
            self._check_super_blocks()
            group_dtypes = _INT_SCALES
        for name, t in (("scales", self.scales), ("mins", self.mins)):
            if t is not None:
                _check_tensor(f"Int4Weight.{name}", t, group_dtypes, (rows, cols // self.group_size))

    def _check_super_blocks(self) -> None:
        if self.in_features % K_SUPER_BLOCK or K_SUPER_BLOCK % self.group_size:
            raise ValueError(
                f"two-level scales need in_features={self.in_features} to be a multiple of {K_SUPER_BLOCK} "
                f"and group_size={self.group_size} to divide it"
            )
        if (self.mins is None) != (self.super_mins is None):
            raise ValueError("two-level Int4Weight.mins and super_mins come together")
        supers = (self.out_features, self.in_features // K_SUPER_BLOCK)
        for name, s in (("super_scales", self.super_scales), ("super_mins", self.super_mins)):
            if s is not None:
                _check_tensor(f"Int4Weight.{name}", s, _FLOAT_SCALES, supers)

    @property
    def zero_point(self) -> int:
        """The implicit zero of symmetric (min-less) weights: 8, 16 or 32."""
        return 1 << (self.bits - 1)

    def values(self) -> torch.Tensor:
        """The unsigned `bits`-bit values `(out_features, in_features)` as uint8."""
        q = unpack_bits(self.qweight, 4)
        if self.qhigh is not None:
            q |= unpack_bits(self.qhigh, self.bits - 4) << 4
        return q

    def group_scales(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """float32 scale and min (`None`: symmetric) of every group, `(out_features, in_features //
        group_size)`; two-level scales multiplied out (exactly: see the module docstring)."""
        scales = self.scales.float()
        mins = None if self.mins is None else self.mins.float()
        if self.super_scales is not None:
            per_super = K_SUPER_BLOCK // self.group_size
            scales = scales * self.super_scales.float().repeat_interleave(per_super, dim=1)
            if mins is not None and self.super_mins is not None:
                mins = mins * self.super_mins.float().repeat_interleave(per_super, dim=1)
        return scales, mins


@dataclass
class Int8Weight(_Packed):
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
        _check_tensor(
            "Int8Weight.qweight", self.qweight, (torch.int8,), (self.out_features, self.in_features)
        )
        if self.group_size is None:
            expected: tuple[int, ...] = (self.out_features,)
        else:
            if self.in_features % self.group_size:
                raise ValueError(f"in_features={self.in_features} is not a multiple of 32")
            expected = (self.out_features, self.in_features // self.group_size)
        _check_tensor("Int8Weight.scales", self.scales, _FLOAT_SCALES, expected)


def pack_bits(q: torch.Tensor, width: int) -> torch.Tensor:
    """Pack `width`-bit values `(rows, cols)` into `(rows, cols * width // 8)` bytes, little-endian: column
    `k` at bit `(k * width) % 8` of byte `k * width // 8` (for width 4: column 2b low, 2b + 1 high)."""
    fields_per_byte = q.reshape(q.shape[0], -1, 8 // width)
    packed = fields_per_byte[..., 0].clone()
    for i in range(1, 8 // width):
        packed |= fields_per_byte[..., i] << (i * width)
    return packed


def unpack_bits(packed: torch.Tensor, width: int, run: int = 1) -> torch.Tensor:
    """The `width`-bit fields of uint8 `packed` (rows, ...) as column-ordered uint8 values `(rows, cols)`.

    Bytes come in runs of `run`: the lowest `width` bits of a run's bytes hold its first `run` columns, the
    next `width` bits the next `run` columns, and so on up to bit 7. `run=1` is `pack_bits`' order; GGUF's
    blocks use runs of 16, 32 or 64 bytes."""
    runs = packed.reshape(packed.shape[0], -1, 1, run)
    shifts = torch.arange(0, 8, width, dtype=torch.uint8, device=packed.device)[:, None]
    return ((runs >> shifts) & ((1 << width) - 1)).reshape(packed.shape[0], -1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit values `(rows, cols)` into `(rows, cols // 2)` bytes: 2b low, 2b+1 high."""
    return pack_bits(q, 4)


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: `(rows, cols // 2)` bytes to `(rows, cols)` uint8 values in [0, 15]."""
    return unpack_bits(qweight, 4)


def _blocks(
    raw: np.ndarray | torch.Tensor, shape: tuple[int, int], block_bytes: int, block_weights: int = GGUF_BLOCK
) -> torch.Tensor:
    """The raw bytes as a uint8 tensor `(out_features, in_features // block_weights, block_bytes)`, without
    copying."""
    out_features, in_features = shape
    if in_features % block_weights:
        raise ValueError(
            f"in_features={in_features} is not a multiple of the GGUF block size {block_weights}"
        )
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
    n_blocks = out_features * in_features // block_weights
    if t.numel() != n_blocks * block_bytes:
        raise ValueError(
            f"raw has {t.numel()} bytes, expected {n_blocks * block_bytes} for shape {shape} "
            f"({block_bytes} bytes per block of {block_weights})"
        )
    return t.reshape(out_features, in_features // block_weights, block_bytes)


def _fp16(raw_pairs: torch.Tensor) -> torch.Tensor:
    """Reinterpret trailing byte pairs (little-endian, as GGUF stores them) as float16."""
    return raw_pairs.contiguous().view(torch.float16).squeeze(-1)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """Per-block fields `(rows, blocks, n)` as one contiguous `(rows, blocks * n)` row each (a copy)."""
    return t.contiguous().reshape(t.shape[0], -1)


def _k_sub_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes per super-block to its 8 6-bit sub-scales and 8 sub-mins, uint8
    `(rows, 8 * blocks)`.

    Bytes 0-3 hold scales 0-3 and bytes 4-7 mins 0-3 in their low 6 bits; scales and mins 4-7 take their low 4
    bits from the nibbles of bytes 8-11 and their top 2 bits from the top bits of bytes 0-3 and 4-7."""
    lo_sc, lo_m, high = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = torch.cat((lo_sc & 0x3F, (high & 0x0F) | ((lo_sc >> 2) & 0x30)), dim=-1)
    mins = torch.cat((lo_m & 0x3F, (high >> 4) | ((lo_m >> 2) & 0x30)), dim=-1)
    return _rows(scales).view(torch.int8), _rows(mins).view(torch.int8)  # 6-bit values: exact in int8


def repack_q4_0(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int4Weight:
    """GGUF Q4_0 blocks (fp16 d, 16 bytes of nibbles; w = d * (q - 8)) to a symmetric `Int4Weight`."""
    blocks = _blocks(raw, shape, 2 + GGUF_BLOCK // 2)
    low = unpack_bits(blocks[..., 2:], 4, run=16)
    return Int4Weight(pack_int4(low), _fp16(blocks[..., :2]), None, GGUF_BLOCK, shape[1], shape[0])


def repack_q4_1(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int4Weight:
    """GGUF Q4_1 blocks (fp16 d, fp16 m, 16 bytes of nibbles; w = d * q + m) to an asymmetric `Int4Weight`."""
    blocks = _blocks(raw, shape, 4 + GGUF_BLOCK // 2)
    low = unpack_bits(blocks[..., 4:], 4, run=16)
    scales, mins = _fp16(blocks[..., 0:2]), _fp16(blocks[..., 2:4])
    return Int4Weight(pack_int4(low), scales, mins, GGUF_BLOCK, shape[1], shape[0])


def repack_q5_0(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int4Weight:
    """GGUF Q5_0 blocks (fp16 d, 32 high bits, 16 bytes of nibbles; w = d * (q - 16)) to a symmetric 5-bit
    `Int4Weight`. The high bits are a little-endian uint32 whose bit j is column j's: already our order."""
    blocks = _blocks(raw, shape, 6 + GGUF_BLOCK // 2)
    low = unpack_bits(blocks[..., 6:], 4, run=16)
    return Int4Weight(
        pack_int4(low), _fp16(blocks[..., :2]), None, GGUF_BLOCK, shape[1], shape[0],
        bits=5, qhigh=_rows(blocks[..., 2:6]),
    )  # fmt: skip


def repack_q5_1(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int4Weight:
    """GGUF Q5_1 blocks (fp16 d, fp16 m, 32 high bits, 16 bytes of nibbles; w = d * q + m) to an asymmetric
    5-bit `Int4Weight`."""
    blocks = _blocks(raw, shape, 8 + GGUF_BLOCK // 2)
    low = unpack_bits(blocks[..., 8:], 4, run=16)
    scales, mins = _fp16(blocks[..., 0:2]), _fp16(blocks[..., 2:4])
    return Int4Weight(
        pack_int4(low), scales, mins, GGUF_BLOCK, shape[1], shape[0], bits=5, qhigh=_rows(blocks[..., 4:8])
    )


def repack_q4_k(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int4Weight:
    """GGUF Q4_K super-blocks of 256 (fp16 d, fp16 dmin, 12 bytes of 6-bit sub-scales and sub-mins, 128
    bytes of nibbles in runs of 32; w = d * sc * q - dmin * m per 32 weights) to a group-32 `Int4Weight` with
    two-level scales and mins (`super_mins = -dmin`)."""
    blocks = _blocks(raw, shape, 4 + 12 + K_SUPER_BLOCK // 2, K_SUPER_BLOCK)
    scales, mins = _k_sub_scales(blocks[..., 4:16])
    return Int4Weight(
        pack_int4(unpack_bits(blocks[..., 16:], 4, run=32)), scales, mins, GGUF_BLOCK, shape[1], shape[0],
        super_scales=_fp16(blocks[..., 0:2]), super_mins=-_fp16(blocks[..., 2:4]),
    )  # fmt: skip


def repack_q5_k(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int4Weight:
    """GGUF Q5_K super-blocks: Q4_K's fields plus 32 bytes of high bits (bit i of byte j is column 32 i + j's)
    before the nibbles; to a 5-bit group-32 `Int4Weight` with two-level scales and mins."""
    blocks = _blocks(raw, shape, 4 + 12 + K_SUPER_BLOCK // 8 + K_SUPER_BLOCK // 2, K_SUPER_BLOCK)
    scales, mins = _k_sub_scales(blocks[..., 4:16])
    high = unpack_bits(blocks[..., 16:48], 1, run=32)
    return Int4Weight(
        pack_int4(unpack_bits(blocks[..., 48:], 4, run=32)), scales, mins, GGUF_BLOCK, shape[1], shape[0],
        bits=5, qhigh=pack_bits(high, 1), super_scales=_fp16(blocks[..., 0:2]),
        super_mins=-_fp16(blocks[..., 2:4]),
    )  # fmt: skip


def repack_q6_k(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int4Weight:
    """GGUF Q6_K super-blocks of 256 (128 bytes of low nibbles in runs of 64, 64 bytes of 2-bit high fields
    in runs of 32, 16 int8 sub-scales, fp16 d; w = d * sc * (q - 32) per 16 weights) to a symmetric 6-bit
    group-16 `Int4Weight` with two-level scales."""
    blocks = _blocks(raw, shape, K_SUPER_BLOCK // 2 + K_SUPER_BLOCK // 4 + 16 + 2, K_SUPER_BLOCK)
    high = unpack_bits(blocks[..., 128:192], 2, run=32)
    scales = _rows(blocks[..., 192:208]).view(torch.int8)
    return Int4Weight(
        pack_int4(unpack_bits(blocks[..., :128], 4, run=64)), scales, None, 16, shape[1], shape[0],
        bits=6, qhigh=pack_bits(high, 2), super_scales=_fp16(blocks[..., 208:210]),
    )  # fmt: skip


def repack_q8_0(raw: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> Int8Weight:
    """GGUF Q8_0 blocks (fp16 d, 32 int8; w = d * q) to a group-32 `Int8Weight`."""
    blocks = _blocks(raw, shape, 2 + GGUF_BLOCK)
    scales = _fp16(blocks[..., :2])
    qweight = blocks[..., 2:].contiguous().view(torch.int8).reshape(shape)
    return Int8Weight(qweight, scales, GGUF_BLOCK, shape[1], shape[0])


def concat_rows(parts: list[Int4Weight | Int8Weight]) -> Int4Weight | Int8Weight | None:
    """The packed weights of one input stacked along their output rows, in one layout that holds each part
    exactly (see the module docstring); `None` when there is none (int8 beside int4 parts, int8 groupings
    that differ)."""
    if len(parts) == 1:
        return parts[0]
    int8 = [p for p in parts if isinstance(p, Int8Weight)]
    if int8:
        return _stack(int8) if len(int8) == len(parts) and len({p.group_size for p in int8}) == 1 else None
    int4 = [p for p in parts if isinstance(p, Int4Weight)]
    if any(p.super_scales is None for p in int4):
        int4 = [_without_super_blocks(p) for p in int4]
    bits, group = max(p.bits for p in int4), min(p.group_size for p in int4)
    with_mins = any(p.mins is not None for p in int4)
    return _stack([_widen(p, bits, group, with_mins) for p in int4])


def _stack(parts: list[_P]) -> _P:
    """Parts of identical layout stacked along their rows."""
    names = parts[0].tensors()
    stacked: dict[str, Any] = {name: torch.cat([p.tensors()[name] for p in parts]) for name in names}
    stacked["out_features"] = len(stacked["qweight"])
    return replace(parts[0], **stacked)


def _without_super_blocks(w: Int4Weight) -> Int4Weight:
    """`w` with its two-level scales multiplied out into float32 group scales (exact)."""
    if w.super_scales is None:
        return w
    scales, mins = w.group_scales()
    return replace(w, scales=scales, mins=mins, super_scales=None, super_mins=None)


def _times_exactly(t: torch.Tensor, factor: int) -> torch.Tensor:
    """`t * factor` (a power of two) in t's dtype, or in float32 where float16 would overflow."""
    wide = t.float() * factor
    narrow = wide.to(t.dtype)
    return narrow if torch.equal(narrow.float(), wide) else wide


def _widen(w: Int4Weight, bits: int, group: int, with_mins: bool) -> Int4Weight:
    """The same weights with `bits` >= `w.bits`, a `group` dividing `w.group_size`, and mins if `with_mins`.

    A symmetric weight gains mins as `w = s * q + (-z * s)` (z its zero point, a power of two, so `-z * s` is
    exact and the sum is exactly `s * (q - z)` in float32); staying symmetric with more bits shifts q by the
    change of zero point."""
    if (bits, group, with_mins) == (w.bits, w.group_size, w.mins is not None):
        return w
    q = w.values()
    scales, mins, super_mins = w.scales, w.mins, w.super_mins
    if with_mins and mins is None:
        if w.super_scales is None:
            mins = _times_exactly(scales, -w.zero_point)
        else:  # the integer sub-scales serve as sub-mins under -z * d
            mins, super_mins = scales, _times_exactly(w.super_scales, -w.zero_point)
    elif mins is None:
        q += (1 << (bits - 1)) - w.zero_point
    repeat = w.group_size // group
    return Int4Weight(
        pack_int4(q & 0x0F), scales.repeat_interleave(repeat, dim=1),
        None if mins is None else mins.repeat_interleave(repeat, dim=1), group, w.in_features, w.out_features,
        bits=bits, qhigh=pack_bits(q >> 4, bits - 4) if bits > 4 else None, super_scales=w.super_scales,
        super_mins=super_mins,
    )  # fmt: skip


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
        q = w.values().float().reshape(w.out_features, -1, w.group_size)
        scales, mins = w.group_scales()
        if mins is None:
            out = scales[..., None] * (q - w.zero_point)
        else:
            out = scales[..., None] * q + mins[..., None]
        return out.reshape(w.out_features, w.in_features).to(dtype)
    q8 = w.qweight.float()
    if w.group_size is None:
        return (q8 * w.scales.float()[:, None]).to(dtype)
    out = q8.reshape(w.out_features, -1, w.group_size) * w.scales.float()[..., None]
    return out.reshape(w.out_features, w.in_features).to(dtype)
