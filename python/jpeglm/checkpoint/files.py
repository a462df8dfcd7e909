"""What both kinds of checkpoint folder share: the names of jpeglm's files in them, reading
their (untrusted) JSON files, and putting a finished folder into place atomically.

The two kinds are the HF folder (:mod:`jpeglm.checkpoint.hf`) and the trainer checkpoint ``step_N``
(:mod:`jpeglm.checkpoint.dcp`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from jpeglm._io import parse_json

__all__ = [
    "index_shards",
    "CHECKPOINT_STATE",
    "DEFAULT_SHARD_SIZE",
    "HF_METADATA",
    "SP_TOKENIZER",
    "TOKENIZER_FILE",
    "first_names",
    "fsync_dir",
    "read_json",
    "swap_into_place",
]

CHECKPOINT_STATE = "train_state.json"  #: the trainer state file of a step_N folder
HF_METADATA = "jpeglm.json"  #: jpeglm's metadata file in an HF folder
TOKENIZER_FILE = "tokenizer.jpeglm"  #: the tokenizer copy in both kinds of folder
SP_TOKENIZER = "tokenizer.model"  #: the official (sentencepiece) tokenizer of a Hub folder
DEFAULT_SHARD_SIZE = 5 * 2**30  #: bytes per safetensors file of an HF folder, by default


def read_json(path: str | os.PathLike, limit: int = 16 << 20) -> dict:
    """A checkpoint's JSON file, refused when oversized, nested deeper than
    :data:`jpeglm._io.MAX_NESTING` or not a JSON object (hostile files)."""
    path = Path(path)
    if path.stat().st_size > limit:
        raise ValueError(f"{path} is larger than {limit} bytes: not a checkpoint file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    obj = parse_json(text, str(path))  # nesting bounded: one line, never a RecursionError
    if not isinstance(obj, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return obj


def first_names(names: list[str], n: int = 5) -> str:
    """The first ``n`` of ``names`` for an error message, with how many more there are."""
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (new and renamed files) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` folder to ``final``; an older ``final`` is moved aside first
    and removed after (a crash in between leaves one of the two, never a torn folder)."""
    old = final.parent / f".old_{final.name}.{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def index_shards(index: Path, suffix: str) -> list[Path]:
    """The shard files a sharded folder's index (``*.index.json``, untrusted) lists: its
    ``weight_map`` must be a non-empty object of tensor name -> file name strings, every file
    name a plain ``*{suffix}`` name inside the index's folder (no directories, ``..`` or
    absolute paths) and every file present; anything else is refused before any is opened."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no weight_map (an object of tensor name -> file name)")
    odd = [repr(k) for k, v in weight_map.items() if not isinstance(v, str)]
    if odd:
        raise ValueError(f"{index}: weight_map file names must be strings (see {first_names(odd)})")
    names = sorted(set(weight_map.values()))
    bad = [repr(n)[:80] for n in names
           if Path(n).name != n or n.startswith(".") or not n.endswith(suffix)]  # fmt: skip
    if bad:
        raise ValueError(
            f"{index} lists shard files that are not plain *{suffix} names in the folder: "
            f"{first_names(bad)}"
        )
    files = [index.parent / n for n in names]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise FileNotFoundError(f"{index} lists shards that do not exist: {first_names(absent)}")
    return files
