"""The JPEG-LM model: a plain Llama-2 decoder over JPEG tokens, in the manner of gpt-fast.

No convolutions, no 2-D positions: token embeddings, ``n_layers`` pre-norm blocks of
(RMSNorm -> causal self-attention with rotary embeddings) and (RMSNorm -> SwiGLU MLP), a final
RMSNorm and the output projection. No biases anywhere. Written after gpt-fast: the model
is a plain ``nn.Module``; generation uses a static KV cache (:meth:`Transformer.setup_caches`,
then ``forward(idx, input_pos)`` for the prefill and for each one-token decode step).

The ops that have fast kernels (RMSNorm, RoPE, SwiGLU, linear + cross-entropy, attention) are
called through a :class:`jpeglm.model.backends.Backend`, picked once by capability (Triton kernels
and flash-attn on CUDA, the PyTorch reference elsewhere; ``JPEGLM_BACKEND`` overrides).

The hyper-parameters are :class:`jpeglm.model.args.ModelArgs`. Checkpoints are Hugging Face
Llama folders, the official JPEG-LM checkpoint included:
:func:`jpeglm.checkpoint.hf.load_pretrained` reads them and
:func:`jpeglm.checkpoint.hf.save_pretrained` writes them (the model never imports the format).
Beside the model: :mod:`jpeglm.model.kv_cache`, :mod:`jpeglm.inference.weights` (sampling) and
:mod:`jpeglm.model.activation_checkpoint` (training).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from jpeglm.inference import weights as inference_weights
from jpeglm.inference.decode_kernels import InferenceLinear
from jpeglm.model.activation_checkpoint import check_mode, context_fn
from jpeglm.model.args import ModelArgs
from jpeglm.model.backends import Backend, resolve_backend
from jpeglm.model.dtensor import copy_full_
from jpeglm.model.kv_cache import KVCache

__all__ = ["Transformer"]


# ------------------------------------------------------------------------------------ layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, ops: Backend) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.ops = ops
        self.fused: torch.Tensor | None = None  # the weight in the inference dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None and not torch.is_grad_enabled():
            return self.ops.rms_norm(x, self.fused, self.eps)
        return self.ops.rms_norm(x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """cos / sin tables, ``(max_seq_len, head_dim // 2)``, computed as HF Llama does.

    The tables stay float32 whatever dtype the model is cast to (angles at position 12k need
    it), and are recomputed after every move (``.to``, ``.to_empty``, loading onto meta).
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        cos, sin = self._tables(None)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float()
        inv_freq = 1.0 / (self.theta ** (exponent / self.head_dim))
        positions = torch.arange(self.max_seq_len, dtype=torch.int64, device=device).float()
        angles = torch.outer(positions, inv_freq)
        return angles.cos(), angles.sin()

    def reset(self, device: torch.device | str | None = None) -> None:
        """Recompute the tables (float32) on ``device``."""
        self.cos, self.sin = self._tables(torch.device(device) if device is not None else None)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        self.reset(self.cos.device)
        return self


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, ops: Backend) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.kv_cache: KVCache | None = None
        self.ops = ops
        # inference-only weights (Transformer.prepare_inference): not parameters, not saved
        self.fused: tuple[InferenceLinear, InferenceLinear] | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        kv_len: int | None = None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q_size, kv_size = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        if self.fused is not None and not torch.is_grad_enabled():  # one GEMM for q, k, v
            wqkv, wo = self.fused
            q, k, v = wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        else:
            wo = self.wo
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q = q.view(batch, seq, self.n_heads, self.head_dim)
        k = k.view(batch, seq, self.n_kv_heads, self.head_dim)
        v = v.view(batch, seq, self.n_kv_heads, self.head_dim)
        q = self.ops.rope(q, cos, sin)
        k = self.ops.rope(k, cos, sin)
        if input_pos is None:  # training / scoring: causal over the whole chunk
            y = self.ops.attention(q, k, v)
        else:  # generation: attend to the filled part of the cache, up to each query's position
            assert self.kv_cache is not None, "setup_caches() first"
            flash = self.ops.attention_impl == "flash_attn"
            y = self.kv_cache.attend(q, k, v, input_pos, mask, kv_len, flash)
        return wo(y.reshape(batch, seq, q_size))


class FeedForward(nn.Module):
    """SwiGLU MLP: ``w2(silu(w1 x) * w3 x)`` (HF: gate_proj = w1, up_proj = w3, down = w2)."""

    def __init__(self, args: ModelArgs, ops: Backend) -> None:
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)
        self.ops = ops
        self.fused: tuple[InferenceLinear, InferenceLinear] | None = None  # (w13, w2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None and not torch.is_grad_enabled():
            w13, w2 = self.fused
            gate, up = w13(x).chunk(2, dim=-1)
            return w2(self.ops.swiglu(gate, up))
        return self.w2(self.ops.swiglu(self.w1(x), self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, ops: Backend) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps, ops)
        self.attention = Attention(args, ops)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps, ops)
        self.feed_forward = FeedForward(args, ops)
        # activation checkpointing: None when off, else torch.utils.checkpoint's extra keywords
        # (selective: its context_fn; full: none -- Dynamo takes no explicit no-op context_fn)
        self.recompute: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *cache: Any) -> Any:
        """``cache``: :meth:`Attention.forward`'s generation arguments (input_pos, mask,
        kv_len), passed through.

        With activation checkpointing on, a training forward (no cache, gradients on) runs the
        block under ``torch.utils.checkpoint`` from *inside* the block's own forward, so
        ``compile=true`` (each block compiled) traces the checkpoint into the block's graph:
        torchtitan's order -- AC wraps the block, then the AC-wrapped block is compiled."""
        if self.recompute is not None and not cache and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(
                self._forward, x, cos, sin, use_reentrant=False, **self.recompute
            )
        return self._forward(x, cos, sin, *cache)

    def _forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *cache: Any) -> Any:
        h = x + self.attention(self.attention_norm(x), cos, sin, *cache)
        return h + self.feed_forward(self.ffn_norm(h))


# ------------------------------------------------------------------------------------- model


def _cache_fits(
    cache: KVCache | None, shape: tuple, dtype: torch.dtype, device: torch.device
) -> bool:
    if cache is None:
        return False
    k = cache.k_cache
    same_device = k.device.type == device.type and device.index in (None, k.device.index)
    return tuple(k.shape) == shape and k.dtype == dtype and same_device


class Transformer(nn.Module):
    """The Llama decoder. ``backend``: a name (``"auto"``, ``"triton"``, ``"torch"``), a
    :class:`~jpeglm.model.backends.Backend`, or ``None`` for the process default."""

    def __init__(self, args: ModelArgs, backend: str | Backend | None = None) -> None:
        super().__init__()
        args.validate()
        self.args = args
        self.ops = resolve_backend(backend)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, self.ops) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps, self.ops)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.rope = RotaryEmbedding(args.head_dim, args.max_seq_len, args.rope_theta)
        self.activation_checkpoint = "none"
        self.inference: dict | None = None  # prepare_inference()
        if self.output.weight.device.type != "meta":  # on meta: init after sharding / to_empty
            self.reset_parameters()

    @property
    def backend(self) -> Backend:
        return self.ops

    def set_backend(self, backend: str | Backend | None) -> None:
        """Switch every layer to another backend (weights untouched)."""
        ops = resolve_backend(backend)
        for module in self.modules():
            if hasattr(module, "ops"):
                module.ops = ops

    def set_activation_checkpointing(self, mode: str) -> None:
        """Recompute activations in the backward pass instead of keeping them (training only):
        ``"none"``, ``"full"`` or ``"selective"`` (see
        :mod:`jpeglm.model.activation_checkpoint`)."""
        check_mode(mode)
        self.activation_checkpoint = mode
        recompute = None  # built here, outside any compiled region
        if mode == "selective":
            recompute = {"context_fn": context_fn(mode)}
        elif mode == "full":
            recompute = {}
        for layer in self.layers:
            layer.recompute = recompute

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Llama / GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layers),
        norm weights 1.

        Each full parameter is drawn in turn from the default CPU generator, in
        ``named_parameters`` order, and copied in -- for a sharded (DTensor) parameter only its
        local slice. So a model on any device, sharded over any number of ranks, starts from
        the same weights for the same ``torch.manual_seed``.
        """
        std = 0.02
        for name, p in self.named_parameters():
            full = torch.empty(p.shape, dtype=torch.float32)
            if p.ndim == 1:
                full.fill_(1.0)
            elif name.endswith(("wo.weight", "w2.weight")):
                full.normal_(0.0, std / math.sqrt(2 * self.args.n_layers))
            else:
                full.normal_(0.0, std)
            copy_full_(p, full)

    # -- generation

    def setup_caches(
        self,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        reuse: bool = False,
    ) -> None:
        """Allocate static KV caches; afterwards call ``forward(idx, input_pos)``. ``reuse``:
        caches of this very shape, dtype and device are zeroed and kept (the same tensors, so
        a compiled step and its CUDA graphs see the same static inputs)."""
        if not 0 < max_seq_len <= self.args.max_seq_len:
            raise ValueError(
                f"max_seq_len {max_seq_len} must be in 1..{self.args.max_seq_len} (the model's)"
            )
        if max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        weight = self.output.weight
        dtype = dtype or weight.dtype
        device = torch.device(device or weight.device)
        shape = (max_batch_size, self.args.n_kv_heads, max_seq_len, self.args.head_dim)
        if reuse and all(_cache_fits(layer.attention.kv_cache, shape, dtype, device)
                         for layer in self.layers):  # fmt: skip
            for layer in self.layers:
                layer.attention.kv_cache.k_cache.zero_()
                layer.attention.kv_cache.v_cache.zero_()
            return
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(
                max_batch_size, max_seq_len, self.args.n_kv_heads, self.args.head_dim, dtype, device
            )

    def clear_caches(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None

    def copy_cache_row(self, rows: int, length: int, src: int = 0, start: int = 1) -> None:
        """Copy row ``src``'s first ``length`` cache slots into rows ``start .. rows-1`` of
        every layer's cache: a prompt the whole batch shares is prefilled once."""
        for layer in self.layers:
            cache = layer.attention.kv_cache
            cache.k_cache[start:rows, :, :length] = cache.k_cache[src : src + 1, :, :length]
            cache.v_cache[start:rows, :, :length] = cache.v_cache[src : src + 1, :, :length]

    # -- inference weights (built in jpeglm.inference.weights)

    def prepare_inference(self, dtype: str = "fp32") -> None:
        """Build the sampling weights (see :mod:`jpeglm.inference.weights`): fused projections
        and every linear weight in format ``dtype`` (``"fp32"``, ``"bf16"``, ``"fp16"``,
        ``"int8"``: see :class:`InferenceLinear`). Every forward without gradients (sampling,
        scoring under ``torch.no_grad``) uses them, rebuilt when the parameters have changed
        (an optimizer step, ``load_state_dict``, ``.to``); training uses the parameters.
        Parameters, their names and checkpoints are untouched."""
        inference_weights.prepare(self, dtype)

    def clear_inference(self) -> None:
        """Drop the weights of :meth:`prepare_inference`."""
        inference_weights.clear(self)

    def inference_bytes(self) -> int:
        """Bytes of the linear-layer weights a decode step reads (prepared or not)."""
        return inference_weights.linear_bytes(self)

    def param_key(self) -> tuple:
        """Changes whenever a parameter is replaced, modified in place or cast."""
        return inference_weights.param_key(self)

    # -- forward

    def forward(
        self,
        idx: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        *,
        kv_len: int | None = None,
    ) -> torch.Tensor:
        """Logits ``(batch, seq, vocab)`` for token ids ``idx`` ``(batch, seq)``.

        * ``input_pos=None``: causal over the whole sequence, positions ``0..seq-1``.
        * ``input_pos`` (``(seq,)`` long, after :meth:`setup_caches`): the positions of ``idx``
          -- ``arange(n)`` for a prefill, ``tensor([t])`` for a decode step; keys and values
          go into the cache and each query attends to every cached position up to its own.
          ``kv_len`` (a Python int > every position, default the cache size) cuts the
          attention to the first ``kv_len`` cache slots. A one-token step outside
          ``torch.compile`` reads the cache cut at its position, with no mask.
        * ``targets`` (``(batch, seq)``, ``-100`` = ignore): returns the mean cross-entropy
          instead of logits, through the fused linear + cross-entropy op, so the full logits
          are never materialised on the Triton backend.
        """
        if idx.ndim != 2:
            raise ValueError(f"idx must be (batch, seq), got shape {tuple(idx.shape)}")
        seq = idx.shape[1]
        if seq > self.args.max_seq_len:
            raise ValueError(f"{seq} tokens exceed max_seq_len {self.args.max_seq_len}")
        if input_pos is not None:
            cache = self.layers[0].attention.kv_cache
            if cache is None:
                raise RuntimeError("forward with input_pos needs setup_caches() first")
            if input_pos.shape != (seq,):
                raise ValueError(f"input_pos must be ({seq},), got {tuple(input_pos.shape)}")
            if kv_len is not None and not 0 < kv_len <= cache.k_cache.shape[2]:
                raise ValueError(f"kv_len {kv_len} outside 1..{cache.k_cache.shape[2]}")
        inf = inference_weights.fresh(self)
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(
                    f"targets {tuple(targets.shape)} must match idx {tuple(idx.shape)}"
                )
            x = self._trunk(idx, input_pos, kv_len, inf).reshape(-1, self.args.dim)
            if inf is not None:  # scoring the prepared weights (no gradients: plain logits)
                logits = inf["output"](x).float()
                return F.cross_entropy(logits, targets.reshape(-1), ignore_index=-100)
            return self.ops.linear_cross_entropy(x, self.output.weight, targets.reshape(-1))
        return self._logits(self._trunk(idx, input_pos, kv_len, inf), inf)

    def decode(
        self,
        idx: torch.Tensor,
        input_pos: torch.Tensor,
        kv_len: int | None = None,
        exact: bool = False,
    ) -> torch.Tensor:
        """The sampler's step: logits ``(batch, vocab)`` at the last of ``idx``'s positions.

        ``exact``: the caller promises consecutive positions with nothing cached past the last
        (and ``kv_len == input_pos[-1] + 1`` unless the cache kernel runs): attention reads only
        the filled slots -- ``_core``'s cache kernel for fp32 on CPU (the cut taken from
        ``input_pos``, so a compiled step stays one graph), else SDPA (unmasked for one token).
        Not ``exact``: the first ``kv_len`` slots (a static bucket) with a mask -- except a
        one-token step outside ``torch.compile``, cut at its position with no mask.
        No argument checks and no staleness check of the inference weights
        (the sampler prepares them): the body ``torch.compile(fullgraph=True)`` traces.
        """
        inf = self.inference if not torch.is_grad_enabled() else None
        return self._logits(self._trunk(idx, input_pos, kv_len, inf, exact)[:, -1], inf)

    def _logits(self, x: torch.Tensor, inf: dict | None) -> torch.Tensor:
        return self.output(x) if inf is None else inf["output"](x)

    def _trunk(
        self,
        idx: torch.Tensor,
        input_pos: torch.Tensor | None,
        kv_len: int | None,
        inf: dict | None,
        exact: bool = False,
    ) -> torch.Tensor:
        seq = idx.shape[1]
        mask = None
        if input_pos is None:
            cos, sin = self.rope.cos[:seq], self.rope.sin[:seq]
        else:
            cos, sin = self.rope.cos[input_pos], self.rope.sin[input_pos]
            if seq == 1 and not exact and not torch.compiler.is_compiling():
                # one query at p sees slots 0..p: the cache cut there needs no mask (SDPA's
                # flash backend stays open); reading p is a host sync on CUDA
                filled = int(input_pos[0]) + 1
                if kv_len is None or kv_len >= filled:
                    kv_len, exact = filled, True
            if kv_len is None:
                kv_len = self.layers[0].attention.kv_cache.k_cache.shape[2]
            if not exact:  # built once per step, shared by every layer: query i sees slots
                slots = torch.arange(kv_len, device=idx.device)  # 0 .. input_pos[i]
                mask = slots[None, :] <= input_pos[:, None]
        x = self.tok_embeddings(idx) if inf is None else F.embedding(idx, inf["embedding"])
        for layer in self.layers:  # training: no cache arguments (checkpointed if set)
            x = (
                layer(x, cos, sin)
                if input_pos is None
                else layer(x, cos, sin, input_pos, mask, kv_len)
            )
        return self.norm(x)

    # -- accounting

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``non_embedding`` drops the input table."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.args.tie_embeddings:
            n -= self.tok_embeddings.weight.numel()
        return n

    def flops_per_token(self, seq_len: int, causal: bool = True) -> float:
        """Training FLOPs per token (forward + backward): ``6 N + 12 L d T`` (PaLM appendix B)
        with N the parameters used in matmuls, the attention term halved for ``causal``
        attention (only the lower triangle of the score matrix is computed by flash kernels:
        ``6 N + 6 L d T``); ``causal=False`` gives the full-matrix convention of PaLM / nanoGPT
        MFU figures."""
        a = self.args
        attn = 12 * a.n_layers * a.dim * seq_len
        return 6 * self.num_params(non_embedding=True) + (attn / 2 if causal else attn)
