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


def _kwargs(args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    v = info["video"]
    return dict(
        total_frames=int(round(v["fps"] * v["seconds"])),
        size=(int(v["height"]), int(v["width"])),
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed if args.seed is not None else 0,
        batch_size=args.batch_size,
        dtype=args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32"),
    )


def _write(out: Path, stems: Sequence[str], clips: Sequence[Any]) -> None:
    for stem, c in zip(stems, clips):
        write_png(out / f"{stem}.png", np.concatenate(list(c.frames), axis=1))
        atomic_write_bytes(out / f"{stem}.h264", c.data)
        print(f"{show(out / f'{stem}.h264')}: {len(c.data)} bytes, "
              f"{c.valid_frames}/{c.total_frames} frames decoded")  # fmt: skip


def _streams(paths: Sequence[Path], info: dict[str, Any]) -> list[bytes]:
    from jpeglm.data import clip_stream

    return [clip_stream(p.read_bytes(), p.name, info["video"]) for p in paths]


def _check_frames(args: argparse.Namespace, info: dict[str, Any]) -> int:
    total = _kwargs(args, info)["total_frames"]
    frames = args.frames if args.frames is not None else min(10, total - 1)
    if not 0 < frames < total:
        raise ValueError(f"--frames must be in 1..{total - 1} (this model's clips have {total})")
    return frames


def sample(args: argparse.Namespace, model, tok, info: dict[str, Any], stems: list[str]) -> None:
    """``args.n`` unconditional clips."""
    from jpeglm import video

    _write(Path(args.out), stems, video.generate(model, tok, n=args.n, **_kwargs(args, info)))


def complete(args: argparse.Namespace, model, tok, info: dict[str, Any], paths: list[Path],
             stems: list[str]) -> None:  # fmt: skip
    """Each input clip continued after its first ``--frames`` frames."""
    from jpeglm import video

    frames = _check_frames(args, info)
    streams = _streams(paths, info)
    _write(Path(args.out), stems,
           video.complete(model, tok, streams, frames=frames, **_kwargs(args, info)))  # fmt: skip


def evaluate(args: argparse.Namespace, model, tok, info: dict[str, Any],
             paths: list[Path]) -> dict[str, Any]:  # fmt: skip
    """PSNR / SSIM of the generated frames vs the held-out ones and the repeat-last-frame
    baseline (:func:`jpeglm.video_eval.evaluate_clip_completion`), plus held-out bits/byte;
    written to ``results.json``."""
    from jpeglm.eval import bits_per_byte
    from jpeglm.video_eval import evaluate_clip_completion

    frames = _check_frames(args, info)
    streams = _streams(paths, info)
    kw = _kwargs(args, info)
    kw.pop("size")
    res = evaluate_clip_completion(model, tok, streams, frames=frames, **kw)
    res["held_out"] = bits_per_byte(model, tok, streams, constrained=False)
    text = json.dumps(res, indent=2) + "\n"
    atomic_write_bytes(Path(args.out) / "results.json", text.encode())
    print(text, end="")
    return res
