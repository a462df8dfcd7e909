"""``jpeglm explain``: pictures of every JPEG step for one image, and a page tying them together.

Everything is computed with the educational codec (:mod:`jpeglm.reference.jpeg`) and checked
against the native one, so the pictures show exactly the bytes a JPEG-LM model reads.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jpeglm import codec
from jpeglm._io import atomic_write_bytes, atomic_write_text
from jpeglm.reference import jpeg as R

_ANCHORS = np.array(  # a viridis-like ramp: dark blue -> teal -> yellow
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


def colormap(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map values to RGB uint8 along a perceptual ramp (min -> dark blue, max -> yellow)."""
    v = values.astype(np.float64)
    lo = float(v.min()) if lo is None else lo
    hi = float(v.max()) if hi is None else hi
    t = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1) * (len(_ANCHORS) - 1)
    i = np.minimum(t.astype(int), len(_ANCHORS) - 2)
    f = (t - i)[..., None]
    return (_ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f).astype(np.uint8)


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _save(img: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    atomic_write_bytes(path, buf.getvalue())


def _zoom(a: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1)


def _titled(img: Image.Image, title: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + 18), "white")
    out.paste(img, (0, 18))
    ImageDraw.Draw(out).text((2, 3), title, fill="black", font=_font())
    return out


def _hstack(images: list[Image.Image], gap: int = 8) -> Image.Image:
    w = sum(i.width for i in images) + gap * (len(images) - 1)
    h = max(i.height for i in images)
    out = Image.new("RGB", (w, h), "white")
    x = 0
    for i in images:
        out.paste(i, (x, 0))
        x += i.width + gap
    return out


def _number_grid(values: np.ndarray, cell: int = 34, fmt: str = "{:d}") -> Image.Image:
    """An 8x8 table of numbers on a colour scale of their magnitude."""
    colours = colormap(np.log1p(np.abs(values.astype(np.float64))))
    img = Image.fromarray(_zoom(colours, cell))
    d = ImageDraw.Draw(img)
    font = _font()
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            bright = colours[r, c].mean() > 140
            d.text(
                (c * cell + 3, r * cell + 11),
                fmt.format(values[r, c]),
                fill="black" if bright else "white",
                font=font,
            )
    return img


def planes_picture(rgb: np.ndarray) -> Image.Image:
    y, cb, cr = R.rgb_to_ycbcr(rgb)
    cb2, cr2 = R.downsample_420(cb), R.downsample_420(cr)
    tiles = [
        _titled(Image.fromarray(rgb), "RGB"),
        _titled(Image.fromarray(y.astype(np.uint8)), "Y (luma), full size"),
        _titled(Image.fromarray(_zoom(cb2, 2).astype(np.uint8)), "Cb, half size (shown 2x)"),
        _titled(Image.fromarray(_zoom(cr2, 2).astype(np.uint8)), "Cr, half size (shown 2x)"),
    ]
    return _hstack(tiles)


def basis_picture(scale: int = 6) -> Image.Image:
    basis = R.dct_basis()
    tile = 8 * scale + 2
    out = np.full((8 * tile, 8 * tile), 255, np.uint8)
    for u in range(8):
        for v in range(8):
            b = basis[u, v]
            g = ((b - b.min()) / max(np.ptp(b), 1e-12) * 255) if u or v else np.full((8, 8), 160)
            out[u * tile : u * tile + 8 * scale, v * tile : v * tile + 8 * scale] = _zoom(
                g.astype(np.uint8), scale
            )
    return _titled(Image.fromarray(out).convert("RGB"), "DCT basis: row u, column v")


def zigzag_picture(cell: int = 34) -> Image.Image:
    order = np.empty(64, int)
    order[R.ZIGZAG] = np.arange(64)
    grid = order.reshape(8, 8)
    img = _number_grid(grid, cell)
    d = ImageDraw.Draw(img)
    pts = [((i % 8) * cell + cell // 2, (i // 8) * cell + cell // 2) for i in R.ZIGZAG]
    d.line(pts, fill=(230, 40, 40), width=2)
    return _titled(img, "zigzag: the order coefficients are sent")


def pick_block(rgb: np.ndarray, quality: int) -> tuple[int, int]:
    """A luma block with a lot going on: the most non-zero quantized coefficients."""
    q = R.quantized_coefficients(rgb, quality)[0]
    nz = (q != 0).sum(axis=(2, 3))
    by, bx = np.unravel_index(int(np.argmax(nz)), nz.shape)
    return int(by), int(bx)


def block_picture(rgb: np.ndarray, quality: int, by: int, bx: int) -> Image.Image:
    y = R.rgb_to_ycbcr(rgb)[0]
    block = R.split_blocks(y)[by, bx]
    dct = R.fdct_islow(block)
    table = R.quant_table(quality)
    q = R.quantize(dct, table)
    pix = Image.fromarray(_zoom((block + 128).astype(np.uint8), 34)).convert("RGB")
    return _hstack(
        [
            _titled(pix, f"Y block ({by}, {bx})"),
            _titled(_number_grid(block), "pixels - 128"),
            _titled(_number_grid(np.rint(dct / 8).astype(int)), "DCT coefficients"),
            _titled(_number_grid(table), f"quantization table, quality {quality}"),
            _titled(_number_grid(q), "quantized: what is sent"),
        ]
    )


def mcu_segments(stream: bytes) -> list[bytes]:
    """The raw bytes of each MCU (stuffing included) followed by its marker."""
    hdr = codec.header(stream)
    segs, start, i = [], hdr["scan_offset"], hdr["scan_offset"]
    while i < len(stream) - 1:
        if stream[i] == 0xFF and stream[i + 1] != 0x00:
            segs.append(stream[start : i + 2])
            start = i + 2
            i += 2
        else:
            i += 1
    return segs


def bytes_picture(stream: bytes, n_mcus: int = 12) -> Image.Image:
    """Hex dump of the first MCUs: restart markers in red, stuffed FF 00 in blue."""
    font = _font()
    segs = mcu_segments(stream)[:n_mcus]
    lines: list[list[tuple[str, str]]] = [[("header (59 bytes): ", "black")]]
    lines.append([(stream[:59].hex(" "), "gray")])
    for k, seg in enumerate(segs):
        line = [(f"MCU {k:3d} ({len(seg) - 2:3d} B): ", "black")]
        body = seg[:-2]
        j = 0
        while j < len(body):
            if body[j] == 0xFF and j + 1 < len(body) and body[j + 1] == 0:
                line.append(("ff 00 ", "blue"))
                j += 2
            else:
                line.append((f"{body[j]:02x} ", "black"))
                j += 1
        line.append((seg[-2:].hex(" "), "red"))
        lines.append(line)
    width, lh = 1100, 15
    # wrap long lines
    wrapped: list[list[tuple[str, str]]] = []
    for line in lines:
        cur, x = [], 0
        for text, colour in line:
            for tok in [text] if colour != "gray" else [t + " " for t in text.split()]:
                w = int(font.getlength(tok))
                if x + w > width - 10 and cur:
                    wrapped.append(cur)
                    cur, x = [("    ", "black")], int(font.getlength("    "))
                cur.append((tok, colour))
                x += w
        wrapped.append(cur)
    img = Image.new("RGB", (width, lh * len(wrapped) + 8), "white")
    d = ImageDraw.Draw(img)
    for r, line in enumerate(wrapped):
        x = 4
        for text, colour in line:
            d.text((x, 4 + r * lh), text, fill=colour, font=font)
            x += int(font.getlength(text))
    return img


def cost_picture(rgb: np.ndarray, stream: bytes) -> tuple[Image.Image, np.ndarray]:
    """Bytes per MCU as a heat map over the image."""
    segs = mcu_segments(stream)
    mx = rgb.shape[1] // 16
    cost = np.array([len(s) - 2 for s in segs], dtype=np.float64).reshape(-1, mx)
    heat = _zoom(colormap(cost), 16)
    blend = (0.45 * rgb + 0.55 * heat).astype(np.uint8)
    return (
        _hstack(
            [
                _titled(
                    Image.fromarray(heat), f"bytes per MCU: {cost.min():.0f} .. {cost.max():.0f}"
                ),
                _titled(Image.fromarray(blend), "over the image"),
            ]
        ),
        cost,
    )


def explain(
    image: codec.ImageLike, out: str | os.PathLike, quality: int = 25, size: int = 256
) -> Path:
    """Write the pictures and ``explain.md`` for one image into ``out``; returns the page."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rgb = codec.prepare(image, size)
    stream = R.encode(rgb, quality)
    if stream != codec.encode(rgb, quality, size):  # the page must show the real bytes
        raise AssertionError("reference and native encoders disagree")
    by, bx = pick_block(rgb, quality)
    _save(planes_picture(rgb), out / "1_planes.png")
    _save(basis_picture(), out / "2_dct_basis.png")
    _save(block_picture(rgb, quality, by, bx), out / "3_block.png")
    _save(zigzag_picture(), out / "4_zigzag.png")
    _save(bytes_picture(stream), out / "5_mcu_bytes.png")
    cost_img, cost = cost_picture(rgb, stream)
    _save(cost_img, out / "6_mcu_cost.png")
    _save(Image.fromarray(codec.decode(stream, quality=quality)), out / "7_decoded.png")

    comps = R.quantized_coefficients(rgb, quality)
    nz = [int((c != 0).sum()) for c in comps]
    total = [c.size for c in comps]
    n_rst = len(mcu_segments(stream)) - 1
    stuffed = stream.count(b"\xff\x00")
    page = f"""# How JPEG-LM sees an image

A {size}x{size} image becomes **{len(stream)} bytes** of canonical JPEG (quality {quality}):
a fixed 59-byte header, {n_rst + 1} MCUs separated by {n_rst} restart markers, and EOI.
These bytes, not pixels, are what the language model reads and writes.

## 1. Colour: RGB -> Y, Cb, Cr
![planes](1_planes.png)

The eye is sharper for brightness than for colour, so JPEG separates luma Y from two chroma
planes (fixed-point BT.601, `rgb_to_ycbcr`) and keeps chroma at half resolution in each
direction (4:2:0, `downsample_420`: 2x2 averages). A 16x16 **MCU** therefore holds four 8x8 Y
blocks, one Cb and one Cr block.

## 2. The DCT: 64 patterns
![DCT basis](2_dct_basis.png)

Each 8x8 block (minus 128) is rewritten as a weighted sum of these 64 cosine patterns
(`fdct_islow`, libjpeg's integer DCT). Top-left is the average (DC); further right and down
are finer horizontal and vertical detail.

## 3. Quantization: where the bytes are saved
![one block](3_block.png)

Dividing by the quality-scaled table (`quant_table`, starting 16 11 10 16 24 40 51 61 at
quality 50) and rounding (`quantize`) zeroes most high-frequency coefficients: in this image
{nz[0]} of {total[0]} luma and {nz[1] + nz[2]} of {total[1] + total[2]} chroma coefficients
survive ({100 * sum(nz) / sum(total):.1f}%).

## 4. Zigzag
![zigzag](4_zigzag.png)

Coefficients are sent from low to high frequency, so the zeros bunch up at the end.

## 5. Run-length + Huffman coding, stuffing, restart markers
![bytes](5_mcu_bytes.png)

Each block becomes symbols: the DC difference (reset to 0 at every restart), then
(zero-run, size) pairs, ZRL for 16 zeros and EOB when only zeros remain (`run_length`). The
standard Huffman tables turn symbols into bit strings (`huffman_encode_block`); bits are
packed into bytes, a data byte FF is followed by 00 (blue; {stuffed} times here), and every
MCU ends byte-aligned with a restart marker FFD0..FFD7 (red). That is why a corrupt or
truncated generation only damages the MCUs it touches.

## 6. Where the bytes go
![cost](6_mcu_cost.png)

Flat areas cost a few bytes per MCU, texture and edges many more
(here {cost.min():.0f} to {cost.max():.0f} bytes, mean {cost.mean():.1f}): the model spends
its tokens where the detail is.

## 7. Back to pixels
![decoded](7_decoded.png)

Decoding reverses the steps (`decode`: integer inverse DCT, triangle upsampling of chroma);
the reference decoder here reproduces libjpeg's pixels exactly.
"""
    atomic_write_text(out / "explain.md", page)
    return out / "explain.md"
