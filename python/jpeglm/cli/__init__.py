"""The ``jpeglm`` command line: the parser and the runner of thin subcommands.

User mistakes (bad paths, corrupt files, bad options) print one clear line and exit 2; Ctrl-C
(SIGINT) or SIGTERM prints ``jpeglm <cmd>: interrupted`` and exits 130 / 143, with no
temporary file left. The user's files are safe: every command checks its options, works out
the files it will write and refuses (exit 2) any that would replace one of its inputs, and
creates its output folder and checks it is writable, all before the work starts. Outputs of
inputs with equal names get distinct ones (``x.jlm``, ``x-1.jlm``, ..., in input order).

The commands themselves are in :mod:`jpeglm.cli.common` (and :mod:`jpeglm.cli.model` for
sample / complete / eval); the work in the library (:mod:`jpeglm.cli.demo`,
:mod:`jpeglm.cli.bench`, ...).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from jpeglm.cli.common import (
    UserError,
    cmd_bench,
    cmd_decode,
    cmd_demo,
    cmd_encode,
    cmd_explain,
    cmd_export,
    cmd_plan,
    cmd_prepare,
    cmd_tokenize,
    cmd_train,
    cmd_train_tokenizer,
)
from jpeglm.cli.model import cmd_complete, cmd_eval, cmd_sample

__all__ = ["build_parser", "main"]


EXIF_HELP = (
    "turn each image upright by its EXIF orientation first (PIL.ImageOps.exif_transpose); by "
    "default EXIF is ignored, as in the official pipeline (byte-identical streams)"
)
OUT_HELP = (
    "output folder (an output that would replace an input is refused; inputs with equal names "
    "give NAME, NAME-1, NAME-2, ... in input order)"
)


def video_options(p: argparse.ArgumentParser, what: str) -> None:
    """The clip options ``prepare`` and ``train-tokenizer`` share (AVC-LM)."""
    p.add_argument("--video", action="store_true", help=f"AVC-LM: {what}")
    p.add_argument("--frame-size", default=None, help="video: WIDTHxHEIGHT (default 256x144)")
    p.add_argument("--fps", type=float, default=3, help="video: frames per second (3)")
    p.add_argument("--seconds", type=float, default=5, help="video: seconds kept (5)")
    p.add_argument("--qp", type=int, default=37, help="video: libx264 constant QP (37)")


def build_parser() -> argparse.ArgumentParser:
    """The ``jpeglm`` parser: one subparser per command, its ``func`` the ``cmd_*`` to run."""
    p = argparse.ArgumentParser(
        prog="jpeglm", description="JPEG-LM toolkit: canonical JPEG codec, tokenizer, model.",
        epilog="Outputs never replace inputs: a command that would is refused before it starts "
        "(exit 2). Inputs with equal names (a/x.jpg b/x.png) give x.jlm, x-1.jlm, ... in input "
        "order. Rerunning into an output folder replaces only the files the command writes.",
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)

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

    pr = sub.add_parser("prepare", help="images -> packed uint16 token shards (resumable)")
    pr.add_argument("src", help="image folder, .txt list of paths, or tar archive")
    pr.add_argument("out", help="output folder")
    pr.add_argument("--tokenizer", required=True)
    pr.add_argument("--size", type=int, default=256)
    pr.add_argument("--quality", type=int, default=25)
    pr.add_argument("--seq-len", type=int, default=12288)
    pr.add_argument("--images-per-shard", type=int, default=1024)
    pr.add_argument("--workers", type=int, default=None)
    pr.add_argument("--fast", action="store_true", help="libjpeg DCT scaling for big JPEGs")
    pr.add_argument("--exif-transpose", action="store_true", help=EXIF_HELP)
    video_options(pr, "SRC holds clips (video files or .npy frames) made canonical H.264 "
                  "streams (jpeglm.video.codec)")  # fmt: skip
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_prepare)

    tr = sub.add_parser(
        "train", add_help=False,
        help="train a model: CONFIG.toml [key=value ...] (--help lists every key; "
        "--print-config writes a complete default config)",
    )  # fmt: skip
    tr.add_argument("args", nargs=argparse.REMAINDER, help="CONFIG.toml and/or key=value")
    tr.set_defaults(func=cmd_train)

    pl = sub.add_parser("plan", help="per-GPU training memory: DDP / FSDP x checkpointing")
    from jpeglm.train.memory import add_arguments as plan_arguments

    plan_arguments(pl)
    pl.set_defaults(func=cmd_plan)

    ex = sub.add_parser("export", help="trainer checkpoint (step_N or run folder) -> HF folder")
    ex.add_argument("checkpoint", help="OUT/step_N, or a run folder (its newest checkpoint)")
    ex.add_argument("out", help="new folder for the HF checkpoint (must not exist)")
    ex.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ex.add_argument("--max-shard-size", type=int, default=5 * 2**30, help="bytes per file")
    ex.set_defaults(func=cmd_export)

    def sampling(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", required=True,
                        help="HF folder, trainer checkpoint (step_N) or run folder")  # fmt: skip
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

    sa = sub.add_parser("sample", help="unconditional samples from a model")
    sampling(sa)
    sa.add_argument("-n", type=int, default=4)
    sa.set_defaults(func=cmd_sample)

    co = sub.add_parser("complete", help="complete images from their first rows of MCUs")
    ev = sub.add_parser("eval", help="bits/byte, decodability, completion PSNR/SSIM, grid")
    for sp in (co, ev):  # both complete prompts: the first rows of images / frames of clips
        sampling(sp)
        sp.add_argument("images", nargs="+")
        sp.add_argument("--rows", type=int, default=None,
                        help="prompt rows of MCUs (default: half the image's)")  # fmt: skip
        sp.add_argument("--frames", type=int, default=None,
                        help="video models: prompt frames (default 10 or all but one)")  # fmt: skip
    co.add_argument("--exif-transpose", action="store_true", help=EXIF_HELP)
    co.set_defaults(func=cmd_complete)
    ev.add_argument("--judge", type=int, default=0, metavar="N",
                    help="also sample N images and judge them with the digit classifier "
                    "(32x32 digit models)")  # fmt: skip
    ev.add_argument("--fid-weights", metavar="PATH", default=None,
                    help="also compute FID of --fid-samples unconditional samples against the "
                    "images given, with pytorch-fid's Inception weights from PATH "
                    "(pt_inception-2015-12-05-6726825d.pth, which you download; nothing is "
                    "downloaded here). Needs jpeglm[fid] (torchmetrics)")  # fmt: skip
    ev.add_argument("--fid-samples", type=int, default=None, metavar="N",
                    help="samples for --fid-weights (default 64; at least 2)")  # fmt: skip
    ev.set_defaults(func=cmd_eval)

    m = sub.add_parser("demo", help="encode + decode the bundled photos; side-by-side PNG")
    m.add_argument("--out", default="demo_out")
    m.add_argument("--quality", type=int, default=25)
    m.add_argument("--size", type=int, default=256)
    m.add_argument("--samples", type=int, default=16, help="model samples and completions")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--temperature", type=float, default=None,
                   help="model sampling temperature (default: the checkpoint's)")  # fmt: skip
    m.add_argument("--codec-only", action="store_true", help="skip the model part")
    m.set_defaults(func=cmd_demo)
    return p


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt (so temp files are removed)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _one_line(msg: object) -> str:
    """``msg`` as one printable line (no newlines; bytes that are not UTF-8 as ``\\xNN``)."""
    text = " ".join(str(msg).split("\n"))
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (0 ok, 2 user error, 130/143 interrupted)."""
    name, old_term = "jpeglm", None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # its own arguments (--help lists every config key)
        from jpeglm.train.loop import main as train_main

        return train_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        name = f"jpeglm {args.command}"
        # SIGINT raises KeyboardInterrupt; SIGTERM does the same here (`jpeglm train` installs
        # its own handlers). Only in the main thread, and restored after.
        if args.command != "train" and threading.current_thread() is threading.main_thread():
            old_term = signal.signal(signal.SIGTERM, _on_sigterm)
        return int(args.func(args) or 0)
    except (UserError, ValueError, OSError) as e:
        print(f"{name}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"{name}: terminated", file=sys.stderr)
        return 143
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
