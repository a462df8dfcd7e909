"""Class-conditional sampling on the command line (issue 33): ``--label`` and ``--cfg`` of
``jpeglm sample`` and ``jpeglm complete``.

``--label NAME`` (repeatable; ``--label all``: every class) names the classes to sample: ``-n``
samples of each (``sample_<label>_000.png``, ...), or each image completed once per label
(``photo_<label>.png``). ``--cfg SCALE``: the guidance scale (default the model's record; 1 =
none). ``--cfg`` without ``--label``, a bad scale, ``--label`` on a model without conditioning
and an unknown class are refused in one line before any weight is read. A class-conditional
model sampled without ``--label`` samples its null class ("no condition"), named as before.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any

from jpeglm._io import show
from jpeglm.cli.common import UserError

if TYPE_CHECKING:
    from jpeglm.conditioning import Conditioning


def add_options(sp: argparse.ArgumentParser) -> None:
    """``--label`` and ``--cfg`` on a sampling command's parser."""
    sp.add_argument("--label", action="append", default=None, metavar="NAME",
                    help="class-conditional models: sample this class (repeatable; 'all': "
                    "every class)")  # fmt: skip
    sp.add_argument("--cfg", type=float, default=None, metavar="SCALE",
                    help="classifier-free guidance scale with --label (default: the model's; "
                    "1: none)")  # fmt: skip


def check_options(args: argparse.Namespace) -> None:
    """Before the model is read: ``--cfg`` needs ``--label`` and is a number >= 0."""
    if getattr(args, "cfg", None) is None:
        return
    from jpeglm.inference.guidance import check_cfg

    if not args.label:
        raise UserError("--cfg needs --label: guidance mixes a class's logits with the null "
                        "class's")  # fmt: skip
    try:
        check_cfg(args.cfg)
    except ValueError as e:
        raise UserError(f"--{e}") from None


def resolve(args: argparse.Namespace, info: dict) -> None:
    """After the model's record is read, before its weights: ``args.conditioning`` (None for an
    unconditional model) and ``args.labels`` (the classes asked for, each once, in order; None
    without ``--label``). ``--label`` on an unconditional model, an unknown class: refused."""
    from jpeglm.checkpoint.load import conditioning_of
    from jpeglm.inference.guidance import resolve_labels

    args.conditioning = conditioning_of(info)
    args.labels = None
    if not getattr(args, "label", None):
        return
    if args.conditioning is None:
        raise UserError(f"--label needs a class-conditional model: {show(args.model)} has no "
                        "conditioning in its record (jpeglm.json)")  # fmt: skip
    try:
        args.labels = list(dict.fromkeys(resolve_labels(args.conditioning, args.label)))
    except ValueError as e:
        raise UserError(f"--label: {e}") from None


def stems(args: argparse.Namespace) -> list[str]:
    """The labels as parts of file names (characters other than letters, digits, ``.``, ``_``,
    ``-`` replaced by ``_``; the class's index added where two would be equal)."""
    names = args.labels or []
    safe = [re.sub(r"[^\w.-]", "_", n, flags=re.ASCII) for n in names]
    if len(set(safe)) < len(safe):
        safe = [f"{s}-{args.conditioning.names.index(n)}" for s, n in zip(safe, names)]
    return safe


def check_model(model, tokenizer, args: argparse.Namespace) -> None:  # noqa: ANN001
    """Once loaded: the conditioning fits the tokenizer and the model (one line otherwise)."""
    from jpeglm.inference.guidance import plan_conditions

    try:
        plan_conditions(model, tokenizer, args.conditioning, args.labels, args.cfg)
    except ValueError as e:
        raise UserError(f"{show(args.model)}: {e}") from None


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The samplers' ``labels``, ``cfg`` and ``conditioning`` keywords."""
    cond: Conditioning | None = args.conditioning
    return {"labels": args.labels, "cfg": args.cfg, "conditioning": cond}
