"""The demo behind ``jpeglm demo``: the bundled photos through the canonical codec, then the
shipped JPEG-LM sampling and completing digits.

:func:`run` encodes the bundled photos canonically, decodes them back (and cut at 60%, as a
damaged generation would be), prints sizes, PSNR and timings, and writes the complete JPEG
files and a side-by-side picture. Unless ``codec_only``, it then samples and completes 32x32
MNIST digits with the checkpoint shipped in :data:`DEMO_CHECKPOINT` (trained by our own
trainer on the bundled digits, see scripts/train_demo_checkpoint.sh) and writes a picture grid
and a JSON report. It checks nothing: the command line checks the options and the outputs
(:func:`output_names`, :func:`inputs`) before calling it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from jpeglm._io import atomic_write_bytes, write_png

__all__ = ["DEMO_CHECKPOINT", "inputs", "output_names", "run"]

#: the shipped demo model: an HF folder with its tokenizer
DEMO_CHECKPOINT = Path(__file__).parent / "data" / "checkpoints" / "mnist32"


def output_names(codec_only: bool = False) -> list[str]:
    """The files :func:`run` writes in its output folder, in order."""
    from jpeglm import samples

    model_files = [] if codec_only else ["samples_grid.png", "report.json"]
    return [f"{n}.jpg" for n in samples.PHOTOS] + ["side_by_side.png", *model_files]


def inputs() -> list[Path]:
    """The files :func:`run` reads: the bundled photos and the demo checkpoint's files."""
    from jpeglm import samples

    paths = [samples.photo_path(n) for n in samples.PHOTOS]
    if DEMO_CHECKPOINT.is_dir():
        paths += list(DEMO_CHECKPOINT.iterdir())
    return paths


def run(
    out: str | Path,
    quality: int = 25,
    size: int = 256,
    samples: int = 16,
    seed: int = 0,
    temperature: float = 0.4,
    codec_only: bool = False,
) -> None:
    """Run the demo into the existing folder ``out`` (see the module docstring), printing
    what it shows. ``samples``, ``seed`` and ``temperature`` are for the model part."""
    out = Path(out)
    _codec_part(out, quality, size)
    if not codec_only:
        _model_part(out, samples, seed, temperature)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` with ``text`` in white on a black box in its top-left corner."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, 8 + 6 * len(text), 14), fill=(0, 0, 0))
    d.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(im)


def _codec_part(out: Path, q: int, size: int) -> None:
    """Encode the bundled photos canonically, decode them back, show and measure it."""
    from jpeglm import codec, samples
    from jpeglm.eval import psnr

    names = list(samples.PHOTOS)
    t0 = time.perf_counter()
    prepared = [codec.prepare(samples.photo_path(n), size) for n in names]
    t_prep = time.perf_counter() - t0

    t0 = time.perf_counter()
    streams = [codec.encode(a, quality=q, size=size) for a in prepared]
    t_enc1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch = codec.encode_batch(np.stack(prepared), quality=q, size=size)
    t_encb = time.perf_counter() - t0
    assert batch == streams

    t0 = time.perf_counter()
    decoded = [codec.decode(s, quality=q) for s in streams]
    t_dec = time.perf_counter() - t0

    # A damaged generation: each stream cut at 60% still gives a picture (grey where missing).
    cut = [
        codec.decode(s[: int(len(s) * 0.6)], tolerant=True, quality=q, size=size) for s in streams
    ]

    print(f"jpeglm demo: {len(names)} bundled photos -> canonical {size}x{size} JPEG, quality {q}")
    print(f"{'image':<18} {'stripped':>9} {'with tables':>12} {'PSNR':>7}  cut at 60%")
    for n, a, s, d, c in zip(names, prepared, streams, decoded, cut):
        print(
            f"{n:<18} {len(s):>8}B {len(codec.with_tables(s, q)):>11}B {psnr(a, d):>6.2f}dB"
            f"  {c.valid_mcus}/{c.total_mcus} MCUs valid"
        )
        atomic_write_bytes(out / f"{n}.jpg", codec.with_tables(s, q))
    n_img = len(names)
    print(
        f"timings: prepare {t_prep / n_img * 1e3:.2f} ms/img, "
        f"encode {t_enc1 / n_img * 1e6:.0f} us/img "
        f"(batch, all cores: {t_encb / n_img * 1e6:.0f} us/img), "
        f"decode {t_dec / n_img * 1e6:.0f} us/img"
    )
    rows = [
        np.concatenate(
            [_label(a, "original"), _label(d, f"q{q}: {len(s)} B"), _label(c.image, "cut 60%")],
            axis=1,
        )
        for a, d, s, c in zip(prepared, decoded, streams, cut)
    ]
    write_png(out / "side_by_side.png", np.concatenate(rows, axis=0))
    print(f"wrote {out / 'side_by_side.png'} and {n_img} complete JPEG files in {out}/")


def _big(img: np.ndarray) -> np.ndarray:
    """32x32 is tiny on screen: ``img`` shown 3x."""
    return np.repeat(np.repeat(img, 3, axis=0), 3, axis=1)


def _model_part(out: Path, n: int, seed: int, temperature: float) -> None:
    """Sample and complete ``n`` digits with the shipped JPEG-LM; skipped (one line) without
    torch or the checkpoint."""
    try:
        import torch
    except ImportError:
        print("(torch is not installed: skipping the model part of the demo)")
        return
    if not (DEMO_CHECKPOINT / "config.json").is_file():
        print(f"(no demo checkpoint in {DEMO_CHECKPOINT}: skipping the model part)")
        return
    from PIL import Image, ImageDraw

    from jpeglm import codec, samples
    from jpeglm.eval import bits_per_byte, completion_scores, image_grid, judge_digits
    from jpeglm.judge import default_judge
    from jpeglm.model import Transformer
    from jpeglm.sample import complete, generate
    from jpeglm.tokenizer import Tokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    model = Transformer.from_pretrained(DEMO_CHECKPOINT, dtype=torch.float32).eval()
    tok = Tokenizer.load(DEMO_CHECKPOINT / "tokenizer.jpeglm")
    size = 32
    # A 0.9M-parameter model trained for minutes: sample conservatively (the paper's settings,
    # temperature 1 / top-k 50 / top-p 0.9, are for a 7B model; pass --temperature to change).
    kw = dict(size=size, temperature=temperature, top_k=8, top_p=0.9, max_tokens=600,
              seed=seed)  # fmt: skip
    gen = generate(model, tok, n=n, **kw)
    gen_u = generate(model, tok, n=n, constrained=False, **kw)
    digits, _ = samples.mnist()
    held = [d for d in digits[4500 : 4500 + n]]  # the held-out digits (not trained on)
    comp = complete(model, tok, held, rows=1, **kw)
    originals = [codec.decode(codec.encode(d, size=size)) for d in held]
    streams = [codec.encode(d, size=size) for d in digits[4500:4600]]
    bpb = bits_per_byte(model, tok, streams, size=size)
    bpb_c = bits_per_byte(model, tok, streams, constrained=True, size=size)
    scores = completion_scores(originals, [c.image for c in comp], rows=1)
    judged = judge_digits([s.image for s in gen])
    judged_u = default_judge().score([s.image for s in gen_u])  # the references once, above
    dt = time.perf_counter() - t0

    k = min(8, n)
    prompts = [o.copy() for o in originals]
    for p in prompts:
        p[16:] = 128
    rows = [
        [_big(s.image) for s in gen[:k]],
        [_big(s.image) for s in gen_u[:k]],
        [_big(p) for p in prompts[:k]],
        [_big(c.image) for c in comp[:k]],
        [_big(o) for o in originals[:k]],
    ]
    grid = image_grid(rows)
    # row labels on the left
    labels = ["samples (constrained)", "samples (unconstrained)", "prompts (1 MCU row)",
              "completions", "originals"]  # fmt: skip
    canvas = Image.new("RGB", (grid.shape[1] + 150, grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (150, 0))
    d = ImageDraw.Draw(canvas)
    for r, text in enumerate(labels):
        d.text((4, r * (grid.shape[0] // len(labels)) + 40), text, fill=(0, 0, 0))
    write_png(out / "samples_grid.png", canvas)
    report = {
        "checkpoint": DEMO_CHECKPOINT.relative_to(Path(__file__).parents[1]).as_posix(),
        "parameters": model.num_params(),
        "samples": n,
        "decodable_constrained": sum(s.clean for s in gen) / n,
        "decodable_unconstrained": sum(s.clean for s in gen_u) / n,
        "held_out_bits_per_byte": bpb["bits_per_byte"],
        "held_out_bits_per_byte_constrained": bpb_c["bits_per_byte"],
        "completion": scores,
        "judge": judged,
        "judge_unconstrained": judged_u,
        "seconds": dt,
    }
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    print(
        f"JPEG-LM demo model ({model.num_params() / 1e6:.1f}M parameters, 32x32 MNIST digits):\n"
        f"  decodable samples: {report['decodable_constrained']:.0%} constrained, "
        f"{report['decodable_unconstrained']:.0%} unconstrained (same seeds)\n"
        f"  held-out bits/byte: {bpb['bits_per_byte']:.3f} "
        f"(constrained {bpb_c['bits_per_byte']:.3f})\n"
        f"  completion of the lower half: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f} "
        f"(repeat-last-row baseline: {scores['baseline_psnr']:.2f} dB, "
        f"{scores['baseline_ssim']:.3f})\n"
        f"  recognised as digits (judge, p >= 0.9): {judged['samples']['share']:.0%} of "
        f"constrained samples ({judged['samples']['distinct']} distinct digits), "
        f"{judged_u['share']:.0%} unconstrained; real held-out digits "
        f"{judged['held_out_digits']['share']:.0%}, "
        f"garbage {judged['non_digits_jpeg']['share']:.0%}\n"
        f"wrote {out / 'samples_grid.png'} and {out / 'report.json'} ({dt:.1f} s)"
    )
