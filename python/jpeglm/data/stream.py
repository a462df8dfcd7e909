"""The sources of a dataset as one numbered sequence, read chunk by chunk.

:class:`Stream` takes the source units of :func:`jpeglm.data.sources.find_units` (image files,
tar shards, parquet files), counts each unit's sources once (:func:`~jpeglm.data.sources.
unit_count`: a tar's member headers, a parquet footer), and hands out chunk ``c`` -- sources
``c * n .. (c + 1) * n - 1`` -- by streaming the units it spans
(:func:`~jpeglm.data.sources.unit_sources`): only one unit's listing is held at a time, never
the whole dataset's. Reading chunks in order continues one open iterator; another chunk (a
resumed run, the carry of a removed shard) skips whole units by their counts. With
``labels``, the counting pass also gathers the distinct labels of the units (``prepare
--labels``: a tar's ``.cls`` members are read with its headers, a parquet file's label column
alone).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from jpeglm.data.labels import clean_label, distinct_labels
from jpeglm.data.sources import Source
from jpeglm.data.units import Unit, unit_count, unit_sources

__all__ = ["Stream"]


class Stream:
    """The sources of ``units`` in order (``suffixes`` / ``image_column`` / ``label_column`` as
    :func:`~jpeglm.data.units.unit_sources`'). ``problems``: what listing the units met
    (``{"source", "error"}`` records, as ``report.json``'s: a damaged tar shard). ``labels``:
    the distinct labels (cleaned, :func:`~jpeglm.data.labels.clean_label`) of the units'
    samples, gathered while counting when ``labels`` is set (else empty)."""

    def __init__(
        self,
        units: Sequence[Unit],
        suffixes: set[str] | None,
        image_column: str | None,
        label_column: str | None = None,
        labels: bool = False,
    ) -> None:
        self.units = list(units)
        self.suffixes, self.image_column, self.label_column = suffixes, image_column, label_column
        self.problems: list[dict] = []
        self.labels: set[str] = set()
        # a tar's listing is its count (and meets its damage now, so that report.json lists
        # it first, as a resumed run's does); a parquet file's count is in its footer
        self.counts = []
        for u in self.units:
            if u.kind == "tar":
                n = 0
                for s in unit_sources(u, self.problems, suffixes, image_column):
                    n += 1
                    if labels and (name := clean_label(s.label)):
                        self.labels.add(name)
            else:
                n = unit_count(u, suffixes, image_column, label_column)
                if labels:
                    self.labels |= distinct_labels([u], suffixes, image_column, label_column)
            self.counts.append(n)
        self.total = sum(self.counts)
        self._it: Iterator[Source] | None = None
        self._pos = -1

    def _from(self, start: int, problems: list[dict]) -> Iterator[Source]:
        """The sources from the ``start``-th on, whole units before it skipped by count."""
        for unit, n in zip(self.units, self.counts):
            if start >= n:
                start -= n
                continue
            it = unit_sources(unit, problems, self.suffixes, self.image_column, self.label_column)
            if start:
                it = itertools.islice(it, start, None)
                start = 0
            yield from it

    def chunk(self, c: int, n: int) -> list[Source]:
        """Sources ``c * n .. (c + 1) * n - 1`` (fewer at the end)."""
        start = c * n
        if self._it is None or self._pos != start:  # (problems: met while counting)
            self._it, self._pos = self._from(start, []), start
        out = list(itertools.islice(self._it, n))
        self._pos += len(out)
        return out

    def names(self) -> Iterator[str]:
        """Every source's name, in order (the units listed again, one at a time)."""
        return (s.name for s in self._from(0, []))
