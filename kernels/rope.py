"""Rotary position embeddings as a Triton kernel, out of place, for training and inference.

Layout: ``x`` is ``(batch, seq, heads, head_dim)`` -- q or k, any strides with the last
dimension contiguous (e.g. a view of a projection's output) -- and the rotary tables ``cos`` /
``sin`` are ``(seq, head_dim // 2)``. The Hugging Face ``rotate_half`` pairing is used:
dimension ``i`` rotates with ``i + head_dim / 2``, so HF Llama weights load unchanged.

One program handles one (batch, position) pair, all heads at once. The backward is the same
rotation by the opposite angle (a rotation's transpose), written to a fresh gradient tensor.

:func:`rope` is the ``torch.library`` op ``torch.ops.jpeglm.rope`` (:func:`kernel_op`: a
``triton_op`` on a GPU) with a fake implementation and an autograd formula (the backward is
the op ``jpeglm::rope_backward``):
``torch.compile(fullgraph=True)`` traces it, and selective activation checkpointing sees it as
an op of its own to recompute. It never writes into its input: the input is the q / k matmul's
output, which selective checkpointing keeps for the backward pass, and a rotation in place
(the earlier ``ctx.mark_dirty`` Function) was then applied twice on recompute -- wrong
gradients, identical losses (issue 26).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._utils import kernel_op, tracing

# ----------------------------------------------------------------------------------- kernels


@triton.jit
def _rope_kernel(
    X_IN,
    X_OUT,
    stride_b,
    stride_t,
    stride_h,
    out_stride_b,
    out_stride_t,
    out_stride_h,
    COS,
    SIN,
    cos_stride_t,
    seq_len,
    N_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // seq_len
    t = pid % seq_len
    d = tl.arange(0, BLOCK_D)
    h = tl.arange(0, BLOCK_H)
    cos = tl.load(COS + t * cos_stride_t + d, mask=d < HALF, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(SIN + t * cos_stride_t + d, mask=d < HALF, other=0.0).to(tl.float32)[None, :]
    if BACKWARD:
        sin = -sin
    offs = b * stride_b + t * stride_t + h[:, None] * stride_h + d[None, :]
    out = b * out_stride_b + t * out_stride_t + h[:, None] * out_stride_h + d[None, :]
    mask = (h[:, None] < N_HEADS) & (d[None, :] < HALF)
    x1 = tl.load(X_IN + offs, mask=mask, other=0.0)
    x2 = tl.load(X_IN + offs + HALF, mask=mask, other=0.0)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    tl.store(X_OUT + out, (x1 * cos - x2 * sin).to(dtype), mask=mask)
    tl.store(X_OUT + out + HALF, (x2 * cos + x1 * sin).to(dtype), mask=mask)


# --------------------------------------------------------------------------------- launchers


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must be (batch, seq, heads, head_dim), got shape {tuple(x.shape)}")
    if x.shape[-1] % 2:
        raise ValueError(f"head_dim must be even for rotary embeddings, got {x.shape[-1]}")
    want = (x.shape[1], x.shape[-1] // 2)
    if tuple(cos.shape) != want or tuple(sin.shape) != want:
        raise ValueError(
            f"cos/sin must have shape {want}, got {tuple(cos.shape)}, {tuple(sin.shape)}"
        )
    if x.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride() != cos.stride():
        raise ValueError("x, cos and sin must be contiguous in the last dimension")


def _launch(x_in: torch.Tensor, x_out: torch.Tensor, cos, sin, backward: bool) -> None:
    batch, seq, n_heads, head_dim = x_in.shape
    if batch * seq * n_heads == 0 or tracing(x_in):
        return
    half = head_dim // 2
    wrap_triton(_rope_kernel)[(batch * seq,)](
        x_in, x_out, x_in.stride(0), x_in.stride(1), x_in.stride(2), x_out.stride(0),
        x_out.stride(1), x_out.stride(2), cos, sin, cos.stride(0),
        seq, N_HEADS=n_heads, HALF=half, BLOCK_H=triton.next_power_of_2(n_heads),
        BLOCK_D=triton.next_power_of_2(half), BACKWARD=backward,
    )  # fmt: skip


# ----------------------------------------------------------------------- custom ops, autograd


@kernel_op("jpeglm::rope")
def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embeddings out of place (a fresh contiguous tensor; ``x`` untouched),
    differentiable in ``x``."""
    _check(x, cos, sin)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, out, cos, sin, backward=False)
    return out


@kernel_op("jpeglm::rope_backward")
def rope_backward(dy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the unrotated input: ``dy`` rotated back (a fresh tensor)."""
    _check(dy, cos, sin)
    dx = torch.empty(dy.shape, dtype=dy.dtype, device=dy.device)
    _launch(dy, dx, cos, sin, backward=True)
    return dx


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's signature
    _, cos, sin = inputs
    ctx.save_for_backward(cos, sin)


def _backward(ctx, dy: torch.Tensor):  # noqa: ANN001
    cos, sin = ctx.saved_tensors
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    return rope_backward(dy, cos, sin), None, None


rope.register_autograd(_backward, setup_context=_setup_context)
