"""The demo behind ``jpeglm demo``: the bundled photos through the canonical codec, then the
shipped JPEG-LM sampling and completing digits.

:func:`run` encodes the bundled photos canonically, decodes them back (and cut at 60%, as a
damaged generation would be), prints sizes, PSNR and timings, and writes the complete JPEG
files and a side-by-side picture. Unless ``codec_only``, it then samples and completes 32x32
MNIST digits with the checkpoint shipped in :data:`DEMO_CHECKPOINT` (trained by our own
trainer on the bundled digits, see scripts/train_demo_checkpoint.sh), adds one row per digit
from the class-conditional model when it is shipped (:mod:`jpeglm.cli.demo_cond`), and writes
a picture grid and a JSON report. It checks nothing: the command line checks the options and
the outputs (:func:`output_names`, :func:`inputs`) before calling it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from jpeglm._io import atomic_write_bytes, write_png
from jpeglm.data.bundled import DEMO_CHECKPOINT, VIDEO_CHECKPOINT
from jpeglm.eval.metrics import image_grid

__all__ = [
    "inputs",
    "output_names",
    "run",
]


def output_names(codec_only: bool = False) -> list[str]:
    """The files :func:`run` writes in its output folder, in order."""
    from jpeglm.data import bundled as samples

    model_files = [] if codec_only else ["samples_grid.png", "video_grid.png", "report.json"]
    return [f"{n}.jpg" for n in samples.PHOTOS] + ["side_by_side.png", *model_files]


def inputs() -> list[Path]:
    """The files :func:`run` reads: the bundled photos and the demo checkpoints' files."""
    from jpeglm.data import bundled as samples

    paths = [samples.photo_path(n) for n in samples.PHOTOS]
    for folder in (DEMO_CHECKPOINT, samples.COND_CHECKPOINT, VIDEO_CHECKPOINT):
        if folder.is_dir():
            paths += list(folder.iterdir())
    return paths


def run(
    out: str | Path,
    quality: int = 25,
    size: int = 256,
    samples: int = 16,
    seed: int = 0,
    temperature: float | None = None,
    codec_only: bool = False,
) -> None:
    """Run the demo into the existing folder ``out`` (see the module docstring), printing
    what it shows. ``samples``, ``seed`` and ``temperature`` (default: the checkpoint's
    recorded one) are for the model part."""
    out = Path(out)
    _codec_part(out, quality, size)
    if not codec_only:
        report = _model_part(out, samples, seed, temperature)
        if report is not None:
            report["video"] = _video_part(out, seed)
            text = json.dumps(report, indent=2) + "\n"
            atomic_write_bytes(out / "report.json", text.encode())


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
    from jpeglm import codec
    from jpeglm.data import bundled as samples
    from jpeglm.eval.metrics import psnr

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


def _model_part(out: Path, n: int, seed: int, temperature: float | None) -> dict | None:
    """Sample and complete ``n`` digits with the shipped JPEG-LM; skipped (one line) without
    torch or the checkpoint. Returns the report (written by :func:`run`)."""
    try:
        import torch
    except ImportError:
        print("(torch is not installed: skipping the model part of the demo)")
        return None
    if not (DEMO_CHECKPOINT / "config.json").is_file():
        print(f"(no demo checkpoint in {DEMO_CHECKPOINT}: skipping the model part)")
        return None
    from PIL import Image, ImageDraw

    from jpeglm import codec
    from jpeglm.checkpoint.load import load_model
    from jpeglm.cli.demo_cond import cond_part
    from jpeglm.data import bundled as samples
    from jpeglm.eval.judge import default_judge
    from jpeglm.eval.metrics import bits_per_byte, completion_scores, judge_digits
    from jpeglm.inference.sample import complete, generate
    from jpeglm.inference.settings import SamplingSettings

    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    loaded = load_model(DEMO_CHECKPOINT, dtype=torch.float32)
    model, tok = loaded.model, loaded.tokenizer
    size, quality = loaded.image_size, loaded.quality  # what the model's record says it makes
    # A ~1M-parameter model trained for an hour: it is sampled at the settings recorded with it
    # (chosen on held-out data; the paper's defaults are for 7B).
    settings = SamplingSettings.merged(loaded.info["sampling"], temperature=temperature,
                                       max_tokens=600, seed=seed)  # fmt: skip
    kw = dict(size=size, quality=quality, settings=settings)
    gen = generate(model, tok, n=n, **kw)
    gen_u = generate(model, tok, n=n, constrained=False, **kw)
    digits, _ = samples.mnist()
    held_idx = samples.mnist_split()[1]  # the stratified held-out digits (not trained on)
    held = [digits[i] for i in held_idx[np.linspace(0, len(held_idx) - 1, n).astype(int)]]
    comp = complete(model, tok, held, rows=1, **kw)
    originals = [codec.decode(codec.encode(d, size=size, quality=quality), quality=quality)
                 for d in held]  # fmt: skip
    streams = [codec.encode(digits[i], size=size, quality=quality) for i in held_idx]
    bpb = bits_per_byte(model, tok, streams, size=size)
    bpb_c = bits_per_byte(model, tok, streams, constrained=True, size=size)
    scores = completion_scores(originals, [c.image for c in comp], rows=1)
    judged = judge_digits([s.image for s in gen])
    judged_u = default_judge().score([s.image for s in gen_u])  # the references once, above
    dt = time.perf_counter() - t0

    cond_report, cond_rows, cond_text = cond_part(seed, temperature)  # one row per digit, or none
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
        *([_big(im) for im in ims] for _, ims in cond_rows),
    ]
    width = max(len(r) for r in rows)  # rows of fewer images padded with white
    rows = [r + [np.full_like(r[0], 255)] * (width - len(r)) for r in rows]
    grid = image_grid(rows)
    # row labels on the left
    labels = ["samples (constrained)", "samples (unconstrained)", "prompts (1 MCU row)",
              "completions", "originals", *(text for text, _ in cond_rows)]  # fmt: skip
    canvas = Image.new("RGB", (grid.shape[1] + 150, grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (150, 0))
    d = ImageDraw.Draw(canvas)
    for r, text in enumerate(labels):
        d.text((4, r * (grid.shape[0] // len(labels)) + 40), text, fill=(0, 0, 0))
    write_png(out / "samples_grid.png", canvas)
    report = {
        "checkpoint": DEMO_CHECKPOINT.relative_to(Path(__file__).parents[2]).as_posix(),
        "parameters": model.num_params(),
        "sampling": settings.record(),
        "samples": n,
        "decodable_constrained": sum(s.clean for s in gen) / n,
        "decodable_unconstrained": sum(s.clean for s in gen_u) / n,
        "held_out_bits_per_byte": bpb["bits_per_byte"],
        "held_out_bits_per_byte_constrained": bpb_c["bits_per_byte"],
        "completion": scores,
        "judge": judged,
        "judge_unconstrained": judged_u,
        "seconds": dt,
        "conditional": cond_report,  # None: the conditional model is absent
    }
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
        f"wrote {out / 'samples_grid.png'} ({dt:.1f} s)"
    )
    print(cond_text)
    return report


def _video_part(out: Path, seed: int, n: int = 4, prompt_frames: int = 10) -> dict | None:
    """Complete ``n`` held-out Moving-MNIST clips after ``prompt_frames`` frames with the
    shipped AVC-LM (the paper's evaluation: 10 frames of prompt, 5 generated); a grid of the
    clips (real / completed, frame by frame) and PSNR / SSIM of the generated frames beside
    repeating the last prompt frame. Skipped (one line, None) without PyAV or the checkpoint."""
    from PIL import Image, ImageDraw

    from jpeglm.checkpoint.load import load_model
    from jpeglm.data import bundled as samples
    from jpeglm.eval.video import clip_scores
    from jpeglm.inference.settings import SamplingSettings
    from jpeglm.video import codec as video
    from jpeglm.video import sample as video_sample

    if not (VIDEO_CHECKPOINT / "config.json").is_file():
        print(f"(no video checkpoint in {VIDEO_CHECKPOINT}: skipping the video part)")
        return None
    try:
        video.encode(np.zeros((1, 16, 16, 3), np.uint8))
    except ImportError:
        print("(PyAV is not installed: skipping the video part; pip install 'jpeglm[video]')")
        return None
    t0 = time.perf_counter()
    import torch

    loaded = load_model(VIDEO_CHECKPOINT, dtype=torch.float32)
    v = loaded.info["video"]
    total, size = int(round(v["fps"] * v["seconds"])), (int(v["height"]), int(v["width"]))
    held_idx = samples.mnist_split()[1]
    clips = samples.moving_mnist(n, frames=total, size=size[1], seed=seed + 101, indices=held_idx)
    streams = [video.encode(video.prepare(list(c), width=size[1], height=size[0],
                                          seconds=total / v["fps"], fps=v["fps"]),
                            qp=v["qp"], fps=int(v["fps"])) for c in clips]  # fmt: skip
    real = [video.decode(s) for s in streams]
    settings = SamplingSettings.merged(loaded.info["sampling"], max_tokens=2048, seed=seed)
    got = video_sample.complete(loaded.model, loaded.tokenizer, streams, frames=prompt_frames,
                                total_frames=total, size=size, settings=settings)  # fmt: skip
    scores = clip_scores(real, [g.frames for g in got], prompt_frames)
    scores["valid_generated_frames"] = float(
        np.mean([max(0, g.valid_frames - prompt_frames) / (total - prompt_frames) for g in got])
    )
    dt = time.perf_counter() - t0
    rows = []
    for r, g in zip(real, got):
        rows += [[_big2(f) for f in r], [_big2(f) for f in g.frames]]
    grid = image_grid(rows)
    canvas = Image.new("RGB", (grid.shape[1] + 120, grid.shape[0]), "white")
    canvas.paste(Image.fromarray(grid), (120, 0))
    d = ImageDraw.Draw(canvas)
    h = grid.shape[0] // len(rows)
    for r in range(len(rows)):
        d.text((4, r * h + h // 2 - 6), "real clip" if r % 2 == 0 else
               f"first {prompt_frames} frames\n+ AVC-LM", fill=(0, 0, 0))  # fmt: skip
    write_png(out / "video_grid.png", canvas)
    report = {
        "checkpoint": VIDEO_CHECKPOINT.relative_to(Path(__file__).parents[2]).as_posix(),
        "parameters": loaded.model.num_params(),
        "sampling": settings.record(),
        "clips": n,
        "prompt_frames": prompt_frames,
        "total_frames": total,
        **scores,
        "seconds": dt,
    }
    print(
        f"AVC-LM demo model ({report['parameters'] / 1e6:.1f}M parameters, {size[1]}x{size[0]} "
        f"Moving-MNIST H.264 clips): {n} held-out clips completed after {prompt_frames} of "
        f"{total} frames; generated frames PSNR {scores['psnr']:.2f} dB, SSIM "
        f"{scores['ssim']:.3f} (repeat-last-frame: {scores['baseline_psnr']:.2f} dB, "
        f"{scores['baseline_ssim']:.3f}); {scores['valid_generated_frames']:.0%} decoded from "
        f"complete pictures\nwrote {out / 'video_grid.png'} and {out / 'report.json'} "
        f"({dt:.1f} s)"
    )
    return report


def _big2(img: np.ndarray) -> np.ndarray:
    """A 64x64 frame shown 2x."""
    return np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
