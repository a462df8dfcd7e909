"""RMSNorm as a Triton kernel: forward and backward, one row per program.

``y = weight * cast(x * rsqrt(mean(x^2) + eps))`` with the statistics in float32, as Llama and
Hugging Face compute it. The forward saves one float32 ``rstd`` per row; the backward
recomputes ``x_hat`` from it and accumulates ``dweight`` in float32 partial sums, one per
program, that are added up at the end.

Both directions are ``torch.library`` ops (:func:`kernel_op`: a ``triton_op`` on a GPU) with
fake implementations and an autograd formula, so ``torch.compile(fullgraph=True)`` traces them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._utils import check_last_dim_contiguous, kernel_op, num_programs, row_block, tracing

# ----------------------------------------------------------------------------------- kernels


@triton.jit
def _rms_norm_fwd_kernel(
    Y,
    y_row_stride,
    X,
    x_row_stride,
    W,
    RSTD,
    n_cols,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * x_row_stride + cols, mask=mask, other=0.0)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    tl.store(RSTD + row, rstd)
    # Round x_hat to the input dtype before scaling, exactly like `weight * x_hat.to(dtype)`.
    x_hat = (xf * rstd).to(x.dtype).to(tl.float32)
    tl.store(Y + row * y_row_stride + cols, (x_hat * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(
    DX,
    dx_row_stride,
    DY,
    dy_row_stride,
    X,
    x_row_stride,
    W,
    RSTD,
    DW_PARTIAL,
    n_rows,
    n_cols,
    rows_per_program,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    for row in range(row_start, row_end):
        x = tl.load(X + row * x_row_stride + cols, mask=mask, other=0.0)
        dy = tl.load(DY + row * dy_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        x_hat = x.to(tl.float32) * rstd
        g = dy * w
        # d/dx of x * rstd(x): rstd * (g - x_hat * mean(g * x_hat))
        dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / n_cols))
        tl.store(DX + row * dx_row_stride + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * x_hat.to(x.dtype).to(tl.float32)
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=mask)


# ----------------------------------------------------------------------- ops and autograd


@kernel_op("jpeglm::rms_norm")
def rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, rstd)``: ``y`` shaped like ``x`` (a fresh contiguous tensor), ``rstd`` one float32
    per row, what the backward needs beside ``x`` and ``weight``."""
    n_cols = x.shape[-1]
    if weight.shape != (n_cols,):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match x's last dim {n_cols}")
    x2 = x.reshape(-1, n_cols)
    check_last_dim_contiguous("x", x2)
    n_rows = x2.shape[0]
    dtype = torch.promote_types(x.dtype, weight.dtype)
    y = torch.empty(x.shape, dtype=dtype, device=x.device)  # contiguous: rows n_cols apart
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    block, num_warps = row_block(n_cols)
    if n_rows > 0 and not tracing(x):
        wrap_triton(_rms_norm_fwd_kernel)[(n_rows,)](
            y, n_cols, x2, x2.stride(0), weight, rstd, n_cols, eps,
            BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    return y, rstd


@kernel_op("jpeglm::rms_norm_backward")
def rms_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, dweight)``, ``dx`` shaped like ``x``."""
    n_cols = x.shape[-1]
    x2 = x.reshape(-1, n_cols)
    n_rows = x2.shape[0]
    dy2 = dy.reshape(-1, n_cols)
    if dy2.stride(-1) != 1:
        dy2 = dy2.contiguous()
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    programs = num_programs(x.device, n_rows)
    rows_per_program = triton.cdiv(n_rows, programs)
    dw_partial = torch.zeros((programs, n_cols), dtype=torch.float32, device=x.device)
    block, num_warps = row_block(n_cols)
    if n_rows > 0 and not tracing(x):
        wrap_triton(_rms_norm_bwd_kernel)[(programs,)](
            dx, n_cols, dy2, dy2.stride(0), x2, x2.stride(0), weight, rstd, dw_partial,
            n_rows, n_cols, rows_per_program, BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    return dx, dw_partial.sum(0).to(weight.dtype)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's signature
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, dy: torch.Tensor, _drstd: torch.Tensor | None):  # noqa: ANN001
    x, weight, rstd = ctx.saved_tensors
    dx, dw = rms_norm_backward(dy, x, weight, rstd)
    return dx, dw, None


rms_norm_forward.register_autograd(_backward, setup_context=_setup_context)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dimension of ``x`` (any leading shape), differentiable: the op
    ``torch.ops.jpeglm.rms_norm`` (its backward ``jpeglm::rms_norm_backward``)."""
    return rms_norm_forward(x, weight, eps)[0]
