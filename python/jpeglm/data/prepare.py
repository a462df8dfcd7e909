"""Images -> packed token shards.

``prepare(src, out, tokenizer)`` streams the images of its sources -- folders, ``.txt`` /
``.jsonl`` lists, tar archives and webdataset shards (brace patterns, globs), parquet files
(:func:`jpeglm.data.units.find_units`), one source file at a time
(:class:`jpeglm.data.stream.Stream`), optionally only a deterministic part of them (``part``,
:mod:`jpeglm.data.parts`: many machines each prepare one part). It decodes each image with
Pillow (libjpeg-turbo), prepares it (center crop + resize), encodes it canonically and
tokenizes it natively, in batches; joins the token streams of all images as one stream
``BOS tokens EOS BOS tokens EOS ...`` and cuts it into sequences of ``seq_len`` tokens, stored
as one uint16 ``.npy`` shard of shape ``(sequences, seq_len)`` per chunk of
``images_per_shard`` images. No token is dropped: the tokens of a chunk after its last whole
sequence (its *carry*) start the next chunk's first sequence, so a sequence may span two
shards' images; only the last sequence of the whole dataset is short, and it is padded to
``seq_len`` with the tokenizer's pad id (counted as ``pad_tokens``; the trainer ignores pad
targets). A tokenizer without a pad token drops that last partial sequence instead (counted as
``dropped_tokens``). A chunk whose tokens (with the carry before it) make no whole sequence
writes no file (its entry says ``"sequences": 0``) and carries everything on.

Every file is written atomically; a shard that exists is skipped, so a killed run resumes where
it stopped and ends with the same bytes as an uninterrupted run (the temporary files of its own
writes that a killed run left are removed; no other file in ``out`` is touched). Unreadable
images, file names that are not UTF-8 and the unreadable rest of a truncated tar archive are
skipped and listed in ``report.json``; a source with no usable image at all is an error
(``ValueError``), as is an output that would replace one of the inputs. ``run.json`` holds the
run's figures (images/s, tokens/s, skipped, seconds: :mod:`jpeglm.data.progress`).

The index and the shard files are described in :mod:`jpeglm.data.index`; the sources are listed
and read by :mod:`jpeglm.data.sources` (``sources.txt`` is described there); ``ShardDataset``
(:mod:`jpeglm.data.dataset`) is the torch ``IterableDataset`` over the shards.

Fast mode (``fast=True``): JPEG sources much larger than the target are decoded with
libjpeg's DCT-domain scaling (Pillow's ``draft``: 1/2, 1/4 or 1/8) before the resize -- much
faster on big photos, slightly different pixels (the benchmark reports the PSNR).

Labels (``labels=True``, class conditioning, :mod:`jpeglm.data.labels`): each image is packed
``BOS COND tokens EOS``, COND the id of its class (or the null id for an image without a
label) in the :class:`~jpeglm.conditioning.Conditioning` recorded as ``config["labels"]``; the
index counts the images packed per class (``label_counts``). Without labels every byte is as
before.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jpeglm import codec
from jpeglm._io import (
    atomic_open,
    atomic_write_text,
    claim_outputs,
    remove_own_temps,
    show,
)
from jpeglm.data import index
from jpeglm.data.index import (
    INDEX,
    OWN_FILES,
    REPORT,
    _read_index_file,
    is_own_file,
    shard_name,
    tokenizer_fingerprint,
)
from jpeglm.data.labels import (
    NO_LABEL,
    clean_label,
    distinct_labels,
    shard_conditioning,
    sort_names,
)
from jpeglm.data.parts import Part, split
from jpeglm.data.progress import Progress
from jpeglm.data.sources import (
    VIDEO_SUFFIXES,
    Source,
    _pool,
    _read_clip,
    _read_image,
    video_settings,
)
from jpeglm.data.stream import Stream
from jpeglm.data.units import find_units


def _write_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_open(path, "wb", record=True) as f:
        np.save(f, arr)


def prepare(
    src: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    tokenizer,
    size: int = 256,
    quality: int = 25,
    seq_len: int = 12288,
    images_per_shard: int = 1024,
    workers: int | None = None,
    fast: bool = False,
    progress: bool = True,
    video: dict | None = None,
    inputs: Sequence[str | os.PathLike] = (),
    exif_transpose: bool = False,
    part: Part | None = None,
    image_column: str | None = None,
    labels: bool = False,
    label_names: Sequence[str] | None = None,
    label_column: str | None = None,
) -> dict:
    """Turn the images of ``src`` into packed token shards in ``out``; returns the index.

    ``src``: one source or a list of them, each a folder, a ``.txt`` or ``.jsonl`` list, a tar
    archive, a ``.parquet`` file, or a brace pattern / glob of tar or parquet shards
    (:func:`jpeglm.data.sources.find_units`). The images are streamed source file by source
    file (a tar shard's member headers, a parquet file's record batches): only one file's
    listing is held at a time. ``image_column``: the image column of parquet files (found
    from their metadata when not given).

    ``part``: prepare only that deterministic 1/N of the source files
    (:func:`jpeglm.data.parts.split`: whole tar / parquet shards, single images of folders)
    into ``out/part-0000I-of-0000N/``, resumable on its own; the N parts together are one
    dataset for the trainer (``train_data = ["OUT"]``).

    ``video`` (AVC-LM): the sources are clips (:data:`VIDEO_SUFFIXES`), each made a canonical
    H.264 stream by :mod:`jpeglm.video.codec` with these settings (``width``, ``height``, ``fps``,
    ``seconds``, ``qp``; missing ones take the paper's 256x144, 3 fps, 5 s, QP 37) and packed
    the same way; ``images_per_shard`` then counts clips and ``size`` / ``quality`` are unused.
    ``exif_transpose``: each image turned upright by its EXIF orientation first (recorded in
    the index; the default, as the official pipeline, ignores EXIF).

    ``labels`` (class conditioning, issue 33): each image is packed ``BOS COND tokens EOS``,
    COND ``Conditioning(names, base=tokenizer.vocab_size).id_of(label)`` -- or its null id for
    an image without a label -- with the label its source gives (:mod:`jpeglm.data.units`:
    ``root/<class>/x.jpg`` in a folder, a webdataset ``.cls`` member, a parquet label column,
    a ``.jsonl`` list's ``label``). The class names are ``label_names`` in that order, else the
    distinct labels of all the run's source units (every part's: the parts agree) sorted,
    numerically when all are integers; an image whose label is not one of ``label_names`` is
    skipped (listed in ``report.json``). ``label_column``: the parquet label column (default
    ``label``; a file without the named column is an error). The index records the
    conditioning as ``config["labels"]`` and the images packed per class as ``label_counts``.

    ``out`` is an output folder like every command's (:func:`jpeglm._io.claim_outputs`): a file
    there that jpeglm did not write (a user's ``sources.txt``, ``report.json``, a shard) is
    refused before any work, and so is one that is an input -- a source, or one of ``inputs``
    (the tokenizer file it was made with). Each file is listed in ``out/.jpeglm-outputs`` once
    it is in place.

    Every token of every usable image lands in a sequence; the last sequence is padded with
    ``tokenizer.pad_id`` (see the module docstring). Resumable: shards already present (from
    an identical configuration) are kept and skipped, and the resumed run writes the same
    bytes as an uninterrupted one. ``progress``: a bar on a terminal, a plain line every
    :data:`LOG_EVERY` seconds otherwise (images/s, tokens/s, skipped, ETA); the figures of the
    run are also in ``report.json``.
    """
    size = codec.check_size(size)
    codec.check_quality(quality)
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if images_per_shard < 1:
        raise ValueError("images_per_shard must be >= 1")
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        raise ValueError("the tokenizer needs BOS and EOS tokens")
    if tokenizer.vocab_size > 65536:
        raise ValueError("uint16 shards need a vocabulary of at most 65536 tokens")
    pad_id = tokenizer.pad_id
    if pad_id in (tokenizer.bos_id, tokenizer.eos_id):
        pad_id = None  # padding must not look like a stream boundary
    if video is not None:
        video = video_settings(video)
    srcs = [src] if isinstance(src, (str, os.PathLike)) else list(src)
    if not srcs:
        raise ValueError("no source given")
    suffixes = VIDEO_SUFFIXES if video is not None else None
    if not labels and (label_names is not None or label_column is not None):
        raise ValueError("label_names and label_column need labels=True (--labels)")
    if label_names is not None:  # checked before any work
        shard_conditioning(label_names, tokenizer.vocab_size)
    units, problems = find_units(srcs, suffixes)
    every_unit = units
    out = Path(out)
    if part is not None:
        units = split(units, part)
        out = out / part.folder_name
    gather = labels and label_names is None  # the class names are the labels found
    # counts every unit's sources once (and gathers their labels)
    listing = Stream(units, suffixes, image_column, label_column, gather)
    problems += listing.problems
    total = listing.total
    cond = None
    if labels and (total or part is not None):  # (no image at all: the error below)
        if label_names is None:  # from ALL units, so that every part has the same names
            mine = {id(u) for u in units}
            others = [u for u in every_unit if id(u) not in mine]
            found = listing.labels | distinct_labels(others, suffixes, image_column, label_column)
            label_names = sort_names(found)
        cond = shard_conditioning(label_names, tokenizer.vocab_size)
    n_chunks = (total + images_per_shard - 1) // images_per_shard
    targets = [out / shard_name(c) for c in range(n_chunks)] + [out / n for n in OWN_FILES]
    claim_outputs(out, [t.name for t in targets], {*map(str, srcs), *map(str, inputs),
                                                   *(u.path for u in units)})  # fmt: skip
    config = {
        "size": size,
        "quality": quality,
        "seq_len": seq_len,
        "images_per_shard": images_per_shard,
        "fast": bool(fast),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "pad_id": pad_id,
        "sources": total,
    }
    if exif_transpose and video is None:  # only when set: older indexes stay resumable
        config["exif_transpose"] = True
    if video is not None:
        config.update({"kind": "video", "video": video, "size": None, "quality": None,
                       "fast": False})  # fmt: skip
    if part is not None:
        config["part"] = str(part)
    if image_column is not None:
        config["image_column"] = image_column
    if cond is not None:  # only with labels: indexes without them are as before
        config["labels"] = cond.record()
        if label_column is not None:
            config["label_column"] = label_column
    remove_own_temps(out, is_own_file)  # temp files of a run killed mid-write (ours only)
    index_path = out / INDEX
    old = {}
    if index_path.exists():
        old = _read_index_file(index_path)
        if old.get("config") != config:
            raise ValueError(
                f"{out} holds shards of a different configuration ({old.get('config')}); "
                "use an empty folder"
            )
    if total == 0:
        if part is None:
            raise ValueError(f"no images found in {', '.join(show(x) for x in srcs)}")
        # a part with no source file (more parts than files): an empty, finished part
        return index._write_index(out, config, [], problems, [], final=True)
    done = {s["file"]: s for s in old.get("shards", [])}
    # the listing's problems first, then the bad images in source order (as a run from scratch)
    listed = {p["source"] for p in problems}
    skipped = problems + [x for x in old.get("skipped", []) if x["source"] not in listed]
    shards: list[dict] = []
    workers = workers or os.cpu_count() or 1
    meter = Progress(total, "clips" if video is not None else "images", part, enabled=progress)

    ids = {} if cond is None else {n: cond.id_of(n) for n in cond.names}

    def pack(chunk: list[Source]) -> tuple[np.ndarray, int, list[dict], int, dict]:
        """The chunk's images as ``BOS tokens EOS ...`` (``BOS COND tokens EOS`` with labels);
        their count, the bad ones, bytes, the images packed per label."""
        images, bad, conds, counts = [], [], [], {}
        if video is not None:
            read = lambda s: _read_clip(s.read, s.name, video)  # noqa: E731
        else:
            read = lambda s: _read_image(s.read, size, fast, exif_transpose)  # noqa: E731
        names = [clean_label(s.label) if cond is not None else None for s in chunk]
        todo = [s for s, n in zip(chunk, names) if n is None or n in ids]
        results = pool.map(read, todo)
        for s, name in zip(chunk, names):
            if name is not None and name not in ids:  # not one of the label names given
                why = f"label {name!r} is not one of the label names; not prepared"
                bad.append({"source": s.name, "error": why})
                continue
            r = next(results)
            if isinstance(r, str):
                bad.append({"source": s.name, "error": r})
            else:
                images.append(r)
                if cond is not None:
                    conds.append(cond.null_id if name is None else ids[name])
                    key = NO_LABEL if name is None else name
                    counts[key] = counts.get(key, 0) + 1
        if not images:
            return np.empty(0, np.uint16), 0, bad, 0, counts
        if video is not None:
            streams = images  # already canonical H.264 streams
        else:
            streams = codec.encode_batch(np.stack(images), quality=quality, size=size)
        toks, offsets = tokenizer.encode_batch_to_numpy(streams)
        offsets = np.asarray(offsets, dtype=np.int64)
        lens = np.diff(offsets)
        head = 1 if cond is None else 2  # BOS, or BOS COND
        packed = np.empty(len(toks) + (head + 1) * len(streams), dtype=np.uint16)
        starts = offsets[:-1] + (head + 1) * np.arange(len(streams))
        packed[starts] = tokenizer.bos_id
        if cond is not None:
            packed[starts + 1] = conds
        packed[starts + lens + head] = tokenizer.eos_id
        for i in range(len(streams)):
            at = starts[i] + head
            packed[at : at + lens[i]] = toks[offsets[i] : offsets[i + 1]]
        return packed, len(images), bad, sum(map(len, streams)), counts

    def carry_before(c: int) -> np.ndarray:
        """The tokens chunk ``c - 1`` carried on, when the index does not hold them (a shard
        removed by hand in the middle): the tail of the stream of the chunks before, encoded
        again (deterministic: the same images give the same tokens)."""
        need = shards[c - 1]["carry_tokens"]
        parts, have, j = [], 0, c - 1
        while have < need and j >= 0:
            packed = pack(listing.chunk(j, images_per_shard))[0]
            if len(packed) != shards[j]["tokens"]:
                raise ValueError(
                    f"{show(srcs[0])}: the images of {shard_name(j)} changed since it was "
                    f"prepared into {show(out)} ({len(packed)} tokens now, {shards[j]['tokens']} "
                    "then); use an empty folder"
                )
            parts.insert(0, packed)
            have += len(packed)
            j -= 1
        if have < need:
            raise ValueError(f"{show(out / INDEX)}: inconsistent carry counts; use an empty folder")
        stream = np.concatenate([np.empty(0, np.uint16), *parts])
        return stream[len(stream) - need :]

    carry: np.ndarray | None = np.empty(0, np.uint16)  # None: not known (recomputed on need)
    with _pool(workers) as pool, meter:
        for c in range(n_chunks):
            name = shard_name(c)
            last = c == n_chunks - 1
            entry = done.get(name)
            n_in_chunk = min(images_per_shard, total - c * images_per_shard)
            if entry is not None and (entry["sequences"] == 0 or (out / name).exists()):
                _append(shards, dict(entry))
                carry = _stored_carry(entry)
                meter.resumed(n_in_chunk, entry)
                continue
            if carry is None:
                carry = carry_before(c)
            chunk = listing.chunk(c, images_per_shard)
            packed, n_images, bad, n_bytes, counts = pack(chunk)
            skipped = _merge_skipped(skipped, bad)
            stream = np.concatenate([carry, packed])
            n_seq = len(stream) // seq_len
            seqs = stream[: n_seq * seq_len].reshape(n_seq, seq_len)
            carry = stream[n_seq * seq_len :]
            entry = {"file": name, "sequences": int(n_seq), "images": n_images,
                     "tokens": int(len(packed)), "bytes": int(n_bytes)}  # fmt: skip
            if cond is not None:
                entry["label_counts"] = counts
            if last:  # the end of the dataset: pad (or drop) the last partial sequence
                entry["pad_tokens"] = 0
                if len(carry) and pad_id is not None:
                    entry["pad_tokens"] = seq_len - len(carry)
                    tail = np.full((1, seq_len), pad_id, np.uint16)
                    tail[0, : len(carry)] = carry
                    seqs = np.concatenate([seqs, tail])
                    entry["sequences"] = int(len(seqs))
                elif pad_id is None:
                    entry["dropped_tokens"] = int(len(carry))
                carry = np.empty(0, np.uint16)
            entry["carry_tokens"] = int(len(carry))
            if len(carry):
                entry["carry"] = base64.b64encode(carry.astype("<u2").tobytes()).decode()
            if len(seqs):
                entry["max_id"] = int(seqs.max())  # checked against the trainer's tokenizer
                _write_npy(out / name, seqs)
            else:  # nothing whole yet: no file, everything carried on
                (out / name).unlink(missing_ok=True)
            _append(shards, entry)
            meter.update(len(chunk), entry, len(bad))
            index._write_index(out, config, shards, skipped, None, final=False)
    n_seq = sum(s["sequences"] for s in shards)
    if not any(s["images"] for s in shards) or not n_seq:  # nothing to keep: rerun afresh
        for f in [*(s["file"] for s in shards), INDEX]:
            (out / f).unlink(missing_ok=True)
        atomic_write_text(out / REPORT, json.dumps({"skipped": skipped}, indent=1) + "\n",
                          record=True)  # fmt: skip
        what = show(srcs[0]) if len(srcs) == 1 else f"{len(srcs)} sources"
        if any(s["images"] for s in shards):
            n_tok = sum(s["tokens"] for s in shards)
            raise ValueError(
                f"{what}: {n_tok} tokens, less than one sequence of {seq_len}, and the "
                "tokenizer has no pad token to fill it"
            )
        first = skipped[0] if skipped else {"source": "?", "error": "?"}
        raise ValueError(
            f"no usable image in {what} ({len(skipped)} skipped; first: "
            f"{first['source']}: {first['error']}; see {show(out / REPORT)})"
        )
    return index._write_index(out, config, shards, skipped, listing.names(), final=True,
                              run=meter.report())  # fmt: skip


def _append(shards: list[dict], entry: dict) -> None:
    """Add a chunk's entry; only the last entry keeps its carried tokens (all a resumed run
    needs, and the index stays small)."""
    if shards:
        shards[-1].pop("carry", None)
    shards.append(entry)


def _stored_carry(entry: dict) -> np.ndarray | None:
    """The tokens a finished chunk carried on, if known from its entry."""
    if not entry.get("carry_tokens"):
        return np.empty(0, np.uint16)
    if "carry" not in entry:
        return None
    carry = np.frombuffer(base64.b64decode(entry["carry"]), "<u2").astype(np.uint16)
    if len(carry) != entry["carry_tokens"]:
        return None
    return carry


def _merge_skipped(skipped: list[dict], new: list[dict]) -> list[dict]:
    """``skipped`` with the entries of ``new`` replacing those of the same source."""
    names = {b["source"] for b in new}
    return [x for x in skipped if x["source"] not in names] + new
