"""``jpeglm convert``: any HF folder the loader reads -- the Hub's pickle layout
(``pytorch_model.bin`` or its shards, read weights-only) included -- rewritten as jpeglm's own
HF folder: sharded safetensors, ``config.json``, the tokenizer file and the ``jpeglm.json``
record, written atomically (:func:`jpeglm.checkpoint.hf.save_hf`). The weights are the same
tensors, so a model loaded from either folder at the same dtype gives the same logits bit for
bit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from jpeglm.checkpoint.files import CHECKPOINT_STATE, DEFAULT_SHARD_SIZE
from jpeglm.checkpoint.hf import load_hf_state, save_hf
from jpeglm.checkpoint.load import find_tokenizer, load_tokenizer, read_info

__all__ = ["convert"]


def _record(src: Path, tok: Any, seq_len: int) -> dict[str, Any]:
    """The ``jpeglm.json`` of the converted folder: the source's record (or the defaults, the
    paper's format), with the tokenizer's special ids and fingerprint and the context."""
    from jpeglm.data.index import tokenizer_fingerprint

    info = {k: v for k, v in read_info(src).items() if k != "source"}
    info.setdefault("seq_len", seq_len)
    if tok is not None:
        info.setdefault("bos_token_id", tok.bos_id)
        info.setdefault("eos_token_id", tok.eos_id)
        info.setdefault("tokenizer_fingerprint", tokenizer_fingerprint(tok))
    return info


def convert(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int = DEFAULT_SHARD_SIZE,
    replace: bool = False,
) -> Path:
    """Write the HF folder ``src`` (safetensors or the Hub's ``pytorch_model*.bin``) as a new
    folder ``dest``: safetensors shards of at most ``max_shard_size`` bytes in ``dtype`` (by
    default the stored one), ``config.json``, the tokenizer (``tokenizer.jpeglm`` or the
    sentencepiece ``tokenizer.model``, copied as it is) and ``jpeglm.json``. An existing
    ``dest`` is refused unless ``replace`` (and then only a folder of the files jpeglm
    writes)."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise FileNotFoundError(f"no such model folder: {src}")
    if (src / CHECKPOINT_STATE).is_file():
        raise ValueError(f"{src} is a trainer checkpoint: make an HF folder with `jpeglm export`")
    if dest.exists() and dest.resolve() == src.resolve():
        raise ValueError(f"{dest} is the folder being converted: choose a new folder")
    if dest.exists() and not replace:  # before any weight is read
        raise FileExistsError(f"{dest} exists; choose a new folder")
    tok_path = find_tokenizer(src)
    tok = load_tokenizer(tok_path) if tok_path is not None else None
    args, state = load_hf_state(src, vocab_size=None)
    if tok is not None and args.vocab_size < tok.vocab_size:
        raise ValueError(
            f"the tokenizer {tok_path} has {tok.vocab_size} tokens but the model in {src} only "
            f"{args.vocab_size}"
        )
    return save_hf(
        dest, args, state, tokenizer=tok_path, metadata=_record(src, tok, args.max_seq_len),
        replace=replace, dtype=dtype, max_shard_size=max_shard_size,
    )  # fmt: skip
