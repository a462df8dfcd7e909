"""Small helpers shared by the kernel launchers."""

from __future__ import annotations

import functools

import torch
import triton

# One Triton block holds a whole row for the row-wise kernels; rows wider than this would need
# a loop and do not occur in Llama (hidden sizes stay far below).
MAX_FUSED_SIZE = 65536


def row_block(n_cols: int) -> tuple[int, int]:
    """Block size (next power of two >= ``n_cols``) and a warp count suited to it."""
    block = triton.next_power_of_2(n_cols)
    if block > MAX_FUSED_SIZE:
        raise ValueError(f"row of {n_cols} elements exceeds the fused limit {MAX_FUSED_SIZE}")
    num_warps = 4
    if block >= 32768:
        num_warps = 32
    elif block >= 8192:
        num_warps = 16
    elif block >= 2048:
        num_warps = 8
    return block, num_warps


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_programs(device: torch.device, n_rows: int) -> int:
    """Programs for a persistent row loop: one per SM on GPU, a few under the interpreter."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return max(1, min(n_rows, _sm_count(index)))
    return max(1, min(n_rows, 4))


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim, got strides {t.stride()}")
