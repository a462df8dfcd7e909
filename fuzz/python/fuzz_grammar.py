"""atheris: ScanAutomaton.feed / allowed_bytes and TokenConstraint masks / advance on arbitrary
bytes. Checked: allowed_bytes agrees with feeding each byte; a mask agrees with advance."""

from __future__ import annotations

import sys

import atheris
import numpy as np
from _harness import corpus_args

from jpeglm import codec
from jpeglm.grammar import ScanAutomaton, TokenConstraint


def seeds() -> list[bytes]:
    img = np.full((16, 16, 3), 128, np.uint8)
    s = codec.encode(img, size=16)
    return [b"\x00" + s, b"\x01" + s[len(ScanAutomaton(16).header) :], b"\x02" + bytes(range(64))]


_AUTOMATA = {at_scan: ScanAutomaton(16, at_scan=at_scan) for at_scan in (False, True)}


def test_one(data: bytes) -> None:
    if not data:
        return
    a = _AUTOMATA[bool(data[0] & 1)].copy()
    body = data[1:200]
    for k, b in enumerate(body):
        allowed = a.allowed_bytes()
        ok = a.feed(bytes([b])) == -1
        assert ok == bool(allowed[b]), (k, b)
        if not ok:
            break
    if data[0] & 2:
        tokens = [bytes([i]) for i in range(256)] + [b"", body[:3] or b"x", body[3:5] or b"y"]
        tc = TokenConstraint(tokens, eos_id=256, size=16)
        tc.start(2, at_scan=True)
        for b in body[:20]:
            mask = tc.mask()
            picks = np.array([b % len(tokens), (b * 7) % len(tokens)])
            ok = tc.advance(picks)
            assert (ok == mask[np.arange(2), picks]).all()


def main() -> None:
    # instrument_all, not instrument_imports: jpeglm may come through the editable install's
    # custom loader, which instrument_imports does not see.
    atheris.instrument_all()
    atheris.Setup(corpus_args("grammar", seeds), test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.exit(main())
