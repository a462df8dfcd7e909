"""The JPEG-LM model: a plain Llama-2 decoder over JPEG tokens, in one readable file.

No convolutions, no 2-D positions: token embeddings, ``n_layers`` pre-norm blocks of
(RMSNorm -> causal self-attention with rotary embeddings) and (RMSNorm -> SwiGLU MLP), a final
RMSNorm and the output projection. No biases anywhere. Written after gpt-fast: the model
is a plain ``nn.Module``; generation uses a static KV cache (:meth:`Transformer.setup_caches`,
then ``forward(idx, input_pos)`` for the prefill and for each one-token decode step).

The ops that have fast kernels (RMSNorm, RoPE, SwiGLU, linear + cross-entropy, attention) are
called through a :class:`jpeglm.backends.Backend`, picked once by capability (Triton kernels
and flash-attn on CUDA, the PyTorch reference elsewhere; ``JPEGLM_BACKEND`` overrides).

Checkpoints are Hugging Face Llama folders (``config.json`` + safetensors, sharded or not):
:meth:`Transformer.from_pretrained` reads them -- including the official JPEG-LM checkpoint,
a plain ``LlamaForCausalLM`` -- and :meth:`Transformer.save_pretrained` writes folders that
``transformers.LlamaForCausalLM.from_pretrained`` loads. The rotary layout is HF's
``rotate_half`` one, so weights move across without any permutation. Pickle files are never
loaded.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from jpeglm.backends import Backend, resolve_backend
from jpeglm.inference import (
    INFERENCE_DTYPES,
    InferenceLinear,
    cache_attention,
    cache_attention_applies,
    inference_act_dtype,
)

__all__ = [
    "ACTIVATION_CHECKPOINT_MODES",
    "CONFIGS",
    "INFERENCE_DTYPES",
    "InferenceLinear",
    "KVCache",
    "ModelArgs",
    "Transformer",
    "copy_full_",
]


def _find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


# ------------------------------------------------------------------------------------ config


@dataclass
class ModelArgs:
    """Hyper-parameters of the decoder. ``None`` fields are derived in ``__post_init__``."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads (plain MHA)
    hidden_dim: int | None = None  # SwiGLU width; None = Llama's 8/3 * dim rounded up
    multiple_of: int = 256
    vocab_size: int = 323  # 320 BPE tokens + specials; take it from the tokenizer
    max_seq_len: int = 12288
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None and isinstance(self.dim, int) and self.dim > 0:
            self.hidden_dim = _find_multiple(int(8 * self.dim / 3), self.multiple_of)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "vocab_size",
                     "max_seq_len", "multiple_of"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelArgs.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(
                f"ModelArgs: dim ({self.dim}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelArgs: n_heads ({self.n_heads}) must be divisible by n_kv_heads "
                f"({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"ModelArgs: head_dim = dim / n_heads = {self.head_dim} must be even for "
                "rotary embeddings"
            )
        if not self.norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(
                f"ModelArgs: norm_eps ({self.norm_eps}) and rope_theta ({self.rope_theta}) "
                "must be positive"
            )

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelArgs:
        """A named size (see :data:`CONFIGS`), with any field overridden by keyword."""
        if name not in CONFIGS:
            raise ValueError(f"unknown model size {name!r}; known: {', '.join(CONFIGS)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown ModelArgs field(s): {', '.join(sorted(unknown))}")
        return cls(**{**CONFIGS[name], **overrides})

    # -- Hugging Face LlamaConfig <-> ModelArgs

    def to_hf_config(self, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        """A ``config.json`` dict for ``transformers.LlamaConfig``."""
        dtype_name = str(dtype).removeprefix("torch.")
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "intermediate_size": self.hidden_dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_seq_len,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,  # transformers < 5
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": self.tie_embeddings,
            "dtype": dtype_name,
            "torch_dtype": dtype_name,  # transformers < 5
        }

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelArgs:
        """Map a HF Llama ``config.json`` dict; refuse features this model does not have.

        The file is untrusted, so nothing is sized from it unchecked: every field read must have
        its JSON type (integers are JSON integers -- not floats such as ``1e12`` or ``64.0``,
        strings or booleans; ``rms_norm_eps`` / ``rope_theta`` finite positive numbers;
        ``tie_word_embeddings`` and the bias flags booleans) and lie within
        :data:`HF_CONFIG_LIMITS`, and the whole model within :data:`HF_MAX_PARAMETERS`
        parameters. Each problem is one ``ValueError`` line naming the field.
        """
        if not isinstance(config, dict):
            raise ValueError(f"config.json must hold a JSON object, got {type(config).__name__}")

        def show(value: Any) -> str:
            text = repr(value)
            return text if len(text) <= 40 else text[:37] + "..."

        def integer(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"config.json: {key} must be an integer, got {show(value)} "
                    f"({type(value).__name__})"
                )
            if not 1 <= value <= HF_CONFIG_LIMITS[key]:
                raise ValueError(
                    f"config.json: {key} = {show(value)} is outside 1..{HF_CONFIG_LIMITS[key]}"
                )
            return value

        def number(key: str, value: Any) -> float:
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(
                    f"config.json: {key} must be a finite positive number, got {show(value)}"
                )
            return float(value)

        def flag(key: str) -> bool:
            value = config.get(key)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"config.json: {key} must be true or false, got {show(value)}")
            return bool(value)

        def text(key: str, default: str) -> str:
            value = config.get(key, default)
            if not isinstance(value, str):
                raise ValueError(f"config.json: {key} must be a string, got {show(value)}")
            return value

        if text("model_type", "llama") != "llama":
            raise ValueError(f"config.json: model_type {show(config['model_type'])} is not 'llama'")
        required = ("hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "vocab_size")  # fmt: skip
        missing = [k for k in required if config.get(k) is None]
        if missing:
            raise ValueError(f"config.json is missing {', '.join(missing)}")
        if text("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act {show(config['hidden_act'])} is not 'silu'")
        if flag("attention_bias") or flag("mlp_bias"):
            raise ValueError("config.json: attention/MLP biases are not supported")
        sections = {}
        for key in ("rope_parameters", "rope_scaling"):  # transformers >= 5 / < 5
            section = config.get(key)
            if section is not None and not isinstance(section, dict):
                raise ValueError(
                    f"config.json: {key} must be an object or null, got {show(section)}"
                )
            sections[key] = section or {}
            rope_type = sections[key].get("rope_type", sections[key].get("type", "default"))
            if rope_type != "default":
                raise ValueError(f"config.json: rope type {show(rope_type)} is not supported")
        rope = sections["rope_parameters"]
        theta = config.get("rope_theta")
        key = "rope_theta"
        if theta is None:
            theta, key = rope.get("rope_theta", 10000.0), "rope_parameters.rope_theta"
        theta = number(key, theta)
        eps = config.get("rms_norm_eps")
        eps = 1e-6 if eps is None else number("rms_norm_eps", eps)

        dim = integer("hidden_size", config["hidden_size"])
        n_layers = integer("num_hidden_layers", config["num_hidden_layers"])
        n_heads = integer("num_attention_heads", config["num_attention_heads"])
        hidden_dim = integer("intermediate_size", config["intermediate_size"])
        vocab_size = integer("vocab_size", config["vocab_size"])
        n_kv_heads = config.get("num_key_value_heads")
        n_kv_heads = n_heads if n_kv_heads is None else integer("num_key_value_heads", n_kv_heads)
        max_seq_len = config.get("max_position_embeddings")
        max_seq_len = (
            12288 if max_seq_len is None else integer("max_position_embeddings", max_seq_len)
        )
        head_dim = config.get("head_dim")
        if head_dim is not None and integer("head_dim", head_dim) * n_heads != dim:
            raise ValueError(
                f"config.json: head_dim {head_dim} x num_attention_heads {n_heads} != "
                f"hidden_size {dim} (decoupled head sizes are not supported)"
            )
        args = cls(
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            hidden_dim=hidden_dim,
            vocab_size=vocab_size,
            max_seq_len=max_seq_len,
            norm_eps=eps,
            rope_theta=theta,
            tie_embeddings=flag("tie_word_embeddings"),
        )
        rope_table = max_seq_len * args.head_dim  # float32 cos + sin tables, built on load
        if rope_table > HF_CONFIG_LIMITS["max_position_embeddings x head_dim"]:
            raise ValueError(
                f"config.json: max_position_embeddings {max_seq_len} x head_dim {args.head_dim} "
                f"is over {HF_CONFIG_LIMITS['max_position_embeddings x head_dim']} (rotary tables)"
            )
        kv = n_kv_heads * args.head_dim
        per_layer = 2 * dim * dim + 2 * dim * kv + 3 * dim * hidden_dim + 2 * dim
        total = n_layers * per_layer + vocab_size * dim * (1 if args.tie_embeddings else 2) + dim
        if total > HF_MAX_PARAMETERS:
            raise ValueError(
                f"config.json: num_hidden_layers {n_layers}, hidden_size {dim}, intermediate_size "
                f"{hidden_dim} and vocab_size {vocab_size} make {total:.3g} parameters, more than "
                f"the {HF_MAX_PARAMETERS:.0e} accepted"
            )
        return args


#: Upper bounds on the sizes an untrusted HF ``config.json`` may ask for (each also >= 1):
#: generous for any Llama (Llama 3.1 405B: 126 layers, hidden 16384, intermediate 53248,
#: 128 heads, vocab 128256, 131072 positions), small enough that a hostile file cannot make
#: the loader allocate without end. ``max_position_embeddings x head_dim`` bounds the rotary
#: tables (float32 cos + sin: 4 bytes each, 1 GiB at the limit).
HF_CONFIG_LIMITS: dict[str, int] = {
    "num_hidden_layers": 1024,
    "hidden_size": 2**17,
    "intermediate_size": 2**17,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 2**17,
    "vocab_size": 2**20,
    "max_position_embeddings": 2**20,
    "max_position_embeddings x head_dim": 2**28,
}
#: Upper bound on the parameter count of a model loaded from a HF ``config.json`` (2e11: 30x
#: the 7B JPEG-LM), computed from the config before anything is allocated.
HF_MAX_PARAMETERS = 200_000_000_000

# Named sizes. Parameter counts are for the default vocabulary (323).
CONFIGS: dict[str, dict[str, Any]] = {
    # 0.13M: CPU tests. GQA (4 query heads share 2 key/value heads) so that path is exercised.
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=176),
    # 28M: CPU demos.
    "small": dict(dim=512, n_layers=8, n_heads=8),
    # 114M: GPT-2-small-sized experiments.
    "base": dict(dim=768, n_layers=16, n_heads=12),
    # 1.03B.
    "1B": dict(dim=2048, n_layers=20, n_heads=16, hidden_dim=5632),
    # 6.5B: Llama-2 7B (its 32,000-token vocabulary replaced by the JPEG one), as in the paper.
    "7B": dict(dim=4096, n_layers=32, n_heads=32, hidden_dim=11008),
}


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
            cache = self.kv_cache
            assert cache is not None, "setup_caches() first"
            if (
                self.ops.attention_impl == "flash_attn"
                and q.is_cuda
                and q.dtype in (torch.float16, torch.bfloat16)
                and not torch.compiler.is_compiling()
            ):
                y = _flash_kvcache(q, k, v, cache, input_pos)
            else:
                k_all, v_all = cache.update(input_pos, k, v)
                exact = mask is None  # the queries are the last filled slots
                if exact and cache_attention_applies(q, cache.k_cache):
                    y = cache_attention(q, cache.k_cache, cache.v_cache, input_pos)
                    return wo(y.reshape(batch, seq, q_size))
                if exact and kv_len is None:
                    raise ValueError("an exact step needs kv_len off the cache kernel")
                if kv_len is not None:
                    k_all, v_all = k_all[:, :, :kv_len], v_all[:, :, :kv_len]
                if exact and seq > 1:  # the queries are the last `seq` of the kv_len slots
                    slots = torch.arange(k_all.shape[2], device=x.device)
                    mask = slots[None, :] <= input_pos[:, None]
                y = F.scaled_dot_product_attention(
                    q.transpose(1, 2),
                    k_all,
                    v_all,
                    attn_mask=mask,
                    enable_gqa=self.n_heads != self.n_kv_heads,
                ).transpose(1, 2)
        return wo(y.reshape(batch, seq, q_size))


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

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        kv_len: int | None = None,
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, input_pos, mask, kv_len)
        return h + self.feed_forward(self.ffn_norm(h))


# ------------------------------------------------------------------ activation checkpointing

ACTIVATION_CHECKPOINT_MODES = ("none", "full", "selective")


def _saved_ops() -> set:
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


_SAVED_OPS: set = set()


def _ac_context(model: Transformer):
    if model.activation_checkpoint != "selective":
        from torch.utils.checkpoint import noop_context_fn

        return noop_context_fn
    from functools import partial

    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    if not _SAVED_OPS:
        _SAVED_OPS.update(_saved_ops())
    return partial(create_selective_checkpoint_contexts, _selective_policy)


@torch.no_grad()
def copy_full_(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the full-size tensor ``full`` into ``param``: all of it, or for a sharded DTensor
    (FSDP2) just this rank's slice, cut locally -- no communication."""
    try:
        from torch.distributed.tensor import DTensor, distribute_tensor
    except ImportError:  # torch built without distributed
        DTensor = ()  # noqa: N806
    if isinstance(param, DTensor):
        local = distribute_tensor(
            full.to(param.device, param.dtype), param.device_mesh, param.placements,
            src_data_rank=None,
        )  # fmt: skip
        param.to_local().copy_(local.to_local())
    else:
        param.copy_(full)


# ------------------------------------------------------------------------------------- model


class Transformer(nn.Module):
    """The Llama decoder. ``backend``: a name (``"auto"``, ``"triton"``, ``"torch"``), a
    :class:`~jpeglm.backends.Backend`, or ``None`` for the process default."""

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
        """Recompute activations in the backward pass instead of keeping them (training only).

        * ``"none"``: keep everything (fastest, most memory).
        * ``"full"``: keep only each block's input; the whole block runs again in backward.
        * ``"selective"``: keep the outputs of the matmuls and of attention, recompute the
          cheap element-wise ops (norms, RoPE, SiLU, products) -- most of the saving of
          ``"full"`` on the element-wise tensors at a fraction of its recompute cost.
        """
        if mode not in ACTIVATION_CHECKPOINT_MODES:
            raise ValueError(
                f"activation_checkpoint must be one of {', '.join(ACTIVATION_CHECKPOINT_MODES)}, "
                f"got {mode!r}"
            )
        self.activation_checkpoint = mode

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
    ) -> None:
        """Allocate static KV caches; afterwards call ``forward(idx, input_pos)``."""
        if not 0 < max_seq_len <= self.args.max_seq_len:
            raise ValueError(
                f"max_seq_len {max_seq_len} must be in 1..{self.args.max_seq_len} (the model's)"
            )
        if max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        weight = self.output.weight
        dtype = dtype or weight.dtype
        device = device or weight.device
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(
                max_batch_size, max_seq_len, self.args.n_kv_heads, self.args.head_dim, dtype, device
            )

    def clear_caches(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None

    # -- inference weights

    def prepare_inference(self, dtype: str = "fp32") -> None:
        """Build the sampling weights: fused ``wqkv`` (q, k, v stacked) and ``w13`` (gate, up
        stacked) projections and every linear weight in format ``dtype`` (``"fp32"``,
        ``"bf16"``, ``"fp16"``, ``"int8"``: see :class:`InferenceLinear`), norms and embeddings
        in the matching activation dtype.

        They are used by every forward run without gradients (sampling, scoring under
        ``torch.no_grad``); with gradients enabled -- training -- the parameters are used as
        before. Parameters, their names and checkpoints are untouched. The weights are copies:
        when the parameters change (an optimizer step, ``load_state_dict``, ``.to``) the next
        gradient-free forward rebuilds them. :meth:`clear_inference` drops them.
        """
        act = inference_act_dtype(dtype, self.output.weight.dtype)
        for layer in self.layers:
            a, f = layer.attention, layer.feed_forward
            qkv = torch.cat([a.wq.weight, a.wk.weight, a.wv.weight]).detach()
            a.fused = (InferenceLinear(qkv, dtype, act), InferenceLinear(a.wo.weight, dtype, act))
            w13 = torch.cat([f.w1.weight, f.w3.weight]).detach()
            f.fused = (InferenceLinear(w13, dtype, act), InferenceLinear(f.w2.weight, dtype, act))
            layer.attention_norm.fused = layer.attention_norm.weight.detach().to(act)
            layer.ffn_norm.fused = layer.ffn_norm.weight.detach().to(act)
        self.norm.fused = self.norm.weight.detach().to(act)
        self.inference = {
            "dtype": dtype,
            "act_dtype": act,
            "key": self._param_key(),
            "embedding": self.tok_embeddings.weight.detach().to(act),
            "output": InferenceLinear(self.output.weight, dtype, act),
        }

    def copy_cache_row(self, rows: int, length: int) -> None:
        """Copy row 0's first ``length`` cache slots into rows ``1 .. rows-1`` of every
        layer's cache: a prompt the whole batch shares is prefilled once."""
        for layer in self.layers:
            cache = layer.attention.kv_cache
            cache.k_cache[1:rows, :, :length] = cache.k_cache[:1, :, :length]
            cache.v_cache[1:rows, :, :length] = cache.v_cache[:1, :, :length]

    def clear_inference(self) -> None:
        """Drop the weights of :meth:`prepare_inference`."""
        for m in self.modules():
            if isinstance(m, (Attention, FeedForward, RMSNorm)):
                m.fused = None
        self.inference = None

    def inference_bytes(self) -> int:
        """Bytes of the linear-layer weights a decode step reads (prepared or not)."""
        if self.inference is None:
            return sum(
                m.weight.numel() * m.weight.element_size()
                for m in self.modules()
                if isinstance(m, nn.Linear)
            )
        linears = [self.inference["output"]]
        for layer in self.layers:
            linears += [*layer.attention.fused, *layer.feed_forward.fused]
        return sum(lin.nbytes() for lin in linears)

    def _param_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters())

    def _fresh_inference(self) -> dict | None:
        """The inference weights if they exist and gradients are off, rebuilt when stale."""
        inf = self.inference
        if inf is None or torch.is_grad_enabled():
            return None
        if inf["key"] != self._param_key():
            self.prepare_inference(inf["dtype"])
        return self.inference

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
          attention to the first ``kv_len`` cache slots.
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
        inf = self._fresh_inference()
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
            if kv_len is None:
                kv_len = self.layers[0].attention.kv_cache.k_cache.shape[2]
            if not exact:  # built once per step, shared by every layer: query i sees slots
                slots = torch.arange(kv_len, device=idx.device)  # 0 .. input_pos[i]
                mask = slots[None, :] <= input_pos[:, None]
        x = self.tok_embeddings(idx) if inf is None else F.embedding(idx, inf["embedding"])
        recompute = (
            self.activation_checkpoint != "none" and input_pos is None and torch.is_grad_enabled()
        )
        for layer in self.layers:
            if recompute:
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, cos, sin, use_reentrant=False, context_fn=_ac_context(self)
                )
            else:
                x = layer(x, cos, sin, input_pos, mask, kv_len)
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

    # -- Hugging Face checkpoints (the I/O lives in jpeglm.checkpoint)

    def _hf_names(self) -> dict[str, str]:
        """Our parameter name -> HF ``LlamaForCausalLM`` name."""
        from jpeglm.checkpoint import hf_names

        return hf_names(self.args)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        backend: str | Backend | None = None,
        vocab_size: int | None = None,
    ) -> Transformer:
        """Load a HF Llama checkpoint folder (``config.json`` + ``model.safetensors``, or
        shards listed in ``model.safetensors.index.json``).

        ``dtype`` defaults to the stored dtype. ``vocab_size``, when given (the tokenizer's),
        must equal the checkpoint's. Every tensor is checked: missing, unexpected or wrongly
        shaped ones raise ``ValueError`` naming them.
        """
        from jpeglm.checkpoint import load_hf_state

        args, state = load_hf_state(path, device=device, vocab_size=vocab_size)
        with torch.device("meta"):
            model = cls(args, backend=backend)
        dtype = dtype or state["tok_embeddings.weight"].dtype
        state = {k: v.to(dtype) for k, v in state.items()}
        if args.tie_embeddings:
            state["output.weight"] = state["tok_embeddings.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        if args.tie_embeddings:
            model.output.weight = model.tok_embeddings.weight
        model.rope.reset(device)  # the tables were built on meta
        return model

    def save_pretrained(
        self,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        max_shard_size: int = 5 * 2**30,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        """Write a HF Llama folder: ``config.json`` and ``model.safetensors`` (or shards of at
        most ``max_shard_size`` bytes plus ``model.safetensors.index.json``), each atomically.

        ``extra_config`` adds keys to ``config.json`` (e.g. ``bos_token_id``). Shards of an
        earlier save with a different layout are removed afterwards.
        """
        from jpeglm.checkpoint import save_hf_files

        state = dict(self.named_parameters(remove_duplicate=False))
        save_hf_files(path, self.args, state, dtype=dtype or self.output.weight.dtype,
                      max_shard_size=max_shard_size, extra_config=extra_config)  # fmt: skip
