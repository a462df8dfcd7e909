"""The data subcommands of ``jpeglm``: ``train-tokenizer``, ``tokenize`` and ``prepare``, with
their parsers (:func:`add_parsers`); with ``--video`` they take clips (AVC-LM) instead of
images.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from jpeglm._io import record_outputs, show
from jpeglm.cli.common import (
    EXIF_HELP,
    UserError,
    check_codec_options,
    check_memory,
    image_paths,
    plan_output_file,
)

__all__ = [
    "add_parsers",
    "clip_sources",
    "cmd_prepare",
    "cmd_tokenize",
    "cmd_train_tokenizer",
    "video_options",
    "video_settings",
]


def video_options(p: argparse.ArgumentParser, what: str) -> None:
    """The clip options ``prepare`` and ``train-tokenizer`` share (AVC-LM)."""
    p.add_argument("--video", action="store_true", help=f"AVC-LM: {what}")
    p.add_argument("--frame-size", default=None, help="video: WIDTHxHEIGHT (default 256x144)")
    p.add_argument("--fps", type=float, default=3, help="video: frames per second (3)")
    p.add_argument("--seconds", type=float, default=5, help="video: seconds kept (5)")
    p.add_argument("--qp", type=int, default=37, help="video: libx264 constant QP (37)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``train-tokenizer``, ``tokenize`` and ``prepare`` subparsers."""
    t = sub.add_parser("train-tokenizer", help="train a byte-level BPE on canonical streams")
    t.add_argument("images", nargs="+", help="image files or folders")
    t.add_argument("-o", "--out", required=True, help="tokenizer file to write")
    t.add_argument("--vocab-size", type=int, default=320)
    t.add_argument("--quality", type=int, default=25)
    t.add_argument("--size", type=int, default=256)
    t.add_argument("--quiet", action="store_true")
    video_options(t, "SRC hold clips (video files or .npy frames): BPE over their canonical "
                  "H.264 streams")  # fmt: skip
    t.set_defaults(func=cmd_train_tokenizer)

    k = sub.add_parser("tokenize", help="images -> canonical streams -> token counts (and ids)")
    k.add_argument("images", nargs="+")
    k.add_argument("--tokenizer", required=True)
    k.add_argument("--quality", type=int, default=25)
    k.add_argument("--size", type=int, default=256)
    k.add_argument("--ids", action="store_true", help="print the token ids")
    k.set_defaults(func=cmd_tokenize)

    pr = sub.add_parser(
        "prepare", help="images -> packed uint16 token shards (resumable, in parts)",
        description="Turn images into packed uint16 token shards for the trainer: each image "
        "made canonical (center crop, resize, JPEG), tokenized, wrapped in BOS/EOS, the streams "
        "joined and cut into sequences. Resumable: run the same command again after a stop. "
        "Many machines: each runs the same command with its own --part I/N.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    pr.add_argument("src", nargs="+", metavar="SRC",
                    help="image sources, any number: a folder (its images, tar shards and "
                    ".parquet files, recursively), a .txt list of paths, a .jsonl list "
                    '({"path": ..., "label": ...} per line), a tar archive or webdataset '
                    "shard, a brace pattern or glob of shards ('shards-{00000..02299}.tar', "
                    "'data/*.parquet'), or a .parquet file")  # fmt: skip
    pr.add_argument("out", metavar="OUT",
                    help="output folder (with --part: OUT/part-0000I-of-0000N/)")  # fmt: skip
    pr.add_argument("--tokenizer", required=True,
                    help="tokenizer file (train-tokenizer's, tokenizer.json, .tiktoken or a "
                    "sentencepiece .model)")  # fmt: skip
    pr.add_argument("--size", type=int, default=256, help="image side in pixels")
    pr.add_argument("--quality", type=int, default=25, help="JPEG quality")
    pr.add_argument("--seq-len", type=int, default=12288, help="tokens per sequence")
    pr.add_argument(
        "--images-per-shard",
        type=int,
        default=1024,
        help="images read per output shard (memory: this many prepared images)",
    )
    pr.add_argument("--workers", type=int, default=None,
                    help="threads decoding images (default: the machine's cores)")  # fmt: skip
    pr.add_argument("--fast", action="store_true",
                    help="decode big JPEGs with libjpeg's DCT scaling (much faster, slightly "
                    "different pixels)")  # fmt: skip
    pr.add_argument("--part", default=None, metavar="I/N",
                    help="prepare only part I of N (a deterministic split by source file) into "
                    "OUT/part-0000I-of-0000N/ (default: from SLURM_ARRAY_TASK_ID/COUNT or "
                    "RANK/WORLD_SIZE when set, else everything into OUT)")  # fmt: skip
    pr.add_argument("--image-column", default=None, metavar="NAME",
                    help="parquet: the image column (default: found from the metadata: HF "
                    "datasets' Image feature, or img2dataset's jpg/png/webp/image)")  # fmt: skip
    pr.add_argument("--labels", action="store_true",
                    help="class conditioning: pack each image as BOS COND tokens EOS, COND its "
                    "class (from root/<class>/x.jpg in a folder, a webdataset .cls member, a "
                    "parquet label column, a .jsonl 'label'; the null class for an image without "
                    "one); the class names and counts go into index.json")  # fmt: skip
    pr.add_argument("--label-names", default=None, metavar="NAMES",
                    help="with --labels: the class names, in id order, as a comma list "
                    "(cat,dog) or @FILE (one per line); an image with another label is skipped "
                    "and listed in report.json (default: every label found, sorted, "
                    "numerically when all are integers)")  # fmt: skip
    pr.add_argument("--label-column", default=None, metavar="NAME",
                    help="with --labels, parquet: the label column (default: label, when a "
                    "file has one; HF ClassLabel indices become their names)")  # fmt: skip
    pr.add_argument("--exif-transpose", action="store_true", help=EXIF_HELP)
    video_options(pr, "SRC holds clips (video files or .npy frames) made canonical H.264 "
                  "streams (jpeglm.video.codec)")  # fmt: skip
    pr.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (else a bar on a terminal, a line every 30 s in a log)",
    )
    pr.set_defaults(func=cmd_prepare)


def _load_tokenizer(path: Path):
    from jpeglm._io import input_file
    from jpeglm.tokenizer import load_file

    try:
        input_file(path, "tokenizer")  # nothing there, a folder, a link loop, a FIFO
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from e
    try:
        return load_file(path)  # jpeglm's format, or the official sentencepiece .model
    except ValueError as e:
        raise UserError(f"{show(path)}: {e}") from e


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from jpeglm import codec
    from jpeglm.data import sources
    from jpeglm.tokenizer import Tokenizer

    video = video_settings(args)
    if video is None:
        check_codec_options(args)
        paths = image_paths(args.images)
        # every image is held prepared, each read on one of the cores
        check_memory(args.size, held=len(paths), working=os.cpu_count() or 1,
                     hint="use a smaller --size or fewer images")  # fmt: skip
        dst = plan_output_file(args.out, paths)
        kept, images, skipped = sources.load_images(paths, size=args.size)  # unreadable: skipped
    else:
        clips = clip_sources(args.images)
        paths = [Path(s.path) for s in clips]
        dst = plan_output_file(args.out, paths)
        kept, streams, skipped = sources.load_clips(clips, video)
    what = "clips" if video else "images"
    for rec in skipped:
        print(f"skipped {rec['source']}: {rec['error']}", file=sys.stderr)
    if not kept:
        raise UserError(f"none of the {len(paths)} {what} could be read")
    if video is None:
        streams = codec.encode_batch(images, quality=args.quality, size=args.size)
    tok = Tokenizer.train(streams, vocab_size=args.vocab_size, progress=not args.quiet)
    try:
        tok.save(dst)
    finally:
        record_outputs([dst])
    print(f"trained on {len(streams)} {what} ({len(skipped)} skipped) -> {show(dst)} "
          f"(vocab {tok.vocab_size})")  # fmt: skip
    return 0


def video_settings(args: argparse.Namespace) -> dict | None:
    """The clip settings of ``--video`` / ``--frame-size`` / ``--fps`` / ``--seconds`` /
    ``--qp`` (``prepare`` and ``train-tokenizer``), or None without ``--video``."""
    if not args.video:
        return None
    m = re.fullmatch(r"(\d+)x(\d+)", args.frame_size or "256x144")
    if not m:
        raise UserError(f"--frame-size must be WIDTHxHEIGHT, got {args.frame_size!r}")
    from jpeglm.video.codec import check_frame_size

    w, h = int(m.group(1)), int(m.group(2))
    try:
        check_frame_size(w, h)
    except ValueError as e:
        raise UserError(f"--frame-size: {e}") from e
    if not (math.isfinite(args.fps) and args.fps > 0):
        raise UserError(f"--fps must be positive, got {args.fps}")
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UserError(f"--seconds must be positive, got {args.seconds}")
    if not 0 <= args.qp <= 51:
        raise UserError(f"--qp must be in 0..51 (H.264), got {args.qp}")
    return {"width": w, "height": h, "fps": args.fps, "seconds": args.seconds, "qp": args.qp}


def clip_sources(items: Sequence[str]) -> list:
    """The clips (video files, ``.npy`` frames) the arguments name: files as given, folders /
    ``.txt`` lists / tar archives searched as ``prepare --video`` does. A missing path or a
    folder without clips is one line and exit 2."""
    from jpeglm.data import sources

    out = []
    for item in items:
        p = Path(item)
        if p.is_file() and p.suffix.lower() in sources.VIDEO_SUFFIXES:
            out.append(sources.Source(str(p), str(p)))
            continue
        try:
            out += sources.scan_sources(p, sources.VIDEO_SUFFIXES)[0]
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e).replace("no images found", "no clips found")) from e
    return out


def cmd_tokenize(args: argparse.Namespace) -> int:
    from jpeglm import codec

    check_codec_options(args)
    tok = _load_tokenizer(Path(args.tokenizer))
    for src in image_paths(args.images):
        try:
            stream = codec.encode(src, quality=args.quality, size=args.size)
        except ValueError as e:
            raise UserError(f"{show(src)}: {e}") from e
        ids = tok.encode(stream)
        print(f"{show(src)}: {len(stream)} bytes -> {len(ids)} tokens")
        if args.ids:
            print(" ".join(map(str, ids)))
    return 0


def _part(text: str | None):  # noqa: ANN202 - a jpeglm.data.parts.Part or None
    """``--part I/N``, else the part the environment says (a slurm array task, a torchrun
    rank), else None: everything in one run."""
    from jpeglm.data.parts import parse_part, part_from_env

    try:
        return parse_part(text) if text is not None else part_from_env()
    except ValueError as e:
        raise UserError(f"--part: {e}" if text is not None else str(e)) from None


def _label_options(args: argparse.Namespace) -> list[str] | None:
    """``--label-names`` as a list (None when not given); one line for ``--label-names`` or
    ``--label-column`` without ``--labels``, a missing @FILE, an empty column name."""
    from jpeglm.data.labels import parse_label_names

    for opt, value in (("--label-names", args.label_names), ("--label-column", args.label_column)):
        if value is not None and not args.labels:
            raise UserError(f"{opt} needs --labels")
    if args.label_column is not None and not args.label_column.strip():
        raise UserError("--label-column must name a column")
    if args.label_names is None:
        return None
    try:
        return parse_label_names(args.label_names)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--label-names: cannot read {args.label_names[1:]}: {e}") from None


def cmd_prepare(args: argparse.Namespace) -> int:
    from jpeglm.data import prepare as data

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    label_names = _label_options(args)
    tok = _load_tokenizer(Path(args.tokenizer))
    video = video_settings(args)
    if video is None:  # a shard's images held prepared (and stacked), one read per worker
        check_memory(args.size, held=2 * max(1, args.images_per_shard),
                     working=args.workers or os.cpu_count() or 1,
                     hint="use a smaller --size, --images-per-shard or --workers")  # fmt: skip
    part = _part(args.part)
    try:  # the tokenizer is an input too: never an output
        index = data.prepare(
            args.src, args.out, tok, size=args.size, quality=args.quality, seq_len=args.seq_len,
            images_per_shard=args.images_per_shard, workers=args.workers, fast=args.fast,
            progress=not args.quiet, video=video, inputs=[args.tokenizer],
            exif_transpose=args.exif_transpose, part=part, image_column=args.image_column,
            labels=args.labels, label_names=label_names, label_column=args.label_column,
        )  # fmt: skip
    except (FileNotFoundError, ImportError) as e:
        raise UserError(str(e)) from e
    if part is not None:
        print(f"part {part}: {Path(args.out) / part.folder_name}")
    print(
        f"{index['images']} {'clips' if video else 'images'} -> {index['sequences']} sequences "
        f"of {args.seq_len} tokens "
        f"in {sum(1 for s in index['shards'] if s['sequences'])} shards "
        f"({len(index['skipped'])} skipped, see report.json)"
    )
    if "label_counts" in index:
        counts = dict(index["label_counts"])
        none = counts.pop("(none)", 0)
        print(f"{len(counts)} classes ({sum(1 for v in counts.values() if v)} with images), "
              f"{none} images without a label (label_counts in index.json)")  # fmt: skip
    return 0
