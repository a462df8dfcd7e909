"""``jpeglm models``: the bundled models (:func:`jpeglm.data.bundled.models`), which ``--model``
of ``sample``, ``complete`` and ``eval`` takes by name (``--model mnist32-cond``; an existing
path of the same name wins), each with its record: kind, image size, parameters, classes of a
class-conditional model, recorded sampling settings and guidance scale. A plain text table,
or ``--json`` for machines. No weight is read (the parameters are counted on the meta device).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from jpeglm.cli.common import UserError

__all__ = ["add_parser", "cmd_models", "describe", "records"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``models`` subparser."""
    m = sub.add_parser("models", help="the bundled models (--model NAME) and their records")
    m.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    m.set_defaults(func=cmd_models)


def describe(name: str, folder: Path) -> dict[str, Any]:
    """One model's row: ``name``, ``folder``, ``kind``, ``image_size`` (or the clip's
    ``video`` size, fps and seconds), ``parameters``, ``classes`` (class names, or None),
    ``cfg`` (the recorded guidance scale, or None) and ``sampling`` (its recorded settings)."""
    import torch

    from jpeglm.checkpoint.hf import hf_model_args
    from jpeglm.checkpoint.load import conditioning_of, resolve
    from jpeglm.model import Transformer

    ref = resolve(folder)
    info = ref.info
    args = hf_model_args(ref.folder)
    with torch.device("meta"):
        params = Transformer(args).num_params()
    cond = conditioning_of(info)
    row: dict[str, Any] = {
        "name": name,
        "folder": str(ref.folder),
        "kind": info.get("kind", "image"),
        "image_size": info.get("image_size"),
        "quality": info.get("quality"),
        "parameters": params,
        "vocab_size": args.vocab_size,
        "context": args.max_seq_len,
        "classes": list(cond.names) if cond is not None else None,
        "cfg": cond.cfg if cond is not None else None,
        "sampling": dict(info["sampling"]),
    }
    if row["kind"] == "video":
        row["video"] = info.get("video")
    return row


def records() -> list[dict[str, Any]]:
    """:func:`describe` of every bundled model, in :func:`jpeglm.data.bundled.models`' order."""
    from jpeglm.data import bundled

    return [describe(name, folder) for name, folder in bundled.models().items()]


def _size(row: dict[str, Any]) -> str:
    v = row.get("video")
    if row["kind"] == "video" and isinstance(v, dict):
        return f"{v.get('width')}x{v.get('height')} {v.get('fps')} fps {v.get('seconds')} s"
    return f"{row['image_size']}x{row['image_size']} q{row['quality']}"


def _sampling(row: dict[str, Any]) -> str:
    s = row["sampling"]
    text = f"T {s.get('temperature')} top-k {s.get('top_k')} top-p {s.get('top_p')}"
    return text + (f" cfg {row['cfg']:g}" if row["cfg"] is not None else "")


def _classes(row: dict[str, Any]) -> str:
    names = row["classes"]
    if names is None:
        return "-"
    shown = ",".join(names[:10]) + (",..." if len(names) > 10 else "")
    return f"{len(names)} ({shown})"


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a plain text table, one model a line under a header."""
    head = ("name", "kind", "size", "parameters", "classes", "sampling")
    lines = [(r["name"], r["kind"], _size(r), f"{r['parameters'] / 1e6:.2f}M", _classes(r),
              _sampling(r)) for r in rows]  # fmt: skip
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*x).rstrip() for x in [head, *lines])


def cmd_models(args: argparse.Namespace) -> int:
    """Print the bundled models: a table, or ``--json``."""
    try:
        rows = records()
    except (OSError, ValueError) as e:
        raise UserError(f"a bundled model cannot be read: {e}") from e
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no bundled models installed")
    else:
        print(table(rows))
        print("use one as --model NAME (sample, complete, eval); a folder of that name wins")
    return 0
