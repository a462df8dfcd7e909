"""Loading a model for sampling: from one path -- an HF folder, a trainer checkpoint
``step_N`` or a run folder -- the model, its tokenizer and what its images are (the
``jpeglm.json`` record: image size, quality, sequence length, special ids, recommended sampling
settings), and whether an image size fits its context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from jpeglm.checkpoint import (
    list_checkpoints,
    load_train_checkpoint,
    model_args_from_state,
    read_train_state,
)
from jpeglm.checkpoint_files import CHECKPOINT_STATE, HF_METADATA, TOKENIZER_FILE, read_json
from jpeglm.model import Transformer

if TYPE_CHECKING:
    from jpeglm.tokenizer import Tokenizer

__all__ = [
    "DEFAULT_INFO",
    "LoadedModel",
    "check_context",
    "expected_tokens",
    "find_tokenizer",
    "load_model",
    "load_tokenizer",
    "read_info",
    "resolve_model",
]

#: what a model folder without ``jpeglm.json`` is taken to make: the paper's format
DEFAULT_INFO: dict[str, Any] = {
    "format": "jpeglm-model", "version": 1, "image_size": 256, "quality": 25,
    "sampling": {"temperature": 1.0, "top_k": 50, "top_p": 0.9},
}  # fmt: skip


@dataclass
class LoadedModel:
    """A model with its tokenizer and what its images are: the ``jpeglm.json`` record (image
    size, quality, sequence length, special ids, recommended sampling settings)."""

    model: Transformer
    tokenizer: Any
    info: dict[str, Any]
    folder: Path

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def quality(self) -> int:
        return int(self.info["quality"])


def resolve_model(path: str | os.PathLike) -> tuple[str, Path]:
    """What ``path`` names: ``("hf", folder)`` for an HF folder or a run folder with an
    export (``final/``), ``("dcp", step_N)`` for a trainer checkpoint or a run folder without
    one (its newest checkpoint)."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"no such model folder: {p}")
    if (p / "config.json").is_file():
        return "hf", p
    if (p / CHECKPOINT_STATE).is_file():
        return "dcp", p
    if (p / "final" / "config.json").is_file():
        return "hf", p / "final"
    cks = list_checkpoints(p)
    if cks:
        return "dcp", cks[-1]
    raise FileNotFoundError(
        f"{p} is not a model: no config.json (HF folder), {CHECKPOINT_STATE} (trainer "
        "checkpoint), final/ or step_N/ (run folder)"
    )


def read_info(folder: Path, state: dict | None = None) -> dict[str, Any]:
    """The model's ``jpeglm.json`` (or a trainer checkpoint's metadata), over the defaults."""
    info = {**DEFAULT_INFO, "sampling": dict(DEFAULT_INFO["sampling"])}
    found = None
    if state is not None:
        found = state.get("metadata")
    elif (folder / HF_METADATA).is_file():
        found = read_json(folder / HF_METADATA, limit=1 << 20)
    if isinstance(found, dict):
        for k, v in found.items():
            if k == "sampling" and isinstance(v, dict):
                info["sampling"].update(v)
            elif k != "sampling":
                info[k] = v
        info["source"] = HF_METADATA
    else:
        info["source"] = "defaults"
    for k in ("image_size", "quality") if info.get("kind", "image") == "image" else ():
        v = info.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65500:
            raise ValueError(f"{folder}: metadata {k} must be a positive integer, got {v!r}")
    return info


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer file: jpeglm's own, or the official sentencepiece ``.model``."""
    from jpeglm.tokenizer import load_file

    return load_file(path)


def find_tokenizer(folder: Path) -> Path | None:
    """The tokenizer file inside a model folder: jpeglm's own, else a sentencepiece one."""
    for name in (TOKENIZER_FILE, "tokenizer.model"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_model(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer: str | os.PathLike | None = None,
    backend: str | None = None,
) -> LoadedModel:
    """Everything sampling needs from one path: an HF folder, a trainer checkpoint ``step_N``
    or a run folder (its ``final/`` export, else its newest checkpoint). The tokenizer is the
    one inside unless ``tokenizer`` is given; the image format comes from ``jpeglm.json``
    (defaults for folders without one: 256 px, quality 25, the official checkpoint's)."""
    kind, folder = resolve_model(path)
    tok_path = Path(tokenizer) if tokenizer else find_tokenizer(folder)
    if tok_path is None:
        raise ValueError(f"no tokenizer in {folder}: pass one (--tokenizer)")
    tok = load_tokenizer(tok_path)
    if kind == "hf":
        model = Transformer.from_pretrained(folder, dtype=dtype, device=device, backend=backend)
        info = read_info(folder)
    else:
        state = read_train_state(folder)
        args = model_args_from_state(state)
        with torch.device("meta"):
            model = Transformer(args, backend=backend)
        model.to_empty(device="cpu")
        load_train_checkpoint(folder, model, None)
        model = model.to(device=device, dtype=dtype or torch.float32)
        info = read_info(folder, state)
    if model.args.vocab_size < tok.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {model.args.vocab_size}"
        )
    info.setdefault("seq_len", model.args.max_seq_len)
    return LoadedModel(model.eval(), tok, info, folder)


def expected_tokens(info: dict[str, Any], tokenizer: Tokenizer, size: int, quality: int) -> float:
    """About how many tokens one ``size`` x ``size`` image takes (BOS and EOS included): scaled
    from the trained images' mean when the metadata has it and the quality is the trained
    one, else measured on the bundled photos encoded at that size and quality."""
    per_image = info.get("tokens_per_image")
    if isinstance(per_image, (int, float)) and per_image > 0 and quality == info["quality"]:
        return float(per_image) * (size / info["image_size"]) ** 2
    from jpeglm import codec, samples

    counts = [len(tokenizer.encode(codec.encode(im, quality=quality, size=size))) + 2
              for im in samples.photo_paths()[:3]]  # fmt: skip
    return float(np.mean(counts))


def check_context(loaded: LoadedModel, size: int, quality: int) -> None:
    """Refuse up front an image size whose streams cannot fit the model's context."""
    need = expected_tokens(loaded.info, loaded.tokenizer, size, quality)
    context = loaded.model.args.max_seq_len
    if need > context:
        trained = loaded.info["image_size"]
        raise ValueError(
            f"a {size}x{size} image takes about {need:,.0f} tokens but this model's context is "
            f"{context:,}: use --size {trained} (what it was trained on) or a model with a longer "
            "context"
        )
