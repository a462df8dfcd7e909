"""``ShardDataset``: a torch ``IterableDataset`` over the shards :func:`jpeglm.data.prepare.prepare`
writes -- memory-mapped, sequences shuffled deterministically per epoch from a seed, split
across distributed ranks and data-loader workers without overlap.

The only data module that needs torch: preparing data (:mod:`jpeglm.data.prepare`) never
imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from jpeglm.data.parts import read_data_folders

__all__ = ["ShardDataset"]


def _sequence_table(
    folders: Sequence[str | os.PathLike], indexes: Sequence[dict]
) -> tuple[list[np.ndarray], np.ndarray]:
    arrays, table = [], []
    for folder, index in zip(folders, indexes, strict=True):
        for s in index["shards"]:
            if s["sequences"] == 0:
                continue
            path = Path(folder) / s["file"]
            try:  # the trainer checked every shard first (jpeglm.data.index.check_shard_files)
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as e:  # numpy's words would suggest allow_pickle
                raise ValueError(
                    f"{path} is not a readable .npy shard ({type(e).__name__}): prepare the "
                    "folder again"
                ) from e
            if arr.dtype != np.uint16 or arr.ndim != 2:
                raise ValueError(f"{folder}/{s['file']}: not a uint16 (sequences, seq_len) shard")
            table += [(len(arrays), r) for r in range(arr.shape[0])]
            arrays.append(arr)
    return arrays, np.asarray(table, dtype=np.int64).reshape(-1, 2)


class ShardDataset(IterableDataset):
    """Sequences of the shards in ``folders`` as int64 tensors of ``seq_len`` tokens.

    Deterministic given ``seed`` and the epoch (:meth:`set_epoch`); rank ``r`` of ``world``
    gets every ``world``-th sequence of the shuffled order (the order is truncated to a
    multiple of ``world`` so ranks see equal counts), and data-loader workers split a
    rank's share the same way. ``start`` skips that many of the rank's sequences (resume).
    ``indexes``: the folders' indexes when the caller has read them already (the trainer reads
    each ``index.json`` once per start); otherwise ``folders`` are expanded (a folder of
    ``prepare --part`` parts, a glob: :func:`jpeglm.data.parts.expand_data_folders`) and each
    index is read here, once.
    """

    def __init__(
        self,
        folders: str | os.PathLike | Sequence[str | os.PathLike],
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        indexes: Sequence[dict] | None = None,
    ) -> None:
        if isinstance(folders, (str, os.PathLike)):
            folders = [folders]
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.folders = list(folders)
        if indexes is None:  # folders of parts and globs too (the trainer expands them itself)
            self.folders, indexes = read_data_folders(self.folders, "ShardDataset")
        elif len(indexes) != len(self.folders):
            raise ValueError(f"{len(indexes)} indexes for {len(self.folders)} folders")
        self.arrays, self.table = _sequence_table(self.folders, indexes)
        self.config = indexes[0]["config"]
        for f, index in zip(self.folders[1:], indexes[1:]):
            if index["config"]["tokenizer"] != self.config["tokenizer"]:
                raise ValueError(f"{f} was prepared with another tokenizer")
        self.seq_len = int(self.arrays[0].shape[1])
        self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """This rank's sequence indices for the current epoch."""
        n = len(self.table) - len(self.table) % self.world
        idx = np.arange(len(self.table))
        if self.shuffle:
            idx = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.table))
        return idx[:n][self.rank :: self.world]

    def __len__(self) -> int:
        return len(self.table) // self.world

    def __iter__(self) -> Iterator[torch.Tensor]:
        mine = self.order()[self.start :]
        info = get_worker_info()
        if info is not None:
            mine = mine[info.id :: info.num_workers]
        for i in mine:
            a, r = self.table[i]
            yield torch.from_numpy(self.arrays[a][r].astype(np.int64))
