"""An HF folder's ``config.json`` <-> :class:`~jpeglm.model.args.ModelArgs`: the dict
``transformers.LlamaConfig`` takes (:func:`config_from_args`) and the mapping back
(:func:`args_from_config`). The file is untrusted: every field read is type-checked and bounded
by :data:`HF_CONFIG_LIMITS`, and the whole model by :data:`HF_MAX_PARAMETERS`, before anything
is sized from it. The rest of the folder format is :mod:`jpeglm.checkpoint.hf`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from jpeglm.model.args import ModelArgs

__all__ = ["HF_CONFIG_LIMITS", "HF_MAX_PARAMETERS", "args_from_config", "config_from_args"]

# ------------------------------------------------------------------- config.json <-> ModelArgs

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


def config_from_args(args: ModelArgs, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A ``config.json`` dict for ``transformers.LlamaConfig``."""
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": args.tie_embeddings,
        "dtype": dtype_name,
        "torch_dtype": dtype_name,  # transformers < 5
    }


def args_from_config(config: dict[str, Any]) -> ModelArgs:
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
                f"config.json: {key} must be an integer, got {show(value)} ({type(value).__name__})"
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
            raise ValueError(f"config.json: {key} must be an object or null, got {show(section)}")
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
    max_seq_len = 12288 if max_seq_len is None else integer("max_position_embeddings", max_seq_len)
    head_dim = config.get("head_dim")
    if head_dim is not None and integer("head_dim", head_dim) * n_heads != dim:
        raise ValueError(
            f"config.json: head_dim {head_dim} x num_attention_heads {n_heads} != "
            f"hidden_size {dim} (decoupled head sizes are not supported)"
        )
    args = ModelArgs(
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
