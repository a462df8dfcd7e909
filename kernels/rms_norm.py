"""RMSNorm as a Triton kernel: forward and backward, one row per program.

``y = weight * cast(x * rsqrt(mean(x^2) + eps))`` with the statistics in float32, as Llama and
Hugging Face compute it. The forward saves one float32 ``rstd`` per row; the backward
recomputes ``x_hat`` from it and accumulates ``dweight`` in float32 partial sums, one per
program, that are added up at the end.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import check_last_dim_contiguous, num_programs, row_block

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


# --------------------------------------------------------------------------------- launchers


def rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(y, x2d, rstd)``; ``x2d`` and ``rstd`` are what the backward needs."""
    n_cols = x.shape[-1]
    if weight.shape != (n_cols,):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match x's last dim {n_cols}")
    x2 = x.reshape(-1, n_cols)
    check_last_dim_contiguous("x", x2)
    n_rows = x2.shape[0]
    y = torch.empty(
        (n_rows, n_cols), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device
    )
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    block, num_warps = row_block(n_cols)
    if n_rows > 0:
        _rms_norm_fwd_kernel[(n_rows,)](
            y, y.stride(0), x2, x2.stride(0), weight, rstd, n_cols, eps,
            BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    return y.view(*x.shape[:-1], n_cols), x2, rstd


def rms_norm_backward(
    dy: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(dx, dweight)``; ``dx`` has the 2-D shape of ``x2``."""
    n_rows, n_cols = x2.shape
    dy2 = dy.reshape(-1, n_cols)
    if dy2.stride(-1) != 1:
        dy2 = dy2.contiguous()
    dx = torch.empty_like(x2)
    programs = num_programs(x2.device, n_rows)
    rows_per_program = triton.cdiv(n_rows, programs)
    dw_partial = torch.empty((programs, n_cols), dtype=torch.float32, device=x2.device)
    block, num_warps = row_block(n_cols)
    if n_rows > 0:
        _rms_norm_bwd_kernel[(programs,)](
            dx, dx.stride(0), dy2, dy2.stride(0), x2, x2.stride(0), weight, rstd, dw_partial,
            n_rows, n_cols, rows_per_program, BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    else:
        dw_partial.zero_()
    return dx, dw_partial.sum(0).to(weight.dtype)


# ---------------------------------------------------------------------------------- autograd


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, x2, rstd = rms_norm_forward(x, weight, eps)
        ctx.save_for_backward(x2, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_backward(dy, x2, weight, rstd)
        return dx.view(dy.shape), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm over the last dimension of ``x`` (any leading shape), differentiable."""
    return RMSNormFunction.apply(x, weight, eps)
