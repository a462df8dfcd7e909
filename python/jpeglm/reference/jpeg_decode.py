"""JPEG decoding, step by step, in plain numpy: the decoder half of :mod:`jpeglm.reference.jpeg`.

The inverse of each encoder step (:mod:`jpeglm.reference.jpeg_encode`), then the decoder: the
stream is parsed back into the quantized coefficients libjpeg reads
(``jpeglm.codec.coefficients``), and pixels are reconstructed with libjpeg's integer inverse
DCT (jidctint.c), triangular "fancy" chroma upsampling (jdsample.c) and fixed-point colour
conversion (jdcolor.c): ``decode`` equals ``jpeglm.codec.decode`` pixel for pixel.
``decode_textbook`` does the same with a float IDCT, nearest-neighbour upsampling and float
colour conversion.
"""

from __future__ import annotations

import numpy as np

from jpeglm.reference.jpeg_encode import (
    _CONST_BITS,
    _F,
    _PASS1_BITS,
    AC_CHROMA,
    AC_LUMA,
    DC_CHROMA,
    DC_LUMA,
    ZIGZAG,
    _descale,
    dct_matrix,
    islow_odd_part,
    quant_table,
)

# ------------------------------------------------------------------------------------------------
# Step 1 inverted: colour conversion, YCbCr -> RGB


def ycbcr_to_rgb_textbook(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """The inverse conversion (decoder side), floating point, clamped to 0..255."""
    y, cb, cr = (c.astype(np.float64) for c in (y, cb, cr))
    r = y + 1.402 * (cr - 128)
    g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    b = y + 1.772 * (cb - 128)
    return np.clip(np.floor(np.stack([r, g, b], axis=-1) + 0.5), 0, 255).astype(np.uint8)


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """libjpeg's exact fixed-point inverse (jdcolor.c ``ycc_rgb_convert``), clamped."""

    def fix(x: float) -> int:
        return int(x * (1 << 16) + 0.5)

    half = 1 << 15
    y, cb, cr = (c.astype(np.int64) for c in (y, cb, cr))
    cb, cr = cb - 128, cr - 128
    r = y + ((fix(1.402) * cr + half) >> 16)
    g = y + ((-fix(0.34414) * cb + half - fix(0.71414) * cr) >> 16)
    b = y + ((fix(1.772) * cb + half) >> 16)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Step 2 inverted: chroma upsampling, 4:2:0


def upsample_420_textbook(plane: np.ndarray) -> np.ndarray:
    """Decoder side: repeat each chroma sample 2x2 (libjpeg's default is a smoother triangle
    filter, "fancy upsampling")."""
    return np.repeat(np.repeat(plane, 2, axis=0), 2, axis=1)


def upsample_420_fancy(plane: np.ndarray) -> np.ndarray:
    """libjpeg's "fancy" upsampling (jdsample.c ``h2v2_fancy_upsample``): a triangle filter.

    Each output sample is 9/16 of the nearest input sample, 3/16 of each of the two next
    nearest (one along each axis) and 1/16 of the diagonal one: vertically 3/4 + 1/4, then
    horizontally 3/4 + 1/4, with rounding biases 8 and 7 alternating along each row. At the
    image edges the missing neighbour is the edge sample itself.
    """
    p = plane.astype(np.int64)
    above = np.vstack([p[:1], p[:-1]])
    below = np.vstack([p[1:], p[-1:]])
    out = np.empty((2 * p.shape[0], 2 * p.shape[1]), np.int64)
    for dy, colsum in ((0, 3 * p + above), (1, 3 * p + below)):
        left = np.hstack([colsum[:, :1], colsum[:, :-1]])
        right = np.hstack([colsum[:, 1:], colsum[:, -1:]])
        out[dy::2, 0::2] = (3 * colsum + left + 8) >> 4
        out[dy::2, 1::2] = (3 * colsum + right + 7) >> 4
    return out


# ------------------------------------------------------------------------------------------------
# Step 3 inverted: blocks back to a plane


def merge_blocks(blocks: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split_blocks`: blocks back to a plane, +128, clamped to 0..255."""
    bh, bw = blocks.shape[:2]
    plane = blocks.swapaxes(1, 2).reshape(bh * 8, bw * 8) + 128
    return np.clip(np.floor(plane + 0.5), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Step 4 inverted: the inverse DCT


def idct_textbook(coefs: np.ndarray) -> np.ndarray:
    """The inverse 2-D DCT in floating point."""
    c = dct_matrix()
    return c.T @ coefs.astype(np.float64) @ c


def _idct_1d(d: list[np.ndarray], shift: int) -> list[np.ndarray]:
    """One pass of libjpeg's integer inverse DCT (jidctint.c) over entries d[0..7]."""
    z2, z3 = d[2], d[6]
    z1 = (z2 + z3) * _F["0_541196100"]
    tmp2 = z1 - z3 * _F["1_847759065"]
    tmp3 = z1 + z2 * _F["0_765366865"]
    tmp0 = (d[0] + d[4]) << _CONST_BITS
    tmp1 = (d[0] - d[4]) << _CONST_BITS
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    t0, t1, t2, t3 = d[7], d[5], d[3], d[1]
    t0, t1, t2, t3 = islow_odd_part(t0, t1, t2, t3)
    return [
        _descale(tmp10 + t3, shift), _descale(tmp11 + t2, shift),
        _descale(tmp12 + t1, shift), _descale(tmp13 + t0, shift),
        _descale(tmp13 - t0, shift), _descale(tmp12 - t1, shift),
        _descale(tmp11 - t2, shift), _descale(tmp10 - t3, shift),
    ]  # fmt: skip


def idct_islow(dequantized: np.ndarray) -> np.ndarray:
    """libjpeg's integer inverse DCT ("islow"), over (..., 8, 8) dequantized coefficients.

    Columns first (keeping 2 extra bits), then rows; returns samples already shifted back by
    +128 and clamped to 0..255 (libjpeg's range-limit table), as int64.
    """
    b = dequantized.astype(np.int64)
    cols = _idct_1d([b[..., i, :] for i in range(8)], _CONST_BITS - _PASS1_BITS)
    b = np.stack(cols, axis=-2)
    rows = _idct_1d([b[..., :, i] for i in range(8)], _CONST_BITS + _PASS1_BITS + 3)
    return np.clip(np.stack(rows, axis=-1) + 128, 0, 255)


# ------------------------------------------------------------------------------------------------
# Step 5 inverted: dequantization


def dequantize(q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Decoder side: multiply back (the rounding error is what JPEG throws away)."""
    return q * table


# ------------------------------------------------------------------------------------------------
# Step 6 inverted: zigzag


def unzigzag(seq: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zigzag`."""
    out = np.zeros(seq.shape, dtype=seq.dtype)
    out[..., ZIGZAG] = seq
    return out.reshape(*seq.shape[:-1], 8, 8)


# ------------------------------------------------------------------------------------------------
# Step 7 inverted: symbols back to coefficients


def un_run_length(symbols: list[tuple[int, int, int]], dc_pred: int) -> np.ndarray:
    """Inverse of :func:`run_length`: the 64 zigzag numbers of one block."""
    seq = np.zeros(64, dtype=np.int64)
    k = 0
    for kind, sym, value in symbols:
        if kind == 0:
            seq[0] = dc_pred + value
            k = 1
        elif sym == 0x00:
            break
        elif sym == 0xF0:
            k += 16
        else:
            k += sym >> 4
            seq[k] = value
            k += 1
    return seq


# ------------------------------------------------------------------------------------------------
# Decoding


class BitReader:
    """Bytes -> bits for one restart interval (stuffed zeros already removed)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.bit = data, 0, 0

    def read(self, length: int) -> int:
        v = 0
        for _ in range(length):
            if self.pos >= len(self.data):
                raise ValueError("entropy-coded segment ended inside a block")
            v = (v << 1) | ((self.data[self.pos] >> (7 - self.bit)) & 1)
            self.bit += 1
            if self.bit == 8:
                self.pos, self.bit = self.pos + 1, 0
        return v

    def symbol(self, codes: dict[tuple[int, int], int]) -> int:
        code = 0
        for length in range(1, 17):
            code = (code << 1) | self.read(1)
            if (code, length) in codes:
                return codes[(code, length)]
        raise ValueError("invalid Huffman code")


def _decoding(codes: dict[int, tuple[int, int]]) -> dict[tuple[int, int], int]:
    return {v: k for k, v in codes.items()}


def extend(bits: int, size: int) -> int:
    """Inverse of :func:`magnitude`: a leading 0 bit means a negative value."""
    return bits if size == 0 or bits >= 1 << (size - 1) else bits - (1 << size) + 1


def read_block(r: BitReader, chroma: bool) -> list[tuple[int, int, int]]:
    """One block's symbols back from the bits."""
    dc = _decoding(DC_CHROMA if chroma else DC_LUMA)
    ac = _decoding(AC_CHROMA if chroma else AC_LUMA)
    size = r.symbol(dc)
    symbols = [(0, size, extend(r.read(size), size))]
    k = 1
    while k < 64:
        sym = r.symbol(ac)
        if sym == 0x00:
            symbols.append((1, 0, 0))
            break
        if sym == 0xF0:
            symbols.append((1, 0xF0, 0))
            k += 16
            continue
        size = sym & 15
        symbols.append((1, sym, extend(r.read(size), size)))
        k += (sym >> 4) + 1
    return symbols


def split_scan(stream: bytes) -> tuple[int, int, list[bytes]]:
    """Parse the header; return (width, height, the unstuffed bytes of each restart interval)."""
    if stream[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream")
    i, width, height = 2, 0, 0
    while True:
        marker, length = stream[i + 1], int.from_bytes(stream[i + 2 : i + 4], "big")
        if marker == 0xC0:
            height = int.from_bytes(stream[i + 5 : i + 7], "big")
            width = int.from_bytes(stream[i + 7 : i + 9], "big")
        i += 2 + length
        if marker == 0xDA:
            break
    segments, cur = [], bytearray()
    while i < len(stream):
        b = stream[i]
        if b == 0xFF and stream[i + 1] == 0x00:  # stuffed data byte
            cur.append(0xFF)
            i += 2
        elif b == 0xFF:  # a marker ends the interval
            segments.append(bytes(cur))
            cur = bytearray()
            if stream[i + 1] == 0xD9:
                break
            i += 2
        else:
            cur.append(b)
            i += 1
    return width, height, segments


def decode_coefficients(stream: bytes) -> list[np.ndarray]:
    """The quantized coefficients of a canonical stream (Y, Cb, Cr), natural order — equal to
    what libjpeg reads (``jpeglm.codec.coefficients``)."""
    width, height, segments = split_scan(stream)
    mcus_y, mcus_x = height // 16, width // 16
    comps = [
        np.zeros((2 * mcus_y, 2 * mcus_x, 8, 8), np.int64),
        np.zeros((mcus_y, mcus_x, 8, 8), np.int64),
        np.zeros((mcus_y, mcus_x, 8, 8), np.int64),
    ]
    for m, seg in enumerate(segments[: mcus_y * mcus_x]):
        my, mx = divmod(m, mcus_x)
        r, preds = BitReader(seg), [0, 0, 0]
        for i in range(6):
            c, chroma = (0 if i < 4 else i - 3), i >= 4
            seq = un_run_length(read_block(r, chroma), preds[c])
            preds[c] = int(seq[0])
            if c == 0:
                comps[0][2 * my + i // 2, 2 * mx + i % 2] = unzigzag(seq)
            else:
                comps[c][my, mx] = unzigzag(seq)
    return comps


def _planes(blocks: np.ndarray) -> np.ndarray:
    bh, bw = blocks.shape[:2]
    return blocks.swapaxes(1, 2).reshape(bh * 8, bw * 8)


def decode(stream: bytes, quality: int = 25) -> np.ndarray:
    """A canonical stream back to RGB exactly as libjpeg does it: dequantize, integer inverse
    DCT, fancy upsampling, fixed-point colour conversion. Equal to ``jpeglm.codec.decode``."""
    comps = decode_coefficients(stream)
    planes = [
        _planes(idct_islow(dequantize(q, quant_table(quality, chroma=i > 0))))
        for i, q in enumerate(comps)
    ]
    y, cb, cr = planes[0], upsample_420_fancy(planes[1]), upsample_420_fancy(planes[2])
    return ycbcr_to_rgb(y, cb, cr)


def decode_textbook(stream: bytes, quality: int = 25) -> np.ndarray:
    """The textbook way: float inverse DCT, nearest-neighbour chroma upsampling, float colour
    conversion. Close to libjpeg's pixels (a mean difference under one level on photos), but
    blockier chroma edges: libjpeg's triangle upsampling smooths them."""
    comps = decode_coefficients(stream)
    planes = []
    for i, q in enumerate(comps):
        table = quant_table(quality, chroma=i > 0)
        planes.append(merge_blocks(idct_textbook(dequantize(q, table))).astype(np.int64))
    y, cb, cr = planes[0], upsample_420_textbook(planes[1]), upsample_420_textbook(planes[2])
    return ycbcr_to_rgb_textbook(y, cb, cr)
