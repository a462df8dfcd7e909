"""What the ``jpeglm`` subcommands share, and the commands train / plan / export / convert and
demo.

Each ``cmd_*`` takes the parsed arguments, checks them, works out its outputs, then calls the
library and prints what it did. :mod:`jpeglm.cli` parses the command line and runs one; the
other commands are in :mod:`jpeglm.cli.codec`, :mod:`jpeglm.cli.data` and
:mod:`jpeglm.cli.model`.

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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from jpeglm._io import claim_outputs, record_outputs, show

EXIF_HELP = (
    "turn each image upright by its EXIF orientation first (PIL.ImageOps.exif_transpose); by "
    "default EXIF is ignored, as in the official pipeline (byte-identical streams)"
)
OUT_HELP = (
    "output folder (an output that would replace an input is refused; inputs with equal names "
    "give NAME, NAME-1, NAME-2, ... in input order)"
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


def existing_files(items: Sequence[str], what: str) -> list[Path]:
    paths = [Path(x) for x in items]
    for p in paths:
        if not p.is_file():
            raise UserError(f"no such {what}: {show(p)}")
    return paths


def check_codec_options(args: argparse.Namespace) -> None:
    """``--size`` (when the command has one) and ``--quality`` are ones the codec takes."""
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
# training / export / plan


def check_device_option(name: str) -> str:
    """``--device`` names a device this machine has (checked before loading any model): the
    library's check, :func:`jpeglm.inference.settings.check_device`, in the command line's words.
    Returns the device's canonical name (``" cpu"`` -> ``"cpu"``)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise UserError("sampling needs torch: pip install 'jpeglm[train]'") from e
    from jpeglm.inference.settings import check_device

    try:
        return str(check_device(name))
    except ValueError as e:
        raise UserError(_device_problem(name, str(e))) from e


def _device_problem(name: str, reason: str) -> str:
    """What is wrong with ``--device NAME``, which
    :func:`jpeglm.inference.settings.check_device` refused for ``reason``."""
    import torch

    try:
        dev = torch.device(name.strip())
    except (RuntimeError, ValueError, TypeError):
        return f"--device {name!r} is not a device (cpu, cuda, cuda:N, mps)"
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        have = f"{n} CUDA device(s): cuda:0..cuda:{n - 1}" if n else "no CUDA device"
        return f"--device {name}: no such GPU (this machine has {have})"
    if dev.type == "mps":
        return f"--device {name}: MPS is not available on this machine"
    if dev.type == "cpu":
        return f"--device {name}: {reason}"
    return f"--device {name}: unsupported device type (cpu, cuda, cuda:N, mps)"


def cmd_train(args: argparse.Namespace) -> int:
    from jpeglm.train.loop import main as train_main

    return train_main(list(args.args))


def _weights_dtype(args: argparse.Namespace, command: str):  # noqa: ANN202 - torch.dtype
    """``export`` / ``convert``: torch present, ``--max-shard-size`` positive; the torch dtype
    ``--dtype`` names (None when not given: the source's own)."""
    try:
        import torch
    except ImportError as e:
        raise UserError(f"{command} needs torch: pip install 'jpeglm[train]'") from e
    if args.max_shard_size <= 0:
        raise UserError("--max-shard-size must be positive")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    return dtypes.get(args.dtype)


def cmd_export(args: argparse.Namespace) -> int:
    """A trainer checkpoint (DCP, any number of ranks) -> an HF folder with the tokenizer."""
    dtype = _weights_dtype(args, "export")
    from jpeglm.checkpoint import dcp as checkpoint

    dest = checkpoint.export(args.checkpoint, args.out, dtype=dtype,
                             max_shard_size=args.max_shard_size)  # fmt: skip
    print(f"{dest}: HF folder (config.json, safetensors, tokenizer, jpeglm.json)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """An HF folder (the Hub's ``pytorch_model*.bin`` included) -> jpeglm's safetensors folder."""
    dtype = _weights_dtype(args, "convert")
    from jpeglm.checkpoint.convert import convert

    dest = convert(args.src, args.dest, dtype=dtype,
                   max_shard_size=args.max_shard_size, replace=args.replace)  # fmt: skip
    print(f"{dest}: HF folder (config.json, safetensors, tokenizer, jpeglm.json)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from jpeglm.cli.plan import report

    try:
        print(report(args))
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from e
    return 0


# ------------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    """Encode the bundled photos canonically, decode them back, show and measure it; then
    the shipped model (:mod:`jpeglm.cli.demo`)."""
    from jpeglm.cli import demo

    check_codec_options(args)
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
