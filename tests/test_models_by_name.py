"""Bundled models by name (issue 34): ``--model mnist32`` / ``mnist32-cond`` /
``moving_mnist64`` for sample / complete / eval and ``load_model`` / ``resolve``; an existing
path of the same name wins; an unknown name lists the bundled ones; ``jpeglm models``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from jpeglm_condutil import make_cond_model  # noqa: E402

from jpeglm.checkpoint.load import load_model, model_folder, read_info, resolve  # noqa: E402
from jpeglm.cli import main  # noqa: E402
from jpeglm.data import bundled  # noqa: E402


def _tiny_cond(folder: Path) -> Path:
    return make_cond_model(folder, cfg=3.0)


def test_bundled_models_are_the_existing_checkpoint_folders(tmp_path, monkeypatch):
    named = bundled.models()
    assert named["mnist32"] == bundled.DEMO_CHECKPOINT
    assert named["moving_mnist64"] == bundled.VIDEO_CHECKPOINT
    assert all(folder.is_dir() for folder in named.values())
    assert bundled.COND_CHECKPOINT.name == "mnist32-cond"
    assert ("mnist32-cond" in named) == bundled.COND_CHECKPOINT.is_dir()
    monkeypatch.setattr(bundled, "COND_CHECKPOINT", tmp_path / "nowhere")
    assert "mnist32-cond" not in bundled.models()  # only folders that exist
    monkeypatch.setattr(bundled, "COND_CHECKPOINT", tmp_path)
    assert list(bundled.models())[:3] == ["mnist32", "mnist32-cond", "moving_mnist64"]


def test_names_resolve_and_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of those names here
    assert resolve("mnist32").folder == bundled.DEMO_CHECKPOINT
    ref = resolve("moving_mnist64")
    assert ref.folder == bundled.VIDEO_CHECKPOINT and ref.info["kind"] == "video"
    loaded = load_model("mnist32")
    assert loaded.folder == bundled.DEMO_CHECKPOINT and loaded.image_size == 32
    cond = _tiny_cond(tmp_path / "elsewhere" / "c")
    monkeypatch.setattr(bundled, "COND_CHECKPOINT", cond)
    assert load_model("mnist32-cond").conditioning.cfg == 3.0


def test_an_existing_path_of_the_same_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = _tiny_cond(tmp_path / "mnist32")  # ./mnist32: a model of the user's
    assert resolve("mnist32").folder == Path("mnist32")
    assert load_model("mnist32").conditioning is not None  # not the bundled (unconditional) one
    (tmp_path / "moving_mnist64").mkdir()  # an empty folder: that folder, which is no model
    with pytest.raises(FileNotFoundError, match="is not a model"):
        resolve("moving_mnist64")
    (tmp_path / "mnist32-cond").write_text("a file")
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        model_folder("mnist32-cond")
    assert resolve(str(mine)).folder == mine


def test_an_unknown_name_lists_the_bundled_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="bundled models: mnist32, .*moving_mnist64"):
        resolve("mnist33")
    assert main(["sample", "--model", "mnist33", "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert "no such model folder: mnist33" in err and "mnist32" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_cli_takes_a_bundled_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--model", "mnist32", "-n", "1", "-o", "s"]) == 0
    assert (tmp_path / "s" / "sample_000.png").is_file()
    cond = _tiny_cond(tmp_path / "x" / "c")
    monkeypatch.setattr(bundled, "COND_CHECKPOINT", cond)
    args = ["sample", "--model", "mnist32-cond", "-n", "1", "--label", "7", "-o", "c",
            "--max-tokens", "300"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "c" / "sample_7_000.png").is_file()


def test_jpeglm_models_lists_the_records(tmp_path, monkeypatch, capsys):
    cond = _tiny_cond(tmp_path / "c")
    monkeypatch.setattr(bundled, "COND_CHECKPOINT", cond)
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == list(bundled.models())
    m = rows["mnist32"]
    assert m["kind"] == "image" and m["image_size"] == 32 and m["classes"] is None
    assert m["sampling"] == read_info(bundled.DEMO_CHECKPOINT)["sampling"]
    assert m["parameters"] == load_model("mnist32").model.num_params()
    c = rows["mnist32-cond"]
    assert c["classes"] == [str(d) for d in range(10)] and c["cfg"] == 3.0
    assert c["sampling"]["top_k"] == 8 and c["folder"] == str(cond)
    v = rows["moving_mnist64"]
    assert v["kind"] == "video" and v["video"]["width"] == 64 and v["cfg"] is None
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "kind", "size"]
    table = {ln.split()[0]: ln for ln in lines[1:4]}
    assert "T 0.4 top-k 4 top-p 0.9" in table["mnist32"] and "0.94M" in table["mnist32"]
    assert "10 (0,1,2" in table["mnist32-cond"] and "cfg 3" in table["mnist32-cond"]
    assert "64x64" in table["moving_mnist64"]
