"""The canonical scan automaton in plain Python: slow, readable, the reference for
``jpeglm._core.ScanGrammar`` (tests compare the two byte by byte).

The stream is: the fixed header; for each MCU six blocks (Y00 Y01 Y10 Y11 Cb Cr), each a DC
symbol (category s, then s bits) and AC symbols ((run, size) then size bits; ZRL = 16 zeros;
EOB = the rest are zeros) coded with the standard Huffman tables; 1-bits up to the next byte
boundary; RSTn (n = MCU index mod 8) between MCUs and EOI after the last. A data byte 0xFF is
followed by a stuffed 0x00. The state after each byte says what may come next.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from jpeglm.reference import jpeg as R

__all__ = ["ScanAutomatonReference", "State"]

# Code tables as {(code, length): symbol}, for DC/AC x luma/chroma.
_TABLES = {
    (False, True): {v: k for k, v in R.DC_LUMA.items()},
    (False, False): {v: k for k, v in R.AC_LUMA.items()},
    (True, True): {v: k for k, v in R.DC_CHROMA.items()},
    (True, False): {v: k for k, v in R.AC_CHROMA.items()},
}
# Every proper prefix of a code, per table, with the symbols it can still become.
_PREFIXES: dict[tuple[bool, bool], dict[tuple[int, int], list[int]]] = {}
for _key, _t in _TABLES.items():
    _PREFIXES[_key] = {}
    for (_code, _length), _sym in _t.items():
        for _n in range(1, _length):
            _PREFIXES[_key].setdefault((_code >> (_length - _n), _n), []).append(_sym)


def _legal(sym: int, k: int) -> bool:
    """Can AC symbol ``sym`` appear at coefficient position ``k``?"""
    run, size = sym >> 4, sym & 15
    if size:
        return k + run <= 63
    return sym == 0x00 or (sym == 0xF0 and k + 16 <= 64)


@dataclass
class State:
    phase: str = "header"  # header | scan | marker | marker_code | done | reject
    header_pos: int = 0
    mcu: int = 0
    block: int = 0
    k: int = 0  # next coefficient position, 0 = DC
    code: int = 0  # bits of the partial Huffman code
    code_len: int = 0
    extra: int = 0  # magnitude bits still owed
    stuff: bool = False  # a 0x00 is owed after a data 0xFF


class ScanAutomatonReference:
    def __init__(self, header: bytes, total_mcus: int) -> None:
        self.header = header
        self.total_mcus = total_mcus

    def initial(self, at_scan: bool = False) -> State:
        return State(phase="scan", header_pos=len(self.header)) if at_scan else State()

    # -- bits ---------------------------------------------------------------------------------

    def _bit(self, s: State, bit: int) -> bool | None:
        """Consume one bit of an MCU. Returns None when illegal, True when the MCU is complete."""
        if s.extra:
            s.extra -= 1
            return self._coefficient_done(s) if s.extra == 0 else False
        s.code, s.code_len = (s.code << 1) | bit, s.code_len + 1
        key = (s.block >= 4, s.k == 0)
        sym = _TABLES[key].get((s.code, s.code_len))
        if sym is None:  # a partial code: live only if some symbol below it is legal here
            below = _PREFIXES[key].get((s.code, s.code_len), [])
            return False if s.k == 0 and below or any(_legal(x, s.k) for x in below) else None
        s.code, s.code_len = 0, 0
        if s.k == 0:  # DC category
            s.k, s.extra = 1, sym
            return self._coefficient_done(s) if sym == 0 else False
        run, size = sym >> 4, sym & 15
        if size == 0:
            if run == 0:  # EOB
                s.k = 64
            elif run == 15 and s.k + 16 <= 64:  # ZRL
                s.k += 16
            else:
                return None
            return self._coefficient_done(s)
        if s.k + run > 63:
            return None
        s.k += run + 1
        s.extra = size
        return False

    @staticmethod
    def _coefficient_done(s: State) -> bool:
        if s.k < 64:
            return False
        s.k = 0
        s.block += 1
        return s.block == 6

    # -- bytes --------------------------------------------------------------------------------

    def step(self, s: State, byte: int) -> bool:
        ok = self._step(s, byte)
        if not ok:
            s.phase = "reject"
        return ok

    def _step(self, s: State, byte: int) -> bool:
        if s.phase == "header":
            if byte != self.header[s.header_pos]:
                return False
            s.header_pos += 1
            if s.header_pos == len(self.header):
                s.phase = "scan"
            return True
        if s.phase in ("scan", "marker") and s.stuff:
            s.stuff = False
            return byte == 0x00
        if s.phase == "scan":
            done = False
            for i in range(7, -1, -1):
                bit = (byte >> i) & 1
                if done:
                    if not bit:  # padding must be 1-bits
                        return False
                    continue
                r = self._bit(s, bit)
                if r is None:
                    return False
                done = r
            s.stuff = byte == 0xFF
            if done:
                s.phase, s.block, s.k = "marker", 0, 0
            return True
        if s.phase == "marker":
            if byte != 0xFF:
                return False
            s.phase = "marker_code"
            return True
        if s.phase == "marker_code":
            if s.mcu == self.total_mcus - 1:
                if byte != 0xD9:
                    return False
                s.phase = "done"
                return True
            if byte != 0xD0 + s.mcu % 8:
                return False
            s.mcu += 1
            s.phase = "scan"
            return True
        return False  # done or reject: nothing more is legal

    def feed(self, s: State, data: bytes) -> int:
        """-1 when every byte is accepted, else the index of the first rejected byte."""
        for i, b in enumerate(data):
            if not self.step(s, b):
                return i
        return -1

    def allowed_bytes(self, s: State) -> list[bool]:
        return [self.step(copy.copy(s), b) for b in range(256)]

    def token_mask(self, s: State, tokens: list[bytes], eos_id: int) -> list[bool]:
        """A token is allowed when all of its bytes are accepted in sequence; EOS only (and
        alone) once the stream is complete; other special (empty) tokens never."""
        if s.phase == "done":
            return [i == eos_id for i in range(len(tokens))]
        out = []
        for t in tokens:
            st = copy.copy(s)
            out.append(bool(t) and self.feed(st, t) == -1)
        return out
