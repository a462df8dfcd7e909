"""Progress of a long ``prepare``: images/s, tokens/s, skipped sources and an ETA -- a bar on
a terminal (tqdm), a plain line every :data:`LOG_EVERY` seconds in a log -- and the run's
figures for ``report.json``."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["LOG_EVERY", "Progress"]

#: seconds between the plain progress lines written to a log (not a terminal)
LOG_EVERY = 30.0


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Counts of a run of ``total`` sources (``unit``: images or clips), shown as they grow.

    ``update`` after each chunk made; ``resumed`` for a chunk a resumed run keeps (counted in
    the position, not in the rates). A context manager: closing ends the bar."""

    def __init__(
        self,
        total: int,
        unit: str = "images",
        part: object | None = None,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.unit, self.part = total, unit, part
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = self.kept = self.tokens = self.skipped = self.sources = 0
        self.resumed_sources = 0
        self.start = self._last_line = time.monotonic()
        self._bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            desc = "prepare" if part is None else f"prepare {part}"
            self._bar = tqdm(total=total, desc=desc, unit="img", file=self.stream)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def resumed(self, n: int, entry: dict) -> None:
        self.done += n
        self.resumed_sources += n
        if self._bar is not None:
            self._bar.update(n)

    def update(self, n: int, entry: dict, bad: int) -> None:
        """``n`` sources read into a shard ``entry`` (its images and tokens), ``bad`` of them
        skipped."""
        self.done += n
        self.sources += n
        self.kept += entry["images"]
        self.tokens += entry["tokens"]
        self.skipped += bad
        if not self.enabled:
            return
        rates = self.rates()
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"{rates['tokens_per_s'] / 1e3:.0f}k tok/s, {self.skipped} skipped", refresh=False
            )
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= LOG_EVERY or self.done >= self.total:
            self._last_line = now
            print(self.line(), file=self.stream, flush=True)

    def rates(self) -> dict:
        seconds = max(time.monotonic() - self.start, 1e-9)
        return {
            "seconds": round(seconds, 3),
            "images_per_s": self.sources / seconds,
            "tokens_per_s": self.tokens / seconds,
        }

    def eta(self) -> float | None:
        """Seconds left at the rate so far (None before any source was read)."""
        r = self.rates()["images_per_s"]
        return (self.total - self.done) / r if r > 0 else None

    def line(self) -> str:
        """One plain progress line (what a log gets)."""
        r = self.rates()
        eta = self.eta()
        pct = 100.0 * self.done / self.total if self.total else 100.0
        who = "prepare" if self.part is None else f"prepare part {self.part}"
        return (
            f"{who}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%), "
            f"{r['images_per_s']:.1f} {self.unit}/s, {r['tokens_per_s']:,.0f} tokens/s, "
            f"{self.skipped} skipped, ETA {_duration(eta) if eta is not None else '?'}"
        )

    def report(self) -> dict:
        """The run's figures for ``report.json`` (this run only; a resumed run counts the
        sources it read itself, and says how many it kept from before)."""
        r = self.rates()
        out = {
            "part": None if self.part is None else str(self.part),
            "sources": self.total,
            "read": self.sources,
            "resumed": self.resumed_sources,
            "images": self.kept,
            "tokens": self.tokens,
            "skipped": self.skipped,
            "seconds": r["seconds"],
            "images_per_s": round(r["images_per_s"], 2),
            "tokens_per_s": round(r["tokens_per_s"], 1),
        }
        return out
