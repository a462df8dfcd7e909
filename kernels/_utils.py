"""Small helpers shared by the kernel launchers, and how each op is registered with torch."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import triton

# One Triton block holds a whole row for the row-wise kernels; rows wider than this would need
# a loop and do not occur in Llama (hidden sizes stay far below).
MAX_FUSED_SIZE = 65536

# Triton's interpreter (no GPU): read once, as Triton itself reads it on first import.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


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


_SM_COUNT: dict[int, int] = {}  # a plain dict, not an lru_cache: nothing for a tracer to trip on


def num_programs(device: torch.device, n_rows: int) -> int:
    """Programs for a persistent row loop: one per SM on GPU, a few under the interpreter.

    Runs in the body of a kernel op only -- eagerly, or under fake tensors when torch.compile
    traces the op's implementation (plain Python there, not Dynamo), so the device query is
    made once per device and kept."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _SM_COUNT:
            _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
        return max(1, min(n_rows, _SM_COUNT[index]))
    return max(1, min(n_rows, 4))


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim, got strides {t.stride()}")


def tracing(t: torch.Tensor) -> bool:
    """``t`` is a fake (or functional) tensor: shapes are being traced, nothing is computed.
    Only the interpreter needs to know -- it runs a kernel on real memory and would fail --
    so on a GPU this is always ``False`` (there ``wrap_triton`` records the launch instead)."""
    if not INTERPRETING:
        return False
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def kernel_op(name: str) -> Callable[[Callable], torch.library.CustomOpDef]:
    """Register ``fn`` as the operator ``torch.ops.<name>`` whose body launches Triton kernels
    through ``torch.library.wrap_triton``.

    Where Triton compiles (a GPU) it is a ``torch.library.triton_op`` (torch >= 2.6): Dynamo
    sees one op, never a graph break, and Inductor sees the kernels themselves; the body is also
    its fake implementation (its launches are recorded, not run, on fake tensors). Under
    Triton's interpreter (CPU tests) ``wrap_triton`` cannot record an interpreted kernel, so the
    op is a ``torch.library.custom_op`` -- opaque to the compiler -- with the same body as its
    fake implementation, which skips its launches on fake tensors (:func:`tracing`). Either way
    the schema, the fake implementation and the autograd formula are the same."""

    def register(fn: Callable) -> torch.library.CustomOpDef:
        if INTERPRETING:
            op = torch.library.custom_op(name, fn, mutates_args=())
            op.register_fake(fn)
            return op
        return torch.library.triton_op(name, fn, mutates_args=())

    return register
