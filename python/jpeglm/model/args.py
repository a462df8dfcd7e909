"""The decoder's hyper-parameters: :class:`ModelArgs` (a dataclass, checked on creation) and the
named sizes of :data:`CONFIGS` (``ModelArgs.from_name("tiny")``). The model itself is
:class:`jpeglm.model.model.Transformer`; the Hugging Face ``config.json`` mapping is
:mod:`jpeglm.checkpoint.hf_config`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["CONFIGS", "ModelArgs"]


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
