"""The ``jpeglm`` command line: the parser and the runner of thin subcommands.

User mistakes (bad paths, corrupt files, bad options) print one clear line and exit 2; Ctrl-C
(SIGINT) or SIGTERM prints ``jpeglm <cmd>: interrupted`` and exits 130 / 143, with no
temporary file left. The user's files are safe: every command checks its options, works out
the files it will write and refuses (exit 2) any that would replace one of its inputs, and
creates its output folder and checks it is writable, all before the work starts. Outputs of
inputs with equal names get distinct ones (``x.jlm``, ``x-1.jlm``, ..., in input order).

Each group of commands is in its own module with its parsers: :mod:`jpeglm.cli.codec`
(encode / decode / bench / explain), :mod:`jpeglm.cli.data` (train-tokenizer / tokenize /
prepare), :mod:`jpeglm.cli.model` (sample / complete), :mod:`jpeglm.cli.evaluate` (eval)
and :mod:`jpeglm.cli.models` (models: the bundled ones by name); train / plan / export /
convert and demo are in :mod:`jpeglm.cli.common`, with what every command shares. The work
is in the library (:mod:`jpeglm.cli.demo`, :mod:`jpeglm.cli.bench`, ...).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from jpeglm.cli import codec as codec_commands
from jpeglm.cli import data as data_commands
from jpeglm.cli import evaluate
from jpeglm.cli import model as model_commands
from jpeglm.cli.common import UserError, cmd_convert, cmd_demo, cmd_export, cmd_plan, cmd_train

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``jpeglm`` parser: one subparser per command, its ``func`` the ``cmd_*`` to run."""
    p = argparse.ArgumentParser(
        prog="jpeglm", description="JPEG-LM toolkit: canonical JPEG codec, tokenizer, model.",
        epilog="Outputs never replace inputs: a command that would is refused before it starts "
        "(exit 2). Inputs with equal names (a/x.jpg b/x.png) give x.jlm, x-1.jlm, ... in input "
        "order. Rerunning into an output folder replaces only the files the command writes.",
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)

    codec_commands.add_parsers(sub)  # encode, decode, bench, explain
    data_commands.add_parsers(sub)  # train-tokenizer, tokenize, prepare

    tr = sub.add_parser(
        "train", add_help=False,
        help="train a model: CONFIG.toml [key=value ...] (--help lists every key; "
        "--print-config writes a complete default config)",
    )  # fmt: skip
    tr.add_argument("args", nargs=argparse.REMAINDER, help="CONFIG.toml and/or key=value")
    tr.set_defaults(func=cmd_train)

    pl = sub.add_parser("plan", help="per-GPU training memory: DDP / FSDP x checkpointing")
    from jpeglm.cli.plan import add_arguments as plan_arguments

    plan_arguments(pl)
    pl.set_defaults(func=cmd_plan)

    ex = sub.add_parser("export", help="trainer checkpoint (step_N or run folder) -> HF folder")
    ex.add_argument("checkpoint", help="OUT/step_N, or a run folder (its newest checkpoint)")
    ex.add_argument("out", help="new folder for the HF checkpoint (must not exist)")
    ex.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ex.add_argument("--max-shard-size", type=int, default=5 * 2**30, help="bytes per file")
    ex.set_defaults(func=cmd_export)

    cv = sub.add_parser(
        "convert", help="HF folder (the Hub's pytorch_model.bin too) -> safetensors HF folder"
    )
    cv.add_argument("src", help="HF folder: config.json + safetensors or pytorch_model*.bin")
    cv.add_argument("dest", help="new folder (refused if it exists, unless --replace)")
    cv.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="weights dtype (default: the stored one)")  # fmt: skip
    cv.add_argument("--max-shard-size", type=int, default=5 * 2**30, help="bytes per file")
    cv.add_argument("--replace", action="store_true",
                    help="replace DEST when it is a folder jpeglm wrote")  # fmt: skip
    cv.set_defaults(func=cmd_convert)

    evaluate.add_options(model_commands.add_parsers(sub))  # sample, complete, eval
    from jpeglm.cli.models import add_parser as models_parser

    models_parser(sub)  # models: the bundled ones, by name

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
