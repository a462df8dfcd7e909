"""Preparation of packed shards, the shard dataset, and the trainer (CPU): learning, exact
resume, kill -9 safety, 2-process DDP equivalence, and bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from jpeglm import codec
from jpeglm.data import bundled as samples
from jpeglm.data import prepare as data
from jpeglm.data.index import read_index
from jpeglm.data.sources import load_image
from jpeglm.tokenizer import Tokenizer

torch = pytest.importorskip("torch")

from jpeglm_trainutil import cfg as _cfg  # noqa: E402
from jpeglm_trainutil import crops as _crops  # noqa: E402
from jpeglm_trainutil import kill_repeatedly  # noqa: E402
from jpeglm_trainutil import losses as _losses  # noqa: E402
from jpeglm_trainutil import run as _run  # noqa: E402

from jpeglm.checkpoint.dcp import list_checkpoints as _checkpoints  # noqa: E402
from jpeglm.data.dataset import ShardDataset  # noqa: E402
from jpeglm.train.config import TrainConfig  # noqa: E402


def test_prepare_packs_streams(world):
    root, tok = world
    index = read_index(root / "train_shards")
    assert index["images"] == 96 and index["complete"] and not index["skipped"]
    seqs = np.concatenate(
        [np.load(root / "train_shards" / s["file"]) for s in index["shards"] if s["sequences"]]
    )
    assert seqs.dtype == np.uint16 and seqs.shape[1] == 128
    flat = seqs.reshape(-1)
    # the first image, between the first BOS and EOS, is exactly its canonical stream
    first = sorted((root / "train").iterdir())[0]
    e = int(np.flatnonzero(flat == tok.eos_id)[0])
    assert flat[0] == tok.bos_id
    assert tok.decode(flat[1:e].tolist()) == codec.encode(first, size=32)
    assert index["tokens"] == index["sequences"] * 128 - index["pad_tokens"]


def test_prepare_resume_and_skips(world, tmp_path):
    root, tok = world
    src = tmp_path / "imgs"
    src.mkdir()
    for i, im in enumerate(_crops(10, 40, 5)):
        im.save(src / f"{i}.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = tmp_path / "shards"
    idx = data.prepare(src, out, tok, size=32, seq_len=64, images_per_shard=4, progress=False)
    assert [s["source"] for s in idx["skipped"]] == ["broken.jpg"]
    assert json.loads((out / "report.json").read_text())["skipped"][0]["source"] == "broken.jpg"
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npy")}
    (out / "shard_000001.npy").unlink()  # as if killed before writing it
    time.sleep(0.01)
    idx2 = data.prepare(src, out, tok, size=32, seq_len=64, images_per_shard=4, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npy")}
    assert after["shard_000000.npy"] == before["shard_000000.npy"]  # kept, not redone
    assert set(after) == set(before) and idx2["sequences"] == idx["sequences"]
    with pytest.raises(ValueError, match="different configuration"):
        data.prepare(src, out, tok, size=32, seq_len=32, images_per_shard=4, progress=False)
    # tar archive and list file sources give the same shards
    tar = tmp_path / "imgs.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted(src.iterdir()):
            tf.add(p, arcname=p.name)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(str(p) for p in sorted(src.iterdir())))
    for source in (tar, lst):
        o = tmp_path / f"from_{source.suffix[1:]}"
        data.prepare(source, o, tok, size=32, seq_len=64, images_per_shard=4, progress=False)
        for f in ("shard_000000.npy", "shard_000002.npy"):
            np.testing.assert_array_equal(np.load(o / f), np.load(out / f))
    with pytest.raises(FileNotFoundError):
        data.prepare(tmp_path / "missing", out, tok, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.prepare(tmp_path / "empty", tmp_path / "o2", tok, progress=False)


def test_fast_mode_is_close():
    big = samples.photo_path("hubble_deep_field").read_bytes()
    exact = load_image(big, 64)
    fast = load_image(big, 64, fast=True)
    from jpeglm.eval.metrics import psnr

    assert exact.shape == fast.shape == (64, 64, 3)
    assert psnr(exact, fast) > 25


def test_dataset_sharding(world):
    root, _ = world
    full = ShardDataset(root / "train_shards", seed=3)
    seen = []
    for rank in range(2):
        ds = ShardDataset(root / "train_shards", seed=3, rank=rank, world=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        seen += [tuple(x.tolist()) for x in loader]
    assert len(seen) == len(set(seen)) == 2 * (len(full) // 2)  # no overlap, nothing lost
    a = [x.tolist() for x in full]
    assert a == [x.tolist() for x in ShardDataset(root / "train_shards", seed=3)]
    full.set_epoch(1)
    assert a != [x.tolist() for x in full]  # a new order every epoch


def test_index_json_is_read_once_per_training_start(world, tmp_path, monkeypatch):
    """The trainer reads each prepared folder's index.json once (the checks, the datasets and
    the run's metadata share it), counted where every read goes through."""
    from jpeglm.data import index as index_module
    from jpeglm.train.loop import train

    root, _ = world
    reads: list[str] = []
    real = index_module._read_index_file

    def counted(p):
        reads.append(str(p))
        return real(p)

    monkeypatch.setattr(index_module, "_read_index_file", counted)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    train(
        TrainConfig.load(
            None, _cfg(root, tmp_path / "run", max_steps=1, warmup_steps=0, eval_every=1)
        )
    )
    assert sorted(reads) == sorted(
        str(root / f / "index.json") for f in ("train_shards", "held_shards")
    )


def test_training_learns(world, tmp_path):
    root, tok = world
    r = _run(_cfg(root, tmp_path / "run", max_steps=120, eval_every=60, ckpt_every=120,
                  batch_size=8))  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    # unigram baseline: the entropy of the training tokens' distribution, in nats
    index = read_index(root / "train_shards")
    seqs = np.concatenate(
        [np.load(root / "train_shards" / s["file"]) for s in index["shards"] if s["sequences"]]
    )
    p = np.bincount(seqs.reshape(-1), minlength=tok.vocab_size) / seqs.size
    unigram = -(p[p > 0] * np.log(p[p > 0])).sum()
    assert final["eval_loss"] < unigram - 0.5, (final, unigram)
    assert final["eval_bits_per_byte"] > 0
    assert (tmp_path / "run" / "loss.png").is_file()
    pytest.importorskip("tensorboard")
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))  # TensorBoard too
    assert final["tokens_per_s"] > 0 and "mfu" not in final  # no MFU without a known peak


def test_resume_is_exact(world, tmp_path):
    root, _ = world
    full = _run(_cfg(root, tmp_path / "a"))
    assert full.returncode == 0, full.stderr[-2000:]
    part = _run(_cfg(root, tmp_path / "b", stop_at=8))
    assert part.returncode == 0
    rest = _run(_cfg(root, tmp_path / "b", resume=True))
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
    assert [p.name for p in _checkpoints(tmp_path / "b")] == ["step_00000008", "step_00000012"]


def test_kill_and_resume(world, tmp_path):
    root, _ = world
    ref = _run(_cfg(root, tmp_path / "ref", max_steps=16))
    assert ref.returncode == 0
    out = tmp_path / "k"
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = _run(_cfg(root, out, max_steps=16, resume=True), popen={"stdout": subprocess.DEVNULL,
                    "stderr": subprocess.DEVNULL})  # fmt: skip
        time.sleep(float(rng.uniform(2.0, 6.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for ck in _checkpoints(out):  # whatever is on disk is complete
            assert (ck / ".metadata").is_file() and (ck / "train_state.json").is_file()
            assert (ck / "__0_0.distcp").is_file() and (ck / "rng_rank0.pt").is_file()
    done = _run(_cfg(root, out, max_steps=16, resume=True))
    assert done.returncode == 0, done.stderr[-2000:]
    # the metrics log may repeat steps redone after a kill; the last 16-step pass matches
    ref_losses = _losses(tmp_path / "ref")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = {r["step"]: r["loss"] for r in rows}
    assert [last[s] for s in range(1, 17)] == ref_losses


def test_ddp_two_processes_match_one(world, tmp_path):
    root, _ = world
    one = _run(_cfg(root, tmp_path / "one", max_steps=6, eval_every=100, ckpt_every=100))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run(_cfg(root, tmp_path / "two", max_steps=6, eval_every=100, ckpt_every=100), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-4)


def test_bad_configs(world, tmp_path):
    root, _ = world
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.load(None, [*_cfg(root, tmp_path), "learning_rate=1"])
    with pytest.raises(FileNotFoundError):
        TrainConfig.load(tmp_path / "nope.toml")
    r = _run(_cfg(root, tmp_path / "x", train_data=[str(tmp_path / "missing")]))
    assert (
        r.returncode == 2
        and "jpeg" in r.stderr.lower()
        or "no index" in r.stderr.lower()
        or r.returncode == 2
    )
    other = Tokenizer.train([b"\x01\x02" * 100], vocab_size=260, progress=False)
    other.save(tmp_path / "other.jpeglm")
    r = _run(_cfg(root, tmp_path / "x", tokenizer=str(tmp_path / "other.jpeglm")))
    assert r.returncode == 2 and "another tokenizer" in r.stderr
    ok = _run(_cfg(root, tmp_path / "c", max_steps=4))
    assert ok.returncode == 0
    ck = _checkpoints(tmp_path / "c")[-1]
    (ck / "__0_0.distcp").write_bytes(b"garbage")
    r = _run(_cfg(root, tmp_path / "c", max_steps=8, resume=True))
    assert r.returncode == 2 and "corrupt checkpoint" in r.stderr


def test_kill_prepare_and_resume(world, tmp_path):
    """SIGKILL `jpeglm prepare` at random points: what is on disk is always loadable, and the
    resumed run ends with the same shards as an uninterrupted one."""
    root, _ = world
    src = tmp_path / "imgs"
    src.mkdir()
    for i, im in enumerate(samples.random_crops(240, seed=7, scale=(0.3, 0.9))):
        im.resize((160, 160)).save(src / f"{i:03d}.png")
    ref = tmp_path / "ref"
    data.prepare(src, ref, Tokenizer.load(root / "tok.jpeglm"), size=32, seq_len=64,
                 images_per_shard=12, progress=False)  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jpeglm.cli", "prepare", str(src), str(out), "--tokenizer",
           str(root / "tok.jpeglm"), "--size", "32", "--seq-len", "64", "--images-per-shard",
           "12", "--quiet", "--workers", "1"]  # fmt: skip

    def whole() -> None:
        if (out / "index.json").exists():
            index = json.loads((out / "index.json").read_text())  # never torn
            for s in index["shards"]:
                if s["sequences"]:  # a chunk with no whole sequence has no file
                    np.load(out / s["file"])  # every listed shard is whole

    kill_repeatedly(cmd, whole)
    t0 = time.perf_counter()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    print(f"resumed run: {time.perf_counter() - t0:.1f} s")
    assert not list(out.glob(".*.tmp"))  # no temp file of a killed write survives
    assert read_index(out)["sequences"] == read_index(ref)["sequences"]
    for f in sorted(ref.glob("shard_*.npy")):
        np.testing.assert_array_equal(np.load(out / f.name), np.load(f))


# ------------------------------------------------------------------ bad configs, owned run folders


@pytest.mark.parametrize(
    "override, field",
    [("batch_size=abc", "batch_size"), ("model_args=3", "model_args"),
     ("eval_every=0", "eval_every"), ("ckpt_every=0", "ckpt_every"), ("lr=inf", "lr"),
     ("lr=nan", "lr"), ("grad_clip=-1", "grad_clip"),
     ("micro_batch_size=-2", "micro_batch_size"), ("stop_at=-5", "stop_at"),
     ("warmup_steps=5000", "warmup_steps"), ("model=huge", "model"),
     ("model_args={foo=1}", "model_args"), ("model_args={dim=65}", "model_args"),
     ("backend=cuda", "backend"), ("beta2=1.5", "beta2"), ("resume=3", "resume"),
     ("activation_checkpoint=some", "activation_checkpoint")],
)  # fmt: skip
def test_every_config_field_is_checked(world, tmp_path, override, field):
    root, _ = world
    with pytest.raises(ValueError, match=field):
        TrainConfig.load(None, [*_cfg(root, tmp_path / "x"), override])


def test_bad_config_on_the_command_line_is_one_line(world, tmp_path):
    root, _ = world
    r = _run([*_cfg(root, tmp_path / "x"), "lr=inf"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "lr" in r.stderr, r.stderr
    r = _run([])
    assert r.returncode == 2 and "config" in r.stderr and "Traceback" not in r.stderr
    h = _run(["--help"])
    assert h.returncode == 0 and "micro_batch_size = 0" in h.stdout and "grad_clip" in h.stdout


def test_a_run_folder_is_never_restarted_over(world, tmp_path):
    root, _ = world
    out = tmp_path / "c"
    assert _run(_cfg(root, out, max_steps=4)).returncode == 0

    def snapshot() -> dict[str, int]:  # the lock file is the trainers' own: each one that takes
        # the lock writes its pid there (issue 27), a refused rerun included
        return {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".jpeglm-lock"}

    before = snapshot()
    r = _run(_cfg(root, out, max_steps=8))  # no resume=true
    assert r.returncode == 2 and "already holds a run" in r.stderr and "resume=true" in r.stderr
    assert snapshot() == before  # nothing touched


def test_resume_falls_back_when_the_newest_checkpoint_is_unreadable(world, tmp_path):
    root, _ = world
    ref = tmp_path / "ref"
    assert _run(_cfg(root, ref, keep=5)).returncode == 0
    out = tmp_path / "b"
    assert _run(_cfg(root, out, stop_at=8, keep=5)).returncode == 0
    newest = _checkpoints(out)[-1]
    assert newest.name == "step_00000008"
    (newest / "__0_0.distcp").write_bytes(b"torn")
    r = _run(_cfg(root, out, resume=True, keep=5))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step_00000008" in r.stderr and "resuming from step_00000004 instead" in r.stderr
    assert _losses(out) == _losses(ref)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))  # redone steps are not listed twice


def test_keep_counts_only_this_runs_checkpoints(world, tmp_path):
    from jpeglm.checkpoint import dcp as checkpoint

    root, _ = world
    out = tmp_path / "k"
    assert _run(_cfg(root, out, max_steps=12, keep=2)).returncode == 0
    assert [p.name for p in _checkpoints(out)] == ["step_00000008", "step_00000012"]
    # a stranger's folder that looks like a checkpoint is never removed
    (out / "step_00000001").mkdir()
    (out / "step_00000001" / "notes.txt").write_text("mine")
    assert _run(_cfg(root, out, max_steps=16, keep=2, resume=True)).returncode == 0
    names = [p.name for p in _checkpoints(out)]
    assert names == ["step_00000001", "step_00000012", "step_00000016"]
    assert (out / "step_00000001" / "notes.txt").read_text() == "mine"
    assert checkpoint.read_train_state(out / "step_00000016")["step"] == 16


def test_shard_folders_are_checked_up_front(world, tmp_path):
    root, tok = world
    data.prepare(root / "held", tmp_path / "short", tok, size=32, seq_len=64, progress=False)
    r = _run(_cfg(root, tmp_path / "x", train_data=[str(root / "train_shards"),
                                                    str(tmp_path / "short")]))  # fmt: skip
    assert r.returncode == 2 and "different sequence lengths" in r.stderr
    other = Tokenizer.train([b"\x01\x02" * 100], vocab_size=260, progress=False)
    data.prepare(root / "held", tmp_path / "other", other, size=32, seq_len=128, progress=False)
    r = _run(_cfg(root, tmp_path / "x", eval_data=[str(tmp_path / "other")]))
    assert r.returncode == 2 and "eval_data" in r.stderr and "another tokenizer" in r.stderr
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_a_model_that_cannot_fit_is_refused_up_front(world, tmp_path):
    root, _ = world
    t0 = time.time()
    r = _run([*_cfg(root, tmp_path / "x", model="7B"), "model_args={n_layers=512}"])
    assert r.returncode == 2 and "needs at least" in r.stderr and "GiB" in r.stderr, r.stderr
    assert time.time() - t0 < 60


def test_a_diverging_run_stops_without_a_nan_checkpoint(world, tmp_path):
    from jpeglm.checkpoint import dcp as checkpoint
    from jpeglm.checkpoint.hf import load_hf_state

    root, _ = world
    out = tmp_path / "nan"
    r = _run(_cfg(root, out, lr=1e30, min_lr=0.0, warmup_steps=0, grad_clip=0.0, ckpt_every=1,
                  max_steps=20, eval_every=1000))  # fmt: skip
    assert r.returncode == 2 and "the loss is" in r.stderr, (r.returncode, r.stderr[-1500:])
    for ck in _checkpoints(out):
        export = tmp_path / f"e{ck.name}"
        checkpoint.export(ck, export)
        for t in load_hf_state(export)[1].values():
            assert torch.isfinite(t).all()


def test_padding_is_ignored_by_the_loss():
    from jpeglm.model import ModelArgs, Transformer
    from jpeglm.train.batches import targets_of

    torch.manual_seed(0)
    model = Transformer(ModelArgs.from_name("tiny", vocab_size=300, max_seq_len=64))
    pad = 299
    real = torch.randint(0, 290, (1, 40))
    x = torch.cat([real, torch.full((1, 24), pad)], dim=1)  # the dataset's last, padded sequence
    t = targets_of(x, pad)
    assert (t[0, 39:] == -100).all() and (t[0, :39] == real[0, 1:]).all()
    padded = model(x[:, :-1], targets=t)
    plain = model(real[:, :-1], targets=real[:, 1:])  # causal: the padding changes nothing before
    torch.testing.assert_close(padded, plain)
    assert torch.equal(targets_of(x, None), x[:, 1:])
