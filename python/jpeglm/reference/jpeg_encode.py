"""JPEG encoding, step by step, in plain numpy: the encoder half of :mod:`jpeglm.reference.jpeg`.

The standard tables, then one short function per step in the order the data flows (see
:mod:`jpeglm.reference.jpeg` for the whole picture)::

    RGB --rgb_to_ycbcr--> Y, Cb, Cr --downsample_420--> Y, Cb/2, Cr/2
        --split_blocks (8x8, minus 128)--> blocks --fdct_islow--> coefficients x 8
        --quantize--> small integers --zigzag--> 1-D sequences
        --run_length (DC difference, (run, size) pairs)--> symbols
        --huffman (standard tables)--> bits --byte_stuffing + restart markers--> bytes

Each exact step (libjpeg's integer arithmetic) sits beside its ``*_textbook`` float version.
The inverse steps and the decoder are in :mod:`jpeglm.reference.jpeg_decode`.
"""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------------------------------------
# Constants: the standard tables of ITU-T T.81 Annex K


#: Luminance quantization table (K.1), natural (row-major) order, quality 50.
STD_LUMA_QUANT = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
)

#: Chrominance quantization table (K.2), natural order, quality 50.
STD_CHROMA_QUANT = np.array(
    [
        [17, 18, 24, 47, 99, 99, 99, 99],
        [18, 21, 26, 66, 99, 99, 99, 99],
        [24, 26, 56, 99, 99, 99, 99, 99],
        [47, 66, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
    ],
    dtype=np.int64,
)

#: Zigzag order: ZIGZAG[k] is the natural (row * 8 + col) index of the k-th coefficient sent.
ZIGZAG = np.array(
    [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
        12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
        35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ]
)  # fmt: skip

# Huffman tables (K.3-K.6): BITS[i] = number of codes of length i + 1, then the symbols.
DC_LUMA_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
DC_LUMA_VALS = list(range(12))
DC_CHROMA_BITS = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
DC_CHROMA_VALS = list(range(12))
AC_LUMA_BITS = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D]
AC_LUMA_VALS = bytes.fromhex(
    "01020300041105122131410613516107227114328191a1082342b1c11552d1f0"
    "2433627282090a161718191a25262728292a3435363738393a434445464748494a"
    "535455565758595a636465666768696a737475767778797a838485868788898a"
    "92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6"
    "c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9fa"
)
AC_CHROMA_BITS = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77]
AC_CHROMA_VALS = bytes.fromhex(
    "000102031104052131061241510761711322328108144291a1b1c109233352f0"
    "156272d10a162434e125f11718191a262728292a35363738393a434445464748"
    "494a535455565758595a636465666768696a737475767778797a828384858687"
    "88898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3"
    "c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9fa"
)

# ------------------------------------------------------------------------------------------------
# Step 1: colour conversion, RGB -> YCbCr (JFIF / BT.601 full range)


def rgb_to_ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """libjpeg's exact fixed-point conversion (jccolor.c): 16 fractional bits.

    Y  =  0.29900 R + 0.58700 G + 0.11400 B
    Cb = -0.16874 R - 0.33126 G + 0.50000 B + 128
    Cr =  0.50000 R - 0.41869 G - 0.08131 B + 128

    Each coefficient is rounded to a multiple of 2^-16 (``fix``), and the sum is rounded by
    adding one half before the shift (just under one half for Cb and Cr, which keeps 255.5
    from overflowing to 256).
    """

    def fix(x: float) -> int:
        return int(x * (1 << 16) + 0.5)

    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    half = 1 << 15
    y = (fix(0.299) * r + fix(0.587) * g + fix(0.114) * b + half) >> 16
    cb = (-fix(0.16874) * r - fix(0.33126) * g + fix(0.5) * b + (128 << 16) + half - 1) >> 16
    cr = (fix(0.5) * r - fix(0.41869) * g - fix(0.08131) * b + (128 << 16) + half - 1) >> 16
    return y, cb, cr


def rgb_to_ycbcr_textbook(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same formula in floating point, rounded to the nearest integer.

    Differs from :func:`rgb_to_ycbcr` by at most 1 on rare pixels (fixed-point rounding).
    """
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return tuple(np.clip(np.floor(c + 0.5), 0, 255).astype(np.int64) for c in (y, cb, cr))


# ------------------------------------------------------------------------------------------------
# Step 2: chroma downsampling, 4:2:0


def downsample_420(plane: np.ndarray) -> np.ndarray:
    """Average each 2x2 square (jcsample.c ``h2v2_downsample``).

    libjpeg rounds with a bias that alternates 1, 2, 1, 2... along each output row, so that
    halves round down and up equally often: out = (a + b + c + d + bias) >> 2.
    """
    h, w = plane.shape
    p = plane.astype(np.int64)
    s = p[0::2, 0::2] + p[0::2, 1::2] + p[1::2, 0::2] + p[1::2, 1::2]
    bias = np.where(np.arange(w // 2) % 2 == 0, 1, 2)
    return (s + bias) >> 2


def downsample_420_textbook(plane: np.ndarray) -> np.ndarray:
    """The 2x2 mean rounded half up: differs from libjpeg on exact halves in even columns."""
    p = plane.astype(np.float64)
    s = p[0::2, 0::2] + p[0::2, 1::2] + p[1::2, 0::2] + p[1::2, 1::2]
    return np.floor(s / 4 + 0.5).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Step 3: 8x8 blocks, level shift


def split_blocks(plane: np.ndarray) -> np.ndarray:
    """Cut a plane (height and width multiples of 8) into 8x8 blocks, shifted to -128..127.

    Returns shape (blocks_high, blocks_wide, 8, 8).
    """
    h, w = plane.shape
    blocks = plane.reshape(h // 8, 8, w // 8, 8).swapaxes(1, 2)
    return blocks.astype(np.int64) - 128


# ------------------------------------------------------------------------------------------------
# Step 4: the discrete cosine transform


def dct_matrix() -> np.ndarray:
    """The orthonormal 8-point DCT-II matrix C: coefficients = C @ block @ C.T."""
    k = np.arange(8)[:, None]
    n = np.arange(8)[None, :]
    c = np.cos((2 * n + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
    c[0] /= np.sqrt(2)
    return c


def dct_basis() -> np.ndarray:
    """The 64 basis images, shape (8, 8, 8, 8): basis[u, v] is the pattern of coefficient
    (u, v) — what each number in a block "means"."""
    c = dct_matrix()
    return np.einsum("ui,vj->uvij", c, c)


def fdct_textbook(blocks: np.ndarray) -> np.ndarray:
    """The 2-D DCT in floating point (JPEG's normalisation: DC = 8 x the block mean)."""
    c = dct_matrix()
    return c @ blocks.astype(np.float64) @ c.T


# Fixed-point constants of jfdctint.c: round(x * 2^13).
_CONST_BITS, _PASS1_BITS = 13, 2
_F = {
    "0_298631336": 2446, "0_390180644": 3196, "0_541196100": 4433, "0_765366865": 6270,
    "0_899976223": 7373, "1_175875602": 9633, "1_501321110": 12299, "1_847759065": 15137,
    "1_961570560": 16069, "2_053119869": 16819, "2_562915447": 20995, "3_072711026": 25172,
}  # fmt: skip


def _descale(x: np.ndarray, n: int) -> np.ndarray:
    return (x + (1 << (n - 1))) >> n


def _fdct_1d(d: list[np.ndarray], pass1: bool) -> list[np.ndarray]:
    """One pass of the Loeffler-Ligtenberg-Moschytz integer DCT over axis entries d[0..7]."""
    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    # Even part.
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    out = [None] * 8
    if pass1:
        out[0] = (tmp10 + tmp11) << _PASS1_BITS
        out[4] = (tmp10 - tmp11) << _PASS1_BITS
        shift = _CONST_BITS - _PASS1_BITS
    else:
        out[0] = _descale(tmp10 + tmp11, _PASS1_BITS)
        out[4] = _descale(tmp10 - tmp11, _PASS1_BITS)
        shift = _CONST_BITS + _PASS1_BITS
    z1 = (tmp12 + tmp13) * _F["0_541196100"]
    out[2] = _descale(z1 + tmp13 * _F["0_765366865"], shift)
    out[6] = _descale(z1 - tmp12 * _F["1_847759065"], shift)
    # Odd part.
    odd = islow_odd_part(tmp4, tmp5, tmp6, tmp7)
    out[7], out[5], out[3], out[1] = (_descale(v, shift) for v in odd)
    return out


def islow_odd_part(t0: np.ndarray, t1: np.ndarray, t2: np.ndarray, t3: np.ndarray) -> tuple:
    """The odd part of libjpeg's islow (Loeffler-Ligtenberg-Moschytz) DCT, which its forward
    and inverse transforms share: four rotations in 13-bit fixed point. The forward DCT gives
    it the differences of mirrored samples (outputs 7, 5, 3, 1); the inverse gives it the odd
    coefficients 7, 5, 3, 1 (outputs to be added to / subtracted from the even part)."""
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * _F["1_175875602"]
    t0 = t0 * _F["0_298631336"]
    t1 = t1 * _F["2_053119869"]
    t2 = t2 * _F["3_072711026"]
    t3 = t3 * _F["1_501321110"]
    z1 = z1 * -_F["0_899976223"]
    z2 = z2 * -_F["2_562915447"]
    z3 = z3 * -_F["1_961570560"] + z5
    z4 = z4 * -_F["0_390180644"] + z5
    return t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4


def fdct_islow(blocks: np.ndarray) -> np.ndarray:
    """libjpeg's integer forward DCT (jfdctint.c, "islow"), over (..., 8, 8) int blocks.

    13-bit fixed-point rotations, rows first (results kept 2 bits more precise), then columns.
    The output is the DCT scaled by 8 (libjpeg folds that factor into quantization).
    Equals ``8 * fdct_textbook`` to within a fraction of a unit.
    """
    b = blocks.astype(np.int64)
    rows = _fdct_1d([b[..., :, i] for i in range(8)], pass1=True)  # along each row
    b = np.stack(rows, axis=-1)
    cols = _fdct_1d([b[..., i, :] for i in range(8)], pass1=False)  # along each column
    return np.stack(cols, axis=-2)


# ------------------------------------------------------------------------------------------------
# Step 5: quantization


def quant_table(quality: int, chroma: bool = False) -> np.ndarray:
    """The standard table scaled to ``quality`` (jcparam.c ``jpeg_set_quality``, baseline).

    quality < 50: scale = 5000 / quality %, else 200 - 2 * quality %; entries are rounded and
    clamped to 1..255.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - quality * 2
    base = STD_CHROMA_QUANT if chroma else STD_LUMA_QUANT
    return np.clip((base * scale + 50) // 100, 1, 255)


def quantize(coefs_x8: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Divide the (x8-scaled) islow coefficients by 8 x the table, rounding half away from 0.

    This is jcdctmgr.c's rule: q = (|c| + d/2) // d with the sign put back (libjpeg-turbo
    computes the same with a reciprocal multiplication).
    """
    d = table * 8
    mag = (np.abs(coefs_x8) + d // 2) // d
    return np.where(coefs_x8 < 0, -mag, mag)


def quantize_textbook(coefs: np.ndarray, table: np.ndarray) -> np.ndarray:
    """round(coefficient / table) on the float DCT: may differ by 1 where the float and integer
    DCTs fall on different sides of a rounding boundary."""
    return np.round(coefs / table).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Step 6: zigzag


def zigzag(block: np.ndarray) -> np.ndarray:
    """An 8x8 block as 64 numbers from low to high frequency (long zero runs at the end)."""
    return block.reshape(*block.shape[:-2], 64)[..., ZIGZAG]


# ------------------------------------------------------------------------------------------------
# Step 7: run-length coding into symbols


def magnitude(v: int) -> tuple[int, int]:
    """(size, bits): the number of bits of |v| and v's bits in JPEG's one's-complement form
    (negative values are sent as v - 1 in ``size`` bits, so their top bit is 0)."""
    size = int(abs(v)).bit_length()
    return size, (v if v >= 0 else v + (1 << size) - 1)


def run_length(seq: np.ndarray, dc_pred: int) -> list[tuple[int, int, int]]:
    """One zigzagged block as symbols (kind, symbol, value) with kind 0 = DC, 1 = AC.

    DC: the difference from the previous block's DC of this component (``dc_pred``), as its
    size category. AC: (run of zeros, size) packed as run << 4 | size; runs over 15 use ZRL
    (0xF0, sixteen zeros), and EOB (0x00) ends the block when only zeros remain.
    """
    seq = [int(x) for x in seq]
    diff = seq[0] - dc_pred
    symbols = [(0, magnitude(diff)[0], diff)]
    run = 0
    for v in seq[1:]:
        if v == 0:
            run += 1
            continue
        while run > 15:
            symbols.append((1, 0xF0, 0))
            run -= 16
        symbols.append((1, (run << 4) | magnitude(v)[0], v))
        run = 0
    if run:
        symbols.append((1, 0x00, 0))
    return symbols


# ------------------------------------------------------------------------------------------------
# Step 8: Huffman coding with the standard tables


def huffman_codes(bits: list[int], vals: bytes | list[int]) -> dict[int, tuple[int, int]]:
    """Canonical Huffman codes from a DHT definition: symbol -> (code, length).

    Codes of each length are consecutive integers; moving to the next length appends a 0 bit.
    """
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[vals[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


DC_LUMA = huffman_codes(DC_LUMA_BITS, DC_LUMA_VALS)
DC_CHROMA = huffman_codes(DC_CHROMA_BITS, DC_CHROMA_VALS)
AC_LUMA = huffman_codes(AC_LUMA_BITS, AC_LUMA_VALS)
AC_CHROMA = huffman_codes(AC_CHROMA_BITS, AC_CHROMA_VALS)


class BitWriter:
    """Bits -> bytes, most significant bit first, with JPEG's byte stuffing."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def write(self, value: int, length: int) -> None:
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self._emit(self.acc)
                self.acc, self.n = 0, 0

    def _emit(self, byte: int) -> None:
        """Byte stuffing: a data byte 0xFF is followed by 0x00, so it cannot look like a marker."""
        self.out.append(byte)
        if byte == 0xFF:
            self.out.append(0x00)

    def pad(self) -> None:
        """Fill the last byte with 1-bits (before a marker)."""
        if self.n:
            self.write((1 << (8 - self.n)) - 1, 8 - self.n)


def huffman_encode_block(w: BitWriter, symbols: list[tuple[int, int, int]], chroma: bool) -> None:
    """Write one block's symbols: each symbol's code, then its magnitude bits."""
    dc, ac = (DC_CHROMA, AC_CHROMA) if chroma else (DC_LUMA, AC_LUMA)
    for kind, sym, value in symbols:
        code, length = (dc if kind == 0 else ac)[sym]
        w.write(code, length)
        size = sym if kind == 0 else sym & 15
        if size:
            w.write(magnitude(value)[1], size)


# ------------------------------------------------------------------------------------------------
# Step 9: the file: header segments, the scan with restart markers, EOI


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def header(width: int, height: int) -> bytes:
    """The canonical stripped header: SOI, JFIF APP0, SOF0, DRI, SOS (59 bytes, no tables).

    SOF0 declares 8-bit samples and three components: Y (id 1, sampling 2x2, quant table 0),
    Cb (id 2, 1x1, table 1), Cr (id 3, 1x1, table 1). DRI sets a restart interval of 1 MCU.
    SOS selects Huffman tables 0/0 for Y and 1/1 for Cb and Cr, spectral range 0..63.
    """
    app0 = b"JFIF\x00" + bytes([1, 1, 0]) + (1).to_bytes(2, "big") * 2 + bytes([0, 0])
    sof = (
        bytes([8])
        + height.to_bytes(2, "big")
        + width.to_bytes(2, "big")
        + bytes([3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
    )
    sos = bytes([3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0])
    return (
        b"\xff\xd8"
        + _segment(0xE0, app0)
        + _segment(0xC0, sof)
        + _segment(0xDD, (1).to_bytes(2, "big"))
        + _segment(0xDA, sos)
    )


def tables(quality: int = 25) -> bytes:
    """The tables-only stream: SOI, one DQT per table (values in zigzag order), one DHT per
    Huffman table (DC0, AC0, DC1, AC1), EOI — what ``jpeg_write_tables`` writes."""
    out = b"\xff\xd8"
    for i, chroma in enumerate((False, True)):
        q = quant_table(quality, chroma).reshape(64)[ZIGZAG]
        out += _segment(0xDB, bytes([i]) + bytes(int(x) for x in q))
    for tc_th, bits, vals in (
        (0x00, DC_LUMA_BITS, DC_LUMA_VALS),
        (0x10, AC_LUMA_BITS, AC_LUMA_VALS),
        (0x01, DC_CHROMA_BITS, DC_CHROMA_VALS),
        (0x11, AC_CHROMA_BITS, AC_CHROMA_VALS),
    ):
        out += _segment(0xC4, bytes([tc_th]) + bytes(bits) + bytes(vals))
    return out + b"\xff\xd9"


def quantized_coefficients(rgb: np.ndarray, quality: int = 25) -> list[np.ndarray]:
    """Steps 1-5 on a (H, W, 3) uint8 image (H, W multiples of 16): the quantized coefficient
    blocks (blocks_high, blocks_wide, 8, 8) of Y, Cb and Cr, natural order."""
    h, w, _ = rgb.shape
    if h % 16 or w % 16:
        raise ValueError("the reference codec handles sizes that are multiples of 16 only")
    y, cb, cr = rgb_to_ycbcr(rgb)
    planes = [y, downsample_420(cb), downsample_420(cr)]
    out = []
    for i, plane in enumerate(planes):
        coefs = fdct_islow(split_blocks(plane))
        out.append(quantize(coefs, quant_table(quality, chroma=i > 0)))
    return out


def mcu_blocks(comps: list[np.ndarray], my: int, mx: int) -> list[tuple[np.ndarray, bool]]:
    """The six blocks of MCU (my, mx) in scan order: Y00, Y01, Y10, Y11, Cb, Cr."""
    y, cb, cr = comps
    blocks = [(y[2 * my + dy, 2 * mx + dx], False) for dy in (0, 1) for dx in (0, 1)]
    return blocks + [(cb[my, mx], True), (cr[my, mx], True)]


def encode(rgb: np.ndarray, quality: int = 25) -> bytes:
    """The canonical stripped stream of a prepared (H, W, 3) uint8 image, byte-identical to
    ``jpeglm.codec.encode``. Every MCU is coded on its own: DC predictions start at 0, and the
    bits are padded and followed by a restart marker RST0..RST7 (EOI after the last)."""
    comps = quantized_coefficients(rgb, quality)
    h, w, _ = rgb.shape
    mcus_y, mcus_x = h // 16, w // 16
    out = bytearray(header(w, h))
    for m in range(mcus_y * mcus_x):
        wr = BitWriter()
        preds = [0, 0, 0]  # a restart resets the DC predictors
        for i, (block, chroma) in enumerate(mcu_blocks(comps, *divmod(m, mcus_x))):
            c = 0 if i < 4 else i - 3
            seq = zigzag(block)
            huffman_encode_block(wr, run_length(seq, preds[c]), chroma)
            preds[c] = int(seq[0])
        wr.pad()
        out += wr.out
        out += b"\xff\xd9" if m == mcus_y * mcus_x - 1 else bytes([0xFF, 0xD0 + m % 8])
    return bytes(out)
