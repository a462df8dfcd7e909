"""Which implementation of each model op runs: chosen once, in this one place.

Two backends exist:

* ``"triton"`` -- the Triton kernels of :mod:`jpeglm.kernels` (RMSNorm, RoPE -- out of
  place -- fused SwiGLU, chunked linear + cross-entropy), each a ``torch.library`` op with
  its gradient (``torch.library.triton_op`` on a GPU: ``torch.compile`` traces them whole)
  -- and flash-attn 2 for causal attention when it is importable (else
  ``scaled_dot_product_attention``). Chosen automatically on CUDA when Triton imports.
* ``"torch"`` -- the plain PyTorch reference ops of :mod:`jpeglm.reference.kernels` and
  ``scaled_dot_product_attention``. Chosen everywhere else; what ``torch.compile`` sees best.

``JPEGLM_BACKEND=triton|torch|auto`` overrides the choice. Forcing ``triton`` without CUDA runs
the kernels in Triton's interpreter, which needs ``TRITON_INTERPRET=1`` in the environment
before Triton is first imported (tests do this). Under the Triton backend a tensor on a device
the kernels cannot run on (CPU without the interpreter) falls back to the reference op.

Nothing here imports Triton, flash-attn or ``jpeglm._core`` until the backend is resolved, and
the codec and tokenizer never import this module.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from jpeglm.reference import kernels as reference

__all__ = ["Backend", "BACKEND_NAMES", "resolve_backend"]

BACKEND_NAMES = ("auto", "triton", "torch")


@dataclass(frozen=True)
class Backend:
    """The ops the model calls. Layouts follow :mod:`jpeglm.reference.kernels`."""

    name: str  # "triton" or "torch"
    attention_impl: str  # "flash_attn" or "sdpa"
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    # (x (batch, seq, heads, head_dim), cos, sin) -> rotated x, a new tensor: never in place
    # (selective activation checkpointing keeps x, the q / k matmul's output, for recompute)
    rope: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    swiglu: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # (h (tokens, dim), weight (vocab, dim), targets (tokens,)) -> mean loss over non-ignored.
    linear_cross_entropy: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    # causal self-attention, q (batch, seq, heads, head_dim), k/v (batch, seq, kv_heads, head_dim).
    attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------- attention


def sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention via ``scaled_dot_product_attention``; (B, T, H, D) in and out."""
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=True,
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return y.transpose(1, 2)


def _flash_attn_causal() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    from flash_attn import flash_attn_func

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # flash-attn takes (B, T, H, D) directly and handles GQA; fp16/bf16 on CUDA only.
        if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            return flash_attn_func(q, k, v, causal=True)
        return sdpa_causal(q, k, v)

    return attention


# ------------------------------------------------------------------------------- resolution


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _on_kernel_device(kernel: Callable, fallback: Callable) -> Callable:
    """``kernel`` where Triton runs (CUDA; anywhere under the interpreter), else ``fallback``."""
    if _interpreting():
        return kernel

    def op(x: torch.Tensor, *args):
        return kernel(x, *args) if x.is_cuda else fallback(x, *args)

    op.__name__ = getattr(kernel, "__name__", "op")
    return op


def _triton_backend() -> Backend:
    if not torch.cuda.is_available() and not _interpreting():
        raise RuntimeError(
            "the triton backend needs CUDA; to run its kernels on CPU set TRITON_INTERPRET=1 "
            "in the environment before triton is first imported"
        )
    if importlib.util.find_spec("triton") is None:
        raise RuntimeError("the triton backend needs the 'triton' package (pip install triton)")
    from jpeglm.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
    from jpeglm.kernels.rms_norm import rms_norm
    from jpeglm.kernels.rope import rope
    from jpeglm.kernels.swiglu import swiglu

    attention_impl, attention = "sdpa", sdpa_causal
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        try:
            attention, attention_impl = _flash_attn_causal(), "flash_attn"
        except ImportError:  # installed but built for another torch / CUDA
            pass
    return Backend(
        name="triton",
        attention_impl=attention_impl,
        rms_norm=_on_kernel_device(rms_norm, reference.rms_norm),
        rope=_on_kernel_device(rope, reference.rope),
        swiglu=_on_kernel_device(swiglu, reference.swiglu),
        linear_cross_entropy=_on_kernel_device(
            fused_linear_cross_entropy, reference.fused_linear_cross_entropy
        ),
        attention=attention,
    )


def _torch_backend() -> Backend:
    return Backend(
        name="torch",
        attention_impl="sdpa",
        rms_norm=reference.rms_norm,
        rope=reference.rope,
        swiglu=reference.swiglu,
        linear_cross_entropy=reference.fused_linear_cross_entropy,
        attention=sdpa_causal,
    )


def _auto_name() -> str:
    if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "torch"


@functools.cache
def _build(name: str) -> Backend:
    return _triton_backend() if name == "triton" else _torch_backend()


def resolve_backend(name: str | Backend | None = None) -> Backend:
    """The backend called ``name`` (``"auto"``, ``"triton"``, ``"torch"``), built once per name.

    ``None`` means the ``JPEGLM_BACKEND`` environment variable, else ``"auto"``: Triton on CUDA
    when it imports, the PyTorch reference otherwise. A :class:`Backend` is returned as is.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        name = os.environ.get("JPEGLM_BACKEND", "").strip().lower() or "auto"
        source = f"JPEGLM_BACKEND={name!r}"
    else:
        source = f"backend {name!r}"
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown {source}: expected one of {', '.join(BACKEND_NAMES)}")
    return _build(_auto_name() if name == "auto" else name)
