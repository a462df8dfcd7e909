"""``jpeglm eval`` on a class-conditional model (issue 34): the held-out bits/byte without the
label (the null id) and, when the held-out images are an ImageFolder tree of the model's
classes (``root/<class>/x.png``), with each image's label -- then each completion is also
conditioned on (and guided by) its image's label; ``--judge N``: ``N`` samples of every class
at the recorded settings and guidance scale (``--cfg`` overrides it), judged as the digit asked
for (:func:`jpeglm.eval.metrics.judge_requested`), per class and on average.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jpeglm.cli.common import UserError

if TYPE_CHECKING:
    from jpeglm.conditioning import Conditioning

__all__ = [
    "add_options",
    "check",
    "check_labels",
    "completion_kwargs",
    "held_out",
    "held_out_labels",
    "judge",
]

DIGITS = tuple(str(d) for d in range(10))


def add_options(ev: argparse.ArgumentParser) -> None:
    """``eval --cfg``: the guidance scale of a conditional model's labelled samples."""
    ev.add_argument("--cfg", dest="judge_cfg", type=float, default=None, metavar="SCALE",
                    help="class-conditional models: the guidance scale of --judge's samples "
                    "and of the completions of images in class folders (default: the model's; "
                    "1: none)")  # fmt: skip


def check(args: argparse.Namespace, info: dict) -> Conditioning | None:
    """After the model's record is read, before its weights: ``args.conditioning`` (None for
    an unconditional model); ``--cfg`` on an unconditional model, a bad scale, ``--judge`` on a
    conditional model whose classes are not digits: refused."""
    from jpeglm.checkpoint.load import conditioning_of
    from jpeglm.inference.guidance import check_cfg

    cond = args.conditioning = conditioning_of(info)
    cfg = getattr(args, "judge_cfg", None)
    if cfg is not None:
        if cond is None:
            raise UserError("--cfg is for a class-conditional model (the guidance scale of its "
                            "labelled samples); this one has no classes")  # fmt: skip
        try:
            check_cfg(cfg)
        except ValueError as e:
            raise UserError(f"--{e}") from None
    if cond is not None and args.judge and not set(cond.names) <= set(DIGITS):
        shown = ", ".join(cond.names[:10])
        raise UserError(f"--judge judges digits: a class-conditional model's classes must be "
                        f"digits 0..9, this one's are {shown}")  # fmt: skip
    return cond


def check_labels(args: argparse.Namespace, labels: Sequence[str] | None) -> None:
    """``--cfg`` with nothing to guide (no ``--judge``, no image in a class folder): refused."""
    if getattr(args, "judge_cfg", None) is not None and not args.judge and labels is None:
        raise UserError("--cfg guides --judge's samples and the completions of images in class "
                        "folders (root/<class>/x.png): there are neither")  # fmt: skip


def completion_kwargs(args: argparse.Namespace, labels: Sequence[str] | None) -> dict[str, Any]:
    """The completions' conditioning keywords: each image's label and the guidance scale when
    the labels are known, else none (the null class, unguided)."""
    if labels is None:
        return {}
    return {"labels": list(labels), "cfg": getattr(args, "judge_cfg", None)}


def held_out_labels(items: Sequence[str], paths: Sequence[Path], cond: Conditioning
                    ) -> list[str] | None:  # fmt: skip
    """Each held-out image's class when every image lies in a class folder of a folder given
    (``root/<class>/x.png``, the class one of the model's), else None."""
    from jpeglm.data.units import folder_label

    roots = [os.path.abspath(i) for i in items if Path(i).is_dir()]
    out = []
    for p in paths:
        ap = os.path.abspath(p)
        root = next((r for r in roots if ap.startswith(r.rstrip(os.sep) + os.sep)), None)
        label = None if root is None else folder_label(os.path.relpath(ap, root))
        if label not in cond.names:
            return None
        out.append(label)
    return out


def held_out(model, tok, streams: Sequence[bytes], size: int, cond: Conditioning,  # noqa: ANN001
             labels: Sequence[str] | None) -> dict[str, Any]:  # fmt: skip
    """``held_out``: bits/byte with the null id (no label); ``held_out_labelled`` with each
    image's label when ``labels`` are known (and ``label_gain_bits_per_byte``, what the label
    saves)."""
    from jpeglm.eval.metrics import bits_per_byte

    res: dict[str, Any] = {
        "held_out": bits_per_byte(
            model, tok, streams, size=size, conds=[cond.null_id] * len(streams)
        ),  # fmt: skip
    }
    if labels is not None:
        lab = bits_per_byte(model, tok, streams, size=size,
                            conds=[cond.id_of(n) for n in labels])  # fmt: skip
        res["held_out_labelled"] = lab
        res["label_gain_bits_per_byte"] = (res["held_out"]["bits_per_byte"]
                                           - lab["bits_per_byte"])  # fmt: skip
    return res


def judge(model, tok, cond: Conditioning, n: int, cfg: float | None,  # noqa: ANN001
          kw: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """``n`` samples of every class (sampling keywords ``kw``; guidance ``cfg``, default the
    model's), judged as the digit asked for: :func:`jpeglm.eval.metrics.judge_requested`'s
    figures, with ``any_digit`` (recognised as some digit), ``per_class_samples`` and ``cfg``."""
    from jpeglm.eval.judge import default_judge
    from jpeglm.eval.metrics import judge_requested
    from jpeglm.inference.sample import generate

    gen = generate(model, tok, n=n, labels=["all"], cfg=cfg, conditioning=cond, **kw)
    images = [s.image for s in gen]
    return {
        **judge_requested(images, [int(s.label) for s in gen]),
        "any_digit": default_judge().score(images),
        "per_class_samples": n,
        "cfg": cond.cfg if cfg is None else float(cfg),
        "decodable": sum(s.clean for s in gen) / len(gen),
    }
