"""The sampler's CPU kernels in ``_core`` (csrc/decode_kernels.h) against their references:
the packed small-batch linear vs ``x @ W.T`` and the cache attention vs softmax attention with
the bottom-right causal mask, in float64 numpy (no torch: this file also runs under ASan), for
every kernel this CPU runs (``JPEGLM_CPU_KERNELS`` picks a lesser one in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from jpeglm import _core

rng = np.random.default_rng(0)


def ref_linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64) @ w.astype(np.float64).T).astype(np.float32)


def linear(x: np.ndarray, w: np.ndarray, threads: int = 0) -> np.ndarray:
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    _core.linear_matmul(x, _core.linear_pack(w), out, threads)
    return out


def ref_attention(q, kc, vc, kv_len):  # noqa: ANN001, ANN201
    b, s, h, d = q.shape
    group = h // kc.shape[1]
    out = np.zeros(q.shape, np.float64)
    for bi in range(b):
        for hi in range(h):
            k = kc[bi, hi // group, :kv_len].astype(np.float64)
            v = vc[bi, hi // group, :kv_len].astype(np.float64)
            for i in range(s):
                n = kv_len - s + i + 1
                sc = k[:n] @ q[bi, i, hi].astype(np.float64) / np.sqrt(d)
                p = np.exp(sc - sc.max())
                out[bi, i, hi] = p @ v[:n] / p.sum()
    return out


def attention(q, kc, vc, kv_len, threads=0):  # noqa: ANN001, ANN201
    out = np.empty_like(q)
    _core.decode_attention(q, kc, vc, out, kv_len, q.shape[-1] ** -0.5, threads)
    return out


SHAPES = [(1, 3072, 512), (16, 1536, 512), (3, 33, 7), (17, 100, 1536), (9, 31, 64),
          (1, 1, 1), (40, 65, 3), (8, 32, 16)]  # fmt: skip


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_packed_linear_matches_reference(m: int, n: int, k: int) -> None:
    w = rng.standard_normal((n, k), dtype=np.float32)
    x = rng.standard_normal((m, k), dtype=np.float32)
    for threads in (1, 2, 0):
        np.testing.assert_allclose(linear(x, w, threads), ref_linear(x, w), rtol=1e-4, atol=1e-4)


def test_packed_layout() -> None:
    """Panel p holds W[32p + j, c] at [p, c, j]; the rows past n are zero."""
    w = rng.standard_normal((40, 5), dtype=np.float32)
    p = _core.linear_pack(w)
    assert p.shape == (2, 5, 32) and p.dtype == np.float32
    np.testing.assert_array_equal(p[0], w[:32].T)
    np.testing.assert_array_equal(p[1, :, :8], w[32:].T)
    assert not p[1, :, 8:].any()


def test_a_rows_result_does_not_depend_on_the_batch() -> None:
    """Bitwise: the sampler's prefill, jump-forward runs and one-token steps see one model."""
    w = rng.standard_normal((300, 512), dtype=np.float32)
    x = rng.standard_normal((23, 512), dtype=np.float32)
    whole = linear(x, w)
    for i in (0, 7, 22):
        assert np.array_equal(linear(x[i : i + 1], w)[0], whole[i])
    assert np.array_equal(linear(x[3:11], w), whole[3:11])


@pytest.mark.parametrize(
    "b,s,h,hkv,d,slots,kv_len",
    [(16, 1, 8, 8, 64, 176, 101), (2, 5, 4, 2, 32, 40, 40), (3, 7, 6, 3, 24, 50, 20),
     (1, 1, 8, 8, 64, 176, 1), (2, 3, 2, 1, 16, 8, 8), (1, 4, 4, 4, 5, 9, 6)],
)  # fmt: skip
def test_cache_attention_matches_reference(b, s, h, hkv, d, slots, kv_len) -> None:  # noqa: ANN001
    q = rng.standard_normal((b, s, h, d), dtype=np.float32)
    kc = rng.standard_normal((b + 1, hkv, slots, d), dtype=np.float32)
    vc = rng.standard_normal((b + 1, hkv, slots, d), dtype=np.float32)
    kc[:, :, kv_len:] = np.nan  # slots past kv_len must never be read
    vc[:, :, kv_len:] = np.nan
    for threads in (1, 2, 0):
        got = attention(q, kc, vc, kv_len, threads)
        np.testing.assert_allclose(got, ref_attention(q, kc, vc, kv_len), rtol=1e-4, atol=1e-5)


def test_every_kernel_of_this_cpu_agrees() -> None:
    """The AVX-512, AVX2 and portable kernels give the reference's results (each one this CPU
    can run, chosen with JPEGLM_CPU_KERNELS in a fresh process)."""
    code = (
        f"import numpy as np, sys; sys.path.insert(0, {os.path.dirname(__file__)!r});"
        "import test_decode_kernels as t;"
        "from jpeglm import _core; print(_core.linear_isa());"
        "[t.test_packed_linear_matches_reference(*s) for s in t.SHAPES];"
        "t.test_a_rows_result_does_not_depend_on_the_batch();"
        "t.test_cache_attention_matches_reference(2, 5, 4, 2, 32, 40, 40);"
        "t.test_cache_attention_matches_reference(1, 4, 4, 4, 5, 9, 6)"
    )
    seen = set()
    for want in ("avx512", "avx2", "generic"):
        env = dict(os.environ, JPEGLM_CPU_KERNELS=want)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        seen.add(r.stdout.split()[0])
    assert "generic" in seen and _core.linear_isa() in seen


def test_concurrent_callers_share_the_pool_safely() -> None:
    """Python threads calling at once (the GIL is released) each get their own right result."""
    w = rng.standard_normal((700, 256), dtype=np.float32)
    xs = [rng.standard_normal((4, 256), dtype=np.float32) for _ in range(6)]
    want = [ref_linear(x, w) for x in xs]
    packed = _core.linear_pack(w)
    errors: list[str] = []

    def work(i: int) -> None:
        out = np.empty((4, 700), np.float32)
        for _ in range(50):
            _core.linear_matmul(xs[i], packed, out, 2)
            if not np.allclose(out, want[i], rtol=1e-4, atol=1e-4):
                errors.append(f"thread {i}")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
def test_a_forked_child_gets_its_own_pool() -> None:
    w = rng.standard_normal((512, 128), dtype=np.float32)
    x = rng.standard_normal((2, 128), dtype=np.float32)
    linear(x, w, 2)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # child: the parent's workers do not exist here
        ok = np.allclose(linear(x, w, 2), ref_linear(x, w), rtol=1e-4, atol=1e-4)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_bad_arguments_raise_not_crash() -> None:
    w = rng.standard_normal((64, 16), dtype=np.float32)
    p = _core.linear_pack(w)
    x = rng.standard_normal((2, 16), dtype=np.float32)
    out = np.empty((2, 64), np.float32)
    with pytest.raises(TypeError, match="float32"):
        _core.linear_pack(w.astype(np.float64))
    with pytest.raises(ValueError, match="non-empty"):
        _core.linear_pack(np.empty((0, 16), np.float32))
    with pytest.raises(TypeError, match="float32"):
        _core.linear_matmul(x.astype(np.float16), p, out)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.linear_matmul(np.asfortranarray(rng.standard_normal((3, 16), dtype=np.float32)), p,
                            np.empty((3, 64), np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="packed must be"):
        _core.linear_matmul(x[:, :8].copy(), p, out)
    with pytest.raises(ValueError, match="packed must be"):
        _core.linear_matmul(x, p, np.empty((2, 100), np.float32))
    with pytest.raises(ValueError, match="rows"):
        _core.linear_matmul(x, p, np.empty((3, 64), np.float32))
    with pytest.raises(ValueError, match="dimensions"):
        _core.linear_matmul(x.ravel(), p, out)
    with pytest.raises(ValueError):  # read-only output
        ro = np.empty((2, 64), np.float32)
        ro.flags.writeable = False
        _core.linear_matmul(x, p, ro)
    q = rng.standard_normal((2, 1, 4, 8), dtype=np.float32)
    kc = np.zeros((2, 2, 10, 8), np.float32)
    o = np.empty_like(q)
    for kv_len in (0, 11, -5):
        with pytest.raises(ValueError, match="kv_len"):
            _core.decode_attention(q, kc, kc, o, kv_len, 0.5)
    with pytest.raises(ValueError, match="rows"):
        _core.decode_attention(q, kc[:1], kc[:1], o, 5, 0.5)
    with pytest.raises(ValueError, match="multiple"):
        _core.decode_attention(rng.standard_normal((2, 1, 3, 8), dtype=np.float32), kc, kc,
                               np.empty((2, 1, 3, 8), np.float32), 5, 0.5)  # fmt: skip
    with pytest.raises(ValueError, match="head dim"):
        _core.decode_attention(q, kc[..., :4].copy(), kc[..., :4].copy(), o, 5, 0.5)
    with pytest.raises(ValueError, match="same shape"):
        _core.decode_attention(q, kc, np.zeros((2, 2, 9, 8), np.float32), o, 5, 0.5)
    with pytest.raises(ValueError, match="alias"):
        _core.decode_attention(q, kc, kc, q, 5, 0.5)
    with pytest.raises(TypeError, match="float32"):
        _core.decode_attention(q, kc.astype(np.float64), kc, o, 5, 0.5)
