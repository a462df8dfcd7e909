"""Preprocessing throughput: image files -> packed token shards, vs a plain Pillow + tiktoken loop.

    python benchmarks/bench_data.py [--images 200] [--no-write]

Both sides do the same work per image: read the file, decode, center crop + antialiased
resize to 256, canonical JPEG (Pillow's save with the same options), BPE tokens (tiktoken
built from our ranks), BOS/EOS and packing. ``jpeglm prepare`` runs exact mode and fast mode
(libjpeg DCT scaling before the resize for big JPEG sources; the PSNR column says how far its
pixels move from exact), from a folder, from webdataset tar shards and from a parquet file
(img2dataset's layout) holding the same images. Sources: the bundled photos saved as large
JPEGs (2048 px short side, as web photos are) and as 512 px PNGs. Then 2 parts at once
(``--part 0/2`` and ``1/2``, one process each) against 1, and an estimate for 23M images.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from jpeglm import codec
from jpeglm.data import bundled as samples
from jpeglm.data import prepare as data
from jpeglm.data.sources import load_image
from jpeglm.eval.metrics import psnr
from jpeglm.tokenizer import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, today, write_section  # noqa: E402


def make_sources(folder: Path, n: int, side: int, fmt: str) -> None:
    rng = np.random.default_rng(0)
    photos = [samples.photo(p).convert("RGB") for p in samples.PHOTOS]
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        s = int(min(w, h) * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        crop = im.crop((x, y, x + s, y + int(s * 1.33) if y + int(s * 1.33) <= h else y + s))
        crop = crop.resize((side, int(side * crop.height / crop.width)), Image.BICUBIC)
        if fmt == "jpg":
            crop.save(folder / f"{i:04d}.jpg", quality=90)
        else:
            crop.save(folder / f"{i:04d}.png")


def pillow_tiktoken_loop(files: list[Path], enc, bos: int, eos: int, seq_len: int) -> int:
    out: list[int] = []
    for f in files:
        im = Image.open(f).convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        im = im.resize((256, 256), Image.BILINEAR)
        b = io.BytesIO()
        im.save(b, "JPEG", quality=25, subsampling="4:2:0", streamtype=2, restart_marker_blocks=1)
        out += [bos, *enc._encode_bytes(b.getvalue()), eos]
    arr = np.array(out[: len(out) // seq_len * seq_len], dtype=np.uint16).reshape(-1, seq_len)
    return len(arr)


def make_webdataset(files: list[Path], folder: Path, shards: int = 2) -> str:
    """The files as img2dataset-style webdataset shards; returns their brace pattern."""
    import tarfile

    folder.mkdir()
    per = -(-len(files) // shards)
    for n in range(shards):
        with tarfile.open(folder / f"shards-{n:05d}.tar", "w") as tf:
            for i, f in enumerate(files[n * per : (n + 1) * per], n * per):
                tf.add(f, f"{i:09d}{f.suffix}")
                info = tarfile.TarInfo(f"{i:09d}.txt")
                info.size = 9
                tf.addfile(info, io.BytesIO(b"a caption"))
    return f"{folder}/shards-{{00000..{shards - 1:05d}}}.tar"


def make_parquet(files: list[Path], path: Path) -> str:
    """The files as one img2dataset-style parquet file (key, jpg, caption)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"key": [f"{i:09d}" for i in range(len(files))],
                      "jpg": [f.read_bytes() for f in files],
                      "caption": ["a caption"] * len(files)})  # fmt: skip
    pq.write_table(table, path, row_group_size=64)
    return str(path)


def _parts_run(src: str, out: Path, tokenizer_path: Path, parts: int, fast: bool) -> float:
    """Seconds for ``parts`` processes, each ``jpeglm prepare --part i/parts --workers 1``,
    run at once (as ``parts`` machines would)."""
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "jpeglm.cli",
        "prepare",
        src,
        str(out),
        "--tokenizer",
        str(tokenizer_path),
        "--workers",
        "1",
        "--quiet",
    ] + (["--fast"] if fast else [])
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*cmd, "--part", f"{i}/{parts}"], stdout=subprocess.DEVNULL)
             for i in range(parts)]  # fmt: skip
    if any(p.wait() for p in procs):
        raise RuntimeError("a part failed")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import tiktoken

    rows = [
        "| source | implementation | images/s | tokens/s | vs loop | PSNR vs exact |",
        "|---|---|---:|---:|---:|---:|",
    ]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = [codec.encode(samples.photo_path(p)) for p in samples.PHOTOS]
        tok = Tokenizer.train(train, vocab_size=320, progress=False)
        tok_path = tmp / "tok.jpeglm"
        tok.save(tok_path)
        enc = tiktoken.Encoding(
            "jpeglm", pat_str=r"[\s\S]+", mergeable_ranks=tok.mergeable_ranks, special_tokens={}
        )
        estimate = ""
        for label, side, fmt in (("2048px JPEG", 2048, "jpg"), ("512px PNG", 512, "png")):
            src = tmp / fmt
            src.mkdir()
            make_sources(src, args.images, side, fmt)
            files = sorted(src.iterdir())
            kinds = {"folder": str(src)}
            if fmt == "jpg":  # the same images as webdataset shards and as parquet
                kinds["webdataset (2 tars)"] = make_webdataset(files, tmp / "wds")
                kinds["parquet (img2dataset)"] = make_parquet(files, tmp / "i2d.parquet")
            modes = [("exact", False)] + ([("fast", True)] if fmt == "jpg" else [])
            contenders = {"Pillow + tiktoken loop": None}
            contenders.update({(k, m): (s, f) for k, s in kinds.items() for m, f in modes})
            best: dict = {}
            tokens: dict = {}
            for r in range(args.rounds):  # round robin: each contender in turn, best of rounds
                for name, spec in contenders.items():
                    t0 = time.perf_counter()
                    if spec is None:
                        pillow_tiktoken_loop(files, enc, tok.bos_id, tok.eos_id, 12288)
                        n_tok = None
                    else:
                        out = tmp / f"out_{fmt}_{len(best)}_{r}_{abs(hash(name))}"
                        idx = data.prepare(spec[0], out, tok, seq_len=12288, fast=spec[1],
                                           progress=False)  # fmt: skip
                        n_tok = idx["tokens"]
                    dt = time.perf_counter() - t0
                    best[name] = min(best.get(name, dt), dt)
                    tokens[name] = n_tok
            loop = args.images / best["Pillow + tiktoken loop"]
            for name, dt in best.items():
                rate = args.images / dt
                if name == "Pillow + tiktoken loop":
                    rows.append(f"| {label} | {name} | {rate:.1f} | | 1.00x | |")
                    continue
                kind, mode = name
                q = ""
                if mode == "fast":
                    raw = [f.read_bytes() for f in files[:20]]
                    vals = [psnr(load_image(b, 256), load_image(b, 256, True)) for b in raw]
                    q = f"{np.mean(vals):.1f} dB"
                rows.append(
                    f"| {label} | jpeglm prepare: {kind} ({mode}, {cores} workers) | {rate:.1f} "
                    f"| {tokens[name] / dt:,.0f} | {rate / loop:.2f}x | {q} |"
                )
            if fmt == "jpg":  # 2 parts (2 processes, 1 worker each) vs 1 part (1 process)
                t1 = min(_parts_run(str(src), tmp / f"p1_{r}", tok_path, 1, False)
                         for r in range(args.rounds))  # fmt: skip
                t2 = min(_parts_run(str(src), tmp / f"p2_{r}", tok_path, 2, False)
                         for r in range(args.rounds))  # fmt: skip
                rows.append(f"| {label} | 1 part, 1 process x 1 worker | {args.images / t1:.1f} "
                            f"| | {args.images / t1 / loop:.2f}x | |")  # fmt: skip
                rows.append(
                    f"| {label} | 2 parts at once, 2 processes x 1 worker | "
                    f"{args.images / t2:.1f} | | {args.images / t2 / loop:.2f}x | |"
                )
                per_core = {m: args.images / best[("folder", m)] / cores for m, _ in modes}
                estimate = "\n\n" + _estimate(per_core, t1 / t2)
    body = (
        f"Machine: {machine()}. Date: {today()}. {args.images} images per source, best of "
        f"{args.rounds} rounds, contenders in turn; command: `python benchmarks/bench_data.py`. "
        "Tokens/s: the tokens written to shards per second.\n\n" + "\n".join(rows) + estimate
    )
    print(body)
    if not args.no_write:
        write_section("Data preparation", body)


def _estimate(per_core: dict[str, float], speedup_2: float) -> str:
    """What 23M images would take on N machines of M cores, from the measured per-core rate
    (an estimate: it assumes the rate scales with cores and machines, as 2 parts vs 1 did)."""
    lines = [f"**Estimate for the paper's 23M images** (2048 px JPEG sources, from the measured "
             f"per-core rate: exact {per_core['exact']:.1f}, fast {per_core['fast']:.1f} "
             f"images/s per core; 2 parts at once, one process each, ran {speedup_2:.2f}x the "
             "rate of one part (2x is ideal on 2 free cores); it assumes the rate scales with "
             "cores and machines; disk and network not counted):", "",
             "| machines x cores | exact | fast |", "|---|---:|---:|"]  # fmt: skip
    for n, m in ((1, 2), (1, 32), (8, 32), (32, 64), (100, 64)):
        cells = []
        for mode in ("exact", "fast"):
            hours = 23e6 / (per_core[mode] * n * m) / 3600
            if hours < 1:
                cells.append(f"{hours * 60:.0f} min" if hours * 60 >= 1 else "< 1 min")
            else:
                cells.append(f"{hours:,.1f} h" if hours < 48 else f"{hours / 24:,.1f} days")
        lines.append(f"| {n} x {m} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
