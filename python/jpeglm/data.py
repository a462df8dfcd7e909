"""Images -> packed token shards, and a Dataset over them.

``prepare(src, out, tokenizer)`` walks a folder, a list file (one path per line) or a tar of
images; decodes each with Pillow (libjpeg-turbo), prepares it (center crop + resize), encodes
it canonically and tokenizes it natively, in batches; joins the token streams of a chunk of
images as ``BOS tokens EOS BOS tokens EOS ...`` and cuts them into sequences of ``seq_len``
tokens, stored as one uint16 ``.npy`` shard per chunk (the tail of a chunk shorter than a
sequence is dropped and counted). Every file is written atomically; a shard that exists is
skipped, so a killed run resumes where it stopped (the temporary files of its own writes that a
killed run left are removed; no other file in ``out`` is touched). Unreadable images, file names
that are not UTF-8 and the unreadable rest of a truncated tar archive are skipped and listed in
``report.json``; a source with no usable image at all is an error (``ValueError``), as is an
output that would replace one of the inputs. ``index.json`` lists the shards and their counts.

Fast mode (``fast=True``): JPEG sources much larger than the target are decoded with
libjpeg's DCT-domain scaling (Pillow's ``draft``: 1/2, 1/4 or 1/8) before the resize — much
faster on big photos, slightly different pixels (the benchmark reports the PSNR).

``ShardDataset`` is a torch ``IterableDataset`` over the shards: memory-mapped, sequences
shuffled deterministically per epoch from a seed, split across distributed ranks and
data-loader workers without overlap.
"""

from __future__ import annotations

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


def scan_sources(src: str | os.PathLike) -> tuple[list[Source], list[dict]]:
    """:func:`list_sources` and the problems met listing them, as ``{"source", "error"}``
    entries for ``report.json``: names that are not valid UTF-8 (shown with ``\\xNN``
    escapes; they could not be listed in ``sources.txt``), and a tar archive that is truncated
    or corrupt part way (the members before the damage are listed)."""
    p = Path(src)
    if not p.exists():
        raise FileNotFoundError(f"no such folder, list or archive: {show(p)}")
    problems: list[dict] = []
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
        )
        out = [Source(str(f.relative_to(p)), str(f)) for f in files]
    elif p.suffix == ".txt":
        text = p.read_bytes().decode("utf-8", "surrogateescape")
        lines = [ln.strip() for ln in text.splitlines()]
        out = [
            Source(ln, str((p.parent / ln) if not os.path.isabs(ln) else ln)) for ln in lines if ln
        ]
    elif tarfile.is_tarfile(p):
        out = _tar_sources(p, problems)
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


def _tar_sources(p: Path, problems: list[dict]) -> list[Source]:
    """The image members of a tar archive, up to the first damage (reported in ``problems``)."""
    members = []
    try:
        with tarfile.open(p) as tf:
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
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
) -> dict:
    """Turn the images of ``src`` into packed token shards in ``out``; returns the index.

    Resumable: shards already present (from an identical configuration) are kept and skipped.
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
    sources, problems = scan_sources(src)
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
        "sources": len(sources),
    }
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
    skipped = _merge_skipped(old.get("skipped", []), problems)
    shards = []
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(sources), desc="prepare", unit="img", disable=not progress)
    with _pool(workers) as pool:
        for c in range(n_chunks):
            name = shard_name(c)
            chunk = sources[c * images_per_shard : (c + 1) * images_per_shard]
            if name in done and (out / name).exists():
                shards.append(done[name])
                bar.update(len(chunk))
                continue

            def work(s: Source) -> np.ndarray | str:
                try:
                    return load_image(s.read(), size, fast)
                except UnidentifiedImageError:
                    return "UnidentifiedImageError: not an image file Pillow can read"
                except Exception as e:  # noqa: BLE001 - any unreadable image is skipped
                    return f"{type(e).__name__}: {e}"

            images, bad = [], []
            for s, r in zip(chunk, pool.map(work, chunk)):
                if isinstance(r, str):
                    bad.append({"source": s.name, "error": r})
                else:
                    images.append(r)
            skipped = _merge_skipped(skipped, bad)
            n_bytes = 0
            if images:
                streams = codec.encode_batch(np.stack(images), quality=quality, size=size)
                n_bytes = sum(map(len, streams))
                toks, offsets = tokenizer.encode_batch_to_numpy(streams)
                offsets = np.asarray(offsets, dtype=np.int64)
                lens = np.diff(offsets)
                packed = np.empty(len(toks) + 2 * len(streams), dtype=np.uint16)
                starts = offsets[:-1] + 2 * np.arange(len(streams))
                packed[starts] = tokenizer.bos_id
                packed[starts + lens + 1] = tokenizer.eos_id
                for i in range(len(streams)):
                    packed[starts[i] + 1 : starts[i] + 1 + lens[i]] = toks[
                        offsets[i] : offsets[i + 1]
                    ]
            else:
                packed = np.empty(0, np.uint16)
            n_seq = len(packed) // seq_len
            seqs = packed[: n_seq * seq_len].reshape(n_seq, seq_len)
            _write_npy(out / name, seqs)
            shards.append({
                "file": name, "sequences": int(n_seq), "images": len(images),
                "tokens": int(len(packed)), "dropped_tokens": int(len(packed) - n_seq * seq_len),
                "bytes": int(n_bytes),
            })  # fmt: skip
            bar.update(len(chunk))
            _write_index(out, config, shards, skipped, sources, final=False)
    bar.close()
    if not any(s["images"] for s in shards):  # nothing to keep: a rerun starts afresh
        for f in [*(s["file"] for s in shards), INDEX]:
            (out / f).unlink(missing_ok=True)
        atomic_write_text(out / REPORT, json.dumps({"skipped": skipped}, indent=1) + "\n")
        first = skipped[0] if skipped else {"source": "?", "error": "?"}
        raise ValueError(
            f"no usable image in {show(src)} ({len(skipped)} skipped; first: "
            f"{first['source']}: {first['error']}; see {show(out / REPORT)})"
        )
    index = _write_index(out, config, shards, skipped, sources, final=True)
    return index


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
        "skipped": skipped,
    }
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
