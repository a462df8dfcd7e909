"""The model subcommands of ``jpeglm``: ``sample``, ``complete`` and ``eval``, with their parsers
(:func:`add_parsers`; ``eval`` itself is :mod:`jpeglm.cli.evaluate`).

They share their options (``--model``, ``--tokenizer``, ``--device``, the sampling settings),
which are all checked before any model is read; options not given come from the model's own
record (jpeglm.json). The model's folder, its tokenizer and the outputs are worked out and
checked (:func:`jpeglm.cli.common.plan_outputs`) before the model is loaded, and the model is
refused before sampling when its context cannot hold a stream of the image size asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jpeglm._io import atomic_write_bytes, show, write_png
from jpeglm.cli import labels as label_options
from jpeglm.cli import video as video_commands
from jpeglm.cli.common import (
    EXIF_HELP,
    UserError,
    check_device_option,
    distinct_names,
    existing_files,
    image_paths,
    plan_outputs,
)

if TYPE_CHECKING:
    from jpeglm.inference.settings import SamplingSettings


def add_parsers(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``sample``, ``complete`` and ``eval`` subparsers, with the options they share;
    returns ``eval``'s, which :func:`jpeglm.cli.evaluate.add_options` completes."""

    def sampling(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", required=True,
                        help="HF folder, trainer checkpoint (step_N), run folder, or a bundled "
                        "model's name (jpeglm models)")  # fmt: skip
        sp.add_argument("--tokenizer", help="tokenizer file (default: inside --model)")
        sp.add_argument("-o", "--out", required=True, help="output folder")
        sp.add_argument("--size", type=int, default=None, help="default: the model's image size")
        sp.add_argument("--quality", type=int, default=None, help="default: the model's")
        sp.add_argument("--temperature", type=float, default=None, help="default: the model's")
        sp.add_argument("--top-k", type=int, default=None, help="default: the model's (0: off)")
        sp.add_argument("--top-p", type=float, default=None, help="default: the model's")
        sp.add_argument("--max-tokens", type=int, default=None)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--batch-size", type=int, default=None)
        sp.add_argument("--unconstrained", action="store_true", help="no grammar mask")
        sp.add_argument("--device", default="cpu")
        sp.add_argument("--compile", action="store_true", help="torch.compile the decode step")
        sp.add_argument("--dtype", choices=["fp32", "bf16", "fp16", "int8"], default=None,
                        help="sampling weights (default: fp32 on CPU, bf16 on GPU; int8: "
                        "weight-only, one scale per output channel)")  # fmt: skip

    sa = sub.add_parser("sample", help="samples from a model (of classes: --label)")
    sampling(sa)
    label_options.add_options(sa)
    sa.add_argument("-n", type=int, default=4)
    sa.set_defaults(func=cmd_sample)

    co = sub.add_parser("complete", help="complete images from their first rows of MCUs")
    ev = sub.add_parser("eval", help="bits/byte, decodability, completion PSNR/SSIM, grid")
    for sp in (co, ev):  # both complete prompts: the first rows of images / frames of clips
        sampling(sp)
        sp.add_argument("images", nargs="+")
        cut = sp.add_mutually_exclusive_group()
        cut.add_argument("--rows", type=int, default=None,
                         help="prompt rows of MCUs (default: half the image's)")  # fmt: skip
        cut.add_argument("--fraction", type=float, default=None, metavar="R",
                         help="the paper's protocol: the prompt is the stream cut after its "
                         "int(32*R)-th FFD7 marker at 256 px, as the official code does "
                         "(0.25 / 0.5 / 0.75 = --rows 4 / 8 / 12), sampled with the "
                         "official settings (temperature 1.0, top-k 50, top-p 0.9) unless "
                         "given")  # fmt: skip
        sp.add_argument("--frames", type=int, default=None,
                        help="video models: prompt frames (default 10 or all but one)")  # fmt: skip
    co.add_argument("--exif-transpose", action="store_true", help=EXIF_HELP)
    label_options.add_options(co)
    co.set_defaults(func=cmd_complete)
    return ev


def _check_sampling(args: argparse.Namespace) -> None:
    """The sampling options given, all checked before any model is read (options left to the
    model's defaults are checked again once those are filled in)."""
    from jpeglm import codec

    try:
        if args.size is not None:
            codec.check_size(args.size)
        if getattr(args, "quality", None) is not None:
            codec.check_quality(args.quality)
    except ValueError as e:
        raise UserError(str(e)) from e
    if getattr(args, "n", 1) < 1:
        raise UserError(f"-n must be >= 1, got {args.n}")
    label_options.check_options(args)
    rows = getattr(args, "rows", None)
    if rows is not None and args.size is not None and not 0 <= rows < args.size // 16:
        raise UserError(f"--rows must be in 0..{args.size // 16 - 1} for --size {args.size}")
    args.device = check_device_option(args.device)
    if hasattr(args, "rows") and args.size is not None:
        from jpeglm.inference.sample import default_rows, fraction_rows

        if args.fraction is not None:
            try:
                args.rows = fraction_rows(args.fraction, args.size)
            except ValueError as e:
                raise UserError(f"--fraction: {e}") from None
        elif rows is None:
            args.rows = default_rows(args.size)
    args.settings = _settings(args, getattr(args, "record", None))


#: the command line's name of each sampling option (SamplingSettings' errors name the field)
_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
          "max_tokens": "--max-tokens", "seed": "--seed", "batch_size": "--batch-size",
          "dtype": "--dtype"}  # fmt: skip


def _settings(args: argparse.Namespace, record: dict | None) -> SamplingSettings:
    """The sampling settings of a model command (:meth:`SamplingSettings.merged`, the one
    place they meet): each option given, else the model's record (``jpeglm.json``'s
    ``sampling``, once it is read), else the defaults; and the command line's own choices, a
    batch of :data:`DEFAULT_BATCH` and the weights by device (bf16 on CUDA). A bad option is
    the settings' own check, one line naming the flag."""
    from jpeglm.inference.settings import SamplingSettings

    try:
        return SamplingSettings.merged(
            record, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            max_tokens=args.max_tokens, seed=args.seed,
            batch_size=DEFAULT_BATCH if args.batch_size is None else args.batch_size,
            constrained=not args.unconstrained, compile=args.compile,
            dtype=args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32"),
        )  # fmt: skip
    except ValueError as e:
        name, _, rest = str(e).partition(" ")
        raise UserError(f"{_FLAGS.get(name, name)} {rest}") from None


def _model_files(args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """The model folder ``--model`` names (an HF folder, a trainer checkpoint step_N, or a run
    folder: its final/ export, else its newest checkpoint), its tokenizer file (``--tokenizer``,
    else tokenizer.jpeglm or the official sentencepiece tokenizer.model inside) and what it
    says about its images (jpeglm.json; the paper's 256 px / q25 for folders without one).

    The path is resolved once per command (:func:`jpeglm.checkpoint.load.resolve`: the
    checkpoint's train_state.json and the record read and checked here) and kept as
    ``args.ref``, which the later steps and :func:`_load_model` use; the rest of the model's
    files are checked by :func:`_check_model_files`."""
    from jpeglm.checkpoint.load import find_tokenizer, resolve

    if getattr(args, "ref", None) is None:
        try:
            args.ref = resolve(args.model)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from e
    folder, info = args.ref.folder, args.ref.info
    if args.tokenizer:
        return folder, Path(args.tokenizer), info
    tok = find_tokenizer(folder)
    if tok is None:
        raise UserError(f"no tokenizer in {show(folder)}: pass --tokenizer")
    return folder, tok, info


def _check_model_files(folder: Path, tok_path: Path, info: dict, given: bool) -> None:
    """Before any weight is read: an HF folder's config.json, index and safetensors headers
    (:func:`jpeglm.checkpoint.hf.hf_model_args`), and a ``--tokenizer`` (``given``): a readable
    file, the one the model's record names."""
    from jpeglm._io import input_file
    from jpeglm.checkpoint import load as loading
    from jpeglm.checkpoint.hf import hf_model_args

    try:
        if (folder / "config.json").is_file():
            hf_model_args(folder)  # no weight read
        if given:
            input_file(tok_path, "tokenizer")
            loading.check_tokenizer(info, loading.load_tokenizer(tok_path), tok_path, folder)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from e


def _new_folders(out: Path) -> list[Path]:
    """The folders that making ``out`` will create, deepest first."""
    made = []
    p = out.absolute()
    while not os.path.lexists(p) and p != p.parent:
        made.append(p)
        p = p.parent
    return made


def _model_info(args: argparse.Namespace) -> dict:
    """The model's record (jpeglm.json), the options checked first: what kind of model it is
    (and the classes asked for, :func:`jpeglm.cli.labels.resolve`) decides the outputs' names."""
    _check_sampling(args)
    info = _model_files(args)[2]
    if hasattr(args, "label"):
        label_options.resolve(args, info)
    return info


def _apply_model_defaults(args: argparse.Namespace, info: dict) -> None:
    """Options not given on the command line come from the model's own record."""
    if info.get("kind") == "video":  # clips: their settings are the record's "video"
        if args.size is not None:
            raise UserError("--size is for image models; a video model's clip size is fixed")
        if getattr(args, "fraction", None) is not None:
            raise UserError("--fraction is for image models; give a video model --frames")
    else:
        if args.size is None:
            args.size = int(info["image_size"])
        if args.quality is None:
            args.quality = int(info["quality"])
    # options not given: the record's (see _settings); the paper's protocol: the defaults,
    # which are the official inference settings
    official = getattr(args, "fraction", None) is not None
    args.record = None if official else info.get("sampling")


def _plan_model_outputs(
    args: argparse.Namespace,
    names: Iterable[str] | Callable[[str], bool],
    images: Sequence[Path] = (),
) -> tuple[Path, Path]:
    """Model files, options (defaults from the model), and outputs checked (in that order)
    before the model is loaded. ``names``: a list, or a test of a name (``sample``)."""
    _check_sampling(args)
    folder, tok_path, info = _model_files(args)
    _apply_model_defaults(args, info)
    _check_sampling(args)
    inputs = [tok_path, *images, *(p for p in folder.iterdir() if p.is_file())]
    made = _new_folders(Path(args.out))
    plan_outputs(args.out, names, inputs)  # an output refused: said before the model's faults
    try:
        _check_model_files(folder, tok_path, info, bool(args.tokenizer))
    except BaseException:
        for d in made:  # a bad model leaves no output folder behind (only empty ones made here)
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return folder, tok_path


#: rows per sampling batch when ``--batch-size`` is not given: outputs are written batch by
#: batch, so an interrupted command keeps every finished batch's files
DEFAULT_BATCH = 16


def _load_model(folder: Path, tok_path: Path, args: argparse.Namespace):
    """The model and tokenizer; an image size whose streams cannot fit its context is
    refused before any sampling."""
    from jpeglm.checkpoint.load import check_context, load_model

    try:
        loaded = load_model(args.ref, device=args.device, tokenizer=tok_path)
        if loaded.info.get("kind") != "video":
            check_context(loaded, args.size, args.quality)
    except (ValueError, OSError) as e:
        raise UserError(f"{show(folder)}: {e}") from e
    return loaded.model, loaded.tokenizer


@contextlib.contextmanager
def _sampling(folder: Path) -> Iterator[None]:
    """Sampling from the model in ``folder``: logits that are not finite (NaN weights) stop it
    with one line naming the model."""
    from jpeglm.inference.loop import NonFiniteLogits

    try:
        yield
    except NonFiniteLogits as e:
        raise UserError(f"{show(folder)}: {e}") from e


def _is_sample_file(prefix: str, n: int, exts: Sequence[str]) -> Callable[[str], bool]:
    """Whether a name is one of the files ``PREFIX000``, ``PREFIX001``, ... (``n`` of them, one
    of ``exts`` each), without listing them (``-n`` may be 10**9)."""
    pattern = re.compile(re.escape(prefix) + r"(\d{3,})(" + "|".join(map(re.escape, exts)) + ")")

    def test(name: str) -> bool:
        m = pattern.fullmatch(name)
        return bool(m) and int(m.group(1)) < n and f"{int(m.group(1)):03d}" == m.group(1)

    return test


def _files_of(stems: Sequence[str]) -> list[str]:
    return [stem + ext for stem in stems for ext in (".png", ".jpg")]


def _write_sample(out: Path, stem: str, s, quality: int) -> None:  # noqa: ANN001
    """``STEM.png`` (the tolerant decode) and ``STEM.jpg`` (the stream with tables), each
    written and listed as an output at once."""
    from jpeglm import codec

    write_png(out / f"{stem}.png", s.image, record=True)
    if s.data:
        atomic_write_bytes(out / f"{stem}.jpg", codec.with_tables(s.data, quality), record=True)
    state = "clean" if s.clean else f"{s.valid_mcus}/{s.total_mcus} MCUs valid"
    print(f"{show(out / f'{stem}.png')}: {len(s.data)} bytes, {state}", flush=True)


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    """The samplers' keywords: the image size and quality, and every sampling option of
    ``args.settings`` (:func:`_settings`) as a keyword."""
    return dict(size=args.size, quality=args.quality, **dataclasses.asdict(args.settings))


def cmd_sample(args: argparse.Namespace) -> int:
    """``sample_000.png`` + ``.jpg``, ... (``sample_<label>_000.png``, ... with ``--label``)
    each written as its batch finishes; the names are made as they are needed (``-n 10**9``
    lists none)."""
    from jpeglm.inference.sample import generate

    n = max(args.n, 0)
    info = _model_info(args)
    if video_commands.is_video(info):
        names = _is_sample_file("sample_", n, (".png", ".h264"))
        folder, tok_path = _plan_model_outputs(args, names)
        loaded = _load_model(folder, tok_path, args)
        with _sampling(folder):
            video_commands.sample(args, *loaded, info, _sampling_kwargs(args))
        return 0
    prefixes = [f"sample_{s}_" for s in label_options.stems(args)] or ["sample_"]
    tests = [_is_sample_file(p, n, (".png", ".jpg")) for p in prefixes]
    folder, tok_path = _plan_model_outputs(args, lambda name: any(t(name) for t in tests))
    model, tok = _load_model(folder, tok_path, args)
    label_options.check_model(model, tok, args)
    out = Path(args.out)

    def write(i: int, s) -> None:  # noqa: ANN001 - a Sample, written as its batch finishes
        _write_sample(out, f"{prefixes[i // n]}{i % n:03d}", s, args.quality)

    with _sampling(folder):
        generate(model, tok, n=args.n, **_sampling_kwargs(args), on_sample=write,
                 **label_options.sampling_kwargs(args))  # fmt: skip
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    """Completions named after their inputs: ``photo.jpg`` -> ``photo.png`` + ``photo.jpg``
    (equal names numbered as everywhere: ``photo-1.png``), each written as its batch
    finishes."""
    from jpeglm.inference.sample import complete

    info = _model_info(args)
    if video_commands.is_video(info):  # clips: video files or .npy frames
        clips = existing_files(args.images, "clip")
        stems = [n.removesuffix(".png") for n in distinct_names(clips, ".png")]
        folder, tok_path = _plan_model_outputs(args, video_commands.clip_files(stems), clips)
        loaded = _load_model(folder, tok_path, args)
        with _sampling(folder):
            video_commands.complete(args, *loaded, info, clips, stems, _sampling_kwargs(args))
        return 0
    images = image_paths(args.images)
    stems = [n.removesuffix(".png") for n in distinct_names(images, ".png")]
    kw = label_options.sampling_kwargs(args)
    if args.labels:  # each image once per label: photo_<label>.png
        names = [(lab, f"{s}_{ls}") for lab, ls in zip(args.labels, label_options.stems(args))
                 for s in stems]  # fmt: skip
        images, stems = images * len(args.labels), [s for _, s in names]
        kw["labels"] = [lab for lab, _ in names]
        if len(set(stems)) < len(stems):
            raise UserError("two completions would have the same name: rename the images")
    folder, tok_path = _plan_model_outputs(args, _files_of(stems), images)
    model, tok = _load_model(folder, tok_path, args)
    label_options.check_model(model, tok, args)
    out = Path(args.out)
    with _sampling(folder):
        complete(model, tok, images, rows=args.rows, **_sampling_kwargs(args),
                 exif_transpose=args.exif_transpose, **kw,
                 on_sample=lambda i, s: _write_sample(out, stems[i], s, args.quality))  # fmt: skip
    return 0
