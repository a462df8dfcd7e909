"""Class conditioning: the token layout of a class-conditional JPEG-LM (issue 33).

A conditional sequence is ``[BOS, COND, stream..., EOS]``: COND is one token after BOS naming
the image's class. With a tokenizer of ``V`` ids and ``C`` classes, class ``i`` is id ``V + i``
and "no condition" (the null class of classifier-free guidance) is ``V + C``; the tokenizer's
own ids never change, and the model's vocabulary is ``V + C + 1``. The trainer replaces COND by
the null id with probability ``dropout`` and puts no loss on predicting COND; at sampling a
guided step mixes the logits of the conditional and the null rows, ``u + s * (c - u)``.

:class:`Conditioning` is that layout: the class names, ``V``, the dropout and the default
guidance scale, as the shards' index (``config["labels"]``) and a model's record
(``jpeglm.json``: ``"conditioning"``) store them. Without labels nothing of this exists and
the JPEG-LM recipe is exactly as before. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Conditioning", "MAX_CLASSES"]

#: classes a model may have (ids stay below 65536 in uint16 shards with any tokenizer we make)
MAX_CLASSES = 4096


@dataclass(frozen=True)
class Conditioning:
    """The class layout of a conditional model or dataset (immutable, checked on creation).

    ``names``: the class names, class ``i`` is ``names[i]``; ``base``: the tokenizer's
    vocabulary size ``V`` (class ``i`` is id ``base + i``); ``dropout``: the probability the
    trainer replaces COND by the null id; ``cfg``: the default guidance scale (1 = off)."""

    names: tuple[str, ...]
    base: int
    dropout: float = 0.1
    cfg: float = 1.0
    _index: dict[str, int] = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        names = self.names
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise ValueError("conditioning names must be a list of class names")
        names = tuple(names)
        if not names:
            raise ValueError("conditioning needs at least one class")
        if len(names) > MAX_CLASSES:
            raise ValueError(f"{len(names)} classes exceed the limit of {MAX_CLASSES}")
        for n in names:
            if not isinstance(n, str) or not n or n.strip() != n or "\n" in n:
                raise ValueError(f"a class name must be a non-empty trimmed string, got {n!r}")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"class name {dup!r} given twice")
        if "all" in names:
            raise ValueError("'all' cannot be a class name (--label all means every class)")
        base = self.base
        if isinstance(base, bool) or not isinstance(base, int) or base < 1:
            raise ValueError(f"conditioning base (the tokenizer's size) must be >= 1, got {base!r}")
        for what, v, ok in (("dropout", self.dropout, lambda x: 0 <= x < 1),
                            ("cfg", self.cfg, lambda x: x >= 0)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"conditioning {what} must be a number, got {v!r}")
            if not ok(v):
                raise ValueError(f"conditioning {what} out of range: {v}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "cfg", float(self.cfg))
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})

    @property
    def classes(self) -> int:
        """``C``, the number of classes."""
        return len(self.names)

    @property
    def null_id(self) -> int:
        """The id of "no condition": ``V + C``."""
        return self.base + len(self.names)

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: ``V + C + 1``."""
        return self.base + len(self.names) + 1

    def id_of(self, name: str) -> int:
        """The COND id of class ``name``; ValueError naming the classes for an unknown one."""
        i = self._index.get(name)
        if i is None:
            shown = ", ".join(self.names[:20]) + (" ..." if len(self.names) > 20 else "")
            raise ValueError(f"unknown class {name!r} (the classes: {shown})")
        return self.base + i

    def is_cond(self, token: int) -> bool:
        """Whether ``token`` is a COND id (a class or the null id)."""
        return self.base <= token <= self.null_id

    def record(self) -> dict[str, Any]:
        """What a model's ``jpeglm.json`` and a shard index store."""
        return {"names": list(self.names), "base": self.base, "dropout": self.dropout,
                "cfg": self.cfg}  # fmt: skip

    @classmethod
    def from_record(cls, record: Any, where: str = "record") -> Conditioning:
        """Back from :meth:`record` (untrusted: one ValueError line naming ``where``)."""
        if not isinstance(record, dict) or not isinstance(record.get("names"), list):
            raise ValueError(f"{where}: conditioning must be an object with a 'names' list")
        try:
            return cls(tuple(record["names"]), record.get("base"),  # type: ignore[arg-type]
                       record.get("dropout", 0.1), record.get("cfg", 1.0))  # fmt: skip
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
