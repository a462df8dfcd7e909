"""A digit judge: does a generated 32x32 image look like an MNIST digit, and which one?

A small MLP (1024 -> 256 -> 11) trained in a few seconds on CPU on the bundled training digits
(:func:`jpeglm.data.bundled.mnist_split`, the held-out digits never seen) after the canonical round
trip (32x32, quality 25, decoded, grey), each also shifted by up to 2 pixels. An eleventh class,
"not a digit", is trained on images that must not pass: uniform noise, flat grey, random block
mosaics (grey and coloured), pixel-shuffled digits, all through the same JPEG round trip. An
image is *recognised* when the judge gives one digit at least ``threshold`` (0.9) probability.

The weights live in memory only (:func:`default_judge` trains once per process, seeded, ~5 s).
:func:`calibration` gives the figures that keep the judge honest: real held-out digits mostly
pass, noise, grey and garbage almost never.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from jpeglm import codec
from jpeglm.data import bundled as samples

SIZE = 32
NOT_A_DIGIT = 10


def _grey(images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Images as (N, 32, 32) float32 grey in [0, 1]. Raw 28x28 digits and any image that is not
    32x32 go through the canonical round trip first (encode at 32x32, q25, decode)."""
    out = []
    for im in images:
        im = np.asarray(im)
        if im.shape[:2] != (SIZE, SIZE):
            im = codec.decode(codec.encode(im, size=SIZE))
        if im.ndim == 3:
            im = im[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        out.append(np.asarray(im, np.float32) / 255.0)
    return np.stack(out) if out else np.zeros((0, SIZE, SIZE), np.float32)


def _round_trip(rgb: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> (N, 32, 32) grey float after encode/decode at q25."""
    streams = codec.encode_batch(np.ascontiguousarray(rgb), size=SIZE, threads=1)
    return _grey([codec.decode(s) for s in streams])


def _to_rgb32(digits: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 digits -> (N, 32, 32, 3) uint8 as :func:`codec.prepare` makes them."""
    return np.stack([codec.prepare(d, size=SIZE) for d in digits])


def _shift(im: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(im)
    h, w = im.shape[:2]
    src = im[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def negatives(n: int, seed: int) -> np.ndarray:
    """``n`` RGB 32x32 uint8 images that are not digits: uniform noise, flat grey, grey and
    coloured block mosaics (8x8 and 16x16 blocks, the look of an untrained JPEG-LM's samples),
    pixel-shuffled digits (a digit's ink, no shape)."""
    rng = np.random.default_rng(seed)
    digits, _ = samples.mnist()
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        kind = i % 6
        if kind == 0:  # uniform noise, grey or colour
            c = 1 if rng.random() < 0.5 else 3
            out[i] = rng.integers(0, 256, (SIZE, SIZE, c), dtype=np.uint8)
        elif kind == 1:  # flat grey with a little noise
            v = rng.integers(0, 256)
            out[i] = np.clip(v + rng.normal(0, rng.uniform(0, 8), (SIZE, SIZE, 1)), 0, 255)
        elif kind in (2, 3):  # block mosaics
            b = 8 if rng.random() < 0.5 else 16
            c = 1 if kind == 2 else 3
            k = SIZE // b
            blocks = rng.integers(0, 256, (k, k, c)).astype(np.uint8)
            if rng.random() < 0.5:  # mostly dark, like digit backgrounds
                blocks = (blocks * (rng.random((k, k, 1)) < 0.4)).astype(np.uint8)
            out[i] = np.repeat(np.repeat(blocks, b, 0), b, 1)
        elif kind == 4:  # a digit's pixels shuffled
            d = codec.prepare(digits[rng.integers(len(digits))], size=SIZE)
            flat = d.reshape(-1, 3).copy()
            rng.shuffle(flat)
            out[i] = flat.reshape(SIZE, SIZE, 3)
        else:  # smooth random field (low-frequency blobs)
            g = rng.normal(0, 1, (4, 4))
            up = np.kron(g, np.ones((8, 8)))
            up = (up - up.min()) / (np.ptp(up) + 1e-6) * 255
            out[i] = up[..., None].astype(np.uint8)
    return out


class Judge:
    """The trained classifier; :meth:`proba` gives (N, 11) probabilities (class 10: not a
    digit), :meth:`score` the share recognised and the distinct digits among them."""

    def __init__(self, state: dict[str, np.ndarray]):
        self.state = state

    def proba(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        x = _grey(images).reshape(-1, SIZE * SIZE)
        s = self.state
        h = np.maximum(0, (x - s["mean"]) @ s["w1"] + s["b1"])
        z = h @ s["w2"] + s["b2"]
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def score(self, images: Sequence[np.ndarray] | np.ndarray, threshold: float = 0.9) -> dict:
        """``share``: images given one digit with probability >= ``threshold``; ``distinct``:
        how many different digits those are; ``digits``: count per digit among them."""
        p = self.proba(images)
        if len(p) == 0:
            raise ValueError("no images to judge")
        best = p[:, :NOT_A_DIGIT].argmax(axis=1)
        ok = p[np.arange(len(p)), best] >= threshold
        counts = np.bincount(best[ok], minlength=10)
        return {
            "n": len(p),
            "share": float(ok.mean()),
            "distinct": int((counts > 0).sum()),
            "digits": counts.tolist(),
            "threshold": threshold,
        }


def train_judge(seed: int = 0, epochs: int = 12, hidden: int = 256) -> Judge:
    """Train the judge on the training part of :func:`samples.mnist_split` (round-tripped, each
    digit also shifted twice by up to 2 px) and 6,000 non-digits. A few seconds on one core."""
    import torch

    rng = np.random.default_rng(seed)
    digits, labels = samples.mnist()
    train_idx, _ = samples.mnist_split()
    rgb = _to_rgb32(digits[train_idx])
    variants = [rgb]
    for _ in range(2):
        d = rng.integers(-2, 3, (len(rgb), 2))
        variants.append(np.stack([_shift(im, int(a), int(b)) for im, (a, b) in zip(rgb, d)]))
    pos = _round_trip(np.concatenate(variants))
    ypos = np.tile(labels[train_idx], len(variants)).astype(np.int64)
    neg = negatives(6000, seed + 1)
    xneg = np.concatenate([_round_trip(neg[:3000]), _grey(neg[3000:])])  # with and without JPEG
    x = np.concatenate([pos, xneg]).reshape(-1, SIZE * SIZE)
    y = np.concatenate([ypos, np.full(len(xneg), NOT_A_DIGIT, np.int64)])
    mean = x.mean(axis=0)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            net = torch.nn.Sequential(
                torch.nn.Linear(SIZE * SIZE, hidden),
                torch.nn.ReLU(),
                torch.nn.Dropout(0.2),
                torch.nn.Linear(hidden, NOT_A_DIGIT + 1),
            )
            opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
            xt = torch.from_numpy(x - mean)
            yt = torch.from_numpy(y)
            g = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                for idx in torch.randperm(len(xt), generator=g).split(128):
                    loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        finally:
            torch.set_num_threads(threads)
    w = [p.detach().numpy().astype(np.float32) for p in net.parameters()]
    names = ("w1", "b1", "w2", "b2")
    state = {k: (v.T.copy() if k[0] == "w" else v) for k, v in zip(names, w)}
    return Judge({"mean": mean.astype(np.float32), **state})


@functools.lru_cache(maxsize=1)
def default_judge() -> Judge:
    """The judge with seed 0, trained once per process."""
    return train_judge()


def held_out_digits() -> np.ndarray:
    """The held-out digits of :func:`samples.mnist_split` after the canonical round trip, as
    (500, 32, 32, 3) uint8 -- what a perfect 32x32 model would draw."""
    digits, _ = samples.mnist()
    _, held = samples.mnist_split()
    return np.stack([codec.decode(codec.encode(d, size=SIZE)) for d in digits[held]])


def calibration(judge: Judge | None = None, n: int = 300, threshold: float = 0.9) -> dict:
    """The judge's pass rates on references: real held-out digits (should mostly pass) and
    fresh non-digits never trained on -- noise, grey, block garbage (should almost never)."""
    judge = judge or default_judge()
    neg = negatives(n, seed=12345)
    rt = np.stack([codec.decode(codec.encode(im, size=SIZE)) for im in neg])
    return {
        "held_out_digits": judge.score(held_out_digits(), threshold),
        "non_digits_jpeg": judge.score(rt, threshold),
        "non_digits_raw": judge.score(neg, threshold),
    }
