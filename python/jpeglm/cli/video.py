"""The model commands (``jpeglm sample`` / ``complete`` / ``eval``) for an AVC-LM: a model whose
``jpeglm.json`` says ``"kind": "video"`` (trained on ``prepare --video`` shards). Samples are
unconstrained and decoded tolerantly; each clip is written as ``STEM.h264`` (the Annex-B
stream, prompt included) and ``STEM.png`` (its frames side by side). Inputs of ``complete`` /
``eval`` are video files or ``.npy`` frame arrays, made canonical with the model's recorded
clip settings.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jpeglm._io import atomic_write_bytes, show, write_png

__all__ = ["clip_files", "complete", "evaluate", "is_video", "sample"]


def is_video(info: dict[str, Any]) -> bool:
    """Whether a model's record says it models H.264 clips."""
    return info.get("kind") == "video" and isinstance(info.get("video"), dict)


def clip_files(stems: Sequence[str]) -> list[str]:
    """The files a clip is written as."""
    return [stem + ext for stem in stems for ext in (".png", ".h264")]


#: the options of :func:`jpeglm.video.sample.generate` among the sampling commands' options
_VIDEO_OPTIONS = ("temperature", "top_k", "top_p", "max_tokens", "seed", "batch_size", "dtype")


def _clip(info: dict[str, Any]) -> tuple[int, tuple[int, int]]:
    """Frames and (height, width) of the model's clips (its recorded settings)."""
    v = info["video"]
    return int(round(v["fps"] * v["seconds"])), (int(v["height"]), int(v["width"]))


def _kwargs(sampling: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """:func:`jpeglm.video.sample.generate`'s options from the image commands' ``sampling`` ones."""
    total, size = _clip(info)
    return dict(total_frames=total, size=size, **{k: sampling[k] for k in _VIDEO_OPTIONS})


def _write(out: Path, stem: str, c: Any) -> None:
    """One clip as ``STEM.png`` (its frames side by side) and ``STEM.h264``, each written and
    listed as an output at once (called as each clip's batch finishes)."""
    write_png(out / f"{stem}.png", np.concatenate(list(c.frames), axis=1), record=True)
    atomic_write_bytes(out / f"{stem}.h264", c.data, record=True)
    print(f"{show(out / f'{stem}.h264')}: {len(c.data)} bytes, "
          f"{c.valid_frames}/{c.total_frames} frames decoded", flush=True)  # fmt: skip


def _streams(paths: Sequence[Path], info: dict[str, Any]) -> list[bytes]:
    """The canonical streams of the input clips; an unreadable one (not a video, corrupt,
    frames of the wrong dtype or shape) is a ValueError naming it: one line, exit 2."""
    from jpeglm.data.sources import clip_stream

    out = []
    for p in paths:
        try:
            out.append(clip_stream(p.read_bytes(), p.name, info["video"]))
        except Exception as e:  # noqa: BLE001 - PyAV / numpy raise many kinds; all mean "bad clip"
            raise ValueError(f"{show(p)}: not a readable clip ({type(e).__name__}: {e})") from e
    return out


def _check_frames(args: argparse.Namespace, info: dict[str, Any]) -> int:
    total = _clip(info)[0]
    frames = args.frames if args.frames is not None else min(10, total - 1)
    if not 0 < frames < total:
        raise ValueError(f"--frames must be in 1..{total - 1} (this model's clips have {total})")
    return frames


def _check_clip_lengths(args: argparse.Namespace, paths: Sequence[Path],
                        streams: Sequence[bytes], frames: int) -> None:  # fmt: skip
    """Every input clip has the ``frames`` prompt frames, or one line with a ``--frames``
    that fits the shortest."""
    from jpeglm.video.codec import frame_count

    counts = [frame_count(s) for s in streams]
    short = [(p, n) for p, n in zip(paths, counts) if n < frames]
    if short:
        p, n = min(short, key=lambda x: x[1])
        given = "--frames" if args.frames is not None else "the default --frames"
        hint = f"pass --frames {n} (or fewer)" if n else "it has no frame to prompt with"
        raise ValueError(
            f"{show(p)} has {n} frame{'s' * (n != 1)}, fewer than the {frames} prompt frames of "
            f"{given}: {hint}"
        )


def sample(args: argparse.Namespace, model, tok, info: dict[str, Any],
           sampling: dict[str, Any]) -> None:  # fmt: skip
    """``args.n`` unconditional clips ``sample_000.png`` + ``.h264``, ..., each written as its
    batch finishes (names made as needed); ``sampling``: the sampling commands' options."""
    from jpeglm.video import sample as video

    out = Path(args.out)
    video.generate(model, tok, n=args.n, **_kwargs(sampling, info),
                   on_sample=lambda i, c: _write(out, f"sample_{i:03d}", c))  # fmt: skip


def complete(args: argparse.Namespace, model, tok, info: dict[str, Any], paths: list[Path],
             stems: list[str], sampling: dict[str, Any]) -> None:  # fmt: skip
    """Each input clip continued after its first ``--frames`` frames."""
    from jpeglm.video import sample as video

    frames = _check_frames(args, info)
    streams = _streams(paths, info)
    _check_clip_lengths(args, paths, streams, frames)
    out = Path(args.out)
    video.complete(model, tok, streams, frames=frames, **_kwargs(sampling, info),
                   on_sample=lambda i, c: _write(out, stems[i], c))  # fmt: skip


def evaluate(args: argparse.Namespace, model, tok, info: dict[str, Any], paths: list[Path],
             sampling: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """PSNR / SSIM of the generated frames vs the held-out ones and the repeat-last-frame
    baseline (:func:`jpeglm.eval.video.evaluate_clip_completion`), plus held-out bits/byte;
    written to ``results.json``."""
    from jpeglm.eval.metrics import bits_per_byte
    from jpeglm.eval.video import evaluate_clip_completion

    frames = _check_frames(args, info)
    streams = _streams(paths, info)
    _check_clip_lengths(args, paths, streams, frames)
    kw = {k: sampling[k] for k in _VIDEO_OPTIONS}
    res = evaluate_clip_completion(model, tok, streams, frames=frames, total_frames=_clip(info)[0],
                                   **kw)  # fmt: skip
    res["held_out"] = bits_per_byte(model, tok, streams, constrained=False)
    text = json.dumps(res, indent=2) + "\n"
    atomic_write_bytes(Path(args.out) / "results.json", text.encode(), record=True)
    print(text, end="")
    return res
