"""Activation checkpointing: which activations a training forward keeps for the backward pass,
and which it recomputes there (:meth:`jpeglm.model.model.Transformer.set_activation_checkpointing`).

* ``"none"``: keep everything (fastest, most memory).
* ``"full"``: keep only each block's input; the whole block runs again in backward.
* ``"selective"``: keep the outputs of the matmuls and of attention, recompute the cheap
  element-wise ops (norms, RoPE, SiLU, products) -- most of the saving of ``"full"`` on the
  element-wise tensors at a fraction of its recompute cost.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

__all__ = ["ACTIVATION_CHECKPOINT_MODES", "check_mode", "context_fn", "saved_ops"]

ACTIVATION_CHECKPOINT_MODES = ("none", "full", "selective")


def check_mode(mode: str) -> None:
    """``ValueError`` unless ``mode`` is one of :data:`ACTIVATION_CHECKPOINT_MODES`."""
    if mode not in ACTIVATION_CHECKPOINT_MODES:
        raise ValueError(
            f"activation_checkpoint must be one of {', '.join(ACTIVATION_CHECKPOINT_MODES)}, "
            f"got {mode!r}"
        )


def saved_ops() -> set:
    """Ops whose outputs selective checkpointing keeps: matmuls and attention."""
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_flash_attention_for_cpu")  # fmt: skip
    ops = {getattr(aten, n).default for n in names if hasattr(aten, n)}
    flash = getattr(torch.ops, "flash_attn", None)  # flash-attn's custom op, when installed
    for n in ("_flash_attn_forward",):
        try:
            ops.add(getattr(flash, n).default)
        except (AttributeError, RuntimeError):
            pass
    return ops


def _selective_policy(ctx, op, *args, **kwargs):  # noqa: ANN001 - torch's policy signature
    from torch.utils.checkpoint import CheckpointPolicy

    if op in _SAVED_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_SAVED_OPS: set = set()  # saved_ops(), computed on the first selective forward


def context_fn(mode: str) -> Callable[[], Any]:
    """The ``context_fn`` of ``torch.utils.checkpoint.checkpoint`` for ``mode``: selective
    checkpointing's policy, or torch's no-op for ``"full"``."""
    if mode != "selective":
        from torch.utils.checkpoint import noop_context_fn

        return noop_context_fn
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    if not _SAVED_OPS:
        _SAVED_OPS.update(saved_ops())
    return partial(create_selective_checkpoint_contexts, _selective_policy)
