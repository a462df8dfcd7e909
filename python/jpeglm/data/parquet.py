"""Parquet files of images (pyarrow, the ``jpeglm[parquet]`` extra), read in record batches.

Two layouts are recognised without being told: Hugging Face ``datasets`` (an ``Image``
feature, named in the schema's ``huggingface`` metadata: a struct of ``bytes`` and ``path``;
a ``ClassLabel`` ``label`` column whose names are in the same metadata) and img2dataset's
(the image bytes in a ``jpg`` / ``png`` / ``webp`` / ``image`` binary column, a ``key``
column). Any other binary column, or a struct with a ``bytes`` field, can be named.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from jpeglm._io import parse_json, show
from jpeglm.data.sources import Source

__all__ = ["MAGIC", "BYTE_COLUMNS", "LABEL_COLUMN", "is_parquet", "image_column",
           "parquet_count", "parquet_labels", "parquet_sources"]  # fmt: skip

#: the 4 bytes a parquet file starts and ends with
MAGIC = b"PAR1"
#: img2dataset's image columns, in the order they are looked for
BYTE_COLUMNS = ("jpg", "png", "webp", "image")
#: the label column read when none is named (HF ``datasets``' ClassLabel, img2dataset's text)
LABEL_COLUMN = "label"
#: rows read at a time (a row is one image: a few MB at most at the paper's sizes)
BATCH_ROWS = 64


def _pyarrow():
    """pyarrow and pyarrow.parquet, or one line saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading parquet needs pyarrow: pip install 'jpeglm[parquet]'") from None
    return pa, pq


def is_parquet(path: str | Path) -> bool:
    """Whether the file starts and ends with the parquet magic bytes (read without pyarrow)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != MAGIC:
                return False
            f.seek(-4, 2)
            return f.read(4) == MAGIC
    except OSError:
        return False


def _features(schema) -> dict:
    """The ``datasets`` features in the schema's ``huggingface`` metadata ({} if none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        features = parse_json(raw, "parquet metadata")["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def _is_bytes(pa, t) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def image_column(schema, name: str, column: str | None = None) -> str:
    """The image column of an arrow ``schema`` (of file ``name``): ``column`` when given, else
    the ``datasets`` ``Image`` feature, else img2dataset's :data:`BYTE_COLUMNS`; a ValueError
    of one line listing the columns when there is none (or the named one is not bytes)."""
    pa, _ = _pyarrow()
    types = {f.name: f.type for f in schema}

    def usable(col: str) -> bool:
        t = types.get(col)
        if t is None:
            return False
        if pa.types.is_struct(t):
            return any(t.field(i).name == "bytes" and _is_bytes(pa, t.field(i).type)
                       for i in range(t.num_fields))  # fmt: skip
        return _is_bytes(pa, t)

    listed = ", ".join(f"{c} ({t})" for c, t in types.items())
    if column is not None:
        if not usable(column):
            why = "no such column" if column not in types else "not a column of image bytes"
            raise ValueError(f"{show(name)}: image column {column!r}: {why}; its columns: {listed}")
        return column
    for col, feature in _features(schema).items():
        if isinstance(feature, dict) and feature.get("_type") == "Image" and usable(col):
            return col
    for col in BYTE_COLUMNS:
        if usable(col):
            return col
    known = ", ".join(BYTE_COLUMNS)
    raise ValueError(
        f"{show(name)}: no image column (a datasets Image feature, or bytes in {known}; "
        f"else name one); its columns: {listed}"
    )


def _open(path: str | Path, name: str, problems: list[dict]):
    """The ``ParquetFile``, or None with a problem when it is not a readable parquet file."""
    _, pq = _pyarrow()
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - ArrowInvalid, OSError, ...: a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = f"not a readable parquet file ({type(e).__name__}: {first})"
        problems.append({"source": show(name), "error": why})
        return None


def parquet_count(
    path: str | Path, name: str, column: str | None = None, label_column: str | None = None
) -> int:
    """How many sources :func:`parquet_sources` gives: the footer's row count (0 for a file
    that is not a readable parquet file); a missing image column, or a missing ``label_column``
    when one is named, is its ValueError."""
    pf = _open(path, name, [])
    if pf is None:
        return 0
    col = image_column(pf.schema_arrow, name, column)
    _label_column(pf.schema_arrow, name, col, label_column)
    return pf.metadata.num_rows


def _label_column(schema, name: str, image_col: str, column: str | None) -> str | None:
    """The label column of a file: ``column`` when named (a ValueError of one line listing the
    columns when the file has none of that name), else :data:`LABEL_COLUMN` when there is one,
    else None (its images are unlabelled). Never the image column."""
    names = list(schema.names)
    if column is None:
        return LABEL_COLUMN if LABEL_COLUMN in names and image_col != LABEL_COLUMN else None
    if column not in names or column == image_col:
        why = "no such column" if column not in names else "it is the image column"
        listed = ", ".join(f"{f.name} ({f.type})" for f in schema)
        raise ValueError(f"{show(name)}: label column {column!r}: {why}; its columns: {listed}")
    return column


def _classes(schema, column: str | None) -> list | None:
    """The names of a ``datasets`` ClassLabel column (its cells are indices into them)."""
    feature = _features(schema).get(column or "", {})
    names = feature.get("names") if isinstance(feature, dict) else None
    return names if isinstance(names, list) else None


def parquet_sources(
    path: str | Path,
    name: str,
    problems: list[dict],
    column: str | None = None,
    label_column: str | None = None,
) -> Iterator[Source]:
    """The rows of a parquet file (reported as ``name``) as :class:`Source` items holding their
    bytes (``data``; ``b""`` for a null image, which then fails to decode and is reported), in
    file order, read :data:`BATCH_ROWS` rows at a time: named ``f"{name}:{key}"``, ``key`` the
    ``key`` column when there is one, else the row number; the label from ``label_column``
    (default: a ``label`` column, if any; a ``ClassLabel``'s index as its name). A file that is
    not readable parquet is a problem and gives nothing; damage part way through is a problem
    after the rows before it."""
    pa, _ = _pyarrow()
    pf = _open(path, name, problems)
    if pf is None:
        return
    schema = pf.schema_arrow
    col = image_column(schema, name, column)
    names = set(schema.names)
    key_col = "key" if "key" in names and col != "key" else None
    label_col = _label_column(schema, name, col, label_column)
    classes = _classes(schema, label_col)
    columns = list(dict.fromkeys(c for c in (col, key_col, label_col) if c is not None))
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            images = batch.column(col)
            if pa.types.is_struct(images.type):  # datasets' Image: its bytes, when not null
                nulls = images.is_null().to_pylist()
                data = [None if n else d for n, d in zip(nulls, images.field("bytes").to_pylist())]
            else:
                data = images.to_pylist()
            keys = batch.column(key_col).to_pylist() if key_col else [None] * len(data)
            labels = batch.column(label_col).to_pylist() if label_col else [None] * len(data)
            for d, k, lab in zip(data, keys, labels):
                key = str(row) if k is None else str(k)
                yield Source(f"{name}:{key}", str(path), data=d or b"",
                             label=_label(lab, classes))  # fmt: skip
                row += 1
    except (OSError, ValueError) as e:  # ArrowInvalid / ArrowIOError are these
        problems.append({"source": show(name),
                         "error": f"{type(e).__name__}: parquet file damaged after {row} rows "
                                  f"({e}); the rest is not read"})  # fmt: skip


def parquet_labels(
    path: str | Path, name: str, column: str | None = None, label_column: str | None = None
) -> list[str | None]:
    """The labels :func:`parquet_sources` gives the rows, reading the label column alone (the
    labels pass of ``prepare --labels``: cheap beside the images). Damage part way through
    ends the list there, as it ends the rows."""
    pf = _open(path, name, [])
    if pf is None:
        return []
    schema = pf.schema_arrow
    label_col = _label_column(schema, name, image_column(schema, name, column), label_column)
    if label_col is None:
        return [None] * pf.metadata.num_rows
    classes = _classes(schema, label_col)
    out: list[str | None] = []
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS * 64, columns=[label_col]):
            out += [_label(v, classes) for v in batch.column(label_col).to_pylist()]
    except (OSError, ValueError):  # reported when the rows are read
        pass
    return out


def _label(value, classes) -> str | None:
    """A ``label`` cell as text: a ClassLabel index as its name, a string as is."""
    if value is None:
        return None
    if isinstance(value, int) and isinstance(classes, list) and 0 <= value < len(classes):
        return str(classes[value])
    return str(value)
