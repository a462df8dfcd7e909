"""Rotary position embeddings as a Triton kernel, applied in place.

Layout: ``x`` is ``(batch, seq, heads, head_dim)`` -- q or k, any strides with the last
dimension contiguous (e.g. a view of a projection's output) -- and the rotary tables ``cos`` /
``sin`` are ``(seq, head_dim // 2)``. The Hugging Face ``rotate_half`` pairing is used:
dimension ``i`` rotates with ``i + head_dim / 2``, so HF Llama weights load unchanged.

One program handles one (batch, position) pair, all heads at once. The backward is the same
rotation by the opposite angle (a rotation's transpose), written to a fresh gradient tensor.
q and k are separate calls: autograd allows an in-place Function on a view only when it
returns a single tensor.

For inference :func:`rope` is the out-of-place op ``torch.ops.jpeglm.rope`` (a
``torch.library.custom_op`` with a fake implementation), which ``torch.compile`` traces into
one graph -- the in-place autograd Function, with its ``ctx.mark_dirty``, splits the graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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
    if batch * seq * n_heads == 0:
        return
    half = head_dim // 2
    _rope_kernel[(batch * seq,)](
        x_in, x_out, x_in.stride(0), x_in.stride(1), x_in.stride(2), x_out.stride(0),
        x_out.stride(1), x_out.stride(2), cos, sin, cos.stride(0),
        seq, N_HEADS=n_heads, HALF=half, BLOCK_H=triton.next_power_of_2(n_heads),
        BLOCK_D=triton.next_power_of_2(half), BACKWARD=backward,
    )  # fmt: skip


def rope_forward_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate ``x`` in place."""
    _check(x, cos, sin)
    _launch(x, x, cos, sin, backward=False)


def rope_backward(dy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the unrotated input (a fresh tensor; ``dy`` is left untouched)."""
    dy = dy.contiguous()
    dx = torch.empty_like(dy)
    _launch(dy, dx, cos, sin, backward=True)
    return dx


# ---------------------------------------------------------------------------------- autograd


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rope_forward_(x, cos, sin)
        ctx.mark_dirty(x)
        ctx.save_for_backward(cos, sin)
        return x

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return rope_backward(dy, cos, sin), None, None


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply rotary embeddings to ``x`` (q or k) in place, differentiably; returns ``x``."""
    return RoPEFunction.apply(x, cos, sin)


@torch.library.custom_op("jpeglm::rope", mutates_args=())
def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embeddings out of place (a fresh contiguous tensor; ``x`` untouched), for
    inference: a custom op that ``torch.compile(fullgraph=True)`` traces. No autograd."""
    _check(x, cos, sin)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, out, cos, sin, backward=False)
    return out


@rope.register_fake
def _(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)
