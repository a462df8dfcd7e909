"""The canonical codec against its reference (Pillow) and on bad input."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jpeglm import _core, codec
from jpeglm.data import bundled as samples

COLOR_PHOTOS = [n for n in samples.PHOTOS if n not in ("camera", "coins")]


def pillow_stream(arr: np.ndarray, quality: int = 25, streamtype: int = 2) -> bytes:
    """The reference: Pillow's canonical save of an already prepared image."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(
        buf,
        "JPEG",
        quality=quality,
        subsampling="4:2:0",
        streamtype=streamtype,
        restart_marker_blocks=1,
    )
    return buf.getvalue()


def pillow_prepare(path, size: int = 256) -> np.ndarray:
    """Reference preprocessing (torchvision's resized_crop: crop, then resize the square).

    Not ``resize(box=...)``: that filters across the box edge with outside pixels."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(im.crop(box).resize((size, size), Image.BILINEAR))


def pillow_decode(full: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(full)).convert("RGB"))


@pytest.fixture(scope="module")
def prepared() -> dict[str, np.ndarray]:
    out = {name: codec.prepare(samples.photo_path(name)) for name in samples.PHOTOS}
    for kind in samples.SYNTHETIC:
        out[kind] = samples.synthetic(kind)
    return out


# ------------------------------------------------------------------------------------------------
# Preprocessing


@pytest.mark.parametrize("name", samples.PHOTOS)
def test_prepare_matches_reference(name):
    path = samples.photo_path(name)
    got = codec.prepare(path)
    assert got.shape == (256, 256, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, pillow_prepare(path))


def test_prepare_input_kinds_agree():
    path = samples.photo_path("coffee")
    ref = codec.prepare(path)
    im = Image.open(path)
    np.testing.assert_array_equal(codec.prepare(str(path)), ref)
    np.testing.assert_array_equal(codec.prepare(im), ref)
    np.testing.assert_array_equal(codec.prepare(np.asarray(im.convert("RGB"))), ref)
    np.testing.assert_array_equal(codec.prepare(path.read_bytes()), ref)
    # Grayscale: HxW arrays and L images become RGB with equal channels.
    g = codec.prepare(samples.photo_path("camera"))
    assert g.shape == (256, 256, 3)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    np.testing.assert_array_equal(
        codec.prepare(np.asarray(Image.open(samples.photo_path("camera")))), g
    )


def test_prepare_is_a_center_crop():
    # A wide image: a centred square of one colour between bands of another.
    arr = np.zeros((64, 160, 3), np.uint8)
    arr[:, :48] = 255
    arr[:, 48:112] = (10, 200, 30)
    arr[:, 112:] = 255
    out = codec.prepare(arr, size=64)
    assert (out == (10, 200, 30)).all()
    # Odd margins round down (offset (161 - 64) // 2 = 48): still only the centre colour.
    arr2 = np.zeros((64, 161, 3), np.uint8)
    arr2[:, 48:112] = (1, 2, 3)
    arr2[:, :48] = arr2[:, 112:] = 250
    assert (codec.prepare(arr2, size=64) == (1, 2, 3)).all()


# ------------------------------------------------------------------------------------------------
# Byte identity


@pytest.mark.parametrize("quality", [1, 5, 10, 25, 50, 75, 90, 95, 100])
def test_encode_byte_identical_to_pillow(prepared, quality):
    for name, arr in prepared.items():
        assert codec.encode(arr, quality=quality) == pillow_stream(arr, quality), name


def test_encode_every_quality(prepared):
    arr = prepared["astronaut"]
    for q in range(1, 101):
        assert codec.encode(arr, quality=q) == pillow_stream(arr, q), q


@pytest.mark.parametrize("size", [16, 32, 48, 64, 128, 240, 512])
def test_encode_sizes(size):
    path = samples.photo_path("chelsea")
    arr = codec.prepare(path, size=size)
    assert arr.shape == (size, size, 3)
    assert codec.encode(path, size=size) == pillow_stream(arr)
    assert codec.encode(arr, size=size) == pillow_stream(arr)


def test_encode_non_contiguous_rows():
    big = samples.synthetic("gradient", 320)
    view = big[10:266, 20:276]  # rows strided, pixels dense
    assert not view.flags.c_contiguous
    assert codec.encode(view) == pillow_stream(np.ascontiguousarray(view))


def test_tables_match_pillow_streamtype_1(prepared):
    for q in (1, 25, 50, 100):
        t = codec.tables(q)
        assert t == pillow_stream(prepared["flat"], q, streamtype=1)
    t = codec.tables(25)
    assert len(t) == 574 and t[:2] == b"\xff\xd8" and t[-2:] == b"\xff\xd9"


def test_canonical_structure(prepared):
    headers = set()
    for name, arr in prepared.items():
        s = codec.encode(arr)
        headers.add(s[:59])
        assert s[:2] == b"\xff\xd8" and s[-2:] == b"\xff\xd9"
        h = codec.header(s)
        assert h["has_tables"] is False and h["restart_interval"] == 1
        assert h["scan_offset"] == 59 and (h["width"], h["height"]) == (256, 256)
        scan = s[59:-2]
        markers = [
            scan[i + 1] for i in range(len(scan) - 1) if scan[i] == 0xFF and scan[i + 1] != 0
        ]
        assert len(markers) == 255, name
        assert markers == [0xD0 + (i % 8) for i in range(255)], name
        assert markers.count(0xD7) == 31
        assert b"\xff\xdb" not in s[:59] and b"\xff\xc4" not in s[:59]  # no DQT, no DHT
    assert len(headers) == 1  # the fixed 59-byte header


def test_with_tables_is_a_complete_jfif(prepared):
    arr = prepared["coffee"]
    s = codec.encode(arr)
    full = codec.with_tables(s)
    assert len(full) == len(s) + 570
    assert codec.header(full)["has_tables"] is True
    assert codec.with_tables(full) == full  # idempotent
    with Image.open(io.BytesIO(full)) as im:
        assert im.format == "JPEG" and im.size == (256, 256)
        # The spliced file decodes to what Pillow's own complete file decodes to.
        np.testing.assert_array_equal(
            np.asarray(im.convert("RGB")), pillow_decode(pillow_stream(arr, 25, 0))
        )


# ------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("quality", [10, 25, 90])
def test_decode_equals_pillow(prepared, quality):
    for name, arr in prepared.items():
        s = codec.encode(arr, quality=quality)
        ref = pillow_decode(pillow_stream(arr, quality, streamtype=0))
        got = codec.decode(s, quality=quality)
        assert got.shape == (256, 256, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, ref, err_msg=name)
        # A complete file decodes the same, whatever quality is passed.
        np.testing.assert_array_equal(codec.decode(codec.with_tables(s, quality)), ref)


def test_decode_other_jpegs():
    # A complete, non-canonical JPEG (4:4:4, no restart markers) and a grayscale one.
    rocket = samples.photo_path("rocket").read_bytes()
    np.testing.assert_array_equal(codec.decode(rocket), pillow_decode(rocket))
    buf = io.BytesIO()
    Image.open(samples.photo_path("camera")).save(buf, "JPEG", quality=80)
    gray = codec.decode(buf.getvalue())
    assert gray.shape == (512, 512, 3)
    np.testing.assert_array_equal(gray, pillow_decode(buf.getvalue()))


def test_batch_calls_match_single(prepared):
    arrs = list(prepared.values())
    singles = [codec.encode(a) for a in arrs]
    assert codec.encode_batch(arrs) == singles
    assert codec.encode_batch(arrs, threads=1) == singles
    assert codec.encode_batch(np.stack(arrs)) == singles
    paths = samples.photo_paths()
    assert codec.encode_batch(paths, quality=30) == [codec.encode(p, quality=30) for p in paths]
    decoded = codec.decode_batch(singles)
    for d, s in zip(decoded, singles):
        np.testing.assert_array_equal(d, codec.decode(s))
    tol = codec.decode_batch([s[:3000] for s in singles], tolerant=True, threads=2)
    for t, s in zip(tol, singles):
        one = codec.decode(s[:3000], tolerant=True)
        assert (t.valid_mcus, t.total_mcus) == (one.valid_mcus, one.total_mcus)
        np.testing.assert_array_equal(t.image, one.image)
    assert codec.encode_batch([]) == [] and codec.decode_batch([]) == []


def test_decode_accepts_buffers(prepared):
    s = codec.encode(prepared["chelsea"])
    ref = codec.decode(s)
    for buf in (bytearray(s), memoryview(s), np.frombuffer(s, np.uint8)):
        np.testing.assert_array_equal(codec.decode(buf), ref)


# ------------------------------------------------------------------------------------------------
# Tolerant decoding


def _rst_markers_before(data: bytes, start: int = 59) -> int:
    n = 0
    for i in range(start, len(data) - 1):
        if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7:
            n += 1
    return n


def _mcu_interior(img: np.ndarray, k: int) -> np.ndarray:
    y, x = divmod(k, img.shape[1] // 16)
    return img[16 * y + 1 : 16 * y + 15, 16 * x + 1 : 16 * x + 15]


def test_tolerant_truncation_50_cuts(prepared):
    for name in ("astronaut", "noise"):
        s = codec.encode(prepared[name])
        full = codec.decode(s)
        clean = codec.decode(s, tolerant=True)
        assert clean.clean and clean.valid_mcus == 256
        np.testing.assert_array_equal(clean.image, full)
        prev = -1
        for cut in np.linspace(2, len(s) - 3, 50).astype(int):
            r = codec.decode(s[:cut], tolerant=True)
            assert r.image.shape == (256, 256, 3) and r.total_mcus == 256
            assert not r.clean
            # Exactly the MCUs whose restart marker made it in are valid.
            assert r.valid_mcus == (_rst_markers_before(s[:cut]) if cut >= 59 else 0)
            assert r.valid_mcus >= prev
            prev = r.valid_mcus
            for k in range(256):
                inner = _mcu_interior(r.image, k)
                if k < r.valid_mcus:
                    np.testing.assert_array_equal(inner, _mcu_interior(full, k))
                else:
                    assert (inner == 128).all()
        # Cut right before EOI: the last MCU is complete, so everything is valid.
        r = codec.decode(s[:-2], tolerant=True)
        assert r.valid_mcus == 256
        np.testing.assert_array_equal(r.image, full)


def test_tolerant_byte_flips(prepared):
    rng = np.random.default_rng(1)
    s = codec.encode(prepared["coffee"])
    full = codec.decode(s)
    # Segment index of each scan byte: MCU k spans from after marker k-1 to marker k.
    seg = np.zeros(len(s), np.int64)
    k = 0
    for i in range(59, len(s)):
        seg[i] = k
        if s[i - 1] == 0xFF and 0xD0 <= s[i] <= 0xD7:
            k += 1
    tried = 0
    while tried < 60:
        i = int(rng.integers(60, len(s) - 2))
        if 0xFF in (s[i], s[i - 1], s[i + 1]):
            continue  # keep the marker structure: the damage stays in one MCU
        b = bytearray(s)
        b[i] ^= int(rng.integers(1, 256))
        if b[i] == 0xFF:
            continue
        tried += 1
        r = codec.decode(bytes(b), tolerant=True)
        assert r.valid_mcus >= 255  # only the flipped MCU can be hurt
        hit = int(seg[i])
        for m in range(256):
            if m != hit:
                np.testing.assert_array_equal(_mcu_interior(r.image, m), _mcu_interior(full, m))
        valid = codec.mcu_validity(bytes(b))
        assert valid.sum() == r.valid_mcus and valid[np.arange(256) != hit].all()


def test_tolerant_header_damage_gives_grey():
    r = codec.decode(b"\x00\x01garbage", tolerant=True, size=64)
    assert r.image.shape == (64, 64, 3) and (r.image == 128).all()
    assert (r.valid_mcus, r.total_mcus) == (0, 16)
    r = codec.decode(b"", tolerant=True)
    assert r.image.shape == (256, 256, 3) and r.valid_mcus == 0


def test_fuzz_random_mutations_never_crash(prepared):
    rng = np.random.default_rng(7)
    base = [codec.encode(prepared[n]) for n in ("astronaut", "flat", "noise")]
    base.append(codec.with_tables(base[0]))
    base.append(samples.photo_path("rocket").read_bytes()[:20000])
    for it in range(300):
        b = bytearray(base[it % len(base)])
        for _ in range(int(rng.integers(1, 8))):
            op = rng.integers(0, 4)
            i = int(rng.integers(0, len(b)))
            if op == 0:
                b[i] = int(rng.integers(0, 256))
            elif op == 1:
                del b[i : i + int(rng.integers(1, 64))]
            elif op == 2:
                b[i:i] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
            else:
                b = b[:i]
            if not b:
                b = bytearray(b"\xff")
        data = bytes(b)
        try:
            img = codec.decode(data)
            assert img.ndim == 3 and img.shape[2] == 3
        except codec.JPEGError as e:
            assert str(e)
        r = codec.decode(data, tolerant=True)
        assert r.image.ndim == 3 and 0 <= r.valid_mcus <= r.total_mcus


# ------------------------------------------------------------------------------------------------
# Bad input


def test_bad_quality_and_size(prepared):
    arr = prepared["flat"]
    for q in (0, 101, -5):
        with pytest.raises(ValueError, match="quality"):
            codec.encode(arr, quality=q)
    with pytest.raises(TypeError):
        codec.encode(arr, quality=25.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quality"):
        codec.tables(0)
    for size in (0, 100, 255, -16):
        with pytest.raises(ValueError, match="multiple of 16"):
            codec.encode(arr, size=size)


def test_bad_image_inputs(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        codec.encode(np.zeros((256, 256, 3), np.int64))  # float and uint16 arrays are scaled
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros((256, 256, 5), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros((4, 256, 256, 3), np.uint8))
    with pytest.raises(FileNotFoundError):
        codec.encode(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="cannot read"):
        codec.encode(b"this is not an image")
    with pytest.raises(ValueError, match="empty"):
        codec.encode(b"")
    with pytest.raises(TypeError):
        codec.encode(12345)  # type: ignore[arg-type]
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ValueError):
        codec.encode(tmp_path / "bad.jpg")
    with pytest.raises(ValueError, match="no pixels"):
        codec.prepare(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(TypeError):
        codec.encode_batch(b"abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stack"):
        codec.encode_batch(np.zeros((2, 64, 64, 3), np.uint8))  # not size x size
    with pytest.raises(ValueError, match="threads"):
        codec.encode_batch([np.zeros((256, 256, 3), np.uint8)], threads=0)


def test_huge_images(tmp_path):
    # A 20k x 20k image file: refused by Pillow's decompression-bomb check, as a ValueError.
    p = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(p)
    with pytest.raises(ValueError, match="cannot read"):
        codec.prepare(p)
    # A JPEG header claiming 20000 x 20000: refused before any allocation.
    s = bytearray(codec.encode(samples.synthetic("flat")))
    sof = s.index(b"\xff\xc0")
    s[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") * 2
    with pytest.raises(codec.JPEGError, match="too large"):
        codec.decode(bytes(s))
    r = codec.decode(bytes(s), tolerant=True, size=32)
    assert r.valid_mcus == 0 and r.image.shape == (32, 32, 3)
    # A big but legal array goes through prepare's resize.
    big = np.full((4000, 6000, 3), 77, np.uint8)
    assert codec.encode(big) == codec.encode(np.full((256, 256, 3), 77, np.uint8))


def test_bad_decode_inputs(prepared):
    s = codec.encode(prepared["astronaut"])
    with pytest.raises(codec.JPEGError, match="empty"):
        codec.decode(b"")
    with pytest.raises(codec.JPEGError, match="not a JPEG"):
        codec.decode(b"GIF89a....")
    with pytest.raises(codec.JPEGError, match="Premature end"):
        codec.decode(s[:2000])
    with pytest.raises(codec.JPEGError):
        codec.decode(s[:40])
    bad = bytearray(s)
    bad[1000:1010] = b"\x00" * 10
    with pytest.raises(codec.JPEGError):
        codec.decode(bytes(bad))
    with pytest.raises(TypeError, match="path"):
        codec.decode("image.jpg")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="uint8"):
        codec.decode(np.zeros(10, np.int32))
    with pytest.raises(codec.JPEGError, match="item 1"):
        codec.decode_batch([s, s[:1000], s])
    assert issubclass(codec.JPEGError, ValueError)
    # The codec object stays usable after errors (cached libjpeg state is reset).
    np.testing.assert_array_equal(codec.decode(s), codec.decode(bytes(s)))


def test_codec_does_not_import_torch():
    code = "import sys, jpeglm.codec, jpeglm.data.bundled; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_size_limits_are_one_value():
    """MAX_SIZE (the largest canonical size) comes from the native core: the largest multiple
    of 16 up to libjpeg's per-side limit MAX_DIMENSION. check_size takes it and refuses
    anything above with a JPEGError (a ValueError); small arrays only."""
    assert codec.MAX_SIZE == _core.MAX_SIZE == 65488
    assert codec.MAX_DIMENSION == _core.MAX_DIMENSION == 65500
    assert codec.MAX_SIZE % 16 == 0 and codec.MAX_SIZE <= codec.MAX_DIMENSION < codec.MAX_SIZE + 16
    assert codec.check_size(codec.MAX_SIZE) == codec.MAX_SIZE
    assert codec.check_size(np.int64(256)) == 256 and codec.check_quality(np.int32(25)) == 25
    for size in (codec.MAX_SIZE + 16, 65504, 65520, 1 << 20):
        with pytest.raises(codec.JPEGError, match="too large"):
            codec.check_size(size)
        with pytest.raises(ValueError, match="too large"):
            codec.encode(np.zeros((16, 16, 3), np.uint8), size=size)
    # libjpeg itself: any image up to MAX_DIMENSION per side, nothing larger (16 rows: cheap)
    wide = np.zeros((16, codec.MAX_DIMENSION, 3), np.uint8)
    assert codec.header(_core.encode(wide))["width"] == codec.MAX_DIMENSION
    with pytest.raises(ValueError, match="65500"):
        _core.encode(np.zeros((16, codec.MAX_DIMENSION + 1, 3), np.uint8))
