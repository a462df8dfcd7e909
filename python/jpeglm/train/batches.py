"""What the trainer feeds the model: the prepared shard folders checked against the tokenizer
(:func:`check_shards`), endless micro-batches of sequences (:func:`micro_batches`), their
next-token targets (:func:`targets_of`: no loss on padding, nor on a labelled run's COND), and
where the stream stands after a step in terms that survive a new world size
(:func:`data_position`), so that a run resumes on the very next sequence.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from jpeglm.conditioning import Conditioning
from jpeglm.data.dataset import ShardDataset
from jpeglm.data.index import check_shard_files, read_index

if TYPE_CHECKING:
    from jpeglm.train.config import TrainConfig

__all__ = ["check_shards", "data_position", "epoch_sequences", "micro_batches", "targets_of"]


def check_shards(
    folders: Sequence[str | os.PathLike],
    fingerprint: str,
    tokenizer: str,
    key: str,
    vocab_size: int | None = None,
    indexes: Sequence[dict] | None = None,
) -> int:
    """Every folder prepared with ``tokenizer`` and one sequence length; returns it. With
    ``vocab_size``, every shard file is checked too (:func:`jpeglm.data.index.check_shard_files`:
    its header's shape against the index, whole, its ids below ``vocab_size``) -- before the
    run folder is touched. ``indexes``: the folders' indexes, if already read."""
    lengths = {}
    if indexes is None:
        indexes = [read_index(f) for f in folders]
    for f, index in zip(folders, indexes, strict=True):
        config = index["config"]
        if config.get("tokenizer") != fingerprint:
            raise ValueError(f"{key}: {f} was prepared with another tokenizer than {tokenizer}")
        seq_len = config.get("seq_len")
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
            raise ValueError(f"{key}: {f}/index.json gives no usable seq_len ({seq_len!r})")
        lengths[f] = seq_len
        if vocab_size is not None:
            try:
                check_shard_files(f, index, vocab_size)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from e
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{f}: {n}" for f, n in lengths.items())
        raise ValueError(f"{key}: the folders have different sequence lengths ({detail})")
    return next(iter(lengths.values()))


def micro_batches(
    ds: ShardDataset, micro: int, start_epoch: int, skip: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Endless micro-batches of (micro, seq_len) tokens; resumes at (epoch, skip sequences)."""
    epoch = start_epoch
    while True:
        ds.set_epoch(epoch)
        ds.start = skip
        buf = []
        for seq in ds:
            buf.append(seq)
            if len(buf) == micro:
                yield epoch, torch.stack(buf)
                buf = []
        epoch, skip = epoch + 1, 0


def targets_of(
    x: torch.Tensor, pad_id: int | None, cond: Conditioning | tuple[int, int] | None = None
) -> torch.Tensor:
    """Next-token targets of a batch of sequences; padding (the dataset's last, partial
    sequence is padded by ``prepare``) is ignored by the loss (-100). ``cond``: a labelled
    run's :class:`~jpeglm.conditioning.Conditioning` (or the id range ``(first, last)``,
    inclusive): COND -- a class or the null id -- is given, never predicted, so it carries no
    loss either (-100)."""
    targets = x[:, 1:]
    if pad_id is not None:
        targets = targets.masked_fill(targets == pad_id, -100)
    if cond is not None:
        lo, hi = (cond.base, cond.null_id) if isinstance(cond, Conditioning) else cond
        targets = targets.masked_fill((targets >= lo) & (targets <= hi), -100)
    return targets


# ------------------------------------------------------------------------------ data position


def epoch_sequences(per_rank: int, micro: int, world: int) -> int:
    """Sequences one epoch feeds the model over all ranks: each rank's share cut to whole
    micro-batches (:func:`micro_batches` drops the rest)."""
    return per_rank // micro * micro * world


def data_position(state: dict, cfg: TrainConfig, per_rank: int, micro: int, world: int) -> dict:
    """``(epoch, skip)`` for this rank after the checkpointed step. Step ``s`` consumes the
    global sequences ``[s B, (s+1) B)`` of the epoch order whatever the world size (rank ``r``
    takes every world-th one), so a checkpoint resumes exactly on another world size when the
    global batch is the same, an epoch holds as many sequences, and the position in the epoch
    is a whole number of micro-batches on every rank. Otherwise: ``ValueError``, one line."""
    e_new = epoch_sequences(per_rank, micro, world)
    if state["batch_size"] != cfg.batch_size:
        raise ValueError(
            f"cannot resume: the checkpoint was trained with batch_size {state['batch_size']}, "
            f"the config says {cfg.batch_size}"
        )
    if state["epoch_sequences"] != e_new:
        raise ValueError(
            f"cannot resume exactly on {world} rank(s) with micro_batch_size {micro}: an epoch "
            f"would hold {e_new} sequences instead of {state['epoch_sequences']}; "
            f"{_resume_hint(state, world, micro)}"
        )
    consumed = state["step"] * cfg.batch_size
    epoch, offset = divmod(consumed, e_new)
    if offset % (world * micro):
        raise ValueError(
            f"cannot resume exactly on {world} rank(s) with micro_batch_size {micro}: step "
            f"{state['step']} ends mid-micro-batch; {_resume_hint(state, world, micro)}"
        )
    return {"epoch": epoch, "skip": offset // world}


def _resume_hint(state: dict, world: int, micro: int) -> str:
    """What to change to resume exactly: the checkpoint's settings that differ from this run's
    (never the current setting again)."""
    changes = []
    if state.get("world") != world:
        changes.append(f"{state.get('world')} rank(s)")
    if state.get("micro_batch_size") != micro:
        changes.append(f"micro_batch_size={state.get('micro_batch_size')}")
    if not changes:  # the same settings cannot disagree; a checkpoint of another dataset can
        return "the checkpoint was made on other train_data"
    return "resume with " + " and ".join(changes) + " (as the checkpoint was written)"
