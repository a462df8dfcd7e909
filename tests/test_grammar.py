"""The scan automaton: accepts every canonical stream, rejects corruptions at the first bad
byte, agrees with its Python reference, with libjpeg and with the tolerant decoder; token
masks equal the byte automaton's verdict."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from jpeglm import _core, codec
from jpeglm.data import bundled as samples
from jpeglm.grammar import ScanAutomaton, TokenConstraint
from jpeglm.reference.grammar import ScanAutomatonReference

QUALITIES = (1, 5, 25, 50, 75, 95, 100)


def _streams(size: int = 256) -> list[bytes]:
    imgs = [codec.prepare(p, size) for p in samples.photo_paths()]
    imgs += [samples.synthetic(k, size) for k in samples.SYNTHETIC]
    return [codec.encode(im, quality=q, size=size) for im in imgs for q in QUALITIES]


STREAMS_64 = _streams(64)


def test_accepts_every_canonical_stream():
    for s in _streams(256):
        a = ScanAutomaton(256)
        assert a.feed(s) == -1 and a.done
        assert a.mcu == 255
    for s in STREAMS_64:
        assert ScanAutomaton(64).accepts(s)
    # after EOI nothing more; the header must be exact
    a = ScanAutomaton(64)
    assert a.feed(STREAMS_64[0] + b"\x00") == len(STREAMS_64[0])
    assert ScanAutomaton(256).feed(STREAMS_64[0]) < 59  # a 64x64 header is not a 256x256 one


def test_reference_agrees_byte_by_byte():
    rng = np.random.default_rng(0)
    a = ScanAutomaton(64)
    ref = ScanAutomatonReference(a.header, a.total_mcus)
    for s in STREAMS_64[::9]:
        b = bytearray(s)
        for _ in range(int(rng.integers(0, 3))):
            b[int(rng.integers(59, len(b)))] ^= int(rng.integers(1, 256))
        nat, st = ScanAutomaton(64), ref.initial()
        for i, byte in enumerate(b):
            allowed = nat.allowed_bytes()
            if i % 8 == 0 or i > len(b) - 20:  # the full 256-way comparison is slow in Python
                assert list(allowed) == ref.allowed_bytes(st), i
            ok_ref = ref.step(st, byte)
            ok_nat = nat.feed(bytes([byte])) == -1
            assert ok_ref == ok_nat == bool(allowed[byte])
            assert nat.phase == st.phase
            if not ok_ref:
                break


def test_corruptions_rejected_at_first_bad_byte_and_crosschecked():
    rng = np.random.default_rng(1)
    base = STREAMS_64[:: len(QUALITIES)]  # quality 1 of every image... and others below
    base += STREAMS_64[2 :: len(QUALITIES)]  # quality 25
    n_reject = 0
    for it in range(600):
        s = base[it % len(base)]
        b = bytearray(s)
        p = int(rng.integers(59, len(b)))
        b[p] ^= int(rng.integers(1, 256))
        data = bytes(b)
        a = ScanAutomaton(64)
        r = a.feed(data)
        try:
            codec.decode(data)
            libjpeg_clean = True
        except codec.JPEGError:
            libjpeg_clean = False
        valid = codec.mcu_validity(data)
        if r == -1:
            assert a.done
            assert libjpeg_clean  # accepted => libjpeg decodes it with no warning
            assert valid.all()
        else:
            n_reject += 1
            assert r >= p  # never before the damage: the prefix up to p is a real stream
            assert not valid.all() or data[p - 1] == 0xFF or b[p] == 0xFF or r == p
            # the prefix up to the rejected byte is still a legal prefix
            assert ScanAutomaton(64).feed(data[:r]) == -1
    assert n_reject > 200


def test_truncations_are_prefixes():
    s = STREAMS_64[10]
    for cut in range(0, len(s), 7):
        a = ScanAutomaton(64)
        assert a.feed(s[:cut]) == -1
        assert a.done == (cut == len(s))


def _toy_vocab() -> list[bytes]:
    """256 bytes + multi-byte pieces cut from real streams (markers, stuffing, scan data)."""
    rng = np.random.default_rng(5)
    pieces = {b"\xff\xd0", b"\xff\xd9", b"\xff\x00", b"\x00\xff", b"\xa2\x8a\x00\xff\xd1"}
    for s in STREAMS_64[:20]:
        for _ in range(5):
            i = int(rng.integers(0, len(s) - 4))
            pieces.add(s[i : i + int(rng.integers(2, 5))])
    return [bytes([i]) for i in range(256)] + sorted(pieces) + [b"", b"", b""]


def test_token_mask_equals_byte_automaton():
    vocab = _toy_vocab()
    eos = len(vocab) - 2
    tc = TokenConstraint(vocab, eos_id=eos, size=64)
    a = ScanAutomaton(64)
    ref = ScanAutomatonReference(a.header, a.total_mcus)
    streams = STREAMS_64[::17]
    tc.start(len(streams))
    states = [ref.initial() for _ in streams]
    # walk each stream token by token (greedy longest legal token of the true stream)
    pos = [0] * len(streams)
    for step in range(200):
        masks = tc.mask()
        chosen = []
        for i, s in enumerate(streams):
            if step % 3 == 0:  # the Python reference is slow; every third step suffices
                assert list(masks[i]) == ref.token_mask(states[i], vocab, eos)
            if pos[i] >= len(s):
                chosen.append(eos)
                continue
            cands = [t for t in range(len(vocab)) if vocab[t] and s.startswith(vocab[t], pos[i])]
            t = max(cands, key=lambda t: len(vocab[t]))
            assert masks[i, t]
            chosen.append(t)
        ok = tc.advance(chosen)
        assert ok.all()
        for i, t in enumerate(chosen):
            if vocab[t]:
                ref.feed(states[i], vocab[t])
                pos[i] += len(vocab[t])
    assert all(p > 0 for p in pos)


def test_token_walk_to_the_end_forces_eoi_then_eos():
    vocab = _toy_vocab()
    eos = len(vocab) - 2
    s = STREAMS_64[3]
    tc = TokenConstraint(vocab, eos_id=eos, size=64)
    tc.start(1, prompts=[s[:-2]])  # everything but EOI
    m = tc.mask()[0]
    allowed = {vocab[i] for i in np.flatnonzero(m)}
    assert allowed == {b"\xff"} | ({b"\xff\xd9"} & set(vocab))  # only the way to EOI
    assert tc.advance([vocab.index(b"\xff")]).all()
    assert tc.advance([vocab.index(b"\xd9")]).all()
    m = tc.mask()[0]
    assert np.flatnonzero(m).tolist() == [eos]
    assert tc.advance([eos]).all() and tc.phases() == ["done"]
    assert not tc.advance([0]).any()  # nothing after the end


def test_random_walks_always_decode():
    """Sampling uniformly among allowed tokens gives streams libjpeg decodes with no warning."""
    vocab = _toy_vocab()
    eos = len(vocab) - 2
    rng = np.random.default_rng(9)
    tc = TokenConstraint(vocab, eos_id=eos, size=32)
    n = 200
    tc.start(n)
    out = [bytearray() for _ in range(n)]
    finished = np.zeros(n, bool)
    for _ in range(4000):
        m = tc.mask()
        assert m.any(axis=1).all()  # never a dead end
        # bias towards EOB-ish short streams: prefer tokens in the first byte range randomly
        toks = [int(rng.choice(np.flatnonzero(row))) for row in m]
        assert tc.advance(toks).all()
        for i, t in enumerate(toks):
            if t == eos:
                finished[i] = True
            else:
                out[i] += vocab[t]
        if finished.all():
            break
    done = [bytes(o) for o, f in zip(out, finished) if f]
    assert len(done) == n  # every walk reached EOI and EOS
    for s in done:
        img = codec.decode(s)  # strict: raises on any libjpeg warning
        assert img.shape == (32, 32, 3)
        assert codec.mcu_validity(s).all()


def test_bad_arguments():
    with pytest.raises(ValueError):
        ScanAutomaton(100)
    with pytest.raises(TypeError):
        ScanAutomaton("256")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TokenConstraint([], eos_id=0)
    with pytest.raises(ValueError):
        TokenConstraint([b"a"], eos_id=5)
    tc = TokenConstraint([bytes([i]) for i in range(256)] + [b""], eos_id=256, size=16)
    with pytest.raises(RuntimeError):
        tc.mask()
    with pytest.raises(ValueError, match="prompt 0"):
        tc.start(1, prompts=[b"not a jpeg"])
    tc.start(2)
    with pytest.raises(ValueError):
        tc.advance([1, 2, 3])
    assert not tc.advance([-5, 10**12]).any()  # out-of-range ids are illegal, not a crash
    assert tc.phases() == ["reject", "reject"]  # ... and end the stream alike
    with pytest.raises(ValueError, match="longer than"):
        TokenConstraint([b"\x00" * 5000, b""], eos_id=1)
    a = ScanAutomaton(16)
    b = a.copy()
    a.feed(b"\xff\xd8")
    assert b.phase == "header" and copy.copy(b) is not None


def test_size_limit_is_the_codecs():
    """One limit: the grammar takes every size the codec takes (up to MAX_SIZE, the largest
    multiple of 16 libjpeg accepts) and refuses the rest with a ValueError that says so.
    Cheap: only 16-pixel-high grammars are built (their header comes from a grey encode)."""
    top = codec.MAX_SIZE
    assert top == _core.MAX_SIZE == 65488 and top % 16 == 0
    g = _core.ScanGrammar(top, 16)
    assert g.total_mcus == top // 16
    assert codec.header(g.header + b"\xff\xd9")["width"] == top
    for w, h in ((top + 16, 16), (16, top + 16), (65504, 16), (65520, 16)):
        with pytest.raises(ValueError, match="too large"):
            _core.ScanGrammar(w, h)
    for size in (top + 16, 65504, 65520):
        with pytest.raises(ValueError, match="too large"):
            ScanAutomaton(size)  # the codec's check, before any grammar is built
        with pytest.raises(ValueError, match="too large"):
            TokenConstraint([b"\x00", b""], eos_id=1, size=size)
        with pytest.raises(ValueError, match="too large"):
            codec.check_size(size)
    with pytest.raises(ValueError, match="multiples of 16"):
        _core.ScanGrammar(top + 8, 16)
    with pytest.raises(ValueError, match="multiple of 16"):
        ScanAutomaton(top + 8)
