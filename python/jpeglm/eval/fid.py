"""Fréchet Inception Distance (FID) from local Inception weights; nothing is downloaded.

* :class:`FIDInception`: the Inception-v3 that FID is defined with (TensorFlow's 2015-12-05
  graph, as ported to PyTorch by pytorch-fid), written in plain PyTorch -- no torchvision. Its
  module names are pytorch-fid's (torchvision's ``Inception3`` with 1008 classes and no
  auxiliary classifier, the FID variants of blocks 5b-5d, 6b-6e, 7b and 7c), so pytorch-fid's
  weight file ``pt_inception-2015-12-05-6726825d.pth`` loads into it as it is
  (:meth:`FIDInception.from_file`). Its features are pytorch-fid's: the 2048 outputs of the
  last average pooling, for images resized to 299 x 299 (bilinear, ``align_corners=False``)
  and scaled to [-1, 1].
* :func:`fid`: FID between two sets of images by torchmetrics'
  ``FrechetInceptionDistance`` with :class:`FIDInception` as its feature extractor: the
  statistics and the Fréchet distance are torchmetrics' own (``pip install 'jpeglm[fid]'``).

Where the blocks differ from torchvision's Inception-v3 (as in pytorch-fid): the average
pools inside blocks A, C and the first E leave the zero padding out of their averages
(TensorFlow's), and the last E block pools by max, not average.

FID from a few dozen images is a rough, biased figure (it falls as the sets grow): compare
numbers only at equal set sizes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jpeglm._io import show

__all__ = ["FIDInception", "fid", "FID_WEIGHTS_FILE", "FEATURES"]

#: The name pytorch-fid gives its weight file (its releases, ``fid_weights``).
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
#: Feature dimension: the pool3 outputs.
FEATURES = 2048
_INPUT_SIZE = 299


class _Conv(nn.Module):
    """Convolution without bias, batch norm (eps 0.001), ReLU: torchvision's ``BasicConv2d``."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 average, stride 1, padded by 1, the padding not counted (as TensorFlow pools)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _chain(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


class _InceptionA(nn.Module):
    """Blocks Mixed_5b..5d (35 x 35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _chain(x, self.branch5x5_1, self.branch5x5_2),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)  # fmt: skip


class _InceptionB(nn.Module):
    """Block Mixed_6a (35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            F.max_pool2d(x, 3, stride=2),
        ], 1)  # fmt: skip


class _InceptionC(nn.Module):
    """Blocks Mixed_6b..6e (17 x 17), factorised 7x7 convolutions of ``c7`` channels."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row, col = {"padding": (0, 3)}, {"padding": (3, 0)}  # 1x7 and 7x1
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), **row)
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), **col)
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), **col)
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), **row)
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), **col)
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), **row)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
            _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                   self.branch7x7dbl_4, self.branch7x7dbl_5),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)  # fmt: skip


class _InceptionD(nn.Module):
    """Block Mixed_7a (17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            _chain(x, self.branch3x3_1, self.branch3x3_2),
            _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                   self.branch7x7x3_4),
            F.max_pool2d(x, 3, stride=2),
        ], 1)  # fmt: skip


class _InceptionE(nn.Module):
    """Blocks Mixed_7b and 7c (8 x 8), split 1x3 / 3x1 branches. ``max_pool``: the pool branch
    takes a 3x3 max (the FID network's Mixed_7c) instead of the TensorFlow average."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        row, col = {"padding": (0, 1)}, {"padding": (1, 0)}  # 1x3 and 3x1
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), **row)
        self.branch3x3_2b = _Conv(384, 384, (3, 1), **col)
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), **row)
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), **col)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled),
        ], 1)  # fmt: skip


class FIDInception(nn.Module):
    """pytorch-fid's FID Inception-v3, returning the 2048 pool3 features per image.

    Always in eval mode (batch norm uses the stored statistics), its parameters frozen. The
    classifier ``fc`` (2048 -> 1008) is kept only so that pytorch-fid's state dict loads
    strictly; the features do not use it. ``num_features`` tells torchmetrics the feature
    size (so it needs no trial forward).
    """

    num_features: int = FEATURES

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, 1008)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FIDInception:
        """A fixed feature extractor: stays in eval mode whatever ``mode`` says."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``images``, ``(N, 3, H, W)``: uint8 in 0..255 or floats in [0, 1]
        (pytorch-fid's input, ``ToTensor()`` of the images). Returns ``(N, 2048)`` float64
        (computed in float32, as pytorch-fid does; float64 so that the FID is summed in it)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        dtype = self.fc.weight.dtype
        if images.dtype == torch.uint8:
            x = images.to(dtype) / 255
        elif images.is_floating_point():
            x = images.to(dtype)
        else:
            raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
        x = F.interpolate(x, size=(_INPUT_SIZE, _INPUT_SIZE), mode="bilinear",
                          align_corners=False)  # fmt: skip
        x = 2 * x - 1
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)
        x = F.max_pool2d(x, 3, stride=2)
        x = _chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)
        x = F.max_pool2d(x, 3, stride=2)
        x = _chain(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                   self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                   self.Mixed_7c)  # fmt: skip
        return F.adaptive_avg_pool2d(x, 1).flatten(1).double()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> FIDInception:
        """The network with pytorch-fid's weights (``pt_inception-2015-12-05-6726825d.pth``,
        a plain state dict) read from ``path`` without running any pickled code
        (``weights_only``). Batch norms' ``num_batches_tracked`` counters may be absent (they
        do not change the features). A missing or unreadable file, anything but a state dict
        of tensors, and missing, unexpected, misshapen, non-float or non-finite entries are a
        ``ValueError`` naming the file."""
        name = show(path)
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"FID weights {name}: no such file")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for a bad file: one line each
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"FID weights {name}: not a readable PyTorch weight file "
                             f"({type(e).__name__}: {first})") from None  # fmt: skip
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise ValueError(f"FID weights {name}: not a state dict of tensors "
                             f"(expected pytorch-fid's {FID_WEIGHTS_FILE})")  # fmt: skip
        model = cls()
        own = model.state_dict()
        optional = {k for k in own if k.endswith(".num_batches_tracked")}
        missing = sorted(set(own) - set(state) - optional)
        unexpected = sorted(set(state) - set(own))
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing ({_some(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
        wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]  # fmt: skip
        if wrong:
            problems.append(f"{len(wrong)} of the wrong shape ({_some(wrong)})")
        if problems:
            raise ValueError(f"FID weights {name}: not pytorch-fid's Inception ({FID_WEIGHTS_FILE})"
                             f": entries {'; '.join(problems)}")  # fmt: skip
        for k in own:
            if k in optional:
                continue
            t = state[k]
            if not t.is_floating_point():
                raise ValueError(f"FID weights {name}: {k} is {t.dtype}, not floating point")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"FID weights {name}: {k} has non-finite values")
        full = {**{k: own[k] for k in optional}, **state}
        model.load_state_dict(full, strict=True)
        return model


def _some(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def _as_nchw(images: np.ndarray | Sequence[np.ndarray], what: str) -> torch.Tensor:
    """``(N, H, W, 3)`` or grey ``(N, H, W)`` uint8 (an array or a sequence of equal-sized
    images) as an ``(N, 3, H, W)`` uint8 tensor."""
    arr = np.asarray(images) if isinstance(images, np.ndarray) else np.stack(list(images))
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} images must be uint8, got {arr.dtype}")
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{what} images must be (N, H, W, 3) or (N, H, W), got {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 {what} images, got {arr.shape[0]}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


def fid(
    real_images: np.ndarray | Sequence[np.ndarray],
    fake_images: np.ndarray | Sequence[np.ndarray],
    weights: str | os.PathLike | FIDInception,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> float:
    """FID between ``real_images`` and ``fake_images`` (each ``(N, H, W, 3)`` uint8, or grey
    ``(N, H, W)``, repeated to three channels; at least 2 images a set), computed by
    torchmetrics' ``FrechetInceptionDistance`` on :class:`FIDInception` features.
    ``weights``: pytorch-fid's weight file (see :meth:`FIDInception.from_file`) or a
    network already loaded. Needs torchmetrics (``pip install 'jpeglm[fid]'``)."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        raise ImportError("FID needs torchmetrics: pip install 'jpeglm[fid]'") from None
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    real = _as_nchw(real_images, "real")
    fake = _as_nchw(fake_images, "fake")
    net = weights if isinstance(weights, FIDInception) else FIDInception.from_file(weights)
    metric = FrechetInceptionDistance(feature=net, normalize=False).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for s in range(0, images.shape[0], batch_size):
            metric.update(images[s : s + batch_size].to(device), real=is_real)
    return float(metric.compute())
