"""Images -> packed token shards, and a Dataset over them.

``prepare(src, out, tokenizer)`` walks a folder, a list file (one path per line) or a tar of
images; decodes each with Pillow (libjpeg-turbo), prepares it (center crop + resize), encodes
it canonically and tokenizes it natively, in batches; joins the token streams of a chunk of
images as ``BOS tokens EOS BOS tokens EOS ...`` and cuts them into sequences of ``seq_len``
tokens, stored as one uint16 ``.npy`` shard per chunk (the tail of a chunk shorter than a
sequence is dropped and counted). Every file is written atomically; a shard that exists is
skipped, so a killed run resumes where it stopped. Unreadable images are skipped and listed in
``report.json``. ``index.json`` lists the shards and their counts.

Fast mode (``fast=True``): JPEG sources much larger than the target are decoded with
libjpeg's DCT-domain scaling (Pillow's ``draft``: 1/2, 1/4 or 1/8) before the resize — much
faster on big photos, slightly different pixels (the benchmark reports the PSNR).

``ShardDataset`` is a torch ``IterableDataset`` over the shards: memory-mapped, sequences
shuffled deterministically per epoch from a seed, split across distributed ranks and
data-loader workers without overlap.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from jpeglm import codec
from jpeglm._io import atomic_open, atomic_write_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
INDEX = "index.json"
REPORT = "report.json"


# ------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Source:
    """One image to read: a file path, or a member of a tar archive."""

    name: str  # how it is reported
    path: str
    member: str | None = None

    def read(self) -> bytes:
        if self.member is None:
            with open(self.path, "rb") as f:
                return f.read()
        with tarfile.open(self.path) as tf:
            f = tf.extractfile(self.member)
            if f is None:
                raise ValueError("not a regular file in the archive")
            return f.read()


def list_sources(src: str | os.PathLike) -> list[Source]:
    """The images of a folder (recursively, sorted), a ``.txt`` list file, or a tar archive."""
    p = Path(src)
    if not p.exists():
        raise FileNotFoundError(f"no such folder, list or archive: {p}")
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        out = [Source(str(f.relative_to(p)), str(f)) for f in files]
    elif p.suffix == ".txt":
        lines = [ln.strip() for ln in p.read_text().splitlines()]
        out = [
            Source(ln, str((p.parent / ln) if not os.path.isabs(ln) else ln)) for ln in lines if ln
        ]
    elif tarfile.is_tarfile(p):
        with tarfile.open(p) as tf:
            names = sorted(
                m.name for m in tf.getmembers()
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES
            )  # fmt: skip
        out = [Source(f"{p.name}:{n}", str(p), n) for n in names]
    else:
        raise ValueError(f"{p}: expected a folder, a .txt list of paths, or a tar archive")
    if not out:
        raise ValueError(f"no images found in {p}")
    return out


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
    sources = list_sources(src)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    for stale in out.glob(".*.tmp"):  # temp files of a run killed mid-write
        stale.unlink(missing_ok=True)
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
    skipped = old.get("skipped", [])
    n_chunks = (len(sources) + images_per_shard - 1) // images_per_shard
    shards = []
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(sources), desc="prepare", unit="img", disable=not progress)
    with ThreadPoolExecutor(workers) as pool:
        for c in range(n_chunks):
            name = f"shard_{c:06d}.npy"
            chunk = sources[c * images_per_shard : (c + 1) * images_per_shard]
            if name in done and (out / name).exists():
                shards.append(done[name])
                bar.update(len(chunk))
                continue

            def work(s: Source) -> np.ndarray | str:
                try:
                    return load_image(s.read(), size, fast)
                except Exception as e:  # noqa: BLE001 - any unreadable image is skipped
                    return f"{type(e).__name__}: {e}"

            images, bad = [], []
            for s, r in zip(chunk, pool.map(work, chunk)):
                if isinstance(r, str):
                    bad.append({"source": s.name, "error": r})
                else:
                    images.append(r)
            skipped = [x for x in skipped if x["source"] not in {b["source"] for b in bad}] + bad
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
    index = _write_index(out, config, shards, skipped, sources, final=True)
    return index


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
