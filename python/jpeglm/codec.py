"""The canonical JPEG-LM codec: image -> canonical stripped JPEG bytes -> image.

Canonical form (arXiv 2408.08459, and the published inference code):

* ``prepare``: center square crop, antialiased bilinear resize to ``size`` x ``size`` (Pillow's
  ``Image.resize(..., Image.BILINEAR)``), RGB.
* ``encode``: baseline JPEG, ``quality`` 25, 4:2:0 chroma, a restart marker after every MCU,
  no DQT/DHT segments — byte-identical to Pillow's
  ``im.save(f, "JPEG", quality=q, subsampling="4:2:0", streamtype=2, restart_marker_blocks=1)``.
* ``tables`` / ``with_tables``: the standard tables (``streamtype=1``) and a complete JFIF file.
* ``decode``: strict (raises :class:`JPEGError`) or tolerant (every valid MCU decoded, damaged
  or missing MCUs mid-grey, and how many were valid).

The work is done by libjpeg through ``jpeglm._core`` with the GIL released; the batch calls
run on all cores. Sizes whose working memory cannot fit (``size=65488`` is 51 GB) are refused
before any allocation, with the numbers (:func:`check_memory`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from jpeglm import _core
from jpeglm._pixels import _open, _to_rgb

__all__ = [
    "JPEGError",
    "ImageLike",
    "TolerantDecode",
    "prepare",
    "encode",
    "encode_batch",
    "decode",
    "decode_batch",
    "tables",
    "with_tables",
    "header",
    "mcu_validity",
    "coefficients",
    "Coefficients",
    "DEFAULT_QUALITY",
    "DEFAULT_SIZE",
    "MAX_SIZE",
    "MAX_DIMENSION",
    "check_quality",
    "check_threads",
    "check_size",
    "available_memory",
    "check_memory",
    "encode_memory",
    "WORK_BYTES_PER_PIXEL",
]

#: Raised for data libjpeg cannot decode (a subclass of ValueError), with libjpeg's message.
JPEGError = _core.JPEGError

DEFAULT_QUALITY = 25
DEFAULT_SIZE = 256
#: The largest canonical ``size``: the largest multiple of 16 libjpeg accepts per side (its
#: limit, :data:`MAX_DIMENSION`, is 65500). One value, defined natively (``csrc/jpeg_tables.h``).
MAX_SIZE: int = _core.MAX_SIZE
#: The largest width or height libjpeg encodes or decodes (any image, not only canonical ones).
MAX_DIMENSION: int = _core.MAX_DIMENSION

ImageLike = Image.Image | np.ndarray | str | os.PathLike | bytes | bytearray | memoryview
BytesLike = bytes | bytearray | memoryview | np.ndarray


class Coefficients(NamedTuple):
    """One component's quantized DCT coefficients, as libjpeg reads them."""

    coefficients: np.ndarray  #: (blocks_high, blocks_wide, 8, 8) int16, natural order
    quant: np.ndarray  #: (8, 8) uint16 quantization table, natural order
    h_samp: int  #: horizontal sampling factor
    v_samp: int  #: vertical sampling factor


class TolerantDecode(NamedTuple):
    """Result of ``decode(..., tolerant=True)``."""

    image: np.ndarray  #: (H, W, 3) uint8; damaged or missing MCUs are mid-grey
    valid_mcus: int  #: MCUs decoded from valid data
    total_mcus: int  #: MCUs in the image

    @property
    def clean(self) -> bool:
        """True when every MCU was valid."""
        return self.valid_mcus == self.total_mcus


# ------------------------------------------------------------------------------------------------
# Argument checks


def check_quality(quality: int) -> int:
    """``quality`` as an int, checked to be in 1..100 (TypeError / ValueError otherwise)."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise TypeError(f"quality must be an int in 1..100, got {type(quality).__name__}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    return int(quality)


def check_size(size: int) -> int:
    """``size`` as an int, checked to be a canonical size: a positive multiple of 16 (whole
    4:2:0 MCUs) up to :data:`MAX_SIZE`. TypeError for a non-int; ValueError otherwise -- a
    :class:`JPEGError` (a ValueError) above the limit, as the native codec raises there."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be an int, got {type(size).__name__}")
    if size <= 0 or size % 16 != 0:
        raise ValueError(f"size must be a positive multiple of 16 (whole 4:2:0 MCUs), got {size}")
    if size > MAX_SIZE:
        raise JPEGError(f"size {size} too large: exceeds JPEG's limit of {MAX_SIZE} per side")
    return int(size)


def check_threads(threads: int | None) -> int:
    """The native ``threads`` argument: ``None`` -> 0 (all cores), else a positive int."""
    if threads is None:
        return 0  # all cores
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return int(threads)


#: Working memory per pixel of one image being prepared and encoded: Pillow's 4-byte RGBX
#: image, its resize buffer and the RGB array (measured: 10 bytes at 4096 and 8192 px).
WORK_BYTES_PER_PIXEL = 12
#: Below this much working memory nothing is checked (reading /proc/meminfo costs more).
_CHECK_FROM = 256 << 20


def encode_memory(size: int, held: int = 0, working: int = 1) -> int:
    """About how many bytes preparing and encoding ``size`` x ``size`` images takes:
    ``working`` images being prepared at once (12 bytes a pixel each) and ``held`` prepared
    RGB images kept in memory (3 bytes a pixel each)."""
    pixels = int(size) * int(size)
    return pixels * (WORK_BYTES_PER_PIXEL * working + 3 * held)


def available_memory() -> int | None:
    """Bytes of memory this process can still get: ``MemAvailable`` of ``/proc/meminfo``,
    lowered to the room left under a cgroup (v2) memory limit; None where unknown."""
    have = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            room = max(0, int(limit) - used)
            have = room if have is None else min(have, room)
    except (OSError, ValueError):
        pass
    return have


def check_memory(need: int, what: str, hint: str = "use a smaller size") -> None:
    """ValueError with the numbers when ``need`` bytes (``what`` takes them) exceed
    :func:`available_memory`; nothing is checked below 256 MiB or where it is unknown."""
    if need < _CHECK_FROM:
        return
    have = available_memory()
    if have is not None and need > have:
        gib = 2.0**30
        raise ValueError(
            f"{what} needs about {need / gib:.1f} GiB of memory but only {have / gib:.1f} GiB is "
            f"available: {hint}"
        )


def _as_buffer(data: BytesLike, what: str = "data") -> BytesLike:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"{what}: expected uint8 bytes, got a {data.dtype} array")
        return np.ascontiguousarray(data).reshape(-1)
    if isinstance(data, (str, os.PathLike)):
        raise TypeError(f"{what}: expected JPEG bytes, got a path (read the file first)")
    raise TypeError(f"{what}: expected bytes-like JPEG data, got {type(data).__name__}")


# ------------------------------------------------------------------------------------------------
# Preprocessing (input conversion: jpeglm._pixels)


def prepare(
    image: ImageLike, size: int = DEFAULT_SIZE, *, exif_transpose: bool = False
) -> np.ndarray:
    """Center square crop + antialiased bilinear resize to ``size`` x ``size``, as RGB uint8.

    EXIF orientation is ignored by default, as the official pipeline ignores it (the pixels as
    stored: a phone photo taken upright may come out rotated; byte identity with the paper's
    data). ``exif_transpose=True`` first applies ``PIL.ImageOps.exif_transpose`` (the
    picture as viewers show it); arrays have no EXIF and are unaffected.

    Equal to the reference preprocessing: the largest centered square (offsets rounded down, as
    torchvision's center crop), then Pillow's ``resize((size, size), Image.BILINEAR)``.
    An array that is already ``(size, size, 3)`` uint8 is returned as is (made contiguous).

    Inputs are made 8-bit RGB first: 16-bit data (PIL modes ``I;16*``, mode ``I`` with values
    in 0..65535 -- other values are refused -- and uint16 arrays) as ``round(v / 257)``; float
    data (mode ``F``, float arrays) as 0..1, ``rint(v * 255)``, values beyond [0, 1] by more
    than half a step refused (NaN too); transparency (RGBA, LA, PA, P with a transparent index)
    composited on white, ``round((c * a + 255 * (255 - a)) / 255)`` -- a fully opaque image is
    unchanged; any other mode through Pillow's ``convert("RGB")``.
    """
    size = check_size(size)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (size, size, 3):
        return np.ascontiguousarray(image)
    check_memory(encode_memory(size), f"a {size}x{size} image")
    im = _open(image)
    if exif_transpose:
        from PIL import ImageOps

        im = ImageOps.exif_transpose(im)
    im = _to_rgb(im)
    w, h = im.size
    if w == 0 or h == 0:
        raise ValueError("image has no pixels")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    if (w, h) != (side, side):
        im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im)


# ------------------------------------------------------------------------------------------------
# Encoding


def encode(
    image: ImageLike,
    quality: int = DEFAULT_QUALITY,
    size: int = DEFAULT_SIZE,
    *,
    exif_transpose: bool = False,
) -> bytes:
    """The canonical stripped JPEG stream of ``prepare(image, size, exif_transpose=...)``.

    Byte-identical to Pillow's ``save(f, "JPEG", quality=quality, subsampling="4:2:0",
    streamtype=2, restart_marker_blocks=1)`` of the prepared image.
    """
    quality = check_quality(quality)
    return _core.encode(prepare(image, size, exif_transpose=exif_transpose), quality)


def encode_batch(
    images: Sequence[ImageLike] | np.ndarray,
    quality: int = DEFAULT_QUALITY,
    size: int = DEFAULT_SIZE,
    threads: int | None = None,
    *,
    exif_transpose: bool = False,
) -> list[bytes]:
    """``encode`` over many images, natively on ``threads`` threads (None: all cores).

    ``images`` may be a sequence of anything ``encode`` accepts, or one ``(N, size, size, 3)``
    uint8 array (no per-image Python work at all). An empty batch gives ``[]``.
    """
    quality = check_quality(quality)
    size = check_size(size)
    nthreads = check_threads(threads)
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"image stack must be uint8, got {images.dtype}")
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(
                f"image stack must have shape (N, {size}, {size}, 3), got {images.shape}"
            )
        return _core.encode_stack(np.ascontiguousarray(images), quality, nthreads)
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        raise TypeError("encode_batch expects a sequence of images; use encode() for one")
    if hasattr(images, "__len__"):  # every prepared image is held until the batch is encoded
        check_memory(encode_memory(size, held=len(images)),
                     f"{len(images)} images of {size}x{size}", "encode fewer at a time or use "
                     "a smaller size")  # fmt: skip
    prepared = [prepare(im, size, exif_transpose=exif_transpose) for im in images]
    if not prepared:
        return []
    return _core.encode_batch(prepared, quality, nthreads)


def tables(quality: int = DEFAULT_QUALITY) -> bytes:
    """The tables-only stream for ``quality``: SOI, DQT x2, DHT x4, EOI (574 bytes).

    Pillow's ``streamtype=1``; libjpeg's ``jpeg_write_tables``. The same for every image.
    """
    return _core.tables(check_quality(quality))


def with_tables(stripped: BytesLike, quality: int = DEFAULT_QUALITY) -> bytes:
    """A complete JFIF file: the tables of ``quality`` spliced after the stripped stream's SOI.

    A stream that already carries its tables is returned unchanged.
    """
    return _core.with_tables(_as_buffer(stripped), check_quality(quality))


# ------------------------------------------------------------------------------------------------
# Decoding


def decode(
    data: BytesLike,
    tolerant: bool = False,
    *,
    quality: int = DEFAULT_QUALITY,
    size: int = DEFAULT_SIZE,
) -> np.ndarray | TolerantDecode:
    """Decode a canonical stripped stream (tables of ``quality`` spliced) or a complete JPEG.

    Strict (default): returns the (H, W, 3) uint8 RGB image, equal to Pillow's decode of the
    same file; any corruption raises :class:`JPEGError` with libjpeg's message.

    Tolerant: returns :class:`TolerantDecode` ``(image, valid_mcus, total_mcus)``. Every
    restart interval is checked on its own; valid MCUs are decoded exactly, damaged or missing
    ones (a truncated or corrupt generation) are mid-grey. When not even the header can be
    read, the image is a grey ``size`` x ``size`` square with ``valid_mcus == 0``.
    """
    buf = _as_buffer(data)
    quality = check_quality(quality)
    if not isinstance(tolerant, bool):
        raise TypeError(f"tolerant must be a bool, got {type(tolerant).__name__}")
    if tolerant:
        size = check_size(size)
        img, valid, total, _ = _core.decode(buf, quality, True, size)
        return TolerantDecode(img, valid, total)
    return _core.decode(buf, quality, False, 0)[0]


def decode_batch(
    items: Sequence[BytesLike],
    tolerant: bool = False,
    *,
    quality: int = DEFAULT_QUALITY,
    size: int = DEFAULT_SIZE,
    threads: int | None = None,
) -> list[np.ndarray] | list[TolerantDecode]:
    """``decode`` over many streams, natively on ``threads`` threads (None: all cores).

    In strict mode the first bad item raises :class:`JPEGError` naming its index.
    """
    if isinstance(items, (bytes, bytearray, memoryview)):
        raise TypeError("decode_batch expects a sequence of streams; use decode() for one")
    bufs = [_as_buffer(x, f"item {i}") for i, x in enumerate(items)]
    quality = check_quality(quality)
    if not isinstance(tolerant, bool):
        raise TypeError(f"tolerant must be a bool, got {type(tolerant).__name__}")
    nthreads = check_threads(threads)
    if not bufs:
        return []
    if tolerant:
        size = check_size(size)
        out = _core.decode_batch(bufs, quality, True, nthreads, size)
        return [TolerantDecode(img, v, t) for img, v, t, _ in out]
    return [r[0] for r in _core.decode_batch(bufs, quality, False, nthreads, 0)]


def header(data: BytesLike) -> dict:
    """The header fields up to SOS: width, height, components, has_tables, restart_interval…"""
    return _core.parse_header(_as_buffer(data))


def mcu_validity(data: BytesLike, quality: int = DEFAULT_QUALITY) -> np.ndarray:
    """Per-MCU validity (bool array, raster order) of a baseline stream with restart markers."""
    return _core.mcu_validity(_as_buffer(data), check_quality(quality))


def coefficients(data: BytesLike, quality: int = DEFAULT_QUALITY) -> list[Coefficients]:
    """The quantized DCT coefficients of every component (Y, Cb, Cr), read by libjpeg's
    ``jpeg_read_coefficients``: what the entropy-coded scan says, before dequantization.

    Strict: corrupt data raises :class:`JPEGError`.
    """
    comps = _core.coefficients(_as_buffer(data), check_quality(quality))
    return [Coefficients(c["coefficients"], c["quant"], c["h_samp"], c["v_samp"]) for c in comps]
