"""Evaluation: bits per byte, decodability of samples, completion quality (PSNR / SSIM against
the original and against a trivial baseline), and a picture grid.

* ``bits_per_byte``: the model's cross-entropy on held-out canonical streams, per byte of the
  stream and per token (optionally under the grammar constraint, renormalised over the
  allowed tokens: it can only be lower).
* ``completion_scores``: for prefix completion, PSNR and SSIM of the completed rows (those
  below the prompt) against the original, and the same for the baseline that repeats the last
  known row of MCUs downwards.
* ``judge_digits``: for 32x32 digit models, the share of samples a digit classifier
  recognises (:mod:`jpeglm.eval.judge`), beside real digits and garbage;
  ``judge_requested``: for a class-conditional digit model, the share recognised as the digit
  asked for, per digit and on average.
* FID: :mod:`jpeglm.eval.fid` (torchmetrics over a port of pytorch-fid's Inception; the weights
  are the user's own file, nothing is downloaded), ``jpeglm eval --fid-weights``.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from jpeglm._io import atomic_write_bytes, atomic_write_text

__all__ = [
    "psnr",
    "ssim",
    "bits_per_byte",
    "repeat_last_row_baseline",
    "completion_scores",
    "image_grid",
    "evaluate_completion",
    "judge_digits",
    "judge_requested",
]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when equal)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity on luma (BT.601) for RGB input, by scikit-image's
    ``structural_similarity`` with Wang et al.'s (2004) settings: Gaussian window sigma 1.5,
    population covariances, K1 0.01, K2 0.03, data range 255; 1.0 for identical images. Needs
    the ``eval`` extra (``pip install jpeglm[eval]``); both sides at least 11 pixels."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels (its window), got {a.shape[:2]}")
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        raise ImportError("SSIM needs scikit-image: pip install 'jpeglm[eval]'") from None

    def luma(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x @ np.array([0.299, 0.587, 0.114]) if x.ndim == 3 else x

    return float(
        structural_similarity(luma(a), luma(b), gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, data_range=255.0)
    )  # fmt: skip


def bits_per_byte(
    model,
    tokenizer,
    streams: Sequence[bytes],
    constrained: bool = False,
    size: int = 256,
    conds: Sequence[int] | None = None,
) -> dict[str, float]:
    """Cross-entropy of ``model`` on canonical ``streams`` (BOS + tokens + EOS), in bits per
    byte of the streams and bits per token. ``constrained``: under the grammar mask.

    ``conds``: a class-conditional model's COND id for each stream (a class ``V + i`` or the
    null id ``V + C``, :class:`jpeglm.conditioning.Conditioning`): each sequence is then
    ``[BOS, COND, stream..., EOS]`` and the COND position is not scored (the trainer puts no
    loss on it either); the scored positions are the same as without, over the tokenizer's
    ``V`` ids as always."""
    import torch

    from jpeglm.grammar import TokenConstraint

    if not streams:
        raise ValueError("no streams to evaluate")
    vocab = tokenizer.vocab_size
    if conds is not None:
        conds = [int(c) for c in conds]
        if len(conds) != len(streams):
            raise ValueError(f"{len(conds)} conds for {len(streams)} streams: give one each")
        bad = [c for c in conds if not vocab <= c < model.args.vocab_size]
        if bad:
            raise ValueError(f"cond id {bad[0]} is not a condition id of this model "
                             f"({vocab}..{model.args.vocab_size - 1})")  # fmt: skip
    device = next(model.parameters()).device
    total_bits, n_bytes, n_tokens = 0.0, 0, 0
    tc = TokenConstraint.from_tokenizer(tokenizer, size) if constrained else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k, stream in enumerate(streams):
                head = [tokenizer.bos_id] if conds is None else [tokenizer.bos_id, conds[k]]
                ids = [*head, *tokenizer.encode(stream), tokenizer.eos_id]
                if len(ids) - 1 > model.args.max_seq_len:
                    raise ValueError(f"a stream of {len(ids)} tokens exceeds max_seq_len")
                x = torch.tensor([ids[:-1]], device=device)
                skip = len(head) - 1  # the COND position: predicted from BOS, never scored
                logits = model(x)[0, skip:, :vocab].float()
                scored = ids[len(head) :]
                target = torch.tensor(scored, device=device)
                if tc is not None:
                    tc.start(1)
                    masks = []
                    for t in scored:
                        masks.append(tc.mask()[0].copy())
                        tc.advance([t])
                    mask = torch.from_numpy(np.stack(masks)).to(device)
                    logits = logits.masked_fill(~mask, float("-inf"))
                lp = torch.log_softmax(logits, dim=-1)
                nll = -lp[torch.arange(len(target), device=device), target].sum().item()
                total_bits += nll / math.log(2)
                n_bytes += len(stream)
                n_tokens += len(target)
    finally:
        model.train(was_training)
    return {
        "bits_per_byte": total_bits / n_bytes,
        "bits_per_token": total_bits / n_tokens,
        "bytes": n_bytes,
        "tokens": n_tokens,
    }


def repeat_last_row_baseline(image: np.ndarray, rows: int) -> np.ndarray:
    """The trivial completion: the last known row of MCUs (16 pixels) repeated downwards."""
    top = rows * 16
    if not 0 < top < image.shape[0]:
        raise ValueError(f"rows={rows} leaves nothing known or nothing to complete")
    out = image.copy()
    band = image[top - 16 : top]
    reps = math.ceil((image.shape[0] - top) / 16)
    out[top:] = np.concatenate([band] * reps, axis=0)[: image.shape[0] - top]
    return out


def completion_scores(
    originals: Sequence[np.ndarray], completions: Sequence[np.ndarray], rows: int
) -> dict[str, float]:
    """Mean PSNR / SSIM of the completed region (below the prompt's ``rows`` MCU rows), for
    the model and for :func:`repeat_last_row_baseline`."""
    if len(originals) != len(completions) or not originals:
        raise ValueError("need the same, non-zero number of originals and completions")
    top = rows * 16
    m_psnr, m_ssim, b_psnr, b_ssim = [], [], [], []
    for o, c in zip(originals, completions):
        base = repeat_last_row_baseline(o, rows)
        m_psnr.append(psnr(o[top:], c[top:]))
        m_ssim.append(ssim(o[top:], c[top:]))
        b_psnr.append(psnr(o[top:], base[top:]))
        b_ssim.append(ssim(o[top:], base[top:]))
    return {
        "psnr": float(np.mean(m_psnr)),
        "ssim": float(np.mean(m_ssim)),
        "baseline_psnr": float(np.mean(b_psnr)),
        "baseline_ssim": float(np.mean(b_ssim)),
    }


def image_grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] = ()) -> np.ndarray:
    """Images (all the same size) in a grid, one list per row; optional column labels."""
    if not rows or not rows[0]:
        raise ValueError("empty grid")
    h, w = rows[0][0].shape[:2]
    head = 14 if labels else 0
    grid = np.full((head + len(rows) * (h + 2), len(rows[0]) * (w + 2), 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = head + r * (h + 2), c * (w + 2)
            grid[y : y + h, x : x + w] = img
    if labels:
        im = Image.fromarray(grid)
        d = ImageDraw.Draw(im)
        for c, text in enumerate(labels):
            d.text((c * (w + 2) + 2, 1), text, fill=(0, 0, 0))
        grid = np.asarray(im)
    return grid


def judge_digits(images: Sequence[np.ndarray], threshold: float = 0.9) -> dict:
    """Sample quality of a 32x32 digit model by :mod:`jpeglm.eval.judge`: the share of ``images``
    recognised as one digit with probability >= ``threshold`` and the distinct digits among
    them, beside the same figures for the references that keep the judge honest (real
    held-out digits after the canonical round trip: most pass; noise, grey and block garbage:
    almost none)."""
    from jpeglm.eval.judge import calibration, default_judge

    judge = default_judge()
    return {"samples": judge.score(images, threshold), **calibration(judge, threshold=threshold)}


def judge_requested(
    images: Sequence[np.ndarray], requested: Sequence[int], threshold: float = 0.9
) -> dict:
    """How often a class-conditional digit model draws the digit asked for: each of ``images``
    (32x32, any judge input) counts when the judge (:func:`jpeglm.eval.judge.default_judge`)
    gives its ``requested`` digit (0..9, one per image) probability >= ``threshold``.

    Returns ``share`` (of all images), ``mean`` (of the per-digit shares), ``min`` (the worst
    digit's), ``per_class`` (``{"0": share, ...}`` for the digits requested), ``counts`` (images
    per digit), ``n`` and ``threshold``."""
    from jpeglm.eval.judge import default_judge

    want = np.asarray([int(d) for d in requested], dtype=np.int64)
    if len(want) != len(images) or not len(want):
        raise ValueError(f"{len(images)} images and {len(want)} requested digits: give one "
                         "digit for each image (and at least one)")  # fmt: skip
    if want.min() < 0 or want.max() > 9:
        raise ValueError(f"requested digits must be 0..9, got {int(want.min())}..{int(want.max())}")
    p = default_judge().proba(images)
    ok = p[np.arange(len(want)), want] >= threshold
    per = {str(d): float(ok[want == d].mean()) for d in sorted(set(want.tolist()))}
    return {
        "share": float(ok.mean()),
        "mean": float(np.mean(list(per.values()))),
        "min": float(min(per.values())),
        "per_class": per,
        "counts": {str(d): int((want == d).sum()) for d in sorted(set(want.tolist()))},
        "n": len(want),
        "threshold": threshold,
    }


def evaluate_completion(
    model,
    tokenizer,
    images: Sequence,
    out: str | os.PathLike,
    rows: int = 8,
    size: int = 256,
    quality: int = 25,
    seed: int = 0,
    streams: Sequence[bytes] | None = None,
    write_results: bool = True,
    **sample_kwargs,
) -> dict:
    """Complete ``images`` from ``rows`` MCU rows; write ``grid.png`` (prompt | completion |
    original per image) and, with ``write_results``, ``results.json`` into ``out``; return the
    results. ``streams``: the images' canonical streams when the caller has them already."""
    from jpeglm import codec
    from jpeglm.inference.sample import complete

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if streams is None:
        streams = codec.encode_batch(images, quality, size)
    originals = [codec.decode(s, quality=quality) for s in streams]
    samples = complete(model, tokenizer, images, rows=rows, size=size, quality=quality, seed=seed,
                       **sample_kwargs)  # fmt: skip
    prompts = [o.copy() for o in originals]
    for p in prompts:
        p[rows * 16 :] = 128
    completions = [s.image for s in samples]
    results = {
        "rows": rows,
        "size": size,
        "images": len(originals),
        "decodable": sum(s.clean for s in samples) / len(samples),
        "mean_valid_mcus": float(np.mean([s.valid_mcus for s in samples])),
        **completion_scores(originals, completions, rows),
    }
    grid = image_grid(
        [[p, c, o] for p, c, o in zip(prompts, completions, originals)],
        ["prompt", "completion", "original"],
    )
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, "PNG")
    atomic_write_bytes(out / "grid.png", buf.getvalue())
    if write_results:
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results
