"""Generation's static key/value cache, one per layer, and attention over it.

:meth:`jpeglm.model.model.Transformer.setup_caches` gives every attention layer a :class:`KVCache`;
then each ``forward(idx, input_pos)`` writes the new keys and values at ``input_pos`` and its
queries attend to the filled part of the cache, through the fastest path that applies:
flash-attn's ``flash_attn_with_kvcache`` (CUDA, half precision), the CPU cache-attention kernel
of :mod:`jpeglm.inference.decode_kernels` (fp32, one exact step), else PyTorch's SDPA.

A one-token step never gives SDPA a mask outside ``torch.compile``: the cache is cut at the
filled length (a mask rules out the flash backend and its split-KV decode at batch 1). The
compiled step reads a static bucket of the cache, so it needs one; on CUDA it runs SDPA's math
backend, which Inductor generates code for with the mask fused (as gpt-fast's decode does).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from jpeglm.inference.decode_kernels import cache_attention, cache_attention_applies

__all__ = ["KVCache"]


class KVCache(nn.Module):
    """Static key/value cache ``(max_batch, n_kv_heads, max_seq, head_dim)`` for one layer."""

    def __init__(
        self,
        max_batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        shape = (max_batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), False)

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v ``(batch, seq, n_kv_heads, head_dim)`` at ``input_pos``; return the caches."""
        batch = k.shape[0]
        k_out, v_out = self.k_cache[:batch], self.v_cache[:batch]
        k_out[:, :, input_pos] = k.transpose(1, 2).to(k_out.dtype)
        v_out[:, :, input_pos] = v.transpose(1, 2).to(v_out.dtype)
        return k_out, v_out

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        input_pos: torch.Tensor,
        mask: torch.Tensor | None,
        kv_len: int | None,
        flash_attn: bool = False,
    ) -> torch.Tensor:
        """Write k, v ``(batch, seq, n_kv_heads, head_dim)`` at ``input_pos`` and attend the
        queries ``(batch, seq, n_heads, head_dim)`` to the cache, each up to its own position;
        returns ``(batch, seq, n_heads, head_dim)``.

        ``mask`` ``(seq, kv_len)``: which slots each query sees; ``None`` means an exact step
        (the queries are the last filled slots, nothing cached past them; ``kv_len`` needed off
        the cache kernel). ``kv_len`` cuts the attention to the first ``kv_len`` slots.
        ``flash_attn``: the backend's attention is flash-attn (used on CUDA in half precision,
        outside ``torch.compile``).
        """
        seq = q.shape[1]
        if (
            flash_attn
            and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)
            and not torch.compiler.is_compiling()
        ):
            return _flash_kvcache(q, k, v, self, input_pos)
        k_all, v_all = self.update(input_pos, k, v)
        exact = mask is None  # the queries are the last filled slots
        if exact and cache_attention_applies(q, self.k_cache):
            return cache_attention(q, self.k_cache, self.v_cache, input_pos)
        if exact and kv_len is None:
            raise ValueError("an exact step needs kv_len off the cache kernel")
        if kv_len is not None:
            k_all, v_all = k_all[:, :, :kv_len], v_all[:, :, :kv_len]
        if exact and seq > 1:  # the queries are the last `seq` of the kv_len slots
            slots = torch.arange(k_all.shape[2], device=q.device)
            mask = slots[None, :] <= input_pos[:, None]
        if mask is not None and q.is_cuda and torch.compiler.is_compiling():
            with sdpa_kernel(SDPBackend.MATH):  # Inductor codegens it, the mask fused
                return _sdpa(q, k_all, v_all, mask)
        return _sdpa(q, k_all, v_all, mask)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """SDPA of queries ``(batch, seq, n_heads, head_dim)`` over ``(batch, n_kv_heads, slots,
    head_dim)`` keys / values, ``mask`` ``(seq, slots)`` or ``None``."""
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=q.shape[2] != k.shape[1]
    ).transpose(1, 2)


def _flash_kvcache(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache, input_pos: torch.Tensor
) -> torch.Tensor:
    """flash-attn's ``flash_attn_with_kvcache``: appends k, v at ``input_pos[0]`` and attends
    causally over the filled part only (the cache is read through (batch, seq, heads, dim)
    views, last dimension contiguous). Not exercised by the CPU test suite."""
    from flash_attn import flash_attn_with_kvcache

    batch = q.shape[0]
    k_cache = cache.k_cache[:batch].transpose(1, 2)
    v_cache = cache.v_cache[:batch].transpose(1, 2)
    seqlens = input_pos[:1].to(torch.int32).expand(batch).contiguous()
    return flash_attn_with_kvcache(
        q, k_cache, v_cache, k=k.to(k_cache.dtype), v=v.to(v_cache.dtype),
        cache_seqlens=seqlens, causal=True,
    )  # fmt: skip
