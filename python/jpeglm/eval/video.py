"""Evaluation of AVC-LM completions, as the paper does it: the first ``frames`` frames of each
held-out clip as the prompt, the rest generated, each generated frame scored against the
held-out one (PSNR, SSIM by :func:`jpeglm.eval.metrics.psnr` /
:func:`jpeglm.eval.metrics.ssim`) beside the trivial baseline that repeats the last prompt
frame -- the video twin of the image side's repeat-last-row baseline
(:func:`jpeglm.eval.metrics.completion_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jpeglm.eval.metrics import psnr, ssim

__all__ = ["clip_scores", "evaluate_clip_completion", "repeat_last_frame_baseline"]


def repeat_last_frame_baseline(clip: np.ndarray, frames: int) -> np.ndarray:
    """``clip`` ``(T, H, W, 3)`` with every frame from ``frames`` on replaced by frame
    ``frames - 1`` (the last one a prompt of ``frames`` frames shows)."""
    clip = np.asarray(clip)
    if clip.ndim != 4 or not 0 < frames <= len(clip):
        raise ValueError(
            f"need a (T, H, W, 3) clip and 0 < frames <= T, got {clip.shape}, {frames}"
        )
    out = clip.copy()
    out[frames:] = clip[frames - 1]
    return out


def _mean(values: list[float]) -> float:
    """The mean, where an infinite PSNR (an exact frame) counts as 100 dB, so one exact frame
    does not make the mean infinite."""
    return float(np.mean([min(v, 100.0) if math.isinf(v) else v for v in values]))


def clip_scores(
    originals: Sequence[np.ndarray], generated: Sequence[np.ndarray], frames: int
) -> dict[str, Any]:
    """PSNR / SSIM of the frames after the first ``frames`` of each generated clip against the
    original, averaged over frames and clips, and the same for the repeat-last-frame baseline;
    ``per_frame`` lists the model's mean PSNR at each generated position (quality usually
    falls with distance from the prompt). Clips are ``(T, H, W, 3)`` uint8 of equal shapes."""
    if len(originals) != len(generated) or not originals:
        raise ValueError(f"need as many generated clips as originals (> 0), got "
                         f"{len(generated)} and {len(originals)}")  # fmt: skip
    m_psnr, m_ssim, b_psnr, b_ssim = [], [], [], []
    per_frame: dict[int, list[float]] = {}
    for o, g in zip(originals, generated):
        o, g = np.asarray(o), np.asarray(g)
        if o.shape != g.shape:
            raise ValueError(f"clip shapes differ: {o.shape} vs {g.shape}")
        base = repeat_last_frame_baseline(o, frames)
        for t in range(frames, len(o)):
            p = psnr(o[t], g[t])
            m_psnr.append(p)
            m_ssim.append(ssim(o[t], g[t]))
            b_psnr.append(psnr(o[t], base[t]))
            b_ssim.append(ssim(o[t], base[t]))
            per_frame.setdefault(t, []).append(p)
    if not m_psnr:
        raise ValueError(f"no frames after the first {frames} to score")
    return {
        "prompt_frames": frames,
        "scored_frames": len(m_psnr),
        "psnr": _mean(m_psnr),
        "ssim": float(np.mean(m_ssim)),
        "baseline_psnr": _mean(b_psnr),
        "baseline_ssim": float(np.mean(b_ssim)),
        "per_frame_psnr": {t: _mean(v) for t, v in sorted(per_frame.items())},
    }


def evaluate_clip_completion(
    model,
    tokenizer,
    clips: Sequence[bytes],
    *,
    frames: int = 10,
    total_frames: int | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Complete each canonical clip stream after its first ``frames`` frames
    (:func:`jpeglm.video.sample.complete`, unconstrained, tolerant decode) and score the rest
    against the held-out frames (:func:`clip_scores`); also the share of generated frames that
    decoded from complete pictures. ``sampling``: :func:`jpeglm.video.sample.generate`'s
    options."""
    from jpeglm.video import codec as video
    from jpeglm.video import sample as video_sample

    originals = [video.decode(bytes(c)) for c in clips]
    total = total_frames or len(originals[0])
    originals = [o[:total] for o in originals]
    if any(len(o) != total for o in originals):
        raise ValueError(f"every clip needs {total} frames")
    size = originals[0].shape[1:3]
    out = video_sample.complete(model, tokenizer, [bytes(c) for c in clips], frames=frames,
                                total_frames=total, size=size, **sampling)  # fmt: skip
    result = clip_scores(originals, [s.frames for s in out], frames)
    result["clips"] = len(clips)
    result["valid_generated_frames"] = float(
        np.mean([max(0, s.valid_frames - frames) / (total - frames) for s in out])
    )
    return result
