"""Input checks (a clear ValueError before any kernel is launched) and launch helpers shared by the launchers.

Two kinds of checks:

* metadata checks (dtype, shape, strides) cost nothing and always run;
* data checks read small index tensors (`context_lens`, `cu_seqlens`, `slot_mapping`, block tables) to catch
  a block table too short for a context, an out-of-range slot or a wrong `max_seqlen`, any of which would make
  a kernel read or write the wrong memory. On CUDA they cost one GPU→CPU sync per call, so the engine may turn
  them off with `set_data_checks(False)` once its block manager is trusted; they are always skipped while a
  CUDA graph is being captured (a sync is illegal there).
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256  # Gemma 3's; larger heads would not fit a tile's accumulator in registers

_data_checks = True


def set_data_checks(enabled: bool) -> None:
    """Turn the data-dependent launcher checks (one sync per call on CUDA) on or off."""
    global _data_checks
    _data_checks = enabled


def data_checks_enabled(t: torch.Tensor) -> bool:
    if not _data_checks:
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    require(t.dtype in allowed, f"{name} must have dtype in {[str(d) for d in allowed]}, got {t.dtype}")


def check_dim(name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    require(t.dim() == ndim, f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")


def check_contiguous(name: str, t: torch.Tensor) -> None:
    require(t.is_contiguous(), f"{name} must be contiguous (got strides {t.stride()}); call .contiguous()")


def check_inner_contiguous(name: str, t: torch.Tensor) -> None:
    """The kernels vectorize along the last dimension; other dimensions go through strides."""
    require(t.stride(-1) == 1, f"{name} must have a contiguous last dimension, got strides {t.stride()}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    require(len(set(devices.values())) <= 1, f"tensors must be on one device, got {devices}")


def check_head_dim(head_dim: int) -> None:
    require(
        1 <= head_dim <= MAX_HEAD_DIM,
        f"head_dim {head_dim} is not supported by the Triton attention kernels (1 to {MAX_HEAD_DIM} are)",
    )


def padded_head_dim(head_dim: int) -> int:
    """The power of two (at least 16, as `tl.dot` needs) that the attention kernels' tiles span for a head."""
    return max(16, 1 << (head_dim - 1).bit_length())


def check_linear_inputs(
    x: torch.Tensor, in_features: int, out_features: int, bias: torch.Tensor | None
) -> None:
    """Activation and bias checks shared by the W4A16 and W8A16 launchers."""
    check_dtype("x", x, FLOAT_DTYPES)
    require(x.dim() >= 1 and x.shape[-1] == in_features,
            f"x last dimension {tuple(x.shape)[-1:]} != in_features {in_features}")  # fmt: skip
    check_inner_contiguous("x", x)
    if bias is not None:
        require(
            tuple(bias.shape) == (out_features,), f"bias must be ({out_features},), got {tuple(bias.shape)}"
        )
        check_dtype("bias", bias, FLOAT_DTYPES)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs stay exact ("ieee") rather than silently dropping to tf32; half inputs ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_block_table(
    block_table: torch.Tensor, lengths: torch.Tensor, block_size: int, num_blocks: int
) -> None:
    """Data check: each sequence's table row covers its `lengths[i]` keys and points at existing blocks."""
    lengths = lengths.cpu().long()
    require(bool((lengths >= 0).all()), "sequence lengths must be >= 0")
    needed = (lengths + block_size - 1) // block_size
    width = block_table.shape[1]
    too_long = (needed > width).nonzero()
    if len(too_long):
        i = int(too_long[0, 0])
        raise ValueError(
            f"block table too short: sequence {i} has {int(lengths[i])} keys, which need "
            f"{int(needed[i])} blocks of {block_size}, but the table has {width} columns"
        )
    used = block_table.cpu()[torch.arange(width)[None, :] < needed[:, None]]
    require(
        bool(((used >= 0) & (used < num_blocks)).all()),
        f"block table entries must be in [0, {num_blocks}) for the blocks a sequence uses",
    )
