"""Plain PyTorch versions of the kernel ops: the specification, and the CPU / no-Triton path.

Every function here is what the matching Triton op of :mod:`jpeglm.kernels` (the top-level
``kernels/`` folder) computes, written as directly as possible. Tensors follow the model's
layouts: activations ``(..., dim)``, q/k ``(batch, seq, heads, head_dim)``, rotary tables
``(seq, head_dim // 2)`` in float32. Imports torch only (never Triton or ``jpeglm._core``);
``jpeglm.reference.kernels`` re-exports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["fused_linear_cross_entropy", "rms_norm", "rope", "swiglu"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Llama RMSNorm: normalise in float32, cast back to ``x.dtype``, then scale by ``weight``."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embeddings in the Hugging Face ``rotate_half`` layout (out of place).

    ``x`` is q or k, ``(batch, seq, heads, head_dim)``. Dimension ``i`` of the first half of a
    head pairs with dimension ``i + head_dim / 2``; ``cos`` / ``sin`` hold one angle per pair and
    position, shape ``(seq, head_dim // 2)``. Equal to HF's ``x * cos + rotate_half(x) * sin``.
    """
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[:, None, :].float(), sin[:, None, :].float()  # broadcast over batch and heads
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The SwiGLU gate ``silu(gate) * up``, computed in float32."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def fused_linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """``cross_entropy(h @ weight.T, targets)`` over ``(tokens, dim)`` rows, float32 softmax.

    Materialises the full logits (this is the reference); rows whose target is
    ``ignore_index`` do not count. With ``reduction="mean"`` and every row ignored the loss is
    0 (as in the fused kernel), not NaN.
    """
    logits = (h @ weight.t()).float()
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return loss
    if reduction == "mean":
        return loss / (targets != ignore_index).sum().clamp(min=1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
