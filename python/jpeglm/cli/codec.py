"""The codec subcommands of ``jpeglm``: ``encode``, ``decode``, ``bench`` and ``explain``,
with their parsers (:func:`add_parsers`).

Stripped streams are named ``NAME.jlm`` at quality 25 and ``NAME.qQ.jlm`` otherwise
(:func:`stream_suffix`): the stream's bytes stay canonical, its name carries the tables that
decode splices (:func:`stream_quality`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from jpeglm._io import atomic_write_bytes, record_outputs, show, write_png
from jpeglm.cli.common import (
    EXIF_HELP,
    OUT_HELP,
    UserError,
    check_codec_options,
    check_memory,
    distinct_names,
    existing_files,
    image_paths,
    plan_outputs,
)

__all__ = [
    "EXPLAIN_FILES",
    "add_parsers",
    "cmd_bench",
    "cmd_decode",
    "cmd_encode",
    "cmd_explain",
    "stream_quality",
    "stream_suffix",
]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``encode``, ``decode``, ``bench`` and ``explain`` subparsers."""
    e = sub.add_parser(
        "encode", help="images -> canonical stripped streams (.jlm) or complete JPEGs"
    )
    e.add_argument("images", nargs="+")
    e.add_argument("-o", "--out", required=True, help=OUT_HELP)
    e.add_argument("--quality", type=int, default=25)
    e.add_argument("--size", type=int, default=256)
    e.add_argument("--full", action="store_true", help="write complete JFIF files (tables spliced)")
    e.add_argument("--exif-transpose", action="store_true", help=EXIF_HELP)
    e.epilog = ("Stripped streams are named NAME.jlm at quality 25 and NAME.qQ.jlm otherwise, so "
                "that decode splices the right tables.")  # fmt: skip
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="streams (stripped or complete) -> PNG")
    d.add_argument("streams", nargs="+")
    d.add_argument("-o", "--out", required=True, help=OUT_HELP)
    d.add_argument("--quality", type=int, default=None,
                   help="quality of the tables to splice (default: from the name, x.q90.jlm, "
                   "else 25)")  # fmt: skip
    d.add_argument("--tolerant", action="store_true", help="decode what is valid, grey elsewhere")
    d.set_defaults(func=cmd_decode)

    b = sub.add_parser("bench", help="quick codec / tokenizer speed check against the peers")
    b.add_argument("--images", type=int, default=64)
    b.set_defaults(func=cmd_bench)

    x = sub.add_parser("explain", help="pictures of every JPEG step for one image + a page")
    x.add_argument("image")
    x.add_argument("-o", "--out", required=True, help="output folder")
    x.add_argument("--quality", type=int, default=25)
    x.add_argument("--size", type=int, default=256)
    x.set_defaults(func=cmd_explain)


_QUALITY_NAME = re.compile(r"\.q(\d{1,3})\.jlm$", re.IGNORECASE)


def stream_suffix(quality: int) -> str:
    """The file suffix of a stripped stream: ``.jlm`` at the default quality 25, else
    ``.qNN.jlm`` -- the stream's bytes stay canonical, its name carries the tables it needs."""
    return ".jlm" if quality == 25 else f".q{quality}.jlm"


def stream_quality(path: Path, given: int | None) -> int:
    """The quality of a stream file: from its name (``x.q90.jlm``), else ``given``, else 25;
    a name and a ``--quality`` that disagree are refused (wrong tables decode to false
    colours without any error)."""
    m = _QUALITY_NAME.search(path.name)
    named = int(m.group(1)) if m else None
    if named is not None and given is not None and named != given:
        raise UserError(f"{show(path)} is a quality-{named} stream (its name says so) but "
                        f"--quality {given} was given")  # fmt: skip
    if named is not None:
        return named
    return 25 if given is None else given


def _stem(path: Path) -> str:
    m = _QUALITY_NAME.search(path.name)
    return path.name[: m.start()] if m else path.stem


def cmd_encode(args: argparse.Namespace) -> int:
    from jpeglm import codec

    check_codec_options(args)
    check_memory(args.size)  # before any output folder or work
    paths = image_paths(args.images)
    suffix = ".jpg" if args.full else stream_suffix(args.quality)
    targets = plan_outputs(args.out, distinct_names(paths, suffix), paths)
    for p, dst in zip(paths, targets):
        try:
            data = codec.encode(p, quality=args.quality, size=args.size,
                                exif_transpose=args.exif_transpose)  # fmt: skip
        except ValueError as e:
            raise UserError(f"{show(p)}: {e}") from e
        if args.full:
            data = codec.with_tables(data, args.quality)
        atomic_write_bytes(dst, data, record=True)
        print(f"{show(p)} -> {show(dst)} ({len(data)} bytes)")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from jpeglm import codec

    paths = existing_files(args.streams, "file")
    qualities = [stream_quality(p, args.quality) for p in paths]
    check_codec_options(argparse.Namespace(quality=qualities[0] if qualities else 25))
    names = distinct_names([Path(_stem(p) + ".jlm") for p in paths], ".png")
    targets = plan_outputs(args.out, names, paths)
    for p, dst, q in zip(paths, targets, qualities):
        args.quality = q
        data = p.read_bytes()
        if args.tolerant:
            r = codec.decode(data, tolerant=True, quality=args.quality)
            if r.valid_mcus == 0:  # nothing to show: a grey picture would hide why
                _refuse_undecodable(p, data, args.quality)
            img, note = r.image, f"{r.valid_mcus}/{r.total_mcus} MCUs valid"
        else:
            try:
                img = codec.decode(data, quality=args.quality)
            except codec.JPEGError as e:
                if codec.decode(data, tolerant=True, quality=args.quality).valid_mcus == 0:
                    _refuse_undecodable(p, data, args.quality)
                raise UserError(f"{show(p)}: {e} (use --tolerant to decode what is valid)") from e
            note = "clean"
        write_png(dst, img, record=True)
        print(f"{show(p)} -> {show(dst)} ({img.shape[1]}x{img.shape[0]}, {note})")
    return 0


def _refuse_undecodable(path: Path, data: bytes, quality: int) -> None:
    """``decode`` of a file in which not one MCU is valid (not a JPEG, a CMYK or otherwise
    non-canonical JPEG, a stream cut before its first MCU): one line saying why, instead of a
    grey picture (``--tolerant``) or advice to use ``--tolerant``. Returns when the strict
    decode succeeds after all."""
    from jpeglm import codec

    try:
        codec.decode(data, quality=quality)
    except codec.JPEGError as e:
        raise UserError(
            f"{show(path)}: nothing in it can be decoded ({e}); --tolerant decodes the valid "
            "part of a damaged canonical stream (a baseline YCbCr or grayscale JPEG), and this "
            "has no valid part"
        ) from e


def cmd_bench(args: argparse.Namespace) -> int:
    """A quick, installed-package check of the headline speeds against the peers present
    (the full harnesses with RESULTS.md are in the repository's benchmarks/)."""
    from jpeglm.cli import bench

    print(bench.table(bench.run(args.images)))
    return 0


# what jpeglm.reference.explain writes
EXPLAIN_FILES = [f"{i}_{n}.png" for i, n in enumerate(
    ["planes", "dct_basis", "block", "zigzag", "mcu_bytes", "mcu_cost", "decoded"], 1
)] + ["explain.md"]  # fmt: skip


def cmd_explain(args: argparse.Namespace) -> int:
    from jpeglm.reference.explain import explain

    check_codec_options(args)
    check_memory(args.size)
    (src,) = existing_files([args.image], "image file")
    targets = plan_outputs(args.out, EXPLAIN_FILES, [src])
    try:
        page = explain(src, args.out, quality=args.quality, size=args.size)
    finally:  # what is in place now (an interrupt too) was written by it, or was listed
        record_outputs(targets)
    print(f"wrote {show(page)} and its pictures")
    return 0
