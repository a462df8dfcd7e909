"""Class labels of a prepared dataset (``prepare --labels``, issue 33). No torch.

Each image's label is what its source gives (:mod:`jpeglm.data.units`: a class folder, a
webdataset ``.cls`` member, a parquet label column, a ``.jsonl`` list's ``label``), trimmed
(:func:`clean_label`; an empty one is no label). The class names are the ones given
(``--label-names``), else the distinct labels of ALL the run's source units sorted
(:func:`sort_names`: numerically when every name is an integer, so ``"2" < "10"``), so that
every ``--part`` agrees on them. They make the :class:`~jpeglm.conditioning.Conditioning` of
the shards (:func:`shard_conditioning`), whose record is the index's ``config["labels"]``
(:func:`index_conditioning` reads it back); each image is packed ``BOS COND tokens EOS``, COND
its class's id or the null id for an image without a label. An image whose label is not one
of the given names is skipped and listed in ``report.json`` (never packed unconditioned).
The index's ``label_counts`` ({name: images packed}, :data:`NO_LABEL`: those without a label)
is the sum of its shard entries' (:func:`add_counts`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jpeglm._io import show
from jpeglm.conditioning import Conditioning
from jpeglm.data.units import Unit, unit_labels

__all__ = [
    "NO_LABEL",
    "UINT16_IDS",
    "add_counts",
    "clean_label",
    "distinct_labels",
    "index_conditioning",
    "parse_label_names",
    "shard_conditioning",
    "sort_names",
]

#: the key of ``label_counts`` counting the images without a label (not a class name)
NO_LABEL = "(none)"
#: the ids a uint16 shard can hold
UINT16_IDS = 65536
_INTEGER = re.compile(r"-?\d+")


def clean_label(label: Any) -> str | None:
    """A source's label as a class name: its text trimmed; None for none or an empty one."""
    if label is None:
        return None
    text = str(label).strip()
    return text or None


def sort_names(labels: Iterable[str | None]) -> list[str]:
    """The distinct labels (None left out), sorted: numerically when every one is an integer
    (``"2"`` before ``"10"``), else by text."""
    names = {n for n in labels if n is not None}
    if names and all(_INTEGER.fullmatch(n) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def distinct_labels(
    units: Sequence[Unit],
    suffixes: set[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> set[str]:
    """The distinct labels (cleaned) of the samples of ``units``
    (:func:`jpeglm.data.units.unit_labels`: one unit at a time, no image read)."""
    found: set[str] = set()
    for u in units:
        found.update(x for x in map(clean_label, unit_labels(u, suffixes, image_column,
                                                             label_column)) if x)  # fmt: skip
    return found


def shard_conditioning(names: Sequence[str], vocab_size: int) -> Conditioning:
    """The conditioning of shards with these class names over a tokenizer of ``vocab_size``
    ids: a ValueError of one line when the names are not usable (empty, untrimmed, twice,
    ``"all"``, :data:`NO_LABEL`) or the ids would not fit uint16 shards."""
    if isinstance(names, str):
        raise ValueError("label names must be a list of class names, not one string")
    names = list(names)
    if not names:
        raise ValueError(
            "--labels: no image has a label (folders: root/<class>/image; webdataset: a .cls "
            "member; parquet: a label column; .jsonl: a 'label')"
        )
    if NO_LABEL in names:
        raise ValueError(f"{NO_LABEL!r} cannot be a class name (index.json counts the images "
                         "without a label under it)")  # fmt: skip
    try:
        cond = Conditioning(tuple(names), base=vocab_size)
    except ValueError as e:
        raise ValueError(f"label names: {e}") from None
    if cond.vocab_size > UINT16_IDS:
        raise ValueError(
            f"{cond.classes} classes over a tokenizer of {vocab_size} ids need "
            f"{cond.vocab_size} ids, more than the {UINT16_IDS} uint16 shards hold"
        )
    return cond


def parse_label_names(text: str) -> list[str]:
    """``--label-names``: a comma-separated list (``cat,dog``), or ``@FILE`` with one name per
    line (blank lines ignored); each name trimmed. A missing file: FileNotFoundError."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise FileNotFoundError(f"--label-names: no such file: {show(path)}")
        items = path.read_text(encoding="utf-8").splitlines()
        return [x.strip() for x in items if x.strip()]
    return [x.strip() for x in text.split(",")]


def add_counts(entries: Iterable[Mapping[str, Any]], names: Sequence[str]) -> dict[str, int]:
    """The ``label_counts`` of an index: each class's images packed (every class, in class
    order, 0 for none) and :data:`NO_LABEL`'s, summed over the shard entries' counts."""
    total = dict.fromkeys([*names, NO_LABEL], 0)
    for entry in entries:
        for name, n in (entry.get("label_counts") or {}).items():
            total[name] = total.get(name, 0) + n
    return total


def index_conditioning(index: Mapping[str, Any], where: str = "index.json") -> Conditioning | None:
    """The conditioning a prepared folder's shards were made with (``config["labels"]``), None
    for shards without labels; a ValueError naming ``where`` for a record that is not one. Its
    ``vocab_size`` is what every shard id is below (the trainer's check of the shards)."""
    record = index.get("config", {}).get("labels")
    if record is None:
        return None
    return Conditioning.from_record(record, f"{where} config labels")
