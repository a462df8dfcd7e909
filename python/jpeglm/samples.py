"""Bundled images for tests and demos: real photographs with clear licences (see
``jpeglm/data/images/README.md``) and deterministic synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_DIR = Path(__file__).parent / "data" / "images"

#: Names of the bundled photographs (file stems), colour first, then grayscale.
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "camera",
    "coins",
)

SYNTHETIC = ("noise", "flat", "gradient", "checker", "stripes")


MNIST_FILE = Path(__file__).parent / "data" / "mnist" / "mnist_5k.npz"


def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 bundled MNIST digits: images (5000, 28, 28) uint8 and labels (5000,) uint8
    (see ``jpeglm/data/mnist/README.md`` for source and licence)."""
    with np.load(MNIST_FILE) as f:
        return f["images"], f["labels"]


def photo_path(name: str) -> Path:
    """Path of a bundled photograph by name (e.g. ``"astronaut"``)."""
    for p in IMAGE_DIR.iterdir():
        if p.stem == name and p.suffix in {".png", ".jpg"}:
            return p
    raise KeyError(f"no bundled photo {name!r}; available: {', '.join(PHOTOS)}")


def photo_paths() -> list[Path]:
    """Paths of all bundled photographs, in ``PHOTOS`` order."""
    return [photo_path(n) for n in PHOTOS]


def photo(name: str) -> Image.Image:
    """A bundled photograph as a loaded PIL image (original size and mode)."""
    with Image.open(photo_path(name)) as im:
        im.load()
        return im.copy()


def random_crops(
    n: int, seed: int = 0, scale: tuple[float, float] = (0.4, 1.0), flip: bool = False
) -> list[Image.Image]:
    """``n`` random square crops of the colour-converted bundled photos (cycling through them),
    each side ``scale`` x the photo's short side, optionally mirrored at random: a small,
    deterministic corpus for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    photos = [photo(p).convert("RGB") for p in PHOTOS]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        s = int(min(w, h) * rng.uniform(*scale))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        crop = im.crop((x, y, x + s, y + s))
        if flip and rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(crop)
    return out


def synthetic(kind: str, size: int = 256, seed: int = 0) -> np.ndarray:
    """A deterministic synthetic RGB image (``size`` x ``size`` x 3 uint8).

    kinds: ``noise`` (uniform random), ``flat`` (one colour), ``gradient`` (smooth ramps),
    ``checker`` (8-pixel checkerboard: hard edges on block boundaries), ``stripes``
    (1-pixel diagonal stripes: worst case for the DCT).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    if kind == "noise":
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    if kind == "flat":
        c = rng.integers(0, 256, 3, dtype=np.uint8)
        return np.broadcast_to(c, (size, size, 3)).copy()
    if kind == "gradient":
        r = x * 255 // max(size - 1, 1)
        g = y * 255 // max(size - 1, 1)
        b = (x + y) * 255 // max(2 * size - 2, 1)
        return np.stack([r, g, b], axis=-1).astype(np.uint8)
    if kind == "checker":
        v = (((x // 8) + (y // 8)) % 2 * 255).astype(np.uint8)
        return np.stack([v, 255 - v, v // 2], axis=-1)
    if kind == "stripes":
        v = (((x + y) % 2) * 255).astype(np.uint8)
        return np.stack([v, v, 255 - v], axis=-1)
    raise KeyError(f"unknown synthetic image {kind!r}; available: {', '.join(SYNTHETIC)}")
