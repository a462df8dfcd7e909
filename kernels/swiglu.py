"""The SwiGLU gate ``silu(gate) * up`` as one fused elementwise Triton kernel.

Forward reads ``gate`` and ``up`` once and writes the product; nothing else is kept. Backward
recomputes ``sigmoid(gate)`` instead of saving it:

    d up   = dc * silu(gate)
    d gate = dc * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate)))

All arithmetic is in float32; inputs and outputs keep their dtype. Both directions are
``torch.library`` ops (:func:`kernel_op`: a ``triton_op`` on a GPU) with fake implementations
and an autograd formula, so ``torch.compile(fullgraph=True)`` traces them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._utils import kernel_op, tracing

BLOCK = 1024

# ----------------------------------------------------------------------------------- kernels


@triton.jit
def _swiglu_fwd_kernel(GATE, UP, OUT, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(GATE + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(UP + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, (a * tl.sigmoid(a) * b).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(DOUT, GATE, UP, DGATE, DUP, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dc = tl.load(DOUT + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(GATE + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(UP + offs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    silu = a * sig
    tl.store(DUP + offs, (dc * silu).to(DUP.dtype.element_ty), mask=mask)
    dgate = dc * b * sig * (1.0 + a * (1.0 - sig))
    tl.store(DGATE + offs, dgate.to(DGATE.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------- ops and autograd


@kernel_op("jpeglm::swiglu")
def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` (same shapes and dtype), differentiable: the op
    ``torch.ops.jpeglm.swiglu`` (its backward ``jpeglm::swiglu_backward``)."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"gate and up must match: {tuple(gate.shape)} {gate.dtype} vs "
            f"{tuple(up.shape)} {up.dtype}"
        )
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    n = gate.numel()
    if n and not tracing(gate):
        wrap_triton(_swiglu_fwd_kernel)[(triton.cdiv(n, BLOCK),)](gate, up, out, n, BLOCK=BLOCK)
    return out


@kernel_op("jpeglm::swiglu_backward")
def swiglu_backward(
    dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d gate, d up)``, shaped like ``gate``."""
    dout, gate, up = dout.contiguous(), gate.contiguous(), up.contiguous()
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    dup = torch.empty(up.shape, dtype=up.dtype, device=up.device)
    n = gate.numel()
    if n and not tracing(gate):
        wrap_triton(_swiglu_bwd_kernel)[(triton.cdiv(n, BLOCK),)](
            dout, gate, up, dgate, dup, n, BLOCK=BLOCK
        )
    return dgate, dup


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's signature
    ctx.save_for_backward(*inputs)


def _backward(ctx, dout: torch.Tensor):  # noqa: ANN001
    gate, up = ctx.saved_tensors
    return swiglu_backward(dout, gate, up)


swiglu.register_autograd(_backward, setup_context=_setup_context)
