"""Fused linear + cross-entropy: ``cross_entropy(h @ W.T, targets)`` without the full logits.

The output projection of a language model turns ``(tokens, dim)`` hidden states into
``(tokens, vocab)`` logits, which for long packed sequences dominate activation memory. Here the
rows are processed in chunks: for each chunk the logits are computed with one matmul, a Triton
kernel turns them *in place* into ``d loss / d logits`` (softmax minus one-hot, scaled) while
emitting each row's loss, and two more matmuls fold that into ``d h`` and ``d W``. Only one
chunk of logits exists at a time, and the gradients are finished during the forward, so the
backward just scales them by the incoming gradient (as Liger-Kernel does). The forward is a
``torch.library`` op (:func:`kernel_op`: a ``triton_op`` on a GPU) returning the loss and both
gradients, with a fake implementation and an autograd formula: no host sync in it, so
``torch.compile(fullgraph=True)`` traces it.

The chunk size follows Liger: about ``tokens / ceil(vocab / dim)`` rows, so a chunk of logits is
no bigger than ``h`` itself. At JPEG-LM's own vocabulary (323, below the width of every preset
but the toy ``tiny``) that is a single chunk: the memory saving over eager PyTorch is about nil
there, and the op earns its keep at large vocabularies (32,000 and up), where the logits would
dwarf ``h``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._utils import MAX_FUSED_SIZE, kernel_op, tracing

# ----------------------------------------------------------------------------------- kernels


@triton.jit
def _cross_entropy_kernel(
    LOGITS,
    logits_row_stride,
    TARGETS,
    LOSS,
    n_cols,
    ignore_index,
    SCALE,
    BLOCK: tl.constexpr,
):
    """Per row: loss = scale * (logsumexp(x) - x[y]); x <- scale * (softmax(x) - onehot(y)) in
    place. ``SCALE`` points at one float32 (1 / the count of non-ignored targets for a mean):
    a tensor, not a Python float, so no host sync decides it and the launch traces."""
    row = tl.program_id(0).to(tl.int64)
    ptr = LOGITS + row * logits_row_stride
    y = tl.load(TARGETS + row)
    scale = tl.load(SCALE)
    if y == ignore_index:
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            zeros = tl.zeros([BLOCK], dtype=tl.float32).to(LOGITS.dtype.element_ty)
            tl.store(ptr + cols, zeros, mask=cols < n_cols)
        tl.store(LOSS + row, 0.0)
        return

    # Pass 1: online max and sum of exponentials.
    m = float("-inf")
    d = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(ptr + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(d)
    # The launcher rejects out-of-range targets; should one get here anyway, its loss is NaN
    # and nothing outside the row is read.
    in_range = (y >= 0) & (y < n_cols)
    x_y = tl.load(ptr + y, mask=in_range, other=float("nan")).to(tl.float32)
    tl.store(LOSS + row, (lse - x_y) * scale)

    # Pass 2: overwrite the logits with their gradient.
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.exp(x - lse)
        g = tl.where(cols == y, g - 1.0, g) * scale
        tl.store(ptr + cols, g.to(LOGITS.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------- launchers


class TargetOutOfRangeError(IndexError, ValueError):
    """A target id that is neither ``ignore_index`` nor in ``0..vocab-1`` (an ``IndexError``
    and a ``ValueError`` alike)."""


def _check(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if h.ndim != 2 or weight.ndim != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected h (tokens, dim) and weight (vocab, dim), got {tuple(h.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if targets.shape != (h.shape[0],):
        raise ValueError(f"targets must have shape ({h.shape[0]},), got {tuple(targets.shape)}")
    if h.dtype != weight.dtype:
        raise ValueError(f"h and weight dtypes differ: {h.dtype} vs {weight.dtype}")


def chunk_rows(n_rows: int, vocab: int, dim: int) -> int:
    """Rows per chunk of logits: about ``n_rows / ceil(vocab / dim)`` (Liger's rule), so a chunk
    of logits is no bigger than ``h``. When ``vocab <= dim`` -- JPEG-LM's 323 tokens at the width
    of any preset from ``small`` up -- that is every row: one chunk, all the logits at once, as
    eager PyTorch holds them; they are then smaller than ``h`` itself, so there is little to save
    (``scripts/gpu_check.sh`` measures how little)."""
    return triton.next_power_of_2(triton.cdiv(n_rows, triton.cdiv(vocab, dim)))


def check_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """:class:`TargetOutOfRangeError` if a target is neither ``ignore_index`` nor in
    ``0..vocab-1``. A kernel cannot raise, and an unchecked id would index outside its row of
    logits, so the ids are checked on any device -- one host transfer per call (the loss is
    computed once per micro-batch, so it costs nothing measurable). Eager only: under
    ``torch.compile`` a host sync would break the graph, and the kernel itself then masks the
    read (such a row's loss is NaN, so the loss is too)."""
    valid = targets != ignore_index
    bad = valid & ((targets < 0) | (targets >= vocab))
    n_bad = int(bad.sum())
    if n_bad:
        first = int(targets[bad][0])
        raise TargetOutOfRangeError(
            f"target {first} is out of range for vocab {vocab} ({n_bad} such target(s); "
            f"ignore_index is {ignore_index})"
        )


# ----------------------------------------------------------------------- ops and autograd


@kernel_op("jpeglm::fused_linear_cross_entropy")
def fused_linear_cross_entropy_forward(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    reduction: str,
    grad_h: bool,
    grad_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, d loss / d h, d loss / d weight)``; a gradient not asked for is an empty
    tensor. The targets are not checked here (:func:`check_targets`)."""
    _check(h, weight, targets, reduction)
    n_rows, dim = h.shape
    vocab = weight.shape[0]
    targets = targets.contiguous()
    if reduction == "mean":  # 1 / n on the device, rounded as the float 1 / n would be
        scale = 1.0 / (targets != ignore_index).sum().clamp(min=1)
    else:
        scale = torch.ones((), dtype=torch.float32, device=h.device)
    scale = scale.to(torch.float32)
    chunk = chunk_rows(n_rows, vocab, dim)
    block = min(triton.next_power_of_2(vocab), MAX_FUSED_SIZE // 2)

    dh = torch.empty(h.shape if grad_h else 0, dtype=h.dtype, device=h.device)
    dw = torch.zeros(weight.shape if grad_weight else 0, dtype=weight.dtype, device=h.device)
    losses = []
    for start in range(0, n_rows, chunk):
        end = min(start + chunk, n_rows)
        h_chunk = h[start:end]
        logits = h_chunk @ weight.t()  # (rows, vocab), becomes d loss / d logits below
        loss_rows = torch.empty(end - start, dtype=torch.float32, device=h.device)
        if not tracing(h):
            wrap_triton(_cross_entropy_kernel)[(end - start,)](
                logits, logits.stride(0), targets[start:end], loss_rows, vocab,
                ignore_index, scale, BLOCK=block, num_warps=32 if block >= 32768 else 8,
            )  # fmt: skip
        losses.append(loss_rows)
        if grad_h:
            torch.mm(logits, weight, out=dh[start:end])
        if grad_weight:
            dw.addmm_(logits.t(), h_chunk)
    loss = torch.cat(losses).sum() if losses else scale.new_zeros(())
    return loss, dh, dw


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's signature
    _, dh, dw = output
    ctx.save_for_backward(dh, dw)
    ctx.mark_non_differentiable(dh, dw)
    ctx.grads = inputs[5], inputs[6]


def _backward(ctx, grad_loss: torch.Tensor, _ddh, _ddw):  # noqa: ANN001
    # The gradients were finished in the forward; scaled by the incoming gradient out of place
    # (a traced backward may not write into its saved tensors; a second backward stays right).
    dh, dw = ctx.saved_tensors
    grad_h, grad_weight = ctx.grads
    dh = dh * grad_loss.to(dh.dtype) if grad_h else None
    dw = dw * grad_loss.to(dw.dtype) if grad_weight else None
    return dh, dw, None, None, None, None, None


fused_linear_cross_entropy_forward.register_autograd(_backward, setup_context=_setup_context)


def fused_linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """``cross_entropy(h @ weight.T, targets)`` for ``h`` (tokens, dim), ``weight`` (vocab, dim).

    Differentiable in ``h`` and ``weight``; the softmax is in float32, the logit chunks in
    ``h.dtype``. With ``reduction="mean"`` the loss is averaged over non-ignored rows (0 when
    every row is ignored). Under autocast the matmuls run in the autocast dtype, as
    ``h @ weight.T`` would. The op is ``torch.ops.jpeglm.fused_linear_cross_entropy``.
    """
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return fused_linear_cross_entropy(
                h.to(dtype), weight.to(dtype), targets, ignore_index, reduction
            )
    _check(h, weight, targets, reduction)
    if not torch.compiler.is_compiling():
        check_targets(targets, weight.shape[0], ignore_index)
    grad = torch.is_grad_enabled()
    return fused_linear_cross_entropy_forward(
        h, weight, targets, ignore_index, reduction,
        grad and h.requires_grad, grad and weight.requires_grad,
    )[0]  # fmt: skip
