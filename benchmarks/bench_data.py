"""Preprocessing throughput: image files -> packed token shards, vs a plain Pillow + tiktoken loop.

    python benchmarks/bench_data.py [--images 200] [--no-write]

Both sides do the same work per image: read the file, decode, center crop + antialiased
resize to 256, canonical JPEG (Pillow's save with the same options), BPE tokens (tiktoken
built from our ranks), BOS/EOS and packing. ``jpeglm prepare`` runs exact mode and fast mode
(libjpeg DCT scaling before the resize for big JPEG sources; the PSNR column says how far its
pixels move from exact). Sources: the bundled photos saved as large JPEGs (2048 px short side,
as web photos are) and as 512 px PNGs.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import tiktoken

    rows = [
        "| source | implementation | images/s | vs loop | PSNR vs exact |",
        "|---|---|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = [codec.encode(samples.photo_path(p)) for p in samples.PHOTOS]
        tok = Tokenizer.train(train, vocab_size=320, progress=False)
        enc = tiktoken.Encoding(
            "jpeglm", pat_str=r"[\s\S]+", mergeable_ranks=tok.mergeable_ranks, special_tokens={}
        )
        for label, side, fmt in (("2048px JPEG", 2048, "jpg"), ("512px PNG", 512, "png")):
            src = tmp / fmt
            src.mkdir()
            make_sources(src, args.images, side, fmt)
            files = sorted(src.iterdir())
            t0 = time.perf_counter()
            pillow_tiktoken_loop(files, enc, tok.bos_id, tok.eos_id, 12288)
            loop = args.images / (time.perf_counter() - t0)
            rows.append(f"| {label} | Pillow + tiktoken loop | {loop:.1f} | 1.00x | |")
            modes = [("exact", False)] + ([("fast", True)] if fmt == "jpg" else [])
            for mode, fast in modes:
                out = tmp / f"out_{fmt}_{mode}"
                t0 = time.perf_counter()
                data.prepare(src, out, tok, seq_len=12288, fast=fast, progress=False)
                rate = args.images / (time.perf_counter() - t0)
                q = ""
                if fast:
                    vals = [
                        psnr(
                            load_image(f.read_bytes(), 256),
                            load_image(f.read_bytes(), 256, True),
                        )
                        for f in files[:20]
                    ]
                    q = f"{np.mean(vals):.1f} dB"
                rows.append(
                    f"| {label} | jpeglm prepare ({mode}, {os.cpu_count()} workers) | {rate:.1f} "
                    f"| {rate / loop:.2f}x | {q} |"
                )
    body = (
        f"Machine: {machine()}. Date: {today()}. {args.images} images per source; "
        "command: `python benchmarks/bench_data.py`.\n\n" + "\n".join(rows)
    )
    print(body)
    if not args.no_write:
        write_section("Data preparation", body)


if __name__ == "__main__":
    main()
