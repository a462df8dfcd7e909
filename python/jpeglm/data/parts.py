"""Preparing on many machines: which part of the sources one machine takes, and the folders
of parts the trainer reads back as one dataset. No torch.

``jpeglm prepare SRC OUT --part I/N`` prepares a deterministic 1/N of the sources (a
:class:`Part`, :func:`parse_part`; without ``--part``, :func:`part_from_env` reads a slurm
array's or torchrun's variables) into ``OUT/part-0000I-of-0000N/`` (:attr:`Part.folder_name`),
each an ordinary prepared folder, resumable on its own. :func:`split` (by count) and
:func:`split_by_size` (by a size, e.g. bytes) cut a list into the N contiguous blocks.

The trainer's ``train_data`` / ``eval_data`` entries are expanded once by
:func:`expand_data_folders` (:func:`read_data_folders` also reads each folder's index, once):
a prepared folder stands for itself, a folder of parts for its part folders in part order
(:func:`part_folders`: all N present, finished, prepared alike), and a glob for the folders it
matches, in sorted order, each expanded the same way. The expanded folders are one dataset with
one epoch order (:class:`jpeglm.data.dataset.ShardDataset`).
"""

from __future__ import annotations

import glob
import os
import re
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from jpeglm._io import show
from jpeglm.data.index import INDEX, _read_index_file, check_ready, read_index

__all__ = [
    "PER_PART_CONFIG",
    "Part",
    "expand_data_folders",
    "parse_part",
    "part_folders",
    "part_from_env",
    "read_data_folders",
    "split",
    "split_by_size",
]

T = TypeVar("T")

#: the most parts a preparation can be cut into (five digits in the folder names)
MAX_PARTS = 99999
#: fields of an index's ``config`` that differ from part to part; all others must be equal
PER_PART_CONFIG = frozenset({"sources", "part"})
_PART_FOLDER = re.compile(r"part-(\d{5})-of-(\d{5})")
_PART_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Part:
    """Part ``index`` (from 0) of ``count``: which 1/``count`` of the sources a run prepares."""

    index: int
    count: int

    def __post_init__(self) -> None:
        ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (self.index, self.count))
        if not ints or not 0 <= self.index < self.count <= MAX_PARTS:
            raise ValueError(
                f"a part is I/N with 0 <= I < N <= {MAX_PARTS}, got {self.index!r}/{self.count!r}"
            )

    @property
    def folder_name(self) -> str:
        """The part's folder inside OUT: ``part-00000-of-00002``."""
        return f"part-{self.index:05d}-of-{self.count:05d}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_part(text: str) -> Part:
    """``"I/N"`` (``--part``) as a :class:`Part`; ValueError, one line, for anything else."""
    m = _PART_TEXT.fullmatch(text) if isinstance(text, str) else None
    if m is None or not 0 <= int(m[1]) < int(m[2]) <= MAX_PARTS:
        raise ValueError(
            f"--part must be I/N with 0 <= I < N <= {MAX_PARTS} (part I of N, e.g. 0/2), "
            f"got {text!r}"
        )
    return Part(int(m[1]), int(m[2]))


def part_from_env(environ: Mapping[str, str] = os.environ) -> Part | None:
    """The part this process prepares when ``--part`` is not given: a slurm array task's
    (``SLURM_ARRAY_TASK_ID`` minus ``SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``; the
    array's ids must be consecutive, ``--array=0-9`` or ``--array=1-10``), else torchrun's
    (``RANK`` of ``WORLD_SIZE``), else None (one part: everything). An empty variable counts as
    unset. Values that are not integers or do not fit together: ValueError naming them."""
    env = {k: v.strip() for k, v in environ.items() if isinstance(v, str) and v.strip()}
    if "SLURM_ARRAY_TASK_ID" in env:
        names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                 "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP")  # fmt: skip
        task, count, low, high, step = (_env_int(env, n, names[:2]) for n in names)
        if count is None:
            raise ValueError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: "
                             "give --part I/N")  # fmt: skip
        low = 0 if low is None else low
        if (step is not None and step != 1) or (high is not None and high - low + 1 != count):
            raise ValueError(
                f"the slurm array's task ids are not consecutive (SLURM_ARRAY_TASK_MIN={low}, "
                f"SLURM_ARRAY_TASK_MAX={high}, SLURM_ARRAY_TASK_STEP={step}, "
                f"SLURM_ARRAY_TASK_COUNT={count}): submit --array=0-{count - 1} (step 1), or "
                "give --part I/N"
            )
        index, what = task - low, f"SLURM_ARRAY_TASK_ID={task} (SLURM_ARRAY_TASK_MIN={low})"
        total = f"SLURM_ARRAY_TASK_COUNT={count}"
    elif "RANK" in env or "WORLD_SIZE" in env:
        index, count = (_env_int(env, n, ("RANK", "WORLD_SIZE")) for n in ("RANK", "WORLD_SIZE"))
        if index is None or count is None:
            raise ValueError("RANK and WORLD_SIZE must be set together (torchrun sets both), or "
                             "give --part I/N")  # fmt: skip
        what, total = f"RANK={index}", f"WORLD_SIZE={count}"
    else:
        return None
    if not 0 <= index < count <= MAX_PARTS:
        raise ValueError(f"{what} is not a part of {total} (0 <= I < N <= {MAX_PARTS} needed): "
                         "give --part I/N")  # fmt: skip
    return Part(index, count)


def _env_int(env: Mapping[str, str], name: str, pair: Sequence[str]) -> int | None:
    """Variable ``name`` as an integer (None when unset); ValueError naming it otherwise."""
    if name not in env:
        return None
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r} is not an integer ({' and '.join(pair)} give "
                         "the part of the sources this process prepares)") from None  # fmt: skip


def split(items: Sequence[T], part: Part) -> list[T]:
    """Part ``part`` of ``items``: block ``[i n // N, (i+1) n // N)``, so the N parts hold
    every item once, in order, and their sizes differ by at most one."""
    n = len(items)
    return list(items[part.index * n // part.count : (part.index + 1) * n // part.count])


def split_by_size(items: Sequence[T], part: Part, sizes: Sequence[int | float]) -> list[T]:
    """Part ``part`` of ``items`` balanced by ``sizes`` (one non-negative number per item, e.g.
    the bytes of each tar shard): contiguous blocks, each ending at the item boundary nearest
    to its share ``(i+1) / N`` of the total, so the N parts hold every item once, in order.
    Deterministic for the same sizes; all sizes zero: :func:`split` by count."""
    if len(sizes) != len(items):
        raise ValueError(f"{len(sizes)} sizes for {len(items)} items")
    if any(not s >= 0 for s in sizes):  # negative or NaN
        raise ValueError("sizes must be non-negative numbers")
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    total = prefix[-1]
    if not total:
        return split(items, part)

    def bound(k: int) -> int:
        if k == part.count:
            return len(items)
        target = total * k / part.count
        j = bisect_left(prefix, target)
        if j > 0 and target - prefix[j - 1] < prefix[j] - target:
            j -= 1
        return j

    return list(items[bound(part.index) : bound(part.index + 1)])


# ------------------------------------------------------------------------------ folders of parts


def _checked_parts(out: Path) -> list[tuple[Path, dict]]:
    """The part folders of ``out`` in part order with their indexes (see :func:`part_folders`)."""
    found: dict[int, set[int]] = {}
    try:
        names = sorted(p.name for p in out.iterdir() if p.is_dir())
    except FileNotFoundError:
        raise FileNotFoundError(f"{show(out)} does not exist") from None
    except NotADirectoryError:
        raise ValueError(f"{show(out)} is not a folder") from None
    for name in names:
        m = _PART_FOLDER.fullmatch(name)
        if m:
            found.setdefault(int(m[2]), set()).add(int(m[1]))
    if not found:
        raise ValueError(f"{show(out)} holds no part folder (part-NNNNN-of-NNNNN): prepare it "
                         "with `jpeglm prepare SRC OUT --part I/N`")  # fmt: skip
    if len(found) > 1:
        counts = " and ".join(f"of {n}" for n in sorted(found))
        raise ValueError(f"{show(out)} holds parts of different splits ({counts}): keep the "
                         "part folders of one --part I/N split")  # fmt: skip
    (count, indices), = found.items()  # fmt: skip
    beyond = sorted(i for i in indices if i >= count)
    if beyond:
        raise ValueError(f"{show(out)}: part-{beyond[0]:05d}-of-{count:05d} is not a part of "
                         f"{count} (I < N needed): remove it")  # fmt: skip
    result: list[tuple[Path, dict]] = []
    reference: tuple[str, dict] | None = None
    for i in range(count):
        part = Part(i, count)
        folder = out / part.folder_name
        hint = f"run `jpeglm prepare SRC {show(out)} --part {part}` (SRC and options as the others)"
        where = f"{show(out)}: part {part.index} of {count} ({part.folder_name})"
        if i not in indices:
            raise ValueError(f"{where} is missing: {hint}")
        if not (folder / INDEX).is_file():
            raise ValueError(f"{where} is not finished (no {INDEX}): {hint}")
        index = _read_index_file(folder / INDEX)
        if not index.get("complete"):
            raise ValueError(f"{where} is not finished: {hint}")
        shared = {k: v for k, v in index["config"].items() if k not in PER_PART_CONFIG}
        if reference is None:
            reference = (part.folder_name, shared)
        elif shared != reference[1]:
            key = sorted(k for k in {*shared, *reference[1]}
                         if shared.get(k) != reference[1].get(k))[0]  # fmt: skip
            raise ValueError(
                f"{show(out)}: its parts were prepared differently ({key}: "
                f"{reference[1].get(key)!r} in {reference[0]}, {shared.get(key)!r} in "
                f"{part.folder_name}): prepare every part with the same tokenizer and options"
            )
        result.append((folder, index))
    return result


def part_folders(out: str | os.PathLike) -> list[Path]:
    """The part folders of a prepared ``OUT`` (``part-00000-of-00002`` ...), in part order,
    checked: all N present with one N, each finished (its index ``complete``), all prepared
    with one configuration (the index ``config`` but :data:`PER_PART_CONFIG`). ValueError, one
    line naming the part and the command that makes it, otherwise."""
    return [folder for folder, _ in _checked_parts(Path(out))]


_GLOB_MAGIC = re.compile(r"[*?[]")


def _has_magic(entry: str) -> bool:
    return _GLOB_MAGIC.search(entry) is not None


def _expand(entries: Sequence[str | os.PathLike], key: str) -> list[tuple[Path, dict | None]]:
    """Each entry's folders, with the index when checking a folder of parts read it."""
    out: list[tuple[Path, dict | None]] = []
    for entry in entries:
        text = os.fspath(entry)
        path = Path(text)
        if not path.exists() and _has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text)) if Path(m).is_dir()]
            if not matches:
                raise ValueError(f"{key}: {show(text)} matches no folder")
            out += _expand(matches, key)
            continue
        if not path.exists():
            raise FileNotFoundError(f"{key}: {show(text)} does not exist")
        if not path.is_dir():
            raise ValueError(f"{key}: {show(text)} is not a folder (give prepared shard folders, "
                             "folders of parts or globs)")  # fmt: skip
        has_parts = any(_PART_FOLDER.fullmatch(p.name) and p.is_dir() for p in path.iterdir())
        if (path / INDEX).exists():
            if has_parts:
                raise ValueError(f"{key}: {show(text)} holds both an {INDEX} and part folders: "
                                 "give the prepared folders you mean")  # fmt: skip
            out.append((path, None))
        elif has_parts:
            try:
                out += _checked_parts(path)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from e
        else:
            raise ValueError(f"{key}: {show(text)} is neither a prepared folder (no {INDEX}) nor "
                             "a folder of parts (part-NNNNN-of-NNNNN): run `jpeglm prepare` "
                             "first")  # fmt: skip
    return out


def expand_data_folders(
    entries: Sequence[str | os.PathLike], key: str = "train_data"
) -> list[Path]:
    """The prepared folders ``entries`` stand for, in order: a prepared folder (it has an
    ``index.json``) itself, a folder of parts its part folders in part order (checked by
    :func:`part_folders`), a glob (``data/*/``, ``prep/part-*``; used when no such path exists)
    the folders it matches in sorted order, each expanded the same way. A glob that matches no
    folder, a path that does not exist or a folder that is neither: one line starting with
    ``key``."""
    return [folder for folder, _ in _expand(entries, key)]


def read_data_folders(
    entries: Sequence[str | os.PathLike], key: str = "train_data"
) -> tuple[list[Path], list[dict]]:
    """:func:`expand_data_folders` and the index of each folder (:func:`read_index`: complete,
    at least one sequence), each ``index.json`` read once."""
    pairs = _expand(entries, key)
    folders = [folder for folder, _ in pairs]
    indexes = []
    for folder, index in pairs:
        indexes.append(read_index(folder) if index is None else check_ready(folder, index))
    return folders, indexes
