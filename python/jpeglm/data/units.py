"""Source units: the files a dataset is split by into parts (``prepare --part``), and their
samples, read one unit at a time.

:func:`find_units` lists what any number of SRC arguments name -- folders, ``.txt`` and
``.jsonl`` lists, tar archives (webdataset shards), parquet files, brace patterns and globs --
as :class:`Unit` items (one per file: an image file, a tar shard, a parquet file) without
opening the shards; :func:`unit_sources` gives one unit's samples as
:class:`~jpeglm.data.sources.Source` items, lazily; :func:`unit_count` counts them cheaply and
:func:`unit_labels` lists their labels cheaply (``prepare --labels``).

Labels: a sample's label is what its source gives -- a webdataset ``.cls`` member, a parquet
label column, a ``.jsonl`` list's ``label`` -- and, for an image file found under a folder SRC,
the ImageFolder convention: the first path component below the folder (``root/<class>/x.jpg``
-> ``"<class>"``; an image directly in the folder has none). Labels never change the units'
names or order; only ``prepare --labels`` reads them.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from jpeglm._io import parse_json, show
from jpeglm.data import parquet
from jpeglm.data.sources import IMAGE_SUFFIXES, TAR_SUFFIXES, Source
from jpeglm.data.webdataset import (
    expand_braces,
    has_braces,
    is_tar_name,
    pattern_root,
    shard_sources,
)

__all__ = ["Unit", "find_units", "unit_sources", "unit_count", "unit_labels", "folder_label"]

KINDS = ("file", "tar", "parquet")


@dataclass(frozen=True)
class Unit:
    """One source FILE, the unit a dataset is split by into parts."""

    kind: str  # "file" (one image file) | "tar" | "parquet"
    path: str  # the file on disk
    name: str  # how its samples are named and reported (relative to the SRC folder)
    label: str | None = None  # a .jsonl list's label, or the class folder of a folder's image


def _kind(name: str) -> str:
    """A unit's kind from its file name: parquet, tar, else one image file."""
    low = name.lower()
    return "parquet" if low.endswith(".parquet") else "tar" if is_tar_name(low) else "file"


def _folder_units(folder: Path, suffixes: set[str]) -> list[Unit]:
    """A folder's image files, tar archives and parquet files, recursively, sorted by path. A
    parquet file beside a tar archive of the same stem (``00000.parquet`` beside
    ``00000.tar``) is img2dataset's metadata of that shard, not images: it is left out."""
    out = []
    for f in sorted(f for f in folder.rglob("*") if f.is_file()):
        low = f.name.lower()
        if f.suffix.lower() in suffixes:
            kind = "file"
        elif is_tar_name(low):
            kind = "tar"
        elif low.endswith(".parquet") and not f.with_suffix(".tar").is_file():
            kind = "parquet"
        else:
            continue
        name = str(f.relative_to(folder))
        out.append(Unit(kind, str(f), name, folder_label(name) if kind == "file" else None))
    return out


def folder_label(name: str) -> str | None:
    """The ImageFolder label of an image named ``name`` relative to its folder SRC: its first
    path component (``cat/x.jpg`` -> ``"cat"``, ``cat/young/x.jpg`` -> ``"cat"``), None for an
    image directly in the folder."""
    parts = Path(name).parts
    return parts[0] if len(parts) > 1 else None


def _list_units(p: Path, problems: list[dict]) -> list[Unit]:
    """The units of a ``.txt`` list (one path per line) or a ``.jsonl`` list (``{"path":
    ..., "label": ...}`` per line): relative paths against the list's folder, named as
    written; a ``.jsonl`` line that cannot be read is a problem."""
    text = p.read_bytes().decode("utf-8", "surrogateescape")
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        label = None
        if p.suffix.lower() == ".jsonl":
            try:  # untrusted: nesting bounded, never a RecursionError
                row = parse_json(line, f"{show(p)} line {i}")
            except ValueError as e:
                problems.append({"source": f"{show(p)} line {i}", "error": str(e)})
                continue
            path = row.get("path") if isinstance(row, dict) else None
            label = row.get("label") if isinstance(row, dict) else None
            if not isinstance(path, str) or not path:
                why = 'expected {"path": "...", "label": ...}'
                problems.append({"source": f"{show(p)} line {i}", "error": why})
                continue
            if isinstance(label, bool) or not isinstance(label, (str, int, type(None))):
                why = f"label must be a string or an integer, got {json.dumps(label)}"
                problems.append({"source": f"{show(p)} line {i}", "error": why})
                continue
            line, label = path, (None if label is None else str(label))
        full = line if os.path.isabs(line) else str(p.parent / line)
        out.append(Unit(_kind(line), full, line, label))
    return out


def _pattern_units(src: str, problems: list[dict], suffixes: set[str]) -> list[Unit]:
    """The files a brace pattern and/or glob names (tar, parquet, image files), named
    relative to :func:`~jpeglm.data.webdataset.pattern_root`. A brace name that is missing, or
    a glob matching nothing, is a problem."""
    root = pattern_root(src)
    out = []
    for name in expand_braces(src):
        if glob.has_magic(name):
            found = sorted(f for f in glob.glob(name, recursive=True) if os.path.isfile(f))
            found = [f for f in found if _kind(f) != "file" or Path(f).suffix.lower() in suffixes]
            if not found:
                problems.append({"source": show(name), "error": "the pattern matches no tar, "
                                 "parquet or image file"})  # fmt: skip
        elif os.path.isfile(name):
            found = [name]
        else:
            why = f"no such file (named by the pattern {show(src)})"
            problems.append({"source": show(name), "error": why})
            found = []
        out += [Unit(_kind(f), f, os.path.relpath(f, root)) for f in found]
    return out


def _one_file(p: Path, suffixes: set[str]) -> Unit:
    """A SRC naming one file: a parquet file, an image, a tar archive (checked: one line if
    it is not what its name says)."""
    if p.suffix.lower() == ".parquet":
        if not parquet.is_parquet(p):
            raise ValueError(f"{show(p)}: not a parquet file (no PAR1 magic bytes)")
        return Unit("parquet", str(p), p.name)
    if p.suffix.lower() in suffixes:
        return Unit("file", str(p), p.name)
    if tarfile.is_tarfile(p):
        return Unit("tar", str(p), p.name)
    if p.suffix.lower() in TAR_SUFFIXES or is_tar_name(p.name):
        raise ValueError(f"{show(p)}: not a readable tar archive (truncated or corrupt?)")
    raise ValueError(f"{show(p)}: expected a folder, a .txt or .jsonl list, a tar archive, a "
                     "parquet file or an image")  # fmt: skip


def find_units(
    srcs: Sequence[str | os.PathLike], suffixes: set[str] | None = None
) -> tuple[list[Unit], list[dict]]:
    """The source units of every SRC, in order, and the problems met listing them.

    A SRC is a folder (its image files -> file units, its tar archives -> tar units, its
    ``.parquet`` files -> parquet units; recursively, sorted), a ``.txt`` list (one path per
    line), a ``.jsonl`` list (``{"path": ..., "label": ...}`` per line; relative paths against
    the list's folder), a tar archive, a ``.parquet`` file, an image file, a brace pattern
    (``shards-{00000..00009}.tar``, ``{a,b}``; zero padding kept; several braces) or a glob
    (``data/*.tar``, ``**``) of tar / parquet files. Units are named relative to their folder
    (a pattern's: its leading components without pattern characters).

    Problems (``{"source", "error"}`` records): non-UTF-8 names, unreadable list lines, a
    pattern naming a missing file. A SRC that does not exist is a FileNotFoundError, no unit
    at all a ValueError. A file named twice is listed once (the first time). Tar members are
    not listed here (:func:`unit_sources` does, one unit at a time)."""
    suffixes = IMAGE_SUFFIXES if suffixes is None else suffixes
    problems: list[dict] = []
    units: list[Unit] = []
    seen: set[str] = set()
    for src in srcs:
        p = Path(src)
        if p.is_dir():
            found = _folder_units(p, suffixes)
            if not found:
                problems.append({"source": show(p), "error": "no images, tar or parquet files"})
        elif p.is_file() and p.suffix.lower() in (".txt", ".jsonl"):
            found = _list_units(p, problems)
        elif p.is_file():
            found = [_one_file(p, suffixes)]
        elif not p.exists() and (has_braces(str(src)) or glob.has_magic(str(src))):
            found = _pattern_units(str(src), problems, suffixes)
        else:
            raise FileNotFoundError(f"no such folder, list, archive or file: {show(p)}")
        for u in found:
            try:
                u.name.encode("utf-8")
            except UnicodeEncodeError:
                problems.append({"source": show(u.name), "error": "file name is not valid UTF-8"})
                continue
            key = os.path.realpath(u.path)
            if key not in seen:
                seen.add(key)
                units.append(u)
    if not units:
        why = f" ({problems[0]['source']}: {problems[0]['error']})" if problems else ""
        raise ValueError(f"no images found in {', '.join(show(s) for s in srcs)}{why}")
    return units, problems


def unit_sources(
    unit: Unit,
    problems: list[dict],
    suffixes: set[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> Iterator[Source]:
    """The samples of one unit, lazily, in a deterministic order; the problems met reading
    the unit are appended to ``problems`` as they are met.

    - file: one :class:`~jpeglm.data.sources.Source`, labelled with the unit's label;
    - tar: the webdataset samples holding an image, sorted by key
      (:func:`~jpeglm.data.webdataset.shard_sources`: named ``f"{unit.name}:{member}"``,
      labelled by their ``.cls`` member); only this unit's headers are listed;
    - parquet: the rows in file order, read in record batches, holding their bytes
      (:func:`~jpeglm.data.parquet.parquet_sources`: named ``f"{unit.name}:{key}"``); the
      image column from ``image_column``, the ``datasets`` Image feature or img2dataset's
      byte columns, else a ValueError of one line listing the columns; the label from
      ``label_column`` (default: a ``label`` column, if any).

    A corrupt image is a Source that fails to decode (reported by whoever decodes it).
    """
    if unit.kind == "file":
        yield Source(unit.name, unit.path, label=unit.label)
    elif unit.kind == "tar":
        for s in shard_sources(unit.path, unit.name, problems, suffixes):
            yield s if s.label is not None or unit.label is None else _labelled(s, unit.label)
    elif unit.kind == "parquet":
        rows = parquet.parquet_sources(unit.path, unit.name, problems, image_column, label_column)
        for s in rows:
            yield s if s.label is not None or unit.label is None else _labelled(s, unit.label)
    else:
        raise ValueError(f"unknown unit kind {unit.kind!r} (expected one of {', '.join(KINDS)})")


def _labelled(s: Source, label: str) -> Source:
    """``s`` with the label of its list line (its own source gave none)."""
    return Source(s.name, s.path, s.member, s.info, s.data, label)


def unit_count(
    unit: Unit,
    suffixes: set[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> int:
    """How many sources :func:`unit_sources` gives for ``unit``, cheaply: 1 for a file, the
    header listing of a tar (labels not read), the footer's row count of a parquet file (a
    file damaged part way through gives fewer: then the problem says so; its image column and
    a named ``label_column`` are checked)."""
    if unit.kind == "file":
        return 1
    if unit.kind == "tar":
        return len(shard_sources(unit.path, unit.name, [], suffixes, labels=False))
    if unit.kind == "parquet":
        return parquet.parquet_count(unit.path, unit.name, image_column, label_column)
    raise ValueError(f"unknown unit kind {unit.kind!r} (expected one of {', '.join(KINDS)})")


def unit_labels(
    unit: Unit,
    suffixes: set[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> list[str | None]:
    """The labels of :func:`unit_sources`' samples of ``unit``, cheaply: a file's own, a tar
    shard's ``.cls`` members (small reads beside its headers), a parquet file's label column
    alone (:func:`~jpeglm.data.parquet.parquet_labels`); a sample without a label of its own
    takes its unit's (a ``.jsonl`` line's). Problems are not reported here (the samples'
    reading reports them)."""
    if unit.kind == "file":
        return [unit.label]
    if unit.kind == "tar":
        return [s.label for s in unit_sources(unit, [], suffixes)]
    if unit.kind == "parquet":
        got = parquet.parquet_labels(unit.path, unit.name, image_column, label_column)
        return [unit.label if lab is None else lab for lab in got]
    raise ValueError(f"unknown unit kind {unit.kind!r} (expected one of {', '.join(KINDS)})")
