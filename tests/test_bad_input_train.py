"""Bad input to the trainer and its data, replayed (issue 28): signals and a full disk during a
checkpoint write, hostile JSON / TOML in the trainer's files, shards that do not match their
index or tokenizer, ``resume=true`` without a complete checkpoint, ``sources.txt`` names that
hold a newline, and the messages that must say what to do. Each case is one line on stderr
(``jpeglm train: error: ...``, exit 2, or the signal's 130 / 143), checked before the run
folder is claimed where it can be. Trainer runs are pinned to the CPU (jpeglm_trainutil)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jpeglm_trainutil import cfg as _cfg  # noqa: E402
from jpeglm_trainutil import command as _command  # noqa: E402
from jpeglm_trainutil import env as _env  # noqa: E402
from jpeglm_trainutil import run as _run  # noqa: E402

from jpeglm.data import prepare as data  # noqa: E402
from jpeglm.data.index import read_index  # noqa: E402
from jpeglm.data.sources import read_sources  # noqa: E402

DEEP = 100_000  #: far past any parser's recursion limit


def _main(args: list[str], capsys) -> tuple[int, str]:
    """``jpeglm train ARGS`` in this process (cases refused before any model is built)."""
    from jpeglm.cli import main

    rc = main(["train", *args])
    return rc, capsys.readouterr().err


def _one_line(err: str, *parts: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jpeglm train: error: "), err
    for p in parts:
        assert p in lines[0], (p, err)
    assert "allow_pickle" not in err and "Traceback" not in err
    return lines[0]


def _steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run4(world, tmp_path_factory):
    """A run stopped at step 4 (``stop_at``) with its checkpoint ``step_00000004``."""
    root, _ = world
    out = tmp_path_factory.mktemp("run4") / "run"
    r = _run(_cfg(root, out, max_steps=8, stop_at=4, eval_every=100))
    assert r.returncode == 0, r.stderr
    assert [p.name for p in out.glob("step_*")] == ["step_00000004"]
    return out


def _copy_run(run4: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run4, out, ignore=shutil.ignore_patterns(".jpeglm-lock"))
    return out


# ---------------------------------------------------------------- item 1: a second signal


def _wait_for(test, what: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    t0 = time.monotonic()
    while not test():
        assert proc.poll() is None, f"exited before {what}: {proc.stderr.read().decode()}"
        assert time.monotonic() < t0 + seconds, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_during_a_checkpoint_write_is_deferred(world, tmp_path, sig):
    root, _ = world
    out, marker = tmp_path / "run", tmp_path / "writing"
    args = _cfg(root, out, max_steps=100_000, ckpt_every=100_000, eval_every=100_000)
    hook = {"JPEGLM_TEST_CHECKPOINT_HOOK": f"pause:3:{marker}"}  # the write pauses 3 s
    proc = subprocess.Popen(_command(args), env={**_env(), **hook}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        metrics = out / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1,
                  "the first step", proc)  # fmt: skip
        proc.send_signal(sig)  # the first: finish the step, checkpoint, stop
        _wait_for(marker.is_file, "the checkpoint write", proc)
        proc.send_signal(sig)  # the second, mid-write: deferred
        rc = proc.wait(timeout=300)
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    tmp_name = marker.read_text()
    step = int(tmp_name.rsplit("_", 1)[1])
    name = signal.Signals(sig).name
    assert rc == 128 + sig, err
    assert err.strip().splitlines() == [
        f"jpeglm train: {name} again: finishing the checkpoint step_{step:08d} first, then "
        "stopping",
        f"jpeglm train: {name}: stopped at step {step}, checkpoint written; resume=true goes on",
    ], err
    assert not list(out.glob(".tmp_step_*"))
    from jpeglm.checkpoint.dcp import read_train_state

    assert read_train_state(out / f"step_{step:08d}")["step"] == step  # whole


# ---------------------------------------------------------------- item 2: a full disk


def test_a_full_disk_during_a_checkpoint(world, tmp_path):
    root, _ = world
    out = tmp_path / "run"
    args = _cfg(root, out, max_steps=12, eval_every=100)  # checkpoints at 4, 8 and 12
    r = subprocess.run(_command(args), env={**_env(), "JPEGLM_TEST_CHECKPOINT_HOOK": "enospc:8"},
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 2, r.stderr
    line = _one_line(r.stderr, f"no space left in {out} for the checkpoint step_00000008",
                     "MiB", "free", "its temporary folder was removed",
                     "step_00000004 is intact")  # fmt: skip
    assert "enforce fail" not in line
    assert not list(out.glob(".tmp_step_*"))
    assert sorted(p.name for p in out.glob("step_*")) == ["step_00000004"]
    # space freed: resume goes on from step 4, and every step is in metrics.jsonl once
    r = _run([*args, "resume=true"])
    assert r.returncode == 0, r.stderr
    assert _steps(out) == list(range(1, 13))


def test_a_full_disk_during_the_final_export(world, tmp_path, capsys):
    """ENOSPC while the finished run writes final/: one line naming the complete checkpoint and
    the `jpeglm export` command that makes final/ from it; no temporary folder left; that command
    then works."""
    from jpeglm.cli import main

    root, _ = world
    out = tmp_path / "run"
    args = _cfg(root, out, max_steps=8, eval_every=100)
    hook = {"JPEGLM_TEST_CHECKPOINT_HOOK": "enospc:final"}
    r = subprocess.run(_command(args), env={**_env(), **hook}, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 2, r.stderr
    _one_line(r.stderr, f"no space left in {out} for the final export final/",
              "the run itself is complete in step_00000008",
              f"jpeglm export {out / 'step_00000008'} {out / 'final'}")  # fmt: skip
    assert not (out / "final").exists() and not list(out.glob(".tmp_final*"))
    assert main(["export", str(out / "step_00000008"), str(out / "final")]) == 0
    assert (out / "final" / "config.json").is_file()


def test_a_full_disk_anywhere_else_is_one_line(monkeypatch, capsys):
    """ENOSPC outside a checkpoint write (a metrics row, loss.png): one line naming the file."""
    import errno

    from jpeglm.train import loop as train
    from jpeglm.train.config import TrainConfig

    def full(cfg):  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device", "OUT/metrics.jsonl")

    monkeypatch.setattr(TrainConfig, "load", classmethod(lambda cls, path, overrides: None))
    monkeypatch.setattr(train, "train", full)
    assert train.main(["max_steps=1"]) == 2
    _one_line(capsys.readouterr().err, "no space left on the device writing OUT/metrics.jsonl",
              "resume=true")  # fmt: skip


def test_disk_full_errors_are_recognised_in_dcp_wrappers(tmp_path):
    """torch's own writer says ``file write failed`` (a RuntimeError); DCP wraps each rank's
    error in a CheckpointException (a BaseException)."""
    import errno

    from torch.distributed.checkpoint.api import CheckpointException

    from jpeglm.checkpoint.dcp import _disk_full

    model = torch.nn.Linear(2, 2)
    enospc = OSError(errno.ENOSPC, "No space left on device")
    assert _disk_full(CheckpointException("save", {0: (enospc, None)}), tmp_path, model)
    torn = RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                        "failed writing file data/0: file write failed")  # fmt: skip
    assert _disk_full(torn, tmp_path, model)
    assert not _disk_full(RuntimeError("something else"), tmp_path, model)
    assert not _disk_full(KeyboardInterrupt(), tmp_path, model)


# ---------------------------------------------------------------- item 3: nesting bounded


def test_deeply_nested_train_config_is_one_line(world, tmp_path, capsys):
    root, _ = world
    out = tmp_path / "run"
    toml = tmp_path / "deep.toml"
    toml.write_text("a = " + "[" * DEEP + "]" * DEEP + "\n")
    rc, err = _main([str(toml), *_cfg(root, out)], capsys)
    assert rc == 2
    _one_line(err, str(toml), "nested deeper than 64 levels")
    toml.write_text("model_args = " + "{a = " * 70 + "1" + "}" * 70 + "\n")  # parses; too deep
    rc, err = _main([str(toml), *_cfg(root, out)], capsys)
    assert rc == 2
    _one_line(err, str(toml), "nested deeper than 64 levels")
    rc, err = _main(_cfg(root, out) + ["model_args=" + "[" * DEEP + "]" * DEEP], capsys)
    assert rc == 2
    _one_line(err, "model_args", "nested deeper than 64 levels")
    assert not out.exists()  # nothing created first


def test_deeply_nested_shard_index_is_one_line(world, tmp_path, capsys):
    root, _ = world
    shards = tmp_path / "shards"
    shutil.copytree(root / "train_shards", shards)
    for text in ("[" * DEEP + "]" * DEEP, '{"config": ' + "[" * 80 + "]" * 80 + "}", "[1, 2]",
                 '{"complete": true'):  # fmt: skip
        (shards / "index.json").write_text(text)
        out = tmp_path / "run"
        rc, err = _main(_cfg(root, out, train_data=[str(shards)]), capsys)
        assert rc == 2
        _one_line(err, str(shards / "index.json"))
        assert not out.exists()


def test_deeply_nested_train_state_is_one_line(run4, world, tmp_path, capsys):
    root, _ = world
    out = _copy_run(run4, tmp_path)
    state = out / "step_00000004" / "train_state.json"
    state.write_text("[" * DEEP + "]" * DEEP)
    r = _run(_cfg(root, out, max_steps=8, resume=True))
    assert r.returncode == 2
    _one_line(r.stderr, "cannot resume", "train_state.json", "nested deeper than 64 levels")


def test_metrics_rows_are_bounded_and_never_repeated(run4, world, tmp_path):
    root, _ = world
    out = _copy_run(run4, tmp_path)
    metrics = out / "metrics.jsonl"
    good = metrics.read_text()
    # rows of steps done after the checkpoint (a kill), and a last line the kill cut off
    metrics.write_text(good + '{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n{"step": 7')
    r = _run(_cfg(root, out, max_steps=8, resume=True))
    assert r.returncode == 0, r.stderr
    assert _steps(out) == list(range(1, 9))  # each step once
    out = _copy_run(run4, tmp_path / "b")
    (out / "metrics.jsonl").write_text(good + '{"step": ' + "[" * DEEP + "]" * DEEP + "}\n")
    r = _run(_cfg(root, out, max_steps=8, resume=True))
    assert r.returncode == 2
    _one_line(r.stderr, str(out / "metrics.jsonl"), "line 5", "nested deeper than 64")


# ---------------------------------------------------------------- item 6: shards checked


def _bad_shards(root: Path, tmp_path: Path, spoil) -> Path:  # noqa: ANN001
    shards = tmp_path / "shards"
    shutil.copytree(root / "train_shards", shards)
    index = json.loads((shards / "index.json").read_text())
    spoil(shards, index)
    (shards / "index.json").write_text(json.dumps(index))
    return shards


def _set_id(shards: Path, index: dict, value: int, record: bool) -> None:
    arr = np.load(shards / "shard_000001.npy")
    arr[3, 7] = value
    np.save(shards / "shard_000001.npy", arr)
    for s in index["shards"]:
        s.pop("max_id", None)  # an index of an older prepare: the shard is scanned
        if record and s["file"] == "shard_000001.npy":
            s["max_id"] = value


def _narrow(shards: Path, index: dict) -> None:
    arr = np.load(shards / "shard_000001.npy")
    np.save(shards / "shard_000001.npy", np.ascontiguousarray(arr[:, :64]))


def _truncate(shards: Path, index: dict) -> None:
    p = shards / "shard_000001.npy"
    p.write_bytes(p.read_bytes()[:-100])


def _garbage(shards: Path, index: dict) -> None:
    (shards / "shard_000001.npy").write_bytes(b"\x80\x04garbage, not a .npy file" * 10)


@pytest.mark.parametrize(
    "spoil, expected",
    [
        (lambda s, i: _set_id(s, i, 400, record=False), "holds token id 400, outside the "
         "tokenizer's 300 ids"),
        (lambda s, i: _set_id(s, i, 299, record=False), None),  # the last id: fine
        (lambda s, i: _set_id(s, i, 65535, record=True), "holds token id 65535"),
        (_narrow, "sequences of 64 tokens, but its index says"),
        (_truncate, "is truncated"),
        (_garbage, "is not a .npy shard"),
    ],
    ids=["id-scanned", "last-id", "id-recorded", "narrower", "truncated", "garbage"],
)  # fmt: skip
def test_shards_are_checked_before_the_run_folder(world, tmp_path, capsys, spoil, expected):
    root, _ = world
    shards = _bad_shards(root, tmp_path, spoil)
    out = tmp_path / "run"
    if expected is None:
        from jpeglm.train.batches import check_shards

        index = read_index(shards)
        assert check_shards([str(shards)], index["config"]["tokenizer"], "tok", "x", 300) == 128
        return
    rc, err = _main(_cfg(root, out, train_data=[str(shards)]), capsys)
    assert rc == 2
    _one_line(err, "train_data: ", str(shards / "shard_000001.npy"), expected)
    assert not out.exists()  # refused before the run folder is claimed


def test_prepare_records_each_shards_largest_id(world):
    root, tok = world
    index = read_index(root / "train_shards")
    for s in index["shards"]:
        if s["sequences"]:
            assert s["max_id"] == int(np.load(root / "train_shards" / s["file"]).max())
            assert s["max_id"] < tok.vocab_size


# ---------------------------------------------------------------- item 10: nothing to resume


def test_resume_without_a_complete_checkpoint_says_so(run4, world, tmp_path):
    """A preemptible job relaunched with resume=true after a kill before its first whole
    checkpoint starts again at step 1 -- saying so, and never listing a step twice."""
    root, _ = world
    out = _copy_run(run4, tmp_path)
    (out / "step_00000004").rename(out / ".tmp_step_00000004")  # a write a kill cut off
    assert _steps(out) == [1, 2, 3, 4]
    r = _run(_cfg(root, out, max_steps=6, eval_every=100, resume=True))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"jpeglm train: {out} holds no complete checkpoint to resume (only .tmp_step_00000004, "
        "cut off while being written): starting at step 1 (the rows of metrics.jsonl are done "
        "again)"
    ]
    assert _steps(out) == list(range(1, 7))  # not 1 2 3 4 1 2 3 4 5 6
    assert not list(out.glob(".tmp_step_*"))
    # an empty out: resume=true starts quietly
    r = _run(_cfg(root, tmp_path / "new", max_steps=2, eval_every=100, resume=True))
    assert r.returncode == 0 and r.stderr == "", r.stderr


# ---------------------------------------------------------------- item 11: sources.txt


def test_sources_txt_keeps_names_with_newlines(world, tmp_path):
    root, tok = world
    src = tmp_path / "imgs"
    src.mkdir()
    names = ["a.png", "two\nlines.png", 'quote".png']
    for i, n in enumerate(names):
        shutil.copyfile(root / "train" / f"{i:03d}.png", src / n)
    out = tmp_path / "out"
    data.prepare(src, out, tok, size=32, seq_len=64, progress=False)
    listed = read_sources(out)
    assert sorted(listed) == sorted(names)
    text = (out / "sources.txt").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1 + len(names)  # the header, then one line per name
    # a file of an older jpeglm: one name per line, still read
    (out / "sources.txt").write_text("a.png\nb.png\n")
    assert read_sources(out) == ["a.png", "b.png"]


# ---------------------------------------------------------------- messages that say what to do


def test_init_from_a_trainer_checkpoint_advises_export(run4, world, tmp_path, capsys):
    root, _ = world
    step = run4 / "step_00000004"
    out = tmp_path / "run"
    rc, err = _main(_cfg(root, out, init_from=str(step)), capsys)
    assert rc == 2
    line = _one_line(err, "is a trainer checkpoint", f"jpeglm export {step} DEST")
    assert "safetensors" not in line
    assert not out.exists()
    rc, err = _main(_cfg(root, out, init_from=str(run4)), capsys)  # the run folder
    assert rc == 2
    _one_line(err, "is a run folder", f"jpeglm export {run4} DEST")
    assert not out.exists()


def test_a_model_shape_mismatch_gives_both_shapes(run4, world, tmp_path):
    root, _ = world
    out = _copy_run(run4, tmp_path)
    r = _run([*_cfg(root, out, max_steps=8, resume=True), "model_args={n_layers = 1}"])
    assert r.returncode == 2
    _one_line(r.stderr, "the model's shape differs", "checkpoint: n_layers=2",
              "this run: n_layers=1")  # fmt: skip


def test_a_resume_hint_never_repeats_the_current_setting():
    from jpeglm.train.batches import data_position
    from jpeglm.train.config import TrainConfig

    cfg = TrainConfig(train_data=["x"], tokenizer="t", batch_size=4, warmup_steps=0)
    state = {"step": 3, "batch_size": 4, "world": 1, "micro_batch_size": 4,
             "epoch_sequences": 96}  # fmt: skip
    with pytest.raises(ValueError) as e:  # same world, another micro-batch
        data_position(state, cfg, per_rank=98, micro=5, world=1)
    assert "resume with micro_batch_size=4" in str(e.value)
    assert "rank" not in str(e.value).split(";")[1]
    with pytest.raises(ValueError) as e:  # another world, the same micro-batch
        data_position(state, cfg, per_rank=49, micro=4, world=2)
    assert "resume with 1 rank(s) (as" in str(e.value)
    assert "micro_batch_size=4" not in str(e.value)
