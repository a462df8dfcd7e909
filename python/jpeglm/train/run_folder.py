"""A run folder's bookkeeping: what the trainer reads and writes in ``OUT`` besides the training
itself. A fresh run's id, the resume from the newest readable checkpoint (the model's shape
checked against the checkpoint's), ``metrics.jsonl`` read back and cut to the resumed step
(never a step twice), the data record a checkpoint carries, the files a run claims
(:data:`RUN_FILES`), and the checks of ``init_from`` and of a ``resume=true`` with nothing to
resume."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from jpeglm._io import OUTPUTS_MANIFEST, claim_outputs, record_outputs, show
from jpeglm.inference.settings import SamplingSettings

if TYPE_CHECKING:
    from jpeglm.model import ModelArgs

__all__ = ["RUN_FILES", "read_metrics", "resume"]


def _run_id(rank: int) -> str:
    """A fresh run's id, the same on every rank (rank 0's, broadcast)."""
    import uuid

    ids = [uuid.uuid4().hex[:12] if rank == 0 else ""]
    if dist.is_initialized():
        dist.broadcast_object_list(ids, src=0)
    return ids[0]


def resume(
    checkpoints: list[Path],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    args: ModelArgs,
    rank: int,
) -> dict:
    """Load the newest readable checkpoint; an unreadable newest one is reported and the one
    before it taken (every rank reads the same files, and DCP fails on all ranks together)."""
    from jpeglm.checkpoint import dcp as ckpt

    errors = []
    for path in reversed(checkpoints):
        try:
            saved = ckpt.read_train_state(path)
            if saved.get("model_args") != dataclasses.asdict(args):
                raise ValueError(
                    f"cannot resume from {path}: the model's shape differs "
                    f"({_shape_difference(saved.get('model_args'), dataclasses.asdict(args))}): "
                    "resume with the checkpoint's model settings, or choose a new out"
                )
            state = ckpt.load_train_checkpoint(path, model, opt)
        except ValueError as e:
            if "the model's shape differs" in str(e) or "older jpeglm" in str(e):
                raise
            errors.append(str(e))
            continue
        if errors and rank == 0:
            print(f"jpeglm train: {errors[0]}; resuming from {path.name} instead", file=sys.stderr)
        return state
    raise ValueError(f"cannot resume: no readable checkpoint in {checkpoints[0].parent} "
                     f"({errors[0]})")  # fmt: skip


def _shape_difference(saved: object, now: dict) -> str:
    """The model settings a checkpoint and this run disagree on, both sides, for a message."""
    if not isinstance(saved, dict):
        return "the checkpoint records no model_args"
    keys = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    ck = ", ".join(f"{k}={saved.get(k)}" for k in keys)
    here = ", ".join(f"{k}={now.get(k)}" for k in keys)
    return f"checkpoint: {ck}; this run: {here}"


#: metrics.jsonl is read back (resume, loss.png) at most this large
_METRICS_LIMIT = 256 << 20


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (one JSON object per line, nesting bounded); a
    last line cut off by a kill (no newline) counts for nothing. ValueError naming the file and
    line otherwise."""
    from jpeglm._io import parse_json, show

    if path.stat().st_size > _METRICS_LIMIT:
        raise ValueError(f"{show(path)} is larger than {_METRICS_LIMIT} bytes: not a run's metrics")
    lines = path.read_bytes().split(b"\n")[:-1]  # the last piece has no newline: unfinished
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = parse_json(line, f"{show(path)} line {i}")
        if not isinstance(row, dict) or not isinstance(row.get("step", 0), int):
            raise ValueError(f"{show(path)} line {i} is not a metrics row (an object with a step)")
        rows.append(row)
    return rows


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only the records of the steps up to the resumed checkpoint (the later ones are done
    again: never a step twice), and no line a kill cut off."""
    if not path.is_file():
        return
    rows = read_metrics(path)
    keep = [r for r in rows if r.get("step", 0) <= step]
    text = "".join(json.dumps(r) + "\n" for r in keep)
    if len(keep) != len(rows) or path.read_text(encoding="utf-8", errors="replace") != text:
        from jpeglm._io import atomic_write_text

        atomic_write_text(path, text)


def _metadata(index: dict, tok, seq_len: int) -> dict:
    """What a checkpoint says about the data it was trained on (the self-describing record
    that sampling reads): image size, quality, sequence length, special ids, fingerprint."""
    c = index["config"]
    return {
        "format": "jpeglm-model",
        "version": 1,
        "image_size": c.get("size"),
        "quality": c.get("quality"),
        "seq_len": seq_len,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "tokenizer_fingerprint": c.get("tokenizer"),
        "bytes_per_token": index["bytes"] / max(1, index["tokens"]),
        "tokens_per_image": index["tokens"] / max(1, index["images"]),
        "sampling": SamplingSettings().record(),  # the defaults: a model records its own
        "kind": c.get("kind", "image"),
        **({"video": c["video"]} if c.get("kind") == "video" else {}),
    }


#: the files a run writes into its folder besides its checkpoints (step_N, kept by run id) and
#: tb/ (new event files only): claimed before the run (a user's file of one of these names is
#: refused) and listed in OUT/.jpeglm-outputs once in place
RUN_FILES = ("metrics.jsonl", "loss.png", "final")


def _check_init_from(path: Path) -> None:
    """``init_from`` names an HF folder; a trainer checkpoint or a run folder gets the command
    that makes one."""
    from jpeglm.checkpoint.files import CHECKPOINT_STATE

    if (path / CHECKPOINT_STATE).is_file() or (path / ".metadata").is_file():
        raise ValueError(
            f"init_from={show(path)} is a trainer checkpoint, not an HF folder: make one with "
            f"`jpeglm export {show(path)} DEST` and pass init_from=DEST (or continue its run "
            "with resume=true)"
        )
    if (path / "config.json").exists():
        return
    if (path / "final" / "config.json").is_file():
        raise ValueError(
            f"init_from={show(path)} is a run folder: its HF folder is {show(path / 'final')}"
        )
    from jpeglm.checkpoint.dcp import list_checkpoints

    if list_checkpoints(path):
        raise ValueError(
            f"init_from={show(path)} is a run folder: make an HF folder of its newest "
            f"checkpoint with `jpeglm export {show(path)} DEST` and pass init_from=DEST"
        )


def _nothing_to_resume(out: Path) -> str | None:
    """``resume=true`` in a folder without a complete checkpoint starts at step 1 (the first
    launch of a preemptible job, or one killed before its first checkpoint); when a run was
    there (a ``.tmp_step_N`` a kill cut off, its ``metrics.jsonl``) that is said in one line,
    and its rows are dropped (they are done again: never a step twice)."""
    torn = sorted(p.name for p in out.glob(".tmp_step_*"))
    if not torn and not (out / "metrics.jsonl").is_file():
        return None
    what = f"only {torn[-1]}, cut off while being written" if torn else "only its metrics.jsonl"
    return (
        f"{show(out)} holds no complete checkpoint to resume ({what}): starting at step 1 "
        "(the rows of metrics.jsonl are done again)"
    )


def _claim_run_files(out: Path, legacy: bool) -> None:
    """A user's file in the way of :data:`RUN_FILES` (``loss.png``, a ``final/`` of their own)
    is refused before any work. ``legacy``: a run being resumed in a folder without the output
    manifest was written by an older jpeglm, and its files are the run's."""
    if legacy and not (out / OUTPUTS_MANIFEST).exists():
        record_outputs(out / n for n in RUN_FILES)
    claim_outputs(out, RUN_FILES)
