"""Input conversion for :func:`jpeglm.codec.prepare`: any accepted image (a PIL image, a uint8 /
uint16 / float numpy array, a path, encoded bytes) opened as a PIL image (:func:`_open`), then
made 8-bit RGB (:func:`_to_rgb`): 16-bit data scaled as ``round(v / 257)``, float data taken as
0..1, transparency composited on :data:`BACKGROUND` (white). The exact rules are in
:func:`~jpeglm.codec.prepare`'s docstring.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

#: Transparent pixels are composited on this grey level (white: how a PNG shows on a page).
BACKGROUND = 255
#: Float images are taken as 0..1; values this far outside (half an 8-bit step) are clipped,
#: values further out refused.
_FLOAT_TOLERANCE = 0.5 / 255


def _from_uint16(arr: np.ndarray) -> np.ndarray:
    """16-bit samples 0..65535 -> 8 bits as ``round(v / 257)`` (exact: no ties occur)."""
    return ((arr.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)


def _from_float(arr: np.ndarray, what: str) -> np.ndarray:
    """Float samples 0..1 -> 8 bits as ``rint(clip(v, 0, 1) * 255)``; NaN, infinities and
    values beyond [0, 1] by more than half an 8-bit step are refused."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size:
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} has NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -_FLOAT_TOLERANCE or hi > 1 + _FLOAT_TOLERANCE:
            raise ValueError(
                f"{what} has values in {lo:g}..{hi:g}; float images must be in 0..1 "
                "(divide 8-bit data by 255, or pass it as uint8)"
            )
    return np.rint(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)


def _array_to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16 or image.dtype == np.dtype(">u2"):
        return _from_uint16(image)
    if image.dtype.kind == "f":
        return _from_float(image, f"{image.dtype} image array")
    raise TypeError(
        f"image array must be uint8, uint16 (0..65535) or float (0..1), got {image.dtype}"
    )


def _open(image: object) -> Image.Image:
    """Any accepted input as a PIL image (not yet converted)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
            raise ValueError(
                "image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                f"got {image.shape}"
            )
        image = _array_to_uint8(image)
        if image.ndim == 2:
            return Image.fromarray(np.ascontiguousarray(image), "L")
        if image.shape[2] == 1:
            return Image.fromarray(np.ascontiguousarray(image[:, :, 0]), "L")
        return Image.fromarray(
            np.ascontiguousarray(image), "RGB" if image.shape[2] == 3 else "RGBA"
        )
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise ValueError("empty image data")
        try:
            im = Image.open(io.BytesIO(bytes(image)))
            im.load()
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image data: {e}") from e
        return im
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        try:
            im = Image.open(path)
            im.load()
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
        return im
    raise TypeError(
        "image must be a PIL.Image, a uint8 / uint16 / float numpy array, a path or encoded "
        f"bytes, got {type(image).__name__}"
    )


def _to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB: 16-bit and float modes scaled (not clipped into white or black),
    transparent pixels composited on :data:`BACKGROUND`, everything else Pillow's
    ``convert("RGB")``."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "I" or mode.startswith("I;16"):
        arr = np.asarray(im)
        if mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(
                f"mode I image has values in {arr.min()}..{arr.max()}; only 0..65535 (16-bit) "
                "is understood"
            )
        return Image.fromarray(_from_uint16(arr), "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_from_float(np.asarray(im), "mode F image"), "L").convert("RGB")
    if mode == "La":
        im = im.convert("LA")
    if im.mode in ("RGBA", "RGBa", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[:, :, 3:].astype(np.uint32)
        if alpha.size and alpha.min() < 255:  # fully opaque: Pillow's plain conversion below
            rgb = rgba[:, :, :3].astype(np.uint32)
            out = (rgb * alpha + BACKGROUND * (255 - alpha) + 127) // 255
            return Image.fromarray(out.astype(np.uint8), "RGB")
    return im.convert("RGB")
