"""The index of a prepared folder and the facts about its files, without torch.

:func:`jpeglm.data.prepare.prepare` writes ``index.json`` (:func:`_write_index`, with
``sources.txt`` and ``report.json``); :func:`read_index` reads it back, :func:`shard_name` and
:func:`is_own_file` name the files ``prepare`` writes, :func:`tokenizer_fingerprint` is the
hash of the tokenizer stored with the shards, and :func:`check_shard_files` checks every shard
file against its index before training reads it.

``index.json``: ``config`` (what the shards depend on, incl. ``seq_len``, ``bos_id``,
``eos_id`` and ``pad_id``), ``complete``, one entry per chunk in ``shards`` -- ``file``,
``sequences``, ``images``, ``tokens`` (the tokens of the chunk's own images, BOS and EOS
included), ``bytes`` (of their JPEG streams), ``carry_tokens`` (how many tokens it carries
into the next chunk); the last entry written also holds those tokens as ``carry`` (base64 of
little-endian uint16, what a resumed run starts the next chunk with), and the final chunk's
entry ``pad_tokens`` (and ``dropped_tokens`` without a pad id) -- and the totals
``sequences``, ``images``, ``tokens``, ``bytes``, ``pad_tokens`` (``dropped_tokens``), with
``tokens == sequences * seq_len - pad_tokens (+ dropped_tokens)``; each shard written also
records its largest token id, ``max_id`` (the trainer checks it against its tokenizer,
:func:`check_shard_files`). Indexes of older versions (a ``dropped_tokens`` per shard: each
chunk's tail was dropped; no ``max_id``: the shard is scanned) are still read, size and nesting
bounded like every untrusted JSON file.

Prepared with labels (``prepare --labels``, :mod:`jpeglm.data.labels`): ``config["labels"]``
is the shards' :class:`~jpeglm.conditioning.Conditioning` record (each image packed
``BOS COND tokens EOS``; ``tokens`` count COND too), each shard entry holds its images'
``label_counts`` and the index the total, ``label_counts`` ({class: images packed, ...,
``"(none)"``: images without a label}). Its ids reach ``Conditioning.vocab_size``, which is
what :func:`check_shard_files` must be given for such shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jpeglm._io import atomic_open, atomic_write_text, show
from jpeglm.data.labels import add_counts
from jpeglm.data.sources import SOURCES, SOURCES_HEADER

INDEX = "index.json"
REPORT = "report.json"
#: this run's figures (rates, counts, seconds), written by ``prepare`` at its end
RUN = "run.json"


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's vocabulary, stored with the shards to catch mismatches."""
    h = hashlib.sha256()
    for b, i in sorted(tokenizer.mergeable_ranks.items(), key=lambda kv: kv[1]):
        h.update(i.to_bytes(4, "little") + len(b).to_bytes(2, "little") + b)
    h.update(repr((tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id)).encode())
    # sentencepiece's rules change the ids of the same vocabulary (plain tokenizers: unchanged)
    parts = tokenizer.parts()
    if parts.dummy_prefix is not None or parts.byte_pieces is not None:
        h.update(repr((parts.dummy_prefix, parts.byte_pieces)).encode())
    return h.hexdigest()[:16]


def shard_name(chunk: int) -> str:
    """The file of shard ``chunk``."""
    return f"shard_{chunk:06d}.npy"


OWN_FILES = (INDEX, REPORT, "sources.txt", RUN)
_SHARD = re.compile(r"shard_\d{6}\.npy")


def is_own_file(name: str) -> bool:
    """Whether ``name`` is a file ``prepare`` writes (a shard, the index, the report, the
    source list): the only files whose temporary files it removes."""
    return name in OWN_FILES or _SHARD.fullmatch(name) is not None


def _write_index(out: Path, config: dict, shards: list, skipped: list,
                 names: Iterable[str] | None, final: bool, run: dict | None = None,
                 ) -> dict:  # fmt: skip
    """Write ``index.json`` (``"complete": final``); with ``final``, also ``sources.txt`` (the
    source ``names`` in order, streamed), ``report.json`` (the skipped sources) and
    ``run.json`` (the figures ``run`` of this run: rates, counts, seconds)."""
    index = {
        "config": config,
        "complete": final,
        "shards": shards,
        "sequences": sum(s["sequences"] for s in shards),
        "images": sum(s["images"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "pad_tokens": sum(s.get("pad_tokens", 0) for s in shards),
    }
    if config["pad_id"] is None:
        index["dropped_tokens"] = sum(s.get("dropped_tokens", 0) for s in shards)
    if config.get("labels") is not None:  # prepare --labels: the images packed, per class
        index["label_counts"] = add_counts(shards, config["labels"]["names"])
    index["skipped"] = skipped
    atomic_write_text(out / INDEX, json.dumps(index, indent=1) + "\n", record=True)
    if final:  # JSON strings: a name holding a newline is still one line
        with atomic_open(out / SOURCES, "w", record=True) as f:
            f.write(SOURCES_HEADER + "\n")
            for name in names or ():
                f.write(_json_name(name) + "\n")
        atomic_write_text(out / REPORT, json.dumps({"skipped": skipped}, indent=1) + "\n",
                          record=True)  # fmt: skip
        if run is not None:  # this run's figures (times: the one file a resumed run changes)
            atomic_write_text(out / RUN, json.dumps(run, indent=1) + "\n", record=True)
    return index


def _json_name(name: str) -> str:
    """A name as one line of JSON: readable UTF-8 where it can be, ``\\uXXXX`` escapes else."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(name)
    return json.dumps(name, ensure_ascii=False)


#: an index.json is read at most this large (a million shards' entries)
_INDEX_LIMIT = 256 << 20


def _read_index_file(p: Path) -> dict:
    """An ``index.json`` (untrusted): size and nesting bounded, its fields' types checked;
    ValueError naming the file otherwise."""
    from jpeglm._io import parse_json

    if p.stat().st_size > _INDEX_LIMIT:
        raise ValueError(f"{show(p)} is larger than {_INDEX_LIMIT} bytes: not a jpeglm index")
    index = parse_json(p.read_bytes(), show(p))  # nesting bounded: never a RecursionError
    shards = index.get("shards") if isinstance(index, dict) else None
    ok = (
        isinstance(index, dict)
        and isinstance(index.get("config"), dict)
        and isinstance(shards, list)
        and all(
            isinstance(x, dict) and isinstance(x.get("file"), str) and _is_count(x.get("sequences"))
            for x in shards
        )  # fmt: skip
        and _is_count(index.get("sequences"))
    )
    if not ok:
        raise ValueError(f"{show(p)} is not the index of a `jpeglm prepare` folder")
    return index


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_index(folder: str | os.PathLike) -> dict:
    """The index of a prepared folder (ValueError when missing, incomplete or not an index)."""
    p = Path(folder) / INDEX
    if not p.is_file():
        raise FileNotFoundError(f"{folder} has no {INDEX}: run `jpeglm prepare` first")
    return check_ready(folder, _read_index_file(p))


def check_ready(folder: str | os.PathLike, index: dict) -> dict:
    """``index`` (of ``folder``) if training can read it: ``complete`` (the marker of a
    finished ``prepare``) and at least one sequence; ValueError otherwise."""
    if not index.get("complete"):
        raise ValueError(f"{folder}: preparation did not finish (run `jpeglm prepare` again)")
    if index["sequences"] == 0:
        raise ValueError(f"{folder}: no full sequence of {index['config'].get('seq_len')} tokens")
    return index


def check_shard_files(folder: str | os.PathLike, index: dict, vocab_size: int) -> None:
    """Every shard file of a prepared folder is what its index says, checked before training
    reads it: a ``.npy`` of uint16 ``(sequences, seq_len)`` (from its header), whole (the file
    as long as the header says), and every token id below ``vocab_size`` (the ``max_id``
    ``prepare`` records per shard, or, for an index without it, the file scanned). ValueError
    naming the shard otherwise -- never a suggestion to load pickles."""
    seq_len = index["config"].get("seq_len")
    for entry in index["shards"]:
        if entry["sequences"] == 0:
            continue
        path = Path(folder) / entry["file"]
        if Path(entry["file"]).name != entry["file"] or not _SHARD.fullmatch(entry["file"]):
            raise ValueError(f"{show(Path(folder) / INDEX)} names a shard {entry['file']!r} that "
                             "is not a plain shard_NNNNNN.npy name")  # fmt: skip
        shape, dtype, offset = _npy_header(path)
        if dtype != np.dtype("<u2") or len(shape) != 2:
            raise ValueError(f"{show(path)} is not a shard of uint16 token sequences "
                             f"({dtype}, shape {shape}): prepare the folder again")  # fmt: skip
        want = (entry["sequences"], seq_len)
        if tuple(shape) != want:
            raise ValueError(
                f"{show(path)} holds {shape[0]} sequences of {shape[1]} tokens, but its index "
                f"says {want[0]} of {want[1]}: prepare the folder again"
            )
        size = path.stat().st_size
        if size < offset + shape[0] * shape[1] * 2:
            raise ValueError(
                f"{show(path)} is truncated ({size} bytes, its header says "
                f"{offset + shape[0] * shape[1] * 2}): prepare the folder again"
            )
        top = entry.get("max_id")
        if not _is_count(top):
            top = _max_id(path, offset, shape)
        labels = index["config"].get("labels")
        if top >= vocab_size and isinstance(labels, dict) and "names" in labels:
            raise ValueError(
                f"{show(path)} holds token id {top}, outside the {vocab_size} ids given: its "
                f"folder was prepared with --labels ({len(labels['names'])} classes over "
                f"{labels.get('base')} tokenizer ids): train a class-conditional model on it"
            )
        if top >= vocab_size:
            raise ValueError(
                f"{show(path)} holds token id {top}, outside the tokenizer's {vocab_size} ids: "
                "it was not made with this tokenizer (prepare the folder again)"
            )


def _npy_header(path: Path) -> tuple[tuple, np.dtype, int]:
    """A ``.npy`` file's shape, dtype and data offset, read from its header alone."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy version {version}")
            offset = f.tell()
    except FileNotFoundError:
        raise FileNotFoundError(f"{show(path)} is missing: prepare the folder again") from None
    except OSError as e:
        raise ValueError(f"cannot read {show(path)}: {e.strerror}") from e
    except Exception as e:  # noqa: BLE001 - numpy's own errors on a garbage header: one line
        raise ValueError(
            f"{show(path)} is not a .npy shard (unreadable header: prepare the folder again)"
        ) from e
    if fortran or dtype.hasobject:
        raise ValueError(f"{show(path)} is not a shard of uint16 token sequences")
    return tuple(shape), dtype, offset


def _max_id(path: Path, offset: int, shape: tuple) -> int:
    """The largest token id in a shard file, read in pieces (memory-mapped)."""
    arr = np.memmap(path, dtype="<u2", mode="r", offset=offset, shape=shape)
    rows = max(1, (16 << 20) // max(1, 2 * shape[1]))
    top = 0
    for i in range(0, shape[0], rows):
        top = max(top, int(arr[i : i + rows].max(initial=0)))
    return top
