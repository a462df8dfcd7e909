"""``prepare`` at the paper's scale (issue 32): the same images from a folder, from webdataset
shards (a brace pattern over 2 shards) and from parquet files (the Hugging Face ``datasets``
``Image`` layout and img2dataset's) give the same token sequence per image, keyed by the name
``sources.txt`` records; a corrupt tar member and a parquet row that is not an image are
reported with their keys and skipped; ``--part 0/2`` + ``--part 1/2`` hold exactly the images
of one run, and the trainer reads the folder of parts as one dataset; progress lines in logs;
``prepare --help`` says what each option does."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jpeglm import codec
from jpeglm.cli import main
from jpeglm.data import bundled
from jpeglm.data import prepare as data
from jpeglm.data.parts import Part
from jpeglm.data.sources import read_sources
from jpeglm.tokenizer import Tokenizer

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

SIZE = 32
KW = {"size": SIZE, "seq_len": 64, "images_per_shard": 3, "progress": False}
GARBAGE = b"\xff\xd8\xff\xe0 not an image"


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    """key -> image file bytes: the bundled photos and some digits."""
    files = [p.read_bytes() for p in bundled.photo_paths()]
    digits, _ = bundled.mnist()
    files += [_png(digits[i]) for i in range(7)]
    return {f"{i:09d}": b for i, b in enumerate(files)}


@pytest.fixture(scope="module")
def tok(images) -> Tokenizer:
    streams = [codec.encode(Image.open(io.BytesIO(b)), size=SIZE) for b in images.values()]
    return Tokenizer.train(streams, vocab_size=300, progress=False)


def _ext(b: bytes) -> str:
    return "jpg" if b[:2] == b"\xff\xd8" else "png"


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def sources(tmp_path_factory, images) -> dict[str, list[str]]:
    """The same images as a folder, 2 webdataset shards, and 2 parquet layouts (with one bad
    sample each in the shards and the parquet files)."""
    root = tmp_path_factory.mktemp("sources")
    keys = list(images)
    folder = root / "folder"
    folder.mkdir()
    for k, b in images.items():
        (folder / f"{k}.{_ext(b)}").write_bytes(b)
    wds = root / "wds"
    wds.mkdir()
    half = len(keys) // 2
    for n, ks in enumerate([keys[:half], keys[half:] + ["000000099"]]):
        with tarfile.open(wds / f"shards-{n:05d}.tar", "w") as tf:
            for k in ks:
                b = images.get(k, GARBAGE)  # 000000099: a corrupt image member
                _add(tf, f"{k}.{_ext(b)}", b)
                _add(tf, f"{k}.txt", b"a caption")
                _add(tf, f"{k}.cls", b"3")
    rows = [images[k] for k in keys] + [b"not an image"]
    struct = pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(rows)],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # fmt: skip
    meta = {b"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}})
            .encode()}  # fmt: skip
    pq.write_table(pa.table({"image": struct}).replace_schema_metadata(meta),
                   root / "hf.parquet", row_group_size=4)  # fmt: skip
    pq.write_table(pa.table({"key": keys + ["000000099"], "caption": ["c"] * len(rows),
                             "jpg": rows}), root / "i2d.parquet")  # fmt: skip
    return {
        "folder": [str(folder)],
        "webdataset": [f"{wds}/shards-{{00000..00001}}.tar"],
        "hf": [str(root / "hf.parquet")],
        "img2dataset": [str(root / "i2d.parquet")],
    }


def _key(name: str) -> str:
    """The image key of a source name: ``000000003.png``, ``shards-00000.tar:000000003.jpg``,
    ``hf.parquet:3`` (a row number), ``i2d.parquet:000000003``."""
    tail = name.rpartition(":")[2]
    stem = tail.split(".")[0]
    return f"{int(stem):09d}"


def per_image(out: Path) -> dict[str, tuple[int, ...]]:
    """Each image's tokens (between its BOS and EOS), keyed by its source's key."""
    index = json.loads((out / "index.json").read_text())
    cfg = index["config"]
    seqs = [np.load(out / s["file"]) for s in index["shards"] if s["sequences"]]
    flat = np.concatenate(seqs).reshape(-1).tolist()
    bos, eos = cfg["bos_id"], cfg["eos_id"]
    streams, i = [], 0
    while i < len(flat) and flat[i] == bos:
        j = flat.index(eos, i)
        streams.append(tuple(flat[i + 1 : j]))
        i = j + 1
    assert all(t == cfg["pad_id"] for t in flat[i:])  # only the last sequence's padding
    skipped = {s["source"] for s in index["skipped"]}
    names = [n for n in read_sources(out) if n not in skipped]
    assert len(names) == len(streams) == index["images"]
    return {_key(n): s for n, s in zip(names, streams)}


def test_every_source_kind_gives_the_same_tokens_per_image(sources, tok, images, tmp_path):
    got = {}
    for kind, src in sources.items():
        index = data.prepare(src, tmp_path / kind, tok, **KW)
        got[kind] = per_image(tmp_path / kind)
        bad = [s["source"] for s in index["skipped"]]
        if kind == "folder":
            assert bad == []
        else:  # the corrupt member / the row that is not an image: reported with its key
            assert len(bad) == 1 and _key(bad[0]) in ("000000099", f"{len(images):09d}"), bad
            assert index["skipped"][0]["error"]
    assert set(got["folder"]) == set(images)
    for kind in ("webdataset", "hf", "img2dataset"):
        assert got[kind] == got["folder"], kind
    want = {k: tuple(tok.encode(codec.encode(Image.open(io.BytesIO(b)), size=SIZE)))
            for k, b in images.items()}  # fmt: skip
    assert got["folder"] == want


def test_several_sources_in_one_run(sources, tok, tmp_path):
    index = data.prepare(sources["webdataset"] + sources["img2dataset"], tmp_path / "o", tok, **KW)
    names = read_sources(tmp_path / "o")
    assert names[0].startswith("shards-00000.tar:") and names[-1].startswith("i2d.parquet:")
    assert len(index["skipped"]) == 2


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_two_parts_hold_exactly_one_run(sources, tok, tmp_path, kind):
    from jpeglm.data.dataset import ShardDataset
    from jpeglm.data.parts import part_folders

    pytest.importorskip("torch")
    data.prepare(sources[kind], tmp_path / "whole", tok, **KW)
    whole = per_image(tmp_path / "whole")
    out = tmp_path / "parts"
    seen: dict[str, tuple[int, ...]] = {}
    for i in range(2):
        idx = data.prepare(sources[kind], out, tok, part=Part(i, 2), **KW)
        assert idx["config"]["part"] == f"{i}/2" and idx["images"] > 0
        mine = per_image(out / Part(i, 2).folder_name)
        assert not set(mine) & set(seen)  # none twice
        seen.update(mine)
    assert seen == whole  # none lost, the same tokens
    folders = part_folders(out)
    assert [f.name for f in folders] == ["part-00000-of-00002", "part-00001-of-00002"]
    ds = ShardDataset([out], shuffle=False)
    n_parts = sum(len(ShardDataset([f], shuffle=False)) for f in folders)
    assert len(ds) == n_parts and n_parts >= len(ShardDataset([tmp_path / "whole"]))


def test_more_parts_than_files_gives_empty_finished_parts(sources, tok, tmp_path):
    from jpeglm.data.parts import part_folders

    for i in range(3):
        data.prepare(sources["webdataset"], tmp_path / "o", tok, part=Part(i, 3), **KW)
    assert len(part_folders(tmp_path / "o")) == 3  # part 0 holds no shard, and is finished


def test_cli_parts_from_the_environment_and_progress_lines(sources, tok, tmp_path, capsys,
                                                           monkeypatch):  # fmt: skip
    tok.save(tmp_path / "tok.jpeglm")
    args = ["prepare", *sources["webdataset"], *sources["hf"], str(tmp_path / "o"),
            "--tokenizer", str(tmp_path / "tok.jpeglm"), "--size", "32", "--seq-len", "64",
            "--images-per-shard", "3"]  # fmt: skip
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "part 1/2" in out and (tmp_path / "o" / "part-00001-of-00002" / "index.json").exists()
    line = err.strip().splitlines()[-1]  # stderr is not a terminal: plain lines
    assert re.fullmatch(r"prepare part 1/2: \d+/\d+ images \(100%\), [\d.]+ images/s, "
                        r"[\d,]+ tokens/s, 2 skipped, ETA 0:00:00", line), line  # fmt: skip
    run = json.loads((tmp_path / "o" / "part-00001-of-00002" / "run.json").read_text())
    assert run["part"] == "1/2" and run["read"] == run["sources"] and run["tokens_per_s"] > 0
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert main([*args, "--part", "0/2", "--quiet"]) == 0
    assert "prepare part" not in capsys.readouterr().err
    assert main([*args, "--part", "2/2"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_prepare_help_says_what_each_option_does(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for opt in (
        "--size",
        "--quality",
        "--seq-len",
        "--images-per-shard",
        "--workers",
        "--fast",
        "--part",
        "--image-column",
        "--exif-transpose",
        "--quiet",
        "--tokenizer",
    ):
        assert re.search(re.escape(opt) + r"[ A-Z_/]*? [a-z(]", text), opt
    assert "(default: 256)" in text and "(default: 12288)" in text and "webdataset" in text
