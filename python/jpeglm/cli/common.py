"""The ``jpeglm`` subcommands: each ``cmd_*`` takes the parsed arguments, checks them, works
out its outputs, then calls the library and prints what it did. :mod:`jpeglm.cli` parses the
command line and runs one; sample / complete / eval are in :mod:`jpeglm.cli.model`.

A mistake of the user's raises :class:`UserError` (one line, exit 2). Before any work a
command checks its options and plans its outputs (:func:`plan_outputs`): the output folder is
created and checked writable, an output that would replace an input is refused, and so is a
file in the way that jpeglm did not write there (the folder's ``.jpeglm-outputs`` lists the
ones it did, each once it is in place). Outputs are written as they are made, so an
interrupted command keeps its finished files. Outputs of inputs with equal names get distinct
ones (:func:`distinct_names`).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from jpeglm._io import (
    atomic_write_bytes,
    claim_outputs,
    record_outputs,
    show,
    write_png,
)


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


def plan_outputs(
    out: str | os.PathLike,
    names: Iterable[str] | Callable[[str], bool],
    inputs: Iterable[str | os.PathLike] = (),
) -> list[Path]:
    """The files ``out/NAME`` a command will write, checked before any work
    (:func:`jpeglm._io.claim_outputs`): the folder is created and checked writable, then the
    command is refused when one of them is one of ``inputs`` or a file jpeglm did not write.
    Each is listed in the folder's ``.jpeglm-outputs`` only once it is in place (written with
    ``record=True``, or :func:`record_outputs` after the library wrote it)."""
    try:
        return claim_outputs(out, names, inputs)
    except ValueError as e:
        raise UserError(str(e)) from e


def plan_output_file(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """One output file (e.g. ``train-tokenizer -o``), checked like :func:`plan_outputs`."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{show(p)} is a folder: give the file to write")
    return plan_outputs(p.parent, [p.name], inputs)[0]


def distinct_names(paths: Sequence[Path], suffix: str) -> list[str]:
    """``STEM + suffix`` for each path, in order; a name already taken (compared ignoring case,
    for case-insensitive file systems) becomes ``STEM-1``, ``STEM-2``, ... (the first free)."""
    taken: set[str] = set()
    names = []
    for p in paths:
        name, k = p.stem + suffix, 0
        while name.casefold() in taken:
            k += 1
            name = f"{p.stem}-{k}{suffix}"
        taken.add(name.casefold())
        names.append(name)
    return names


# ------------------------------------------------------------------------------------------------
# encode / decode


def existing_files(items: Sequence[str], what: str) -> list[Path]:
    paths = [Path(x) for x in items]
    for p in paths:
        if not p.is_file():
            raise UserError(f"no such {what}: {show(p)}")
    return paths


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


def _check_codec_options(args: argparse.Namespace) -> None:
    from jpeglm import codec

    try:
        if getattr(args, "size", None) is not None:
            codec.check_size(args.size)
        codec.check_quality(args.quality)
    except ValueError as e:
        raise UserError(str(e)) from e


def check_memory(size: int, held: int = 0, working: int = 1, hint: str = "use a smaller --size"
                 ) -> None:  # fmt: skip
    """Refuse up front a ``--size`` (and counts) whose working memory exceeds what this machine
    has available (:func:`jpeglm.codec.check_memory`), with the numbers."""
    from jpeglm import codec

    what = f"--size {size}"
    if held:
        what += f" with {held} prepared images held"
    if working > 1:
        what += f" on {working} workers"
    try:
        codec.check_memory(codec.encode_memory(size, held, working), what, hint)
    except ValueError as e:
        raise UserError(str(e)) from e


def cmd_encode(args: argparse.Namespace) -> int:
    from jpeglm import codec

    _check_codec_options(args)
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
    _check_codec_options(argparse.Namespace(quality=qualities[0] if qualities else 25))
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


# ------------------------------------------------------------------------------------------------
# tokenizer


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
    from jpeglm.data import prepare as data
    from jpeglm.tokenizer import Tokenizer

    video = video_settings(args)
    if video is None:
        _check_codec_options(args)
        paths = image_paths(args.images)
        # every image is held prepared, each read on one of the cores
        check_memory(args.size, held=len(paths), working=os.cpu_count() or 1,
                     hint="use a smaller --size or fewer images")  # fmt: skip
        dst = plan_output_file(args.out, paths)
        kept, images, skipped = data.load_images(paths, size=args.size)  # unreadable: skipped
    else:
        clips = clip_sources(args.images)
        paths = [Path(s.path) for s in clips]
        dst = plan_output_file(args.out, paths)
        kept, streams, skipped = data.load_clips(clips, video)
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

    _check_codec_options(args)
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


def image_paths(items: Sequence[str]) -> list[Path]:
    """The images the arguments name (files, and folders searched recursively): the one
    lister of :func:`jpeglm.data.sources.list_images`, shared with prepare. A missing path, a
    named file that is not an image, or a folder without images is one line and exit 2."""
    from jpeglm.data.sources import list_images

    paths, problems = list_images(items)
    if problems:
        p = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{p['source']}: {p['error']}{more}")
    if not paths:
        raise UserError("no images found")
    return paths


def check_temperature(t: float) -> None:
    """``--temperature`` (the demo's and the model commands') is finite and not negative."""
    if not (math.isfinite(t) and t >= 0):
        raise UserError(f"--temperature must be a finite number >= 0 (0: greedy), got {t}")


# ------------------------------------------------------------------------------------------------
# data / training / export / plan


def cmd_prepare(args: argparse.Namespace) -> int:
    from jpeglm.data import prepare as data

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    tok = _load_tokenizer(Path(args.tokenizer))
    video = video_settings(args)
    if video is None:  # a shard's images held prepared (and stacked), one read per worker
        check_memory(args.size, held=2 * max(1, args.images_per_shard),
                     working=args.workers or os.cpu_count() or 1,
                     hint="use a smaller --size, --images-per-shard or --workers")  # fmt: skip
    try:  # the tokenizer is an input too: never an output
        index = data.prepare(
            args.src, args.out, tok, size=args.size, quality=args.quality, seq_len=args.seq_len,
            images_per_shard=args.images_per_shard, workers=args.workers, fast=args.fast,
            progress=not args.quiet, video=video, inputs=[args.tokenizer],
            exif_transpose=args.exif_transpose,
        )  # fmt: skip
    except FileNotFoundError as e:
        raise UserError(str(e)) from e
    print(
        f"{index['images']} {'clips' if video else 'images'} -> {index['sequences']} sequences "
        f"of {args.seq_len} tokens "
        f"in {sum(1 for s in index['shards'] if s['sequences'])} shards "
        f"({len(index['skipped'])} skipped, see report.json)"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from jpeglm.train.loop import main as train_main

    return train_main(list(args.args))


def cmd_export(args: argparse.Namespace) -> int:
    """A trainer checkpoint (DCP, any number of ranks) -> an HF folder with the tokenizer."""
    try:
        import torch
    except ImportError as e:
        raise UserError("export needs torch: pip install 'jpeglm[train]'") from e
    from jpeglm.checkpoint import dcp as checkpoint

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if args.max_shard_size <= 0:
        raise UserError("--max-shard-size must be positive")
    dest = checkpoint.export(args.checkpoint, args.out, dtype=dtypes[args.dtype],
                             max_shard_size=args.max_shard_size)  # fmt: skip
    print(f"{dest}: HF folder (config.json, safetensors, tokenizer, jpeglm.json)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from jpeglm.train.memory import report

    try:
        print(report(args))
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from e
    return 0


# ------------------------------------------------------------------------------------------------
# demo / bench / explain


def cmd_demo(args: argparse.Namespace) -> int:
    """Encode the bundled photos canonically, decode them back, show and measure it; then
    the shipped model (:mod:`jpeglm.cli.demo`)."""
    from jpeglm.cli import demo

    _check_codec_options(args)
    if args.temperature is not None:
        check_temperature(args.temperature)
    if args.samples < 1:
        raise UserError(f"--samples must be >= 1, got {args.samples}")
    targets = plan_outputs(args.out, demo.output_names(args.codec_only), demo.inputs())
    try:
        demo.run(args.out, quality=args.quality, size=args.size, samples=args.samples,
                 seed=args.seed, temperature=args.temperature,
                 codec_only=args.codec_only)  # fmt: skip
    finally:  # what is in place now (an interrupt too) was written by it, or was listed
        record_outputs(targets)
    return 0


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

    _check_codec_options(args)
    check_memory(args.size)
    (src,) = existing_files([args.image], "image file")
    targets = plan_outputs(args.out, EXPLAIN_FILES, [src])
    try:
        page = explain(src, args.out, quality=args.quality, size=args.size)
    finally:  # what is in place now (an interrupt too) was written by it, or was listed
        record_outputs(targets)
    print(f"wrote {show(page)} and its pictures")
    return 0
