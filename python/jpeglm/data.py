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
``tokens == sequences * seq_len - pad_tokens (+ dropped_tokens)``. Indexes of older versions
(a ``dropped_tokens`` per shard: each chunk's tail was dropped) are still read.

Fast mode (``fast=True``): JPEG sources much larger than the target are decoded with
libjpeg's DCT-domain scaling (Pillow's ``draft``: 1/2, 1/4 or 1/8) before the resize -- much
faster on big photos, slightly different pixels (the benchmark reports the PSNR).

:func:`list_images` and :func:`load_images` are the same listing and skipping for the commands
that take image files and folders on the command line (encode, eval, train-tokenizer).

``ShardDataset`` is a torch ``IterableDataset`` over the shards: memory-mapped, sequences
shuffled deterministically per epoch from a seed, split across distributed ranks and
data-loader workers without overlap.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from jpeglm import codec
from jpeglm._io import (
    atomic_open,
    atomic_write_text,
    refuse_overwriting,
    remove_own_temps,
    show,
    writable_folder,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
#: video sources (``prepare(..., video=...)``): files PyAV decodes, or ``.npy`` frame arrays
#: ``(T, H, W[, 3])`` uint8 taken as already at the clip rate
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".npy"}
INDEX = "index.json"
REPORT = "report.json"
TAR_SUFFIXES = {".tar", ".tgz", ".gz", ".tbz", ".tbz2", ".bz2", ".txz", ".xz"}


# ------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Source:
    """One image to read: a file path, or a member of a tar archive."""

    name: str  # how it is reported
    path: str
    member: str | None = None
    # where the member's data starts and how long it is (read without rescanning the archive)
    info: tarfile.TarInfo | None = field(default=None, compare=False, repr=False)

    def read(self) -> bytes:
        if self.member is None:
            with open(self.path, "rb") as f:
                return f.read()
        with tarfile.open(self.path) as tf:
            f = tf.extractfile(self.info if self.info is not None else self.member)
            if f is None:
                raise ValueError("not a regular file in the archive")
            return f.read()


def list_sources(src: str | os.PathLike) -> list[Source]:
    """The images of a folder (recursively, sorted), a ``.txt`` list file, or a tar archive."""
    return scan_sources(src)[0]


def scan_sources(
    src: str | os.PathLike, suffixes: set[str] | None = None
) -> tuple[list[Source], list[dict]]:
    """:func:`list_sources` and the problems met listing them, as ``{"source", "error"}``
    entries for ``report.json``: names that are not valid UTF-8 (shown with ``\\xNN``
    escapes; they could not be listed in ``sources.txt``), and a tar archive that is truncated
    or corrupt part way (the members before the damage are listed)."""
    p = Path(src)
    if not p.exists():
        raise FileNotFoundError(f"no such folder, list or archive: {show(p)}")
    problems: list[dict] = []
    if p.is_dir():
        out = [Source(str(f.relative_to(p)), str(f)) for f in _folder_images(p, suffixes)]
    elif p.suffix == ".txt":
        text = p.read_bytes().decode("utf-8", "surrogateescape")
        lines = [ln.strip() for ln in text.splitlines()]
        out = [
            Source(ln, str((p.parent / ln) if not os.path.isabs(ln) else ln)) for ln in lines if ln
        ]
    elif tarfile.is_tarfile(p):
        out = _tar_sources(p, problems, suffixes)
    elif p.suffix.lower() in TAR_SUFFIXES:
        raise ValueError(f"{show(p)}: not a readable tar archive (truncated or corrupt?)")
    else:
        raise ValueError(f"{show(p)}: expected a folder, a .txt list of paths, or a tar archive")
    good = []
    for s in out:
        try:
            s.name.encode("utf-8")
        except UnicodeEncodeError:
            problems.append({"source": show(s.name), "error": "file name is not valid UTF-8"})
        else:
            good.append(s)
    if not good:
        why = f" ({problems[0]['source']}: {problems[0]['error']})" if problems else ""
        raise ValueError(f"no images found in {show(p)}{why}")
    return good, problems


def _folder_images(folder: Path, suffixes: set[str] | None = None) -> list[Path]:
    """The image files (by suffix, any case) under ``folder``, recursively, sorted."""
    suffixes = IMAGE_SUFFIXES if suffixes is None else suffixes
    return sorted(f for f in folder.rglob("*") if f.suffix.lower() in suffixes and f.is_file())


def list_images(items: Sequence[str | os.PathLike]) -> tuple[list[Path], list[dict]]:
    """The image files named by command-line arguments, and the problems met listing them.

    The policy shared by the commands that take images (encode, eval, train-tokenizer, ...):

    - a folder gives every file under it, recursively, whose suffix (any case) is one of
      :data:`IMAGE_SUFFIXES`, sorted by path; its other files are ignored silently, and a
      folder without any image file is a problem;
    - a file gives itself when its suffix is one of :data:`IMAGE_SUFFIXES`, else it is a
      problem (not read: whether it decodes is :func:`load_images`' business);
    - a path that does not exist (or is neither a file nor a folder) is a problem;
    - the arguments keep their order; a file met a second time (named twice, or inside two
      folders given) is kept the first time only.

    The problems are ``{"source", "error"}`` records, as in ``report.json`` (the path shown
    with :func:`~jpeglm._io.show`); the caller decides whether they are fatal. No image at all
    is not an error here either: the list is empty.
    """
    paths: list[Path] = []
    problems: list[dict] = []
    seen: set[Path] = set()

    def add(f: Path) -> None:
        key = Path(os.path.abspath(f))
        if key not in seen:
            seen.add(key)
            paths.append(f)

    for item in items:
        p = Path(item)
        if p.is_dir():
            found = _folder_images(p)
            if not found:
                problems.append({"source": show(p), "error": "no image files in this folder"})
            for f in found:
                add(f)
        elif p.is_file():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                add(p)
            else:
                why = f"not an image file name (expected {', '.join(sorted(IMAGE_SUFFIXES))})"
                problems.append({"source": show(p), "error": why})
        elif p.exists():
            problems.append({"source": show(p), "error": "not a regular file or a folder"})
        else:
            problems.append({"source": show(p), "error": "no such file or folder"})
    return paths, problems


def _tar_sources(p: Path, problems: list[dict], suffixes: set[str] | None = None) -> list[Source]:
    """The image members of a tar archive, up to the first damage (reported in ``problems``)."""
    suffixes = IMAGE_SUFFIXES if suffixes is None else suffixes
    members = []
    try:
        with tarfile.open(p) as tf:
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in suffixes:
                    members.append(m)
            # tarfile ends quietly at a cut header: what follows the last member must be the
            # zero blocks that end an archive, else the rest of it is lost
            tf.fileobj.seek(tf.offset)
            while block := tf.fileobj.read(1 << 20):
                if block.count(0) != len(block):
                    raise tarfile.ReadError("a member header is cut or corrupt")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if not members:
            raise ValueError(f"{show(p)}: cannot read the archive ({type(e).__name__}: {e})") from e
        problems.append({
            "source": show(p.name),
            "error": f"{type(e).__name__}: archive truncated or corrupt after "
                     f"{len(members)} image members ({e}); the rest is not read",
        })  # fmt: skip
    members.sort(key=lambda m: m.name)
    return [Source(f"{p.name}:{m.name}", str(p), m.name, m) for m in members]


def load_image(data: bytes, size: int, fast: bool = False) -> np.ndarray:
    """Decode + prepare one image. ``fast``: libjpeg DCT scaling for big JPEGs first."""
    im = Image.open(io.BytesIO(data))
    if fast and im.format == "JPEG":
        # The largest 1/2^k reduction that keeps the short side >= size.
        w, h = im.size
        im.draft("RGB", (max(size, w * size // min(w, h)), max(size, h * size // min(w, h))))
    im.load()
    return codec.prepare(im, size)


def _read_image(read, size: int, fast: bool) -> np.ndarray | str:
    """``load_image(read(), size, fast)``, or the reason it failed as one line: any
    unreadable image is skipped (and reported) by its callers rather than stopping them."""
    try:
        return load_image(read(), size, fast)
    except UnidentifiedImageError:
        return "UnidentifiedImageError: not an image file Pillow can read"
    except Exception as e:  # noqa: BLE001 - any unreadable image is skipped
        return f"{type(e).__name__}: {e}"


def _read_clip(read, name: str, video: dict) -> bytes | str:
    """The canonical H.264 stream (:mod:`jpeglm.video`) of one clip source, or why not."""
    from jpeglm import video as vid

    try:
        data = read()
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
    except Exception as e:  # noqa: BLE001 - any unreadable clip is skipped
        return f"{type(e).__name__}: {e}"


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
    size = codec._check_size(size)
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
    with atomic_open(path, "wb") as f:
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
) -> dict:
    """Turn the images of ``src`` into packed token shards in ``out``; returns the index.

    ``video`` (AVC-LM): the sources are clips (:data:`VIDEO_SUFFIXES`), each made a canonical
    H.264 stream by :mod:`jpeglm.video` with these settings (``width``, ``height``, ``fps``,
    ``seconds``, ``qp``; missing ones take the paper's 256x144, 3 fps, 5 s, QP 37) and packed
    the same way; ``images_per_shard`` then counts clips and ``size`` / ``quality`` are unused.

    Every token of every usable image lands in a sequence; the last sequence is padded with
    ``tokenizer.pad_id`` (see the module docstring). Resumable: shards already present (from
    an identical configuration) are kept and skipped, and the resumed run writes the same
    bytes as an uninterrupted one.
    """
    from tqdm.auto import tqdm

    size = codec._check_size(size)
    codec._check_quality(quality)
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
        from jpeglm import video as vid

        video = {"width": vid.WIDTH, "height": vid.HEIGHT, "fps": vid.FPS,
                 "seconds": vid.SECONDS, "qp": vid.QP, **video}  # fmt: skip
        unknown = set(video) - {"width", "height", "fps", "seconds", "qp"}
        if unknown:
            raise ValueError(f"video: unknown setting(s) {', '.join(sorted(unknown))}")
    sources, problems = scan_sources(src, VIDEO_SUFFIXES if video is not None else None)
    out = Path(out)
    n_chunks = (len(sources) + images_per_shard - 1) // images_per_shard
    targets = [out / shard_name(c) for c in range(n_chunks)] + [out / n for n in OWN_FILES]
    writable_folder(out)  # first: `out` must exist for its files to be compared with inputs
    refuse_overwriting(targets, {str(src), *(s.path for s in sources)})
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
    if video is not None:
        config.update({"kind": "video", "video": video, "size": None, "quality": None,
                       "fast": False})  # fmt: skip
    remove_own_temps(out, is_own_file)  # temp files of a run killed mid-write (ours only)
    index_path = out / INDEX
    old = {}
    if index_path.exists():
        old = json.loads(index_path.read_text())
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
            read = lambda s: _read_image(s.read, size, fast)  # noqa: E731
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
        atomic_write_text(out / REPORT, json.dumps({"skipped": skipped}, indent=1) + "\n")
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
    atomic_write_text(out / INDEX, json.dumps(index, indent=1) + "\n")
    if final:
        atomic_write_text(out / "sources.txt", "\n".join(s.name for s in sources) + "\n")
        atomic_write_text(out / REPORT, json.dumps({"skipped": skipped}, indent=1) + "\n")
    return index


def read_index(folder: str | os.PathLike) -> dict:
    """The index of a prepared folder (ValueError when missing or incomplete)."""
    p = Path(folder) / INDEX
    if not p.is_file():
        raise FileNotFoundError(f"{folder} has no {INDEX}: run `jpeglm prepare` first")
    index = json.loads(p.read_text())
    if not index.get("complete"):
        raise ValueError(f"{folder}: preparation did not finish (run `jpeglm prepare` again)")
    if index["sequences"] == 0:
        raise ValueError(f"{folder}: no full sequence of {index['config']['seq_len']} tokens")
    return index


# ------------------------------------------------------------------------------------------------
# Dataset


def _sequence_table(folders: Sequence[str | os.PathLike]) -> tuple[list[np.ndarray], np.ndarray]:
    arrays, table = [], []
    for folder in folders:
        index = read_index(folder)
        for s in index["shards"]:
            if s["sequences"] == 0:
                continue
            arr = np.load(Path(folder) / s["file"], mmap_mode="r")
            if arr.dtype != np.uint16 or arr.ndim != 2:
                raise ValueError(f"{folder}/{s['file']}: not a uint16 (sequences, seq_len) shard")
            table += [(len(arrays), r) for r in range(arr.shape[0])]
            arrays.append(arr)
    return arrays, np.asarray(table, dtype=np.int64).reshape(-1, 2)


try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    class ShardDataset(IterableDataset):
        """Sequences of the shards in ``folders`` as int64 tensors of ``seq_len`` tokens.

        Deterministic given ``seed`` and the epoch (:meth:`set_epoch`); rank ``r`` of ``world``
        gets every ``world``-th sequence of the shuffled order (the order is truncated to a
        multiple of ``world`` so ranks see equal counts), and data-loader workers split a
        rank's share the same way. ``start`` skips that many of the rank's sequences (resume).
        """

        def __init__(
            self,
            folders: str | os.PathLike | Sequence[str | os.PathLike],
            seed: int = 0,
            shuffle: bool = True,
            rank: int = 0,
            world: int = 1,
        ) -> None:
            if isinstance(folders, (str, os.PathLike)):
                folders = [folders]
            if not 0 <= rank < world:
                raise ValueError(f"rank {rank} outside world size {world}")
            self.folders = list(folders)
            self.arrays, self.table = _sequence_table(self.folders)
            self.config = read_index(self.folders[0])["config"]
            for f in self.folders[1:]:
                if read_index(f)["config"]["tokenizer"] != self.config["tokenizer"]:
                    raise ValueError(f"{f} was prepared with another tokenizer")
            self.seq_len = int(self.arrays[0].shape[1])
            self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
            self.epoch = 0
            self.start = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def order(self) -> np.ndarray:
            """This rank's sequence indices for the current epoch."""
            n = len(self.table) - len(self.table) % self.world
            idx = np.arange(len(self.table))
            if self.shuffle:
                idx = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.table))
            return idx[:n][self.rank :: self.world]

        def __len__(self) -> int:
            return len(self.table) // self.world

        def __iter__(self) -> Iterator[torch.Tensor]:
            mine = self.order()[self.start :]
            info = get_worker_info()
            if info is not None:
                mine = mine[info.id :: info.num_workers]
            for i in mine:
                a, r = self.table[i]
                yield torch.from_numpy(self.arrays[a][r].astype(np.int64))

except ImportError:  # torch is optional: the preparation side works without it
    pass
