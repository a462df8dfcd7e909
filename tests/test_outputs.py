"""Nothing of the user's is lost: ``prepare`` and ``train`` replace only files they wrote (the
output manifest ``.jpeglm-outputs``), an input is never an output, a name is listed only once
its file is in place, and ``sample`` / ``complete`` write each output as it is made (an
interrupted run keeps its finished files; ``-n 10**9`` lists no names up front)."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from jpeglm import _io, cli, codec
from jpeglm.data import bundled as samples

torch = pytest.importorskip("torch")

from jpeglm_trainutil import cfg as _cfg  # noqa: E402


def _cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _one_line(err: str, *parts: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for p in parts:
        assert p in err, err


def _listed(folder) -> set[str]:
    return _io.owned_outputs(folder)


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    """A finished 2-step run of the tiny model (its final/ is a 32 px HF folder)."""
    root, _ = world
    out = tmp_path_factory.mktemp("outputs") / "run"
    assert cli.main(["train", *_cfg(root, out, max_steps=2, ckpt_every=2, eval_every=2,
                                    eval_batches=1)]) == 0  # fmt: skip
    return root, out


# ------------------------------------------------------------------------------------- prepare


def _prepare(capsys, root, out, tokenizer=None):
    return _cli(capsys, "prepare", root / "held", out, "--tokenizer",
                tokenizer or root / "tok.jpeglm", "--size", "32", "--seq-len", "128",
                "--images-per-shard", "32", "--quiet")  # fmt: skip


@pytest.mark.parametrize("name", ["sources.txt", "report.json", "shard_000000.npy", "index.json"])
def test_prepare_never_replaces_a_users_file(world, tmp_path, capsys, name):
    root, _ = world
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"the user's")
    rc, err = _prepare(capsys, root, out)
    assert rc == 2
    _one_line(err, name, "was not written by jpeglm")
    assert (out / name).read_bytes() == b"the user's"
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_prepare_never_overwrites_its_tokenizer(world, tmp_path, capsys):
    root, _ = world
    out = tmp_path / "out"
    assert _prepare(capsys, root, out)[0] == 0
    assert {"index.json", "report.json", "sources.txt", "shard_000000.npy"} <= _listed(out)
    tok = out / "report.json"  # a name prepare wrote (listed), now the user's tokenizer
    shutil.copy(root / "tok.jpeglm", tok)
    rc, err = _prepare(capsys, root, out, tokenizer=tok)
    assert rc == 2
    _one_line(err, "refusing to overwrite the input", "report.json")
    assert tok.read_bytes() == (root / "tok.jpeglm").read_bytes()
    assert _prepare(capsys, root, out)[0] == 0  # a rerun replaces its own files


# --------------------------------------------------------------------------------------- train


def test_train_never_replaces_a_users_files(world, tmp_path, capsys):
    root, _ = world
    out = tmp_path / "run"
    out.mkdir()
    (out / "loss.png").write_bytes(b"the user's plot")
    rc, err = _cli(capsys, "train", *_cfg(root, out, max_steps=2))
    assert rc == 2
    _one_line(err, "loss.png", "was not written by jpeglm")
    assert (out / "loss.png").read_bytes() == b"the user's plot"
    assert not list(out.glob("step_*")) and not (out / "metrics.jsonl").exists()
    (out / "loss.png").unlink()
    (out / "final").mkdir()  # a user-made final/, even one that looks like an HF folder
    (out / "final" / "config.json").write_text("{}")
    (out / "final" / "my_notes.txt").write_text("mine")
    rc, err = _cli(capsys, "train", *_cfg(root, out, max_steps=2))
    assert rc == 2
    _one_line(err, "final", "was not written by jpeglm")
    assert (out / "final" / "my_notes.txt").read_text() == "mine"


def test_a_run_lists_what_it_wrote(run):
    _, out = run
    assert {"metrics.jsonl", "loss.png", "final"} <= _listed(out)


def test_save_hf_never_removes_a_users_file(tmp_path):
    from jpeglm.checkpoint.hf import save_hf
    from jpeglm.model import ModelArgs, Transformer

    args = ModelArgs.from_name("tiny", max_seq_len=64)
    state = {k: v for k, v in Transformer(args, backend="torch").state_dict().items()
             if not k.startswith("rope.")}  # fmt: skip
    folder = save_hf(tmp_path / "final", args, state)
    (folder / "my_notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="my_notes.txt"):
        save_hf(folder, args, state, replace=True)
    assert (folder / "my_notes.txt").read_text() == "mine"
    (folder / "my_notes.txt").unlink()
    save_hf(folder, args, state, replace=True)  # only its own files: replaced


# ---------------------------------------------------------------------------- the manifest


def test_a_name_is_listed_only_once_its_file_is_in_place(tmp_path, capsys):
    """An encode stopped by a bad second image: the first output is listed, the second (never
    written) is not, so a user's file of that name is not replaced by the rerun."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(samples.photo_path("astronaut"), src / "a.png")
    (src / "b.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    rc, err = _cli(capsys, "encode", src / "a.png", src / "b.png", "-o", out, "--size", "32")
    assert rc == 2 and (out / "a.jlm").is_file() and not (out / "b.jlm").exists()
    assert _listed(out) == {"a.jlm"}
    (out / "b.jlm").write_bytes(b"the user's")
    shutil.copy(samples.photo_path("astronaut"), src / "b.png")
    rc, err = _cli(capsys, "encode", src / "a.png", src / "b.png", "-o", out, "--size", "32")
    assert rc == 2
    _one_line(err, "b.jlm", "was not written by jpeglm")
    assert (out / "b.jlm").read_bytes() == b"the user's"


def test_a_write_cut_off_before_its_listing_is_still_owned(tmp_path, monkeypatch):
    """Killed between the rename and the listing: the ``#pending`` line names that very file
    (device, inode, size, mtime), so it is owned -- and a file put there since is not."""
    out = tmp_path / "out"
    out.mkdir()

    def cut(paths) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_io, "record_outputs", cut)
    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write_bytes(out / "x.png", b"ours", record=True)
    monkeypatch.undo()
    assert (out / "x.png").read_bytes() == b"ours"
    assert "x.png" in _listed(out)
    (out / "x.png").unlink()
    (out / "x.png").write_bytes(b"the user's, written since")
    assert "x.png" not in _listed(out)
    with pytest.raises(ValueError, match="was not written by jpeglm"):
        _io.claim_outputs(out, ["x.png"])


def test_a_manifest_line_cut_off_counts_for_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / _io.OUTPUTS_MANIFEST).write_text(_io.OUTPUTS_HEADER + "a.png\nb.pn")
    assert _listed(out) == {"a.png"}


# ------------------------------------------------------------------ outputs as they are made


def test_sample_writes_each_sample_as_it_is_made(run, tmp_path, capsys, monkeypatch):
    from jpeglm.cli import model as model_commands

    _, folder = run
    written = []
    real = model_commands._write_sample

    def write_then_stop(out, stem, s, quality) -> None:  # noqa: ANN001
        real(out, stem, s, quality)
        written.append(stem)
        if len(written) == 2:
            raise KeyboardInterrupt  # Ctrl-C after the second sample

    monkeypatch.setattr(model_commands, "_write_sample", write_then_stop)
    out = tmp_path / "s"
    rc, err = _cli(capsys, "sample", "--model", folder, "-o", out, "-n", "4", "--batch-size", "1")
    assert rc == 130 and err == "jpeglm sample: interrupted\n"
    for stem in ("sample_000", "sample_001"):
        with Image.open(out / f"{stem}.png") as im:
            assert im.size == (32, 32)
        assert codec.header((out / f"{stem}.jpg").read_bytes())["width"] == 32
        assert {f"{stem}.png", f"{stem}.jpg"} <= _listed(out)
    assert not (out / "sample_002.png").exists()


def test_sample_names_are_made_lazily(run, tmp_path, capsys, monkeypatch):
    """``sample -n 1000000000``: no list of names (or prompts) up front; the first batch is
    written, then Ctrl-C."""
    import tracemalloc

    from jpeglm.cli import model as model_commands

    _, folder = run
    real = model_commands._write_sample

    def write_then_stop(out, stem, s, quality) -> None:  # noqa: ANN001
        real(out, stem, s, quality)
        raise KeyboardInterrupt

    monkeypatch.setattr(model_commands, "_write_sample", write_then_stop)
    out = tmp_path / "s"
    out.mkdir()
    (out / "sample_5.png").write_text("the user's: not one of the names")
    tracemalloc.start()
    try:
        rc, err = _cli(capsys, "sample", "--model", folder, "-o", out, "-n", "1000000000",
                       "--batch-size", "2", "--max-tokens", "64")  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rc == 130, err
    assert peak < 100 << 20, f"{peak / 2**20:.0f} MiB of Python objects"
    assert (out / "sample_000.png").is_file() and (out / "sample_5.png").read_text()
    (out / "sample_000000123.png").write_text("the user's")  # not a name sample makes
    (out / "sample_999.jpg").write_text("the user's")  # one of the names: refused
    rc, err = _cli(capsys, "sample", "--model", folder, "-o", out, "-n", "1000")
    assert rc == 2
    _one_line(err, "sample_999.jpg", "was not written by jpeglm")


def test_complete_writes_each_completion_as_it_is_made(run, tmp_path, capsys, monkeypatch):
    from jpeglm.cli import model as model_commands

    _, folder = run
    real = model_commands._write_sample

    def write_then_stop(out, stem, s, quality) -> None:  # noqa: ANN001
        real(out, stem, s, quality)
        raise KeyboardInterrupt

    monkeypatch.setattr(model_commands, "_write_sample", write_then_stop)
    imgs = [samples.photo_path(n) for n in ("astronaut", "chelsea")]
    out = tmp_path / "c"
    rc, err = _cli(capsys, "complete", "--model", folder, "-o", out, *imgs, "--rows", "1",
                   "--batch-size", "1")  # fmt: skip
    assert rc == 130
    assert (out / "astronaut.png").is_file() and not (out / "chelsea.png").exists()
    assert "astronaut.png" in _listed(out)
