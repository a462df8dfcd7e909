"""Bundled images for tests and demos: real photographs with clear licences (see
``jpeglm/data/assets/images/README.md``) and deterministic synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: the files shipped with the package (images, MNIST digits, demo checkpoints)
ASSETS = Path(__file__).parent / "assets"
IMAGE_DIR = ASSETS / "images"
#: the shipped demo model: an HF folder with its tokenizer
DEMO_CHECKPOINT = ASSETS / "checkpoints" / "mnist32"
#: the shipped AVC-LM demo model (64x64 Moving-MNIST H.264 clips; scripts/train_video_demo.sh)
VIDEO_CHECKPOINT = ASSETS / "checkpoints" / "moving_mnist64"
#: the shipped class-conditional demo model (32x32 digits, classes "0".."9", guidance scale and
#: sampling settings in its record; scripts/train_cond_demo.sh)
COND_CHECKPOINT = ASSETS / "checkpoints" / "mnist32-cond"


def models() -> dict[str, Path]:
    """The bundled models by name (``--model mnist32``): ``"mnist32"``, ``"mnist32-cond"`` and
    ``"moving_mnist64"`` (:data:`DEMO_CHECKPOINT`, :data:`COND_CHECKPOINT`,
    :data:`VIDEO_CHECKPOINT`), then any other folder under ``assets/checkpoints``; only those
    whose folder exists."""
    named = {"mnist32": DEMO_CHECKPOINT, "mnist32-cond": COND_CHECKPOINT,
             "moving_mnist64": VIDEO_CHECKPOINT}  # fmt: skip
    shelf = ASSETS / "checkpoints"
    if shelf.is_dir():
        for d in sorted(shelf.iterdir()):
            if d.is_dir() and d.name not in named:
                named[d.name] = d
    return {name: folder for name, folder in named.items() if folder.is_dir()}


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


MNIST_FILE = ASSETS / "mnist" / "mnist_5k.npz"


def mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 bundled MNIST digits: images (5000, 28, 28) uint8 and labels (5000,) uint8
    (see ``jpeglm/data/assets/mnist/README.md`` for source and licence)."""
    with np.load(MNIST_FILE, allow_pickle=False) as f:
        return f["images"], f["labels"]


def mnist_split(held_per_digit: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A split of :func:`mnist` stratified by label: the last ``held_per_digit`` images of each
    digit are held out, the rest are for training. Returns (train_idx, held_idx), both sorted.

    (The bundled digits are sorted by label, so a split by position would hold out 9s only.)"""
    _, labels = mnist()
    if not 0 < held_per_digit < np.bincount(labels).min():
        raise ValueError(f"held_per_digit={held_per_digit} leaves a digit with no training images")
    held = np.concatenate(
        [np.flatnonzero(labels == d)[-held_per_digit:] for d in np.unique(labels)]
    )
    held.sort()
    train = np.setdiff1d(np.arange(len(labels)), held)
    return train, held


def mnist_folder(
    root: str | Path,
    split: str = "train",
    held_per_digit: int = 50,
    *,
    copies: int = 1,
    folders: bool = True,
) -> tuple[Path, int]:
    """Write bundled MNIST digits as an ImageFolder tree, ``root/<digit>/<index>.png``
    (``index`` the digit's position in :func:`mnist`, 4 digits), so that ``jpeglm prepare root
    OUT --labels`` reads their labels from the folder names; ``folders=False``: all in ``root``
    (no labels). ``split``: ``"train"`` or ``"held"`` -- :func:`mnist_split`'s stratified halves
    (the last ``held_per_digit`` of each digit held out, as the demo scripts split them) -- or
    ``"all"``. ``copies``: each digit is written as is and ``copies - 1`` times rotated by up to
    12 degrees and shifted by up to 2 pixels (``<index>_<k>.png``, ``k`` 0 the digit as is;
    seeded: the demo scripts' augmentation, the same images every time). ``root`` must be a new
    or empty folder (ValueError otherwise: nothing of anyone else's is overwritten). Returns
    ``(root, images written)``."""
    if split not in ("train", "held", "all"):
        raise ValueError(f"split must be 'train', 'held' or 'all', got {split!r}")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be an integer >= 1, got {copies!r}")
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root} is not an empty folder: give a new one for the MNIST tree")
    x, labels = mnist()
    if split == "all":
        idx = np.arange(len(labels))
    else:
        idx = mnist_split(held_per_digit)[0 if split == "train" else 1]
    root.mkdir(parents=True, exist_ok=True)
    for d in np.unique(labels[idx]) if folders else ():
        (root / str(int(d))).mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in idx:
        folder = root / str(int(labels[i])) if folders else root
        for k in range(copies):
            im = Image.fromarray(x[i])
            if k:
                dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
                im = im.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR,
                               translate=(dx, dy))  # fmt: skip
            im.save(folder / (f"{int(i):04d}.png" if copies == 1 else f"{int(i):04d}_{k}.png"))
    return root, len(idx) * copies


def moving_mnist(
    n: int,
    frames: int = 15,
    size: int = 64,
    digits: int = 2,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    """``n`` Moving-MNIST clips ``(n, frames, size, size)`` uint8 (Srivastava et al., 2015):
    ``digits`` bundled digits each moving in a straight line at a random speed and bouncing
    off the edges, overlaps combined by maximum. Deterministic for ``seed``; ``indices`` picks
    the digits from (e.g. a held-out split), all 5,000 by default."""
    if n < 0 or frames <= 0 or size < 28 or digits <= 0:
        raise ValueError("n >= 0, frames > 0, size >= 28 and digits > 0 are required")
    x, _ = mnist()
    pool = np.arange(len(x)) if indices is None else np.asarray(indices)
    rng = np.random.default_rng(seed)
    span = size - 28
    out = np.zeros((n, frames, size, size), np.uint8)
    for i in range(n):
        for d in pool[rng.integers(0, len(pool), digits)]:
            pos = rng.uniform(0, span, 2)
            angle = rng.uniform(0, 2 * np.pi)
            vel = rng.uniform(2.0, 5.0) * np.array([np.sin(angle), np.cos(angle)])
            for t in range(frames):
                y, xx = int(round(pos[0])), int(round(pos[1]))
                region = out[i, t, y : y + 28, xx : xx + 28]
                np.maximum(region, x[d], out=region)
                pos = pos + vel
                for k in range(2):  # bounce (clipped: a fast digit in a small frame)
                    if pos[k] < 0:
                        pos[k], vel[k] = -pos[k], -vel[k]
                    elif pos[k] > span:
                        pos[k], vel[k] = 2 * span - pos[k], -vel[k]
                    pos[k] = min(max(pos[k], 0.0), float(span))
    return out


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
