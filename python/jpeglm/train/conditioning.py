"""The trainer's side of class conditioning (issue 33; the layout: :mod:`jpeglm.conditioning`).

Shards made by ``prepare --labels`` hold ``[BOS, COND, stream..., EOS]`` and name their classes
in the index (``config["labels"]``). Here: the classes every train and eval folder must agree
on (:func:`data_conditioning`), the model vocabulary they make (``V + C + 1``), the checks of
``init_from`` and of a resumed checkpoint against them, the COND dropout of classifier-free
guidance (:func:`drop_conditions`: each class COND replaced by the null id with probability
``cond_dropout``, drawn from a generator seeded by the run's seed, the step and the sequence's
place in the global batch -- never by the world size or the micro-batch split, so a resumed run
and a run on another number of ranks draw the same), the eval's bytes per predicted token, and
the ``conditioning`` a labelled run's record carries. Without labels none of this applies and
the trainer is exactly as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from jpeglm._io import show
from jpeglm.conditioning import Conditioning

if TYPE_CHECKING:
    from jpeglm.model import ModelArgs
    from jpeglm.train.config import TrainConfig

__all__ = [
    "bytes_per_token",
    "check_resumed",
    "data_conditioning",
    "drop_conditions",
    "drop_in_step",
    "init_args",
    "positions",
    "with_record",
]


def data_conditioning(
    folders: Sequence[tuple[str, Sequence[str | os.PathLike], Sequence[dict]]], base: int
) -> Conditioning | None:
    """The classes of the training data: ``folders`` are ``(key, folders, indexes)`` (train and
    eval). Every folder carries the same ``config["labels"]`` (names and tokenizer size; the
    tokenizer's size is ``base``) or none does; ValueError, one line, otherwise. None: no
    labels, an unconditional run."""
    seen: list[tuple[str, Conditioning | None]] = []
    for key, paths, indexes in folders:
        for f, index in zip(paths, indexes, strict=True):
            rec = index["config"].get("labels")
            where = f"{key}: {show(f)}/index.json"
            cond = None if rec is None else Conditioning.from_record(rec, f"{where}: labels")
            if cond is not None and cond.base != base:
                raise ValueError(
                    f"{where}: its labels were made for a tokenizer of {cond.base} ids, this one "
                    f"has {base}: prepare the folder again"
                )
            seen.append((f"{key} {show(f)}", cond))
    first_name, first = seen[0]
    for name, cond in seen[1:]:
        if (cond is None) != (first is None):
            labelled, plain = (first_name, name) if first is not None else (name, first_name)
            raise ValueError(
                f"{labelled} carries class labels (prepare --labels) but {plain} does not: train "
                "and evaluate on labelled folders only, or on unlabelled ones only"
            )
        if cond is not None and cond.names != first.names:  # type: ignore[union-attr]
            raise ValueError(
                f"{name} has other classes than {first_name} ({_names(cond)} vs "
                f"{_names(first)}): prepare them with the same labels"
            )
    return first


def _names(cond: Conditioning | None) -> str:
    if cond is None:
        return "none"
    shown = ", ".join(cond.names[:5]) + (" ..." if cond.classes > 5 else "")
    return f"{cond.classes} classes: {shown}"


def init_args(path: str | os.PathLike, vocab_size: int, cond: Conditioning | None) -> ModelArgs:
    """The architecture of ``init_from``, checked against the run's vocabulary: the tokenizer's
    for an unconditional run, ``V + C + 1`` for a labelled one (whose classes must also be those
    of the HF folder's record when it names any). An unconditional model of the tokenizer's
    ``V`` ids initialises a labelled run too: its vocabulary grows by the classes and the null
    id (fine-tuning a released model into a class-conditional one). ValueError, one line,
    otherwise."""
    from jpeglm.checkpoint.hf import hf_model_args

    if cond is None:
        return hf_model_args(path, vocab_size=vocab_size)
    args = hf_model_args(path)
    record = _record_of(Path(path))
    theirs = record.get("conditioning") if isinstance(record, dict) else None
    if theirs is None and args.vocab_size == cond.base:
        # an unconditional model of the same tokenizer: grown by the classes and the null id
        # (its embedding and output rows kept, the new rows initialised afresh)
        return dataclasses.replace(args, vocab_size=vocab_size)
    if args.vocab_size != vocab_size:
        what = (f"a conditional model of {_names(Conditioning.from_record(theirs))}"
                if theirs is not None else "an unconditional model")  # fmt: skip
        raise ValueError(
            f"init_from={show(path)} has vocab_size {args.vocab_size} ({what}) but this labelled "
            f"run needs {vocab_size} (the tokenizer's {cond.base} ids + {cond.classes} classes + "
            "the null class): initialise from a model with these classes, or train from scratch"
        )
    if theirs is not None:
        names = Conditioning.from_record(theirs, f"{show(path)}: conditioning").names
        if names != cond.names:
            raise ValueError(
                f"init_from={show(path)} was trained on other classes than train_data's "
                f"({_names(Conditioning.from_record(theirs))} vs {_names(cond)})"
            )
    return args


def _record_of(folder: Path) -> Any:
    from jpeglm.checkpoint.files import HF_METADATA, read_json

    path = folder / HF_METADATA
    return read_json(path, limit=1 << 20) if path.is_file() else None


def check_resumed(state: dict[str, Any], cond: Conditioning | None, where: str) -> None:
    """A resumed checkpoint (its ``train_state``) was trained on the same classes as this run's
    data (the model's shape is checked by :func:`jpeglm.train.run_folder.resume`: a vocabulary
    of another size never gets here). ValueError, one line, otherwise."""
    meta = state.get("metadata")
    rec = meta.get("conditioning") if isinstance(meta, dict) else None
    theirs = None if rec is None else Conditioning.from_record(rec, f"{where}: conditioning")
    if (theirs is None) != (cond is None) or (cond is not None and theirs.names != cond.names):
        raise ValueError(
            f"cannot resume from {where}: it was trained on {_names(theirs)}, train_data has "
            f"{_names(cond)}: resume on the checkpoint's data, or choose a new out"
        )


def positions(micro_index: int, micro: int, world: int, rank: int) -> list[int]:
    """The places in the step's global batch of the sequences of this rank's micro-batch
    ``micro_index``: rank ``r`` reads every ``world``-th sequence, so its ``j``-th of the step
    is the global batch's ``j * world + r`` -- the same sequence whatever the world size."""
    return [(micro_index * micro + i) * world + rank for i in range(micro)]


def _seed_of(seed: int, step: int, position: int) -> int:
    digest = hashlib.blake2b(f"jpeglm-cond/{seed}/{step}/{position}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def drop_conditions(
    x: torch.Tensor,
    cond: Conditioning,
    p: float,
    seed: int,
    step: int,
    places: Sequence[int],
) -> torch.Tensor:
    """``x`` (sequences, seq_len) with each class COND (ids ``[base, base + C)``: COND only
    ever follows BOS) replaced by the null id with probability ``p``. Row ``i`` draws from a
    generator seeded by ``(seed, step, places[i])`` (its place in the global batch,
    :func:`positions`), so the draw is exactly reproducible on resume and on any number of
    ranks. ``p == 0`` returns ``x`` itself."""
    if len(places) != x.shape[0]:
        raise ValueError(f"{len(places)} places for {x.shape[0]} sequences")
    if p == 0:
        return x
    is_class = (x >= cond.base) & (x < cond.null_id)
    rows = is_class.any(dim=1).nonzero().flatten().tolist()
    if not rows:
        return x
    u = torch.empty(x.shape, dtype=torch.float64)
    g = torch.Generator()
    for r in rows:
        g.manual_seed(_seed_of(seed, step, places[r]))
        u[r] = torch.rand(x.shape[1], generator=g, dtype=torch.float64)
    drop = is_class & (u.to(x.device) < p)
    return x.masked_fill(drop, cond.null_id)


def drop_in_step(
    batches: list[tuple[int, torch.Tensor]],
    cond: Conditioning,
    cfg: TrainConfig,
    step: int,
    world: int,
    rank: int,
) -> list[tuple[int, torch.Tensor]]:
    """A step's micro-batches ``(epoch, x)`` on this rank after :func:`drop_conditions` with
    ``cfg.cond_dropout`` (``step``: the steps done before this one)."""
    out = []
    for a, (e, x) in enumerate(batches):
        places = positions(a, x.shape[0], world, rank)
        out.append((e, drop_conditions(x, cond, cfg.cond_dropout, cfg.seed, step, places)))
    return out


def bytes_per_token(index: dict[str, Any], cond: Conditioning | None) -> float:
    """Stream bytes per predicted token of a prepared folder, for bits per byte from the mean
    loss. A labelled folder's tokens include one COND per image, which is no byte and carries
    no loss (the targets skip it): those are not counted."""
    tokens = index["tokens"] - (index["images"] if cond is not None else 0)
    return index["bytes"] / max(1, tokens)


def with_record(meta: dict[str, Any], cond: Conditioning | None, cfg: TrainConfig) -> dict:
    """The run's record (``jpeglm.json`` / a checkpoint's metadata) with, for a labelled run,
    its ``conditioning``: the classes, the tokenizer's size, ``cond_dropout`` and the default
    guidance scale (``guidance``). An unlabelled run's record is ``meta`` unchanged."""
    if cond is None:
        return meta
    rec = Conditioning(cond.names, cond.base, dropout=cfg.cond_dropout, cfg=cfg.guidance).record()
    return {**meta, "conditioning": rec}
