"""`jpeglm.data.prepare.prepare` keeps every token (a chunk's tail is carried into the next
shard; only the last sequence is padded), resumes to the same bytes after a kill, and the shared
image listing / loading of the commands that take image files and folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from jpeglm_trainutil import kill_repeatedly

from jpeglm import codec
from jpeglm.data import bundled as samples
from jpeglm.data import index as shard_index
from jpeglm.data import prepare as data
from jpeglm.data.index import RUN, read_index
from jpeglm.data.sources import list_images, list_sources, load_images
from jpeglm.tokenizer import Tokenizer

SIZE = 32


def _crops(n: int, seed: int) -> list:
    return [c.resize((48, 48)) for c in samples.random_crops(n, seed, scale=(0.2, 0.6))]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    streams = [codec.encode(im, size=SIZE) for im in _crops(12, 3)]
    return Tokenizer.train(streams, vocab_size=300, progress=False)


def _folder(root: Path, n: int, seed: int = 0) -> Path:
    root.mkdir(parents=True)
    for i, im in enumerate(_crops(n, seed)):
        im.save(root / f"{i:03d}.png")
    return root


def _prepare(src, out, tok, **kw) -> dict:
    kw = {"size": SIZE, "seq_len": 64, "images_per_shard": 4, "progress": False, **kw}
    return data.prepare(src, out, tok, **kw)


def _flat(out: Path, index: dict) -> np.ndarray:
    seqs = [np.load(out / s["file"]) for s in index["shards"] if s["sequences"]]
    return np.concatenate(seqs).reshape(-1)


def _files(out: Path) -> dict[str, bytes]:
    """The folder's files; of the output manifest (whose lines record the history of the
    writes), which names it lists; of ``run.json`` (the run's own times and counts: a resumed
    run read fewer sources), that it is there."""
    from jpeglm._io import OUTPUTS_MANIFEST, owned_outputs

    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    if RUN in files:
        run = json.loads(files[RUN])
        assert run["read"] + run["resumed"] == run["sources"]
        files[RUN] = b"present"
    if OUTPUTS_MANIFEST in files:
        files[OUTPUTS_MANIFEST] = "\n".join(sorted(owned_outputs(out))).encode()
    return files


def _check_index(out: Path, index: dict, seq_len: int) -> None:
    """The index agrees with the shards on disk and its totals add up."""
    assert index["complete"] and index["config"]["seq_len"] == seq_len
    for s in index["shards"]:
        if s["sequences"]:
            assert np.load(out / s["file"]).shape == (s["sequences"], seq_len)
        else:
            assert not (out / s["file"]).exists()  # no empty shard file
        assert "carry" not in s or s is index["shards"][-1]
    assert "dropped_tokens" not in index and index["shards"][-1]["carry_tokens"] == 0
    assert index["pad_tokens"] == index["shards"][-1]["pad_tokens"] < seq_len
    assert index["tokens"] == sum(s["tokens"] for s in index["shards"])
    assert index["tokens"] == index["sequences"] * seq_len - index["pad_tokens"]
    # each shard holds the carry before it, its own tokens and the pad, less its carry on
    carry = 0
    for s in index["shards"]:
        total = carry + s["tokens"] + s.get("pad_tokens", 0)
        assert s["sequences"] * seq_len == total - s["carry_tokens"]
        carry = s["carry_tokens"]


@pytest.mark.parametrize("per_shard, seq_len", [(4, 64), (1, 1000), (3, 333)])
def test_prepare_keeps_every_image(tok, tmp_path, per_shard, seq_len):
    src = _folder(tmp_path / "imgs", 19)
    out = tmp_path / "shards"
    index = _prepare(src, out, tok, seq_len=seq_len, images_per_shard=per_shard)
    assert index["images"] == 19 and index["config"]["pad_id"] == tok.pad_id is not None
    _check_index(out, index, seq_len)
    assert read_index(out) == index
    if per_shard == 1:  # chunks too small for a whole sequence: no file, all carried on
        assert any(s["sequences"] == 0 for s in index["shards"])
    flat = _flat(out, index)
    n_pad = index["pad_tokens"]
    assert n_pad > 0  # 19 small images do not fill whole sequences exactly here
    # the pad is only at the very end: only the final sequence is padded
    assert (flat[len(flat) - n_pad :] == tok.pad_id).all()
    assert not (flat[: len(flat) - n_pad] == tok.pad_id).any()
    body = flat[: len(flat) - n_pad]
    bos = np.flatnonzero(body == tok.bos_id)
    eos = np.flatnonzero(body == tok.eos_id)
    assert len(bos) == len(eos) == 19 and bos[0] == 0 and eos[-1] == len(body) - 1
    assert (bos[1:] == eos[:-1] + 1).all()  # nothing between the streams
    for b, e, p in zip(bos, eos, sorted(src.iterdir())):
        assert tok.decode(body[b + 1 : e].tolist()) == codec.encode(p, size=SIZE)


def test_a_tiny_dataset_gives_one_padded_sequence(tok, tmp_path):
    src = _folder(tmp_path / "imgs", 2)
    out = tmp_path / "shards"
    index = _prepare(src, out, tok, seq_len=4096)
    assert index["sequences"] == 1 and index["images"] == 2
    _check_index(out, index, 4096)
    seq = np.load(out / "shard_000000.npy")[0]
    n = index["tokens"]
    assert index["pad_tokens"] == 4096 - n and (seq[n:] == tok.pad_id).all()
    assert seq[0] == tok.bos_id and seq[n - 1] == tok.eos_id
    pytest.importorskip("torch")
    from jpeglm.data.dataset import ShardDataset

    ds = ShardDataset(out)
    assert len(ds) == 1 and next(iter(ds)).tolist() == seq.tolist()


def test_a_tokenizer_without_pad_drops_only_the_last_partial_sequence(tok, tmp_path):
    n = max(tok.mergeable_ranks.values()) + 1
    nopad = Tokenizer(tok.mergeable_ranks, {"<s>": n, "</s>": n + 1})
    assert nopad.pad_id is None
    src = _folder(tmp_path / "imgs", 9)
    out = tmp_path / "shards"
    index = _prepare(src, out, nopad, seq_len=100, images_per_shard=2)
    assert index["config"]["pad_id"] is None and index["pad_tokens"] == 0
    last = index["shards"][-1]
    assert 0 < last["dropped_tokens"] == index["dropped_tokens"] < 100
    assert all("dropped_tokens" not in s for s in index["shards"][:-1])
    assert index["tokens"] == index["sequences"] * 100 + index["dropped_tokens"]
    # the same tokens as with padding, up to the dropped tail
    padded = _prepare(src, tmp_path / "padded", tok, seq_len=100, images_per_shard=2)
    a, b = _flat(out, index), _flat(tmp_path / "padded", padded)
    assert len(b) == len(a) + 100 and (a == b[: len(a)]).all()
    with pytest.raises(ValueError, match="less than one sequence"):
        _prepare(src, tmp_path / "tiny", nopad, seq_len=1 << 15)
    assert not (tmp_path / "tiny" / "index.json").exists()


class _Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way handles it."""


@pytest.mark.parametrize("when", ["after_index", "after_shard"])
def test_resume_after_a_stop_at_every_shard_is_byte_identical(tok, tmp_path, monkeypatch, when):
    """Stopped after k chunks (right after writing the index, or between a shard and the index
    entry), then resumed: the same files, byte for byte, as an uninterrupted run."""
    src = _folder(tmp_path / "imgs", 15)
    (src / "003_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")  # in chunk 2
    (src / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")  # the last, alone
    shutil.copy(src / "000.png", src / os.fsdecode(b"name\xff.png"))  # a listing problem
    kw = {"seq_len": 200, "images_per_shard": 2}
    _prepare(src, tmp_path / "ref", tok, **kw)
    ref = _files(tmp_path / "ref")
    n_chunks = -(-json.loads(ref["index.json"])["config"]["sources"] // 2)
    assert n_chunks == 9
    module, target = {"after_index": (shard_index, "_write_index"),
                      "after_shard": (data, "_write_npy")}[when]  # fmt: skip
    real = getattr(module, target)
    for k in range(1, n_chunks):
        out = tmp_path / f"out{k}"
        calls = []

        def stop(*a, real=real, calls=calls, k=k, **kw):
            r = real(*a, **kw)
            calls.append(1)
            if len(calls) == k:
                raise _Killed
            return r

        monkeypatch.setattr(module, target, stop)
        try:
            _prepare(src, out, tok, **kw)
        except _Killed:
            pass
        else:
            assert when == "after_shard"  # fewer shard files than chunks: not stopped
        monkeypatch.setattr(module, target, real)
        if (out / "index.json").exists():
            assert not json.loads((out / "index.json").read_text())["complete"]
        _prepare(src, out, tok, **kw)
        assert _files(out) == ref, k


def test_a_shard_removed_in_the_middle_is_made_again(tok, tmp_path):
    """Without the carried tokens in the index (only the last chunk's are kept), a resumed run
    encodes the chunks before again to find them: still the same bytes."""
    src = _folder(tmp_path / "imgs", 12)
    out = tmp_path / "shards"
    index = _prepare(src, out, tok, seq_len=300, images_per_shard=2)
    ref = _files(out)
    shards = index["shards"]
    middle = [j for j in range(1, len(shards) - 1)
              if shards[j]["sequences"] and shards[j - 1]["carry_tokens"]]  # fmt: skip
    assert len(middle) >= 2
    for j in middle[:2]:
        (out / shards[j]["file"]).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npy")}
    time.sleep(0.01)
    assert _prepare(src, out, tok, seq_len=300, images_per_shard=2) == index
    assert _files(out) == ref
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npy")}
    assert all(after[f] == t for f, t in before.items())  # the others are kept, not redone
    # images changed under a prepared folder: refused, not silently mixed
    (out / shards[middle[0]]["file"]).unlink()
    _crops(1, 99)[0].save(sorted(src.iterdir())[2 * middle[0] - 1])  # in the chunk before
    with pytest.raises(ValueError, match="changed since it was prepared"):
        _prepare(src, out, tok, seq_len=300, images_per_shard=2)


def test_sigkill_prepare_and_resume_is_byte_identical(tok, tmp_path):
    """SIGKILL a prepare process at random points; the resumed run ends with the same shards,
    index, report and source list as an uninterrupted one."""
    src = tmp_path / "imgs"
    src.mkdir()
    for i, im in enumerate(samples.random_crops(160, seed=7, scale=(0.3, 0.9))):
        im.resize((160, 160)).save(src / f"{i:03d}.png")
    tok.save(tmp_path / "tok.jpeglm")
    kw = {"size": SIZE, "seq_len": 100, "images_per_shard": 5, "workers": 1, "progress": False}
    data.prepare(src, tmp_path / "ref", tok, **kw)
    out = tmp_path / "out"
    script = (
        "import sys; from jpeglm.data import prepare as data; "
        "from jpeglm.tokenizer import Tokenizer; "
        f"data.prepare(sys.argv[1], sys.argv[2], Tokenizer.load(sys.argv[3]), **{kw!r})"
    )
    cmd = [sys.executable, "-c", script, str(src), str(out), str(tmp_path / "tok.jpeglm")]
    kill_repeatedly(cmd)
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert not list(out.glob(".*.tmp"))
    assert _files(out) == _files(tmp_path / "ref")


def test_an_old_index_with_dropped_tails_is_still_read(tok, tmp_path):
    src = _folder(tmp_path / "imgs", 6)
    out = tmp_path / "shards"
    index = _prepare(src, out, tok, images_per_shard=3)
    old = {  # the format before carrying: each chunk's tail dropped and counted
        "config": {k: v for k, v in index["config"].items() if k != "pad_id"},
        "complete": True,
        "shards": [
            {"file": s["file"], "sequences": s["sequences"], "images": s["images"],
             "tokens": s["tokens"], "dropped_tokens": 7, "bytes": s["bytes"]}
            for s in index["shards"]
        ],  # fmt: skip
        "sequences": index["sequences"], "images": 6, "tokens": index["tokens"],
        "bytes": index["bytes"], "skipped": [],
    }  # fmt: skip
    (out / "index.json").write_text(json.dumps(old))
    assert read_index(out)["shards"][0]["dropped_tokens"] == 7
    pytest.importorskip("torch")
    from jpeglm.data.dataset import ShardDataset

    assert len(ShardDataset(out)) == index["sequences"]


# ------------------------------------------------------------------ listing and loading images


def test_list_images(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    ims = _crops(3, 4)
    ims[0].save(a / "z.png")
    ims[1].save(a / "sub" / "x.JPG")
    (a / "notes.txt").write_text("not an image; ignored inside a folder")
    ims[2].save(tmp_path / "b.webp")
    (tmp_path / "c.txt").write_text("named directly: reported")
    (tmp_path / "empty").mkdir()
    items = [a, tmp_path / "b.webp", tmp_path / "missing.png", tmp_path / "c.txt",
             tmp_path / "empty", str(a / "z.png"), tmp_path / "b.webp"]  # fmt: skip
    paths, problems = list_images(items)
    assert paths == [a / "sub" / "x.JPG", a / "z.png", tmp_path / "b.webp"]
    assert [(Path(p["source"]).name, p["error"].split(" (")[0]) for p in problems] == [
        ("missing.png", "no such file or folder"),
        ("c.txt", "not an image file name"),
        ("empty", "no image files in this folder"),
    ]
    assert list_images([]) == ([], [])
    # a folder lists what prepare lists from it
    assert [s.path for s in list_sources(a)] == [str(p) for p in list_images([a])[0]]


def test_load_images_skips_a_broken_image_as_prepare_does(tok, tmp_path):
    src = _folder(tmp_path / "imgs", 3)
    (src / "001.png").write_bytes((src / "001.png").read_bytes()[:60])  # truncated
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    paths, _ = list_images([src])
    kept, images, skipped = load_images([*paths, src / "gone.png"], SIZE, workers=2)
    assert kept == [src / "000.png", src / "002.png"]
    assert images.shape == (2, SIZE, SIZE, 3) and images.dtype == np.uint8
    for p, im in zip(kept, images):
        np.testing.assert_array_equal(im, codec.prepare(p, SIZE))
    assert codec.encode_batch(images, size=SIZE) == [codec.encode(p, size=SIZE) for p in kept]
    assert [Path(s["source"]).name for s in skipped] == ["001.png", "broken.jpg", "gone.png"]
    assert skipped[2]["error"].startswith("FileNotFoundError")
    # the same reasons as prepare's report
    report = _prepare(src, tmp_path / "shards", tok)["skipped"]
    assert {s["source"]: s["error"] for s in report} == {
        Path(s["source"]).name: s["error"] for s in skipped[:2]
    }
    kept, images, skipped = load_images([src / "broken.jpg"], SIZE)
    assert kept == [] and images.shape == (0, SIZE, SIZE, 3) and len(skipped) == 1


def test_data_needs_torch_only_for_the_dataset():
    """Preparing data never imports torch: the preparation, the sources and the shard index
    load without it (only jpeglm.data.dataset, the ``ShardDataset``, needs it)."""
    code = ("import sys, jpeglm.data.prepare, jpeglm.data.sources, jpeglm.data.index; "
            "assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
