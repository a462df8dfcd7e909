"""jpeglm.eval.fid: the FID Inception port (pytorch-fid's state-dict names and shapes, its parameter
count, loading its weight file and refusing bad ones), torchmetrics' FID arithmetic against a
numpy / scipy reference (pytorch-fid's ``calculate_frechet_distance`` formula) on synthetic
features, :func:`jpeglm.eval.fid.fid` end to end, and ``jpeglm eval --fid-weights``.

The real weights (pt_inception-2015-12-05-6726825d.pth) are not here: the networks below carry
random weights, so their FIDs check plumbing, not values. The Inception forward resizes every
image to 299 x 299 and the Fréchet distance of 2048 features takes an eigendecomposition of a
2048 x 2048 matrix: the tests use a handful of images and few FIDs of that size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jpeglm.eval.fid import FIDInception, fid  # noqa: E402

# ------------------------------------------------------------------------------------------------
# The architecture: pytorch-fid's fid_inception_v3() is torchvision's Inception3(num_classes=1008,
# aux_logits=False) with the FID variants of some blocks (same parameters, other pooling). Its
# BasicConv2d modules, by name, from torchvision/models/inception.py:
STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
BLOCK_A = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
           "branch3x3dbl_3", "branch_pool"]  # fmt: skip
BLOCK_B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
BLOCK_C = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1",
           "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5",
           "branch_pool"]  # fmt: skip
BLOCK_D = ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3",
           "branch7x7x3_4"]  # fmt: skip
BLOCK_E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
           "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]  # fmt: skip
BLOCKS = {"Mixed_5b": BLOCK_A, "Mixed_5c": BLOCK_A, "Mixed_5d": BLOCK_A, "Mixed_6a": BLOCK_B,
          "Mixed_6b": BLOCK_C, "Mixed_6c": BLOCK_C, "Mixed_6d": BLOCK_C, "Mixed_6e": BLOCK_C,
          "Mixed_7a": BLOCK_D, "Mixed_7b": BLOCK_E, "Mixed_7c": BLOCK_E}  # fmt: skip
CONVS = STEM + [f"{b}.{c}" for b, convs in BLOCKS.items() for c in convs]
BN = ("weight", "bias", "running_mean", "running_var")
#: the state dict pytorch-fid loads (num_batches_tracked counters aside: optional, see below)
PYTORCH_FID_KEYS = {f"{c}.conv.weight" for c in CONVS} | {
    f"{c}.bn.{b}" for c in CONVS for b in BN} | {"fc.weight", "fc.bias"}  # fmt: skip
#: shapes worked out by hand from torchvision's layer definitions (out, in, kh, kw)
SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch1x1.conv.weight": (320, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.bias": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
# torchvision documents inception_v3 (aux_logits=True, 1000 classes) as 27,161,264 parameters
# (Inception_V3_Weights.IMAGENET1K_V1.meta["num_params"]). Less the auxiliary classifier
# (conv0 768*128 + 2*128, conv1 128*768*25 + 2*768, fc 768*1000 + 1000: 3,326,696), with the
# 1008-class fc (+8*2048 + 8 = 16,392): 23,850,960 for pytorch-fid's FID Inception.
FID_INCEPTION_PARAMS = 27_161_264 - 3_326_696 + 16_392


def test_state_dict_is_pytorch_fids():
    net = FIDInception()
    sd = net.state_dict()
    counters = {k for k in sd if k.endswith(".num_batches_tracked")}
    assert counters == {f"{c}.bn.num_batches_tracked" for c in CONVS}
    assert set(sd) - counters == PYTORCH_FID_KEYS
    assert len(CONVS) == 94 and len(PYTORCH_FID_KEYS) == 94 * 5 + 2
    for k, shape in SHAPES.items():
        assert tuple(sd[k].shape) == shape, k
    assert FID_INCEPTION_PARAMS == 23_850_960
    assert sum(p.numel() for p in net.parameters()) == FID_INCEPTION_PARAMS
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert not net.train().training  # a fixed feature extractor
    assert net.num_features == 2048  # what torchmetrics reads instead of a trial forward


def _random_state(seed: int = 0) -> dict:
    """Weights that keep activations alive through 94 layers (He-scaled convolutions, batch
    norms of random statistics), without num_batches_tracked (as a converted file may be)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in FIDInception().state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.endswith(("running_var", "bn.weight")):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bn.bias")):
            out[k] = torch.randn(v.shape, generator=g) * 0.1
        else:
            out[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel())
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A pytorch-fid-format file of random weights: (path, the state saved)."""
    path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
    state = _random_state()
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def net(weights):
    return FIDInception.from_file(weights[0])


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_from_file_round_trip(weights, net, tmp_path):
    path, state = weights
    sd = net.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(sd[k], v, rtol=0, atol=0)
    x = torch.from_numpy(_images(2)).permute(0, 3, 1, 2)
    f = net(x)
    assert f.shape == (2, 2048) and f.dtype == torch.float64 and torch.isfinite(f).all()
    assert (f >= 0).all() and f.abs().max() > 0.1  # pooled ReLUs, not vanished
    torch.testing.assert_close(net(x), f, rtol=0, atol=0)  # deterministic
    torch.testing.assert_close(net(x.float() / 255), f, rtol=0, atol=0)  # [0, 1] floats alike
    torch.testing.assert_close(net(x[1:2]), f[1:2], rtol=1e-5, atol=1e-5)  # per image
    # with the counters, as a state_dict() saved by PyTorch has them
    full = tmp_path / "with_counters.pth"
    torch.save(net.state_dict(), full)
    torch.testing.assert_close(FIDInception.from_file(full)(x[:1]), f[:1], rtol=0, atol=0)


def test_bad_weight_files(weights, tmp_path):
    path, state = weights
    cases = {}
    cases["absent.pth"] = None
    (tmp_path / "truncated.pth").write_bytes(path.read_bytes()[:4096])
    cases["truncated.pth"] = "not a readable PyTorch weight file"
    (tmp_path / "text.pth").write_text("hello")
    cases["text.pth"] = "not a readable PyTorch weight file"
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    cases["list.pth"] = "not a state dict"
    torch.save({"model": state}, tmp_path / "nested.pth")
    cases["nested.pth"] = "not a state dict"
    torch.save({k: v for k, v in state.items() if k != "Mixed_6c.branch7x7_3.bn.running_var"},
               tmp_path / "missing.pth")  # fmt: skip
    cases["missing.pth"] = "1 missing (Mixed_6c.branch7x7_3.bn.running_var)"
    torch.save({**state, "AuxLogits.fc.weight": torch.zeros(1008, 768)}, tmp_path / "extra.pth")
    cases["extra.pth"] = "1 unexpected (AuxLogits.fc.weight)"
    torch.save({**state, "fc.weight": torch.zeros(1000, 2048)}, tmp_path / "shape.pth")
    cases["shape.pth"] = "fc.weight (1000, 2048) (expected (1008, 2048))"
    torch.save({**state, "fc.bias": torch.zeros(1008, dtype=torch.int64)}, tmp_path / "int.pth")
    cases["int.pth"] = "fc.bias is torch.int64"
    torch.save({**state, "fc.bias": torch.full((1008,), math.nan)}, tmp_path / "nan.pth")
    cases["nan.pth"] = "non-finite"
    for name, words in cases.items():
        with pytest.raises(ValueError, match="FID weights") as e:
            FIDInception.from_file(tmp_path / name)
        msg = str(e.value)
        assert name in msg and "\n" not in msg, msg
        assert (words or "no such file") in msg, msg


def test_pickled_code_is_not_run(tmp_path):
    """weights_only: a file that would run code on loading is refused, not run."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"fc.weight": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pth: not a readable PyTorch weight file"):
        FIDInception.from_file(tmp_path / "evil.pth")


# ------------------------------------------------------------------------------------------------
# The arithmetic: torchmetrics' FID over known features against pytorch-fid's formula.


def reference_fid(x: np.ndarray, y: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance on the statistics of feature rows ``x``, ``y``:
    ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrtm(S1 S2)), unbiased covariances (np.cov)."""
    linalg = pytest.importorskip("scipy.linalg")
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "singular matrix" for fewer samples than features
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


class _FeatureTable(torch.nn.Module):
    """A feature extractor whose "images" are row numbers of a fixed float64 feature table."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float64)
        self.num_features = table.shape[1]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table[rows]


def torchmetrics_fid(x: np.ndarray, y: np.ndarray, batch: int = 7) -> float:
    """torchmetrics' FrechetInceptionDistance fed the rows of ``x`` (real) and ``y`` (fake)
    in batches, as :func:`jpeglm.eval.fid.fid` feeds images."""
    tm = pytest.importorskip("torchmetrics.image.fid")
    metric = tm.FrechetInceptionDistance(feature=_FeatureTable(np.concatenate([x, y])))
    for start, n, real in ((0, len(x), True), (len(x), len(y), False)):
        for s in range(start, start + n, batch):
            metric.update(torch.arange(s, min(s + batch, start + n)), real=real)
    return float(metric.compute())


@pytest.mark.parametrize("d,n,m", [(16, 200, 150), (16, 10, 12), (64, 30, 40), (3, 2, 2)])
def test_torchmetrics_fid_matches_reference(d, n, m):
    """Correlated Gaussians of different means and covariances, also with fewer samples than
    features (singular covariances, as FID of a few dozen images over 2048 features)."""
    rng = np.random.default_rng(d * 1000 + n)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 0.3
    y = rng.normal(size=(m, d)) @ (0.5 * rng.normal(size=(d, d)))
    want = reference_fid(x, y)
    assert want > 0
    assert torchmetrics_fid(x, y) == pytest.approx(want, rel=1e-6)
    assert torchmetrics_fid(y, x) == pytest.approx(want, rel=1e-6)  # symmetric


def test_torchmetrics_fid_closed_forms():
    """N(0, I) vs N(mu, I): ||mu||^2; N(0, I) vs N(0, 9 I): d (3 - 1)^2; within sampling error
    (20,000 samples of 8 features: the mean term's spread is about 2 ||mu|| sqrt(2 / n))."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20_000, 8)), rng.normal(size=(20_000, 8))
    mu = np.array([1.0, 1, 1, 1, 0, 0, 0, 0])
    assert torchmetrics_fid(x, y + mu, batch=4096) == pytest.approx(4.0, abs=0.15)
    assert torchmetrics_fid(x, 3 * y, batch=4096) == pytest.approx(8 * 4.0, rel=0.02)
    assert torchmetrics_fid(x, y, batch=4096) == pytest.approx(0.0, abs=0.01)
    assert torchmetrics_fid(x[:50], x[:50]) == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------------------------------------
# fid() end to end


def test_fid_end_to_end_identical_sets(net):
    """Four random 32x32 images against themselves through the random-weight network: the
    whole path (uint8 -> 299 x 299 -> 2048 features -> torchmetrics) gives 0 up to the noise of
    the square root of a rank-3 2048 x 2048 product (about 1e-4 here). The same path with
    different sets is ``jpeglm eval --fid-weights`` below."""
    pytest.importorskip("torchmetrics.image.fid")
    a = _images(4)
    value = fid(a, a, net, batch_size=3)
    assert isinstance(value, float) and math.isfinite(value)
    assert abs(value) < 1e-2


def test_fid_inputs(net, monkeypatch):
    """Grey images become three equal channels; fewer than 2 images, other dtypes and shapes
    are refused before any feature is computed; without torchmetrics, the pip command."""
    from jpeglm.eval.fid import _as_nchw

    grey = _images(3)[..., 0]
    t = _as_nchw(grey, "real")
    assert t.shape == (3, 3, 32, 32) and t.dtype == torch.uint8
    assert (t[:, 0] == t[:, 2]).all() and (t[:, 1] == torch.from_numpy(grey)).all()
    assert _as_nchw(list(_images(2)), "fake").shape == (2, 3, 32, 32)  # a list of images
    pytest.importorskip("torchmetrics.image.fid")
    with pytest.raises(ValueError, match="at least 2 fake images, got 1"):
        fid(_images(3), _images(1), net)
    with pytest.raises(ValueError, match="must be uint8"):
        fid(_images(3).astype(np.float32), _images(3), net)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        fid(_images(3)[..., :2], _images(3), net)
    with pytest.raises(ValueError, match="no such file"):
        fid(_images(3), _images(3), "/nonexistent/pt_inception.pth")
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'jpeglm\[fid\]'"):
        fid(_images(3), _images(3), net)


def test_import_needs_no_torchmetrics():
    code = ("import sys; sys.modules['torchmetrics'] = None; import jpeglm.eval.fid; "
            "assert 'torchmetrics.image.fid' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------------------------------
# jpeglm eval --fid-weights


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, make_tiny_model, small_tokenizer):
    """A tiny random 32x32 image model as an HF folder with its tokenizer and record."""
    from jpeglm.checkpoint import hf

    d = tmp_path_factory.mktemp("fid_model")
    tok_file = d / "tok.jpeglm"
    small_tokenizer.save(tok_file)
    model = make_tiny_model(small_tokenizer.vocab_size)
    tok = small_tokenizer
    meta = {"image_size": 32, "quality": 25, "kind": "image", "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id}  # fmt: skip
    return hf.save_hf(d / "model", model.args, model.state_dict(), tokenizer=tok_file,
                      metadata=meta)  # fmt: skip


def _eval_args(model_dir, out, *more) -> list[str]:
    from jpeglm.data import bundled as samples

    imgs = [str(p) for p in samples.photo_paths()[:2]]
    return ["eval", "--model", str(model_dir), "--size", "32", "--rows", "1", "--max-tokens",
            "1500", "-o", str(out), *more, *imgs]  # fmt: skip


def test_eval_fid_refused_before_sampling(model_dir, weights, tmp_path, capsys, monkeypatch):
    """A missing or bad weights file, too few samples or images, --fid-samples alone: one
    line, exit 2, before the model is loaded (nothing sampled, no output folder)."""
    from jpeglm.cli import main
    from jpeglm.cli import model as model_commands
    from jpeglm.data import bundled as samples

    def no(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(model_commands, "_load_model", no)
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02garbage")
    one_image = str(samples.photo_paths()[0])
    cases = [
        (["--fid-weights", str(tmp_path / "missing.pth")], "missing.pth: no such file"),
        (["--fid-weights", str(tmp_path / "bad.pth")], "bad.pth: not a readable PyTorch"),
        (["--fid-weights", str(weights[0]), "--fid-samples", "1"], "--fid-samples must be >= 2"),
        (["--fid-samples", "8"], "--fid-samples needs --fid-weights"),
    ]
    for more, words in cases:
        out = tmp_path / "out"
        assert main(_eval_args(model_dir, out, *more)) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
        assert not out.exists()
    args = _eval_args(model_dir, tmp_path / "out", "--fid-weights", str(weights[0]))
    args = [a for a in args if not a.endswith(".png")] + [one_image]
    assert main(args) == 2
    assert "FID needs at least 2 held-out images, got 1" in capsys.readouterr().err


def test_eval_fid_refused_for_video_models(model_dir, tmp_path, capsys):
    import shutil

    from jpeglm.cli import main

    video = tmp_path / "video_model"
    shutil.copytree(model_dir, video)
    meta = json.loads((video / "jpeglm.json").read_text())
    (video / "jpeglm.json").write_text(json.dumps({**meta, "kind": "video", "video": {}}))
    args = ["eval", "--model", str(video), "-o", str(tmp_path / "o"), "--fid-weights", "w.pth",
            "clip.npy"]  # fmt: skip
    assert main(args) == 2
    assert "--fid-weights is for image models" in capsys.readouterr().err


def test_eval_fid(model_dir, weights, tmp_path, capsys):
    """The whole command with the random-weight network: 2 samples against the 2 held-out
    photos, the figure in results.json and printed (its value means nothing: random weights)."""
    pytest.importorskip("torchmetrics.image.fid")
    from jpeglm.cli import main

    out = tmp_path / "e"
    more = ["--fid-weights", str(weights[0]), "--fid-samples", "2"]
    assert main(_eval_args(model_dir, out, *more)) == 0
    res = json.loads((out / "results.json").read_text())
    got = res["fid"]
    assert set(got) == {"value", "samples", "reference_images", "weights"}
    assert got["samples"] == 2 and got["reference_images"] == 2
    assert got["weights"] == "pt_inception-random.pth"  # the file's name, not its path
    assert math.isfinite(got["value"]) and got["value"] > 0
    assert '"fid"' in capsys.readouterr().out
