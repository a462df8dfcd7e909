"""Fused linear + cross-entropy: ``cross_entropy(h @ W.T, targets)`` without the full logits.

The output projection of a language model turns ``(tokens, dim)`` hidden states into
``(tokens, vocab)`` logits, which for long packed sequences dominate activation memory. Here the
rows are processed in chunks: for each chunk the logits are computed with one matmul, a Triton
kernel turns them *in place* into ``d loss / d logits`` (softmax minus one-hot, scaled) while
emitting each row's loss, and two more matmuls fold that into ``d h`` and ``d W``. Only one
chunk of logits exists at a time, and the gradients are finished during the forward, so the
backward just scales them by the incoming gradient (as Liger-Kernel does).

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

from ._utils import MAX_FUSED_SIZE

# ----------------------------------------------------------------------------------- kernels


@triton.jit
def _cross_entropy_kernel(
    LOGITS,
    logits_row_stride,
    TARGETS,
    LOSS,
    n_cols,
    ignore_index,
    scale,
    BLOCK: tl.constexpr,
):
    """Per row: loss = logsumexp(x) - x[y]; x <- scale * (softmax(x) - onehot(y)) in place."""
    row = tl.program_id(0).to(tl.int64)
    ptr = LOGITS + row * logits_row_stride
    y = tl.load(TARGETS + row)
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


def _count_and_check_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> int:
    """The number of non-ignored targets; :class:`TargetOutOfRangeError` if any is outside
    ``0..vocab-1``. A kernel cannot raise, and an unchecked id would index outside its row of
    logits, so the ids are checked here, on any device: both counts come back in one transfer,
    the one host sync the mean reduction needs anyway (the loss is computed once per
    micro-batch, so it costs nothing measurable)."""
    valid = targets != ignore_index
    bad = valid & ((targets < 0) | (targets >= vocab))
    n_valid, n_bad = torch.stack([valid.sum(), bad.sum()]).tolist()
    if n_bad:
        first = int(targets[bad][0])
        raise TargetOutOfRangeError(
            f"target {first} is out of range for vocab {vocab} ({n_bad} such target(s); "
            f"ignore_index is {ignore_index})"
        )
    return int(n_valid)


def fused_linear_cross_entropy_forward(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    grad_h: bool = True,
    grad_weight: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Returns ``(loss, d loss / d h, d loss / d weight)`` (the gradients ``None`` if not asked)."""
    _check(h, weight, targets, reduction)
    n_rows, dim = h.shape
    vocab = weight.shape[0]
    targets = targets.contiguous()
    n_valid = _count_and_check_targets(targets, vocab, ignore_index)
    scale = 1.0 / max(n_valid, 1) if reduction == "mean" else 1.0
    chunk = chunk_rows(n_rows, vocab, dim)
    block = min(triton.next_power_of_2(vocab), MAX_FUSED_SIZE // 2)

    dh = torch.empty_like(h) if grad_h else None
    dw = torch.zeros_like(weight) if grad_weight else None
    loss_rows = torch.empty(n_rows, dtype=torch.float32, device=h.device)
    for start in range(0, n_rows, chunk):
        end = min(start + chunk, n_rows)
        h_chunk = h[start:end]
        logits = h_chunk @ weight.t()  # (rows, vocab), becomes d loss / d logits below
        _cross_entropy_kernel[(end - start,)](
            logits, logits.stride(0), targets[start:end], loss_rows[start:end], vocab,
            ignore_index, scale, BLOCK=block, num_warps=32 if block >= 32768 else 8,
        )  # fmt: skip
        if dh is not None:
            torch.mm(logits, weight, out=dh[start:end])
        if dw is not None:
            dw.addmm_(logits.t(), h_chunk)
    return loss_rows.sum(), dh, dw


# ---------------------------------------------------------------------------------- autograd


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, ignore_index: int, reduction: str) -> torch.Tensor:
        loss, dh, dw = fused_linear_cross_entropy_forward(
            h, weight, targets, ignore_index, reduction,
            grad_h=ctx.needs_input_grad[0], grad_weight=ctx.needs_input_grad[1],
        )  # fmt: skip
        ctx.save_for_backward(dh, dw)
        ctx.backward_done = False
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.backward_done:
            raise RuntimeError("fused_linear_cross_entropy supports a single backward pass")
        ctx.backward_done = True
        dh, dw = ctx.saved_tensors
        # The gradients were finished in the forward; they are ours, so scale them in place.
        if dh is not None:
            dh = dh.mul_(grad_loss.to(dh.dtype))
        if dw is not None:
            dw = dw.mul_(grad_loss.to(dw.dtype))
        return dh, dw, None, None, None


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
    ``h @ weight.T`` would.
    """
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return fused_linear_cross_entropy(
                h.to(dtype), weight.to(dtype), targets, ignore_index, reduction
            )
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return FusedLinearCrossEntropyFunction.apply(h, weight, targets, ignore_index, reduction)
    loss, _, _ = fused_linear_cross_entropy_forward(
        h, weight, targets, ignore_index, reduction, grad_h=False, grad_weight=False
    )
    return loss
