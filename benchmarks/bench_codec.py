"""Canonical encode / decode throughput of 256x256 images: jpeglm vs its peers, one run.

    python benchmarks/bench_codec.py [--images 64] [--repeats 5] [--no-write]

Peers, each given its most favourable input (prepared outside the timed loop):
* Pillow: a ready PIL image -> ``save(..., quality=25, subsampling="4:2:0", streamtype=2,
  restart_marker_blocks=1)`` (the reference, byte-identical); decode of the complete file
  (tables already spliced) -> numpy RGB array.
* PyTurboJPEG 1.x (system libturbojpeg): ``encode(quality=25, TJSAMP_420)`` — its API has no
  restart-marker or table-suppression option, so its output is not the canonical stream;
  decode of the complete file to RGB.
* OpenCV: ``imencode`` with quality 25, 4:2:0 and ``IMWRITE_JPEG_RST_INTERVAL=1`` from a BGR
  array; ``imdecode`` (BGR out) of the complete file.
* a plain C loop over the system libjpeg (``benchmarks/libjpeg_loop.c``, compiled with ``cc -O2``
  when a compiler is present): the ceiling a Python binding can approach.
* jpeglm: ``codec.encode`` / ``codec.decode`` (stripped stream in, tables spliced natively) in a
  Python loop (1 thread), and the batch calls on 1 thread and on all cores.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

import numpy as np
from PIL import Image

from jpeglm import codec
from jpeglm.data import bundled as samples

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, round_robin, today, write_section  # noqa: E402


def corpus(n: int, seed: int = 0) -> list[np.ndarray]:
    """n prepared 256x256 images: random crops, flips and scales of the bundled photos."""
    return [codec.prepare(c) for c in samples.random_crops(n, seed, flip=True)]


def c_ceiling(arrs: list[np.ndarray], full: list[bytes], repeats: int) -> dict[str, float]:
    """Images/s of the plain C libjpeg loop, or {} when no C compiler is available."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return {}
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libjpeg_loop.c")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "loop")
        subprocess.run([cc, "-O2", src, "-o", exe, "-ljpeg"], check=True)
        np.stack(arrs).tofile(os.path.join(tmp, "raw"))
        with open(os.path.join(tmp, "blob"), "wb") as f:
            f.write(b"".join(full))
        with open(os.path.join(tmp, "sizes"), "w") as f:
            f.write("\n".join(str(len(x)) for x in full))
        size = arrs[0].shape[0]
        res = subprocess.run(
            [exe, *(os.path.join(tmp, x) for x in ("raw",)), str(len(arrs)), str(size)]
            + [os.path.join(tmp, "blob"), os.path.join(tmp, "sizes"), str(repeats * 4)],
            check=True,
            capture_output=True,
            text=True,
        )
    return {k: float(v) for k, v in (line.split() for line in res.stdout.splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()

    arrs = corpus(args.images)
    n = len(arrs)
    pil_images = [Image.fromarray(a) for a in arrs]
    stripped = codec.encode_batch(arrs)
    full = [codec.with_tables(s) for s in stripped]
    stack = np.stack(arrs)
    threads = os.cpu_count() or 1
    mean_kb = sum(map(len, stripped)) / n / 1024

    def pil_encode() -> int:
        for im in pil_images:
            b = io.BytesIO()
            im.save(
                b, "JPEG", quality=25, subsampling="4:2:0", streamtype=2, restart_marker_blocks=1
            )
        return n

    def pil_decode() -> int:
        for f in full:
            np.asarray(Image.open(io.BytesIO(f)).convert("RGB"))
        return n

    # Sanity: the reference and jpeglm agree before anything is timed.
    b = io.BytesIO()
    pil_images[0].save(
        b, "JPEG", quality=25, subsampling="4:2:0", streamtype=2, restart_marker_blocks=1
    )
    assert b.getvalue() == stripped[0], "jpeglm output differs from Pillow"

    # Name -> callable (returns images processed); timed round-robin at the end.
    enc: dict[str, Callable[[], int]] = {}
    dec: dict[str, Callable[[], int]] = {}
    notes: list[str] = []
    enc["Pillow (reference)"] = pil_encode
    dec["Pillow (reference)"] = pil_decode

    try:
        from turbojpeg import TJPF_RGB, TJSAMP_420, TurboJPEG

        tj = TurboJPEG()

        def tj_encode() -> int:
            for a in arrs:
                tj.encode(a, quality=25, pixel_format=TJPF_RGB, jpeg_subsample=TJSAMP_420)
            return n

        def tj_decode() -> int:
            for f in full:
                tj.decode(f, pixel_format=TJPF_RGB)
            return n

        enc["PyTurboJPEG 1.x (no RST, with tables)"] = tj_encode
        dec["PyTurboJPEG 1.x"] = tj_decode
    except Exception as e:  # noqa: BLE001 - a missing peer is reported, not fatal
        notes.append(f"PyTurboJPEG unavailable: {e}")

    try:
        import cv2

        cv2.setNumThreads(1)
        bgr = [np.ascontiguousarray(a[..., ::-1]) for a in arrs]
        params = [
            cv2.IMWRITE_JPEG_QUALITY, 25,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
            cv2.IMWRITE_JPEG_RST_INTERVAL, 1,
        ]  # fmt: skip

        def cv_encode() -> int:
            for a in bgr:
                cv2.imencode(".jpg", a, params)
            return n

        bufs = [np.frombuffer(f, np.uint8) for f in full]

        def cv_decode() -> int:
            for f in bufs:
                cv2.imdecode(f, cv2.IMREAD_COLOR)
            return n

        enc["OpenCV (BGR in, with tables)"] = cv_encode
        dec["OpenCV (BGR out)"] = cv_decode
    except Exception as e:  # noqa: BLE001
        notes.append(f"OpenCV unavailable: {e}")

    def jl_encode() -> int:
        for a in arrs:
            codec.encode(a)
        return n

    def jl_decode() -> int:
        for s in stripped:
            codec.decode(s)
        return n

    enc["jpeglm encode (1 thread)"] = jl_encode
    enc["jpeglm encode_batch (1 thread)"] = lambda: len(codec.encode_batch(stack, threads=1))
    enc[f"jpeglm encode_batch ({threads} threads)"] = lambda: len(codec.encode_batch(stack))
    dec["jpeglm decode (1 thread)"] = jl_decode
    dec["jpeglm decode_batch (1 thread)"] = lambda: len(codec.decode_batch(stripped, threads=1))
    dec[f"jpeglm decode_batch ({threads} threads)"] = lambda: len(codec.decode_batch(stripped))

    enc_rates = round_robin(enc, args.repeats)
    dec_rates = round_robin(dec, args.repeats)
    ceiling = c_ceiling(arrs, full, args.repeats)
    if ceiling:
        enc_rates["plain C loop over libjpeg (ceiling)"] = ceiling["encode"]
        dec_rates["plain C loop over libjpeg (ceiling)"] = ceiling["decode"]
    else:
        notes.append("no C compiler: the plain-C ceiling was not measured")

    def table(rates: dict[str, float], base: float) -> str:
        rows = ["| implementation | images/s | vs Pillow |", "|---|---:|---:|"]
        rows += [f"| {k} | {v:,.0f} | {v / base:.2f}x |" for k, v in rates.items()]
        return "\n".join(rows)

    import PIL

    body = (
        f"Machine: {machine()}. Date: {today()}. "
        f"Pillow {PIL.__version__}, numpy {np.__version__}.\n"
        f"{n} canonical 256x256 images (random crops of the bundled photos), quality 25, "
        f"mean stripped stream {mean_kb:.1f} KiB. Best of {args.repeats} round-robin repeats "
        "(every implementation timed in turn, so load spikes hit all alike); "
        "command: `python benchmarks/bench_codec.py`.\n\n"
        "### Encode (prepared RGB array -> canonical stream)\n\n"
        + table(enc_rates, enc_rates["Pillow (reference)"])
        + "\n\n### Decode (stream -> RGB array)\n\n"
        + table(dec_rates, dec_rates["Pillow (reference)"])
        + "\n\nGoals (issue 3): encode >= 1.6x Pillow on one thread, >= 3x with batch threads"
        " on 2 cores; decode >= 3x Pillow on one thread."
        + ("\n\n" + "\n".join(notes) if notes else "")
    )
    print(body)
    if not args.no_write:
        write_section("Codec", body)


if __name__ == "__main__":
    main()
