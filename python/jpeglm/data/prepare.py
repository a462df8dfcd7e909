"""Images -> packed token shards, and a Dataset over them.

``prepare(src, out, tokenizer)`` walks a folder, a list file (one path per line) or a tar of
images; decodes each with Pillow (libjpeg-turbo), prepares it (center crop + resize), encodes
it canonically and tokenizes it natively, in batches; joins the token streams of all images as
one stream ``BOS tokens EOS BOS tokens EOS ...`` and cuts it into sequences of ``seq_len``
tokens, stored as one uint16 ``.npy`` shard of shape ``(sequences, seq_len)`` per chunk of
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
(``ValueError``), as is an output that would replace one of the inputs.

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

``sources.txt``: the source names in shard order, one JSON string per line after a ``#``
header line (a name holding a newline stays one line); :func:`read_sources` reads it, and the
plain one-name-per-line files of older versions.

Fast mode (``fast=True``): JPEG sources much larger than the target are decoded with
libjpeg's DCT-domain scaling (Pillow's ``draft``: 1/2, 1/4 or 1/8) before the resize -- much
faster on big photos, slightly different pixels (the benchmark reports the PSNR).

The sources are listed by :mod:`jpeglm.data.sources` (:func:`scan_sources`; re-exported here with
:func:`list_images`, :func:`list_sources`, :class:`Source` and the suffix sets);
:func:`list_images` and :func:`load_images` are the same listing and skipping for the commands
that take image files and folders on the command line (encode, eval, train-tokenizer).

``ShardDataset`` (:mod:`jpeglm.data.dataset`, reached here as ``data.ShardDataset``) is a torch
``IterableDataset`` over the shards: memory-mapped, sequences shuffled deterministically per
epoch from a seed, split across distributed ranks and data-loader workers without overlap.
Only it needs torch; it is imported on first use.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from jpeglm import codec
from jpeglm._io import (
    atomic_open,
    atomic_write_text,
    claim_outputs,
    remove_own_temps,
    show,
)
from jpeglm.data.sources import (
    VIDEO_SUFFIXES,
    Source,
    scan_sources,
)

INDEX = "index.json"
REPORT = "report.json"


def load_image(
    data: bytes, size: int, fast: bool = False, exif_transpose: bool = False
) -> np.ndarray:
    """Decode + prepare one image. ``fast``: libjpeg DCT scaling for big JPEGs first;
    ``exif_transpose``: as :func:`jpeglm.codec.prepare`'s."""
    im = Image.open(io.BytesIO(data))
    if fast and im.format == "JPEG":
        # The largest 1/2^k reduction that keeps the short side >= size.
        w, h = im.size
        im.draft("RGB", (max(size, w * size // min(w, h)), max(size, h * size // min(w, h))))
    im.load()
    return codec.prepare(im, size, exif_transpose=exif_transpose)


def _read_image(read, size: int, fast: bool, exif_transpose: bool = False) -> np.ndarray | str:
    """``load_image(read(), size, fast, exif_transpose)``, or the reason it failed as one line:
    any unreadable image is skipped (and reported) by its callers rather than stopping them."""
    try:
        return load_image(read(), size, fast, exif_transpose)
    except UnidentifiedImageError:
        return "UnidentifiedImageError: not an image file Pillow can read"
    except Exception as e:  # noqa: BLE001 - any unreadable image is skipped
        return f"{type(e).__name__}: {e}"


def clip_stream(data: bytes, name: str, video: dict) -> bytes:
    """The canonical H.264 stream (:mod:`jpeglm.video.codec`) of one clip source: ``data`` is a
    video file's bytes or an ``.npy`` of ``(T, H, W[, 3])`` uint8 frames (``name`` tells),
    ``video`` the settings ``prepare --video`` records (fps, seconds, width, height, qp)."""
    from jpeglm.video import codec as vid

    kw = {k: video[k] for k in ("fps", "seconds", "width", "height")}
    if name.lower().endswith(".npy"):
        frames = np.load(io.BytesIO(data), allow_pickle=False)
        if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
            raise ValueError(f"expected (T, H, W[, 3]) uint8 frames, got {frames.dtype} "
                             f"{frames.shape}")  # fmt: skip
        clip = vid.prepare(list(frames), **kw)
    else:
        clip = vid.prepare(data, **kw)
    return vid.encode(clip, qp=video["qp"], fps=int(video["fps"]))


def _read_clip(read, name: str, video: dict) -> bytes | str:
    """:func:`clip_stream` of one source, or why not."""
    try:
        return clip_stream(read(), name, video)
    except Exception as e:  # noqa: BLE001 - any unreadable clip is skipped
        return f"{type(e).__name__}: {e}"


def video_settings(video: dict) -> dict:
    """Clip settings for :func:`clip_stream` (``width``, ``height``, ``fps``, ``seconds``,
    ``qp``): the given ones over the paper's defaults (:mod:`jpeglm.video.codec`); an unknown key is a
    ValueError."""
    from jpeglm.video import codec as vid

    unknown = set(video) - {"width", "height", "fps", "seconds", "qp"}
    if unknown:
        raise ValueError(f"video: unknown setting(s) {', '.join(sorted(unknown))}")
    return {"width": vid.WIDTH, "height": vid.HEIGHT, "fps": vid.FPS, "seconds": vid.SECONDS,
            "qp": vid.QP, **video}  # fmt: skip


def load_clips(
    sources: Sequence[Source], video: dict, workers: int | None = None
) -> tuple[list[Source], list[bytes], list[dict]]:
    """The canonical H.264 streams (:func:`clip_stream`, settings :func:`video_settings`) of
    clip sources, skipping the unreadable ones as ``prepare --video`` does: returns the sources
    read, their streams, and a ``{"source", "error"}`` record for each skipped one."""
    video = video_settings(video)
    with _pool(workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda s: _read_clip(s.read, s.name, video), sources))
    kept, streams, skipped = [], [], []
    for s, r in zip(sources, results):
        if isinstance(r, str):
            skipped.append({"source": show(s.name), "error": r})
        else:
            kept.append(s)
            streams.append(r)
    return kept, streams, skipped


def load_images(
    paths: Sequence[str | os.PathLike],
    size: int = 256,
    fast: bool = False,
    workers: int | None = None,
) -> tuple[list[Path], np.ndarray, list[dict]]:
    """Read and prepare image files, skipping the unreadable ones as ``prepare`` does.

    Returns the paths read, their prepared images as one ``(n, size, size, 3)`` uint8 array
    (what :func:`jpeglm.codec.encode_batch` takes) and a ``{"source", "error"}`` record for
    each file that could not be read or decoded (missing, not an image, truncated, ...), in
    the order of ``paths``. Reads on ``workers`` threads (None: all cores).
    """
    size = codec.check_size(size)
    paths = [Path(p) for p in paths]
    with _pool(workers or os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda p: _read_image(p.read_bytes, size, fast), paths))
    kept, images, skipped = [], [], []
    for p, r in zip(paths, results):
        if isinstance(r, str):
            skipped.append({"source": show(p), "error": r})
        else:
            kept.append(p)
            images.append(r)
    stack = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    return kept, stack, skipped


# ------------------------------------------------------------------------------------------------
# Preparing shards


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's vocabulary, stored with the shards to catch mismatches."""
    h = hashlib.sha256()
    for b, i in sorted(tokenizer.mergeable_ranks.items(), key=lambda kv: kv[1]):
        h.update(i.to_bytes(4, "little") + len(b).to_bytes(2, "little") + b)
    h.update(repr((tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id)).encode())
    return h.hexdigest()[:16]


def _write_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_open(path, "wb", record=True) as f:
        np.save(f, arr)


def prepare(
    src: str | os.PathLike,
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
) -> dict:
    """Turn the images of ``src`` into packed token shards in ``out``; returns the index.

    ``video`` (AVC-LM): the sources are clips (:data:`VIDEO_SUFFIXES`), each made a canonical
    H.264 stream by :mod:`jpeglm.video.codec` with these settings (``width``, ``height``, ``fps``,
    ``seconds``, ``qp``; missing ones take the paper's 256x144, 3 fps, 5 s, QP 37) and packed
    the same way; ``images_per_shard`` then counts clips and ``size`` / ``quality`` are unused.
    ``exif_transpose``: each image turned upright by its EXIF orientation first (recorded in
    the index; the default, as the official pipeline, ignores EXIF).

    ``out`` is an output folder like every command's (:func:`jpeglm._io.claim_outputs`): a file
    there that jpeglm did not write (a user's ``sources.txt``, ``report.json``, a shard) is
    refused before any work, and so is one that is an input -- a source, or one of ``inputs``
    (the tokenizer file it was made with). Each file is listed in ``out/.jpeglm-outputs`` once
    it is in place.

    Every token of every usable image lands in a sequence; the last sequence is padded with
    ``tokenizer.pad_id`` (see the module docstring). Resumable: shards already present (from
    an identical configuration) are kept and skipped, and the resumed run writes the same
    bytes as an uninterrupted one.
    """
    from tqdm.auto import tqdm

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
    sources, problems = scan_sources(src, VIDEO_SUFFIXES if video is not None else None)
    out = Path(out)
    n_chunks = (len(sources) + images_per_shard - 1) // images_per_shard
    targets = [out / shard_name(c) for c in range(n_chunks)] + [out / n for n in OWN_FILES]
    claim_outputs(out, [t.name for t in targets], {str(src), *map(str, inputs),
                                                   *(s.path for s in sources)})  # fmt: skip
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
        "sources": len(sources),
    }
    if exif_transpose and video is None:  # only when set: older indexes stay resumable
        config["exif_transpose"] = True
    if video is not None:
        config.update({"kind": "video", "video": video, "size": None, "quality": None,
                       "fast": False})  # fmt: skip
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
    done = {s["file"]: s for s in old.get("shards", [])}
    # the listing's problems first, then the bad images in source order (as a run from scratch)
    listed = {p["source"] for p in problems}
    skipped = problems + [x for x in old.get("skipped", []) if x["source"] not in listed]
    shards: list[dict] = []
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(sources), desc="prepare", unit="img", disable=not progress)

    def chunk_of(c: int) -> list[Source]:
        return sources[c * images_per_shard : (c + 1) * images_per_shard]

    def pack(chunk: list[Source]) -> tuple[np.ndarray, int, list[dict], int]:
        """The chunk's images as ``BOS tokens EOS ...``; their count, the bad ones, bytes."""
        images, bad = [], []
        if video is not None:
            read = lambda s: _read_clip(s.read, s.name, video)  # noqa: E731
        else:
            read = lambda s: _read_image(s.read, size, fast, exif_transpose)  # noqa: E731
        for s, r in zip(chunk, pool.map(read, chunk)):
            if isinstance(r, str):
                bad.append({"source": s.name, "error": r})
            else:
                images.append(r)
        if not images:
            return np.empty(0, np.uint16), 0, bad, 0
        if video is not None:
            streams = images  # already canonical H.264 streams
        else:
            streams = codec.encode_batch(np.stack(images), quality=quality, size=size)
        toks, offsets = tokenizer.encode_batch_to_numpy(streams)
        offsets = np.asarray(offsets, dtype=np.int64)
        lens = np.diff(offsets)
        packed = np.empty(len(toks) + 2 * len(streams), dtype=np.uint16)
        starts = offsets[:-1] + 2 * np.arange(len(streams))
        packed[starts] = tokenizer.bos_id
        packed[starts + lens + 1] = tokenizer.eos_id
        for i in range(len(streams)):
            packed[starts[i] + 1 : starts[i] + 1 + lens[i]] = toks[offsets[i] : offsets[i + 1]]
        return packed, len(images), bad, sum(map(len, streams))

    def carry_before(c: int) -> np.ndarray:
        """The tokens chunk ``c - 1`` carried on, when the index does not hold them (a shard
        removed by hand in the middle): the tail of the stream of the chunks before, encoded
        again (deterministic: the same images give the same tokens)."""
        need = shards[c - 1]["carry_tokens"]
        parts, have, j = [], 0, c - 1
        while have < need and j >= 0:
            packed = pack(chunk_of(j))[0]
            if len(packed) != shards[j]["tokens"]:
                raise ValueError(
                    f"{show(src)}: the images of {shard_name(j)} changed since it was prepared "
                    f"into {show(out)} ({len(packed)} tokens now, {shards[j]['tokens']} then); "
                    "use an empty folder"
                )
            parts.insert(0, packed)
            have += len(packed)
            j -= 1
        if have < need:
            raise ValueError(f"{show(out / INDEX)}: inconsistent carry counts; use an empty folder")
        stream = np.concatenate([np.empty(0, np.uint16), *parts])
        return stream[len(stream) - need :]

    carry: np.ndarray | None = np.empty(0, np.uint16)  # None: not known (recomputed on need)
    with _pool(workers) as pool:
        for c in range(n_chunks):
            name = shard_name(c)
            chunk = chunk_of(c)
            last = c == n_chunks - 1
            entry = done.get(name)
            if entry is not None and (entry["sequences"] == 0 or (out / name).exists()):
                _append(shards, dict(entry))
                carry = _stored_carry(entry)
                bar.update(len(chunk))
                continue
            if carry is None:
                carry = carry_before(c)
            packed, n_images, bad, n_bytes = pack(chunk)
            skipped = _merge_skipped(skipped, bad)
            stream = np.concatenate([carry, packed])
            n_seq = len(stream) // seq_len
            seqs = stream[: n_seq * seq_len].reshape(n_seq, seq_len)
            carry = stream[n_seq * seq_len :]
            entry = {"file": name, "sequences": int(n_seq), "images": n_images,
                     "tokens": int(len(packed)), "bytes": int(n_bytes)}  # fmt: skip
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
            bar.update(len(chunk))
            _write_index(out, config, shards, skipped, sources, final=False)
    bar.close()
    n_seq = sum(s["sequences"] for s in shards)
    if not any(s["images"] for s in shards) or not n_seq:  # nothing to keep: rerun afresh
        for f in [*(s["file"] for s in shards), INDEX]:
            (out / f).unlink(missing_ok=True)
        atomic_write_text(out / REPORT, json.dumps({"skipped": skipped}, indent=1) + "\n",
                          record=True)  # fmt: skip
        if any(s["images"] for s in shards):
            n_tok = sum(s["tokens"] for s in shards)
            raise ValueError(
                f"{show(src)}: {n_tok} tokens, less than one sequence of {seq_len}, and the "
                "tokenizer has no pad token to fill it"
            )
        first = skipped[0] if skipped else {"source": "?", "error": "?"}
        raise ValueError(
            f"no usable image in {show(src)} ({len(skipped)} skipped; first: "
            f"{first['source']}: {first['error']}; see {show(out / REPORT)})"
        )
    index = _write_index(out, config, shards, skipped, sources, final=True)
    return index


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


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that, on an exception (Ctrl-C), drops its queued work instead of
    finishing it: only the images being read at that moment are completed."""
    pool = ThreadPoolExecutor(workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def shard_name(chunk: int) -> str:
    """The file of shard ``chunk``."""
    return f"shard_{chunk:06d}.npy"


OWN_FILES = (INDEX, REPORT, "sources.txt")
_SHARD = re.compile(r"shard_\d{6}\.npy")


def is_own_file(name: str) -> bool:
    """Whether ``name`` is a file ``prepare`` writes (a shard, the index, the report, the
    source list): the only files whose temporary files it removes."""
    return name in OWN_FILES or _SHARD.fullmatch(name) is not None


def _merge_skipped(skipped: list[dict], new: list[dict]) -> list[dict]:
    """``skipped`` with the entries of ``new`` replacing those of the same source."""
    names = {b["source"] for b in new}
    return [x for x in skipped if x["source"] not in names] + new


def _write_index(out: Path, config: dict, shards: list, skipped: list, sources: list[Source],
                 final: bool) -> dict:  # fmt: skip
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
    index["skipped"] = skipped
    atomic_write_text(out / INDEX, json.dumps(index, indent=1) + "\n", record=True)
    if final:  # JSON strings: a name holding a newline is still one line
        names = "".join(_json_name(s.name) + "\n" for s in sources)
        atomic_write_text(out / SOURCES, SOURCES_HEADER + "\n" + names, record=True)
        atomic_write_text(out / REPORT, json.dumps({"skipped": skipped}, indent=1) + "\n",
                          record=True)  # fmt: skip
    return index


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
    index = _read_index_file(p)
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


SOURCES = "sources.txt"
#: the first line of ``sources.txt``: each line after it is one source name as a JSON string
SOURCES_HEADER = "# jpeglm sources: one JSON string per line, in the order of the shards"


def _json_name(name: str) -> str:
    """A name as one line of JSON: readable UTF-8 where it can be, ``\\uXXXX`` escapes else."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(name)
    return json.dumps(name, ensure_ascii=False)


def read_sources(folder: str | os.PathLike) -> list[str]:
    """The source names of a prepared folder, in order, from its ``sources.txt``: one JSON
    string per line after :data:`SOURCES_HEADER`, or, in a file of an older jpeglm (no header),
    one name per line as written (a name holding a newline was ambiguous there)."""
    from jpeglm._io import parse_json

    p = Path(folder) / SOURCES
    lines = p.read_text(encoding="utf-8", errors="surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != SOURCES_HEADER:
        return lines
    names = []
    for i, line in enumerate(lines[1:], 2):
        name = parse_json(line, f"{show(p)} line {i}")
        if not isinstance(name, str):
            raise ValueError(f"{show(p)} line {i} is not a JSON string")
        names.append(name)
    return names


def __getattr__(name: str):
    """``ShardDataset`` (:mod:`jpeglm.data.dataset`) needs torch: imported on first use, so that
    preparing data never imports torch."""
    if name == "ShardDataset":
        from jpeglm.data.dataset import ShardDataset

        return ShardDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
