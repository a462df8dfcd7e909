"""Source units (issue 32): webdataset shards (brace pattern, glob, folder), parquet files in
the Hugging Face ``datasets`` and img2dataset layouts, ``.jsonl`` lists -- each source's bytes
and label, keyed, against the bundled files they were made from; the problems met."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from jpeglm.data import bundled
from jpeglm.data.sources import _read_image
from jpeglm.data.units import Unit, find_units, unit_count, unit_sources
from jpeglm.data.webdataset import expand_braces, pattern_root, sample_key


def _digit_png(i: int) -> bytes:
    images, _ = bundled.mnist()
    buf = io.BytesIO()
    Image.fromarray(images[i]).save(buf, format="PNG")
    return buf.getvalue()


def _images() -> list[tuple[bytes, str]]:
    """(bytes, extension) of the bundled photographs and two digits."""
    out = [(p.read_bytes(), p.suffix[1:]) for p in bundled.photo_paths()]
    return out + [(_digit_png(0), "png"), (_digit_png(1), "png")]


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def wds(tmp_path_factory):
    """Two img2dataset-like shards; returns (folder, {key: bytes}, {key: label})."""
    root = tmp_path_factory.mktemp("wds")
    images = _images()
    want, labels = {}, {}
    samples = []
    for i, (data, ext) in enumerate(images):
        key = f"{i:09d}"
        want[key], labels[key] = data, f"class{i % 3}"
        samples.append([(f"{key}.{ext}", data), (f"{key}.txt", b"a caption"),
                        (f"{key}.json", json.dumps({"key": key}).encode()),
                        (f"{key}.cls", f" class{i % 3}\n".encode())])  # fmt: skip
    half = len(samples) // 2
    # shard 1: members in reverse order, a second image for a sample (the plain extension
    # wins), a caption-only sample and one sample in a sub-folder without a label
    extra = [
        ("000000099.txt", b"caption only"),
        ("000000099.json", b"{}"),
        (f"{half:09d}.seg.png", _digit_png(2)),
        ("sub/000000100.png", _digit_png(3)),
    ]
    want["sub/000000100"], labels["sub/000000100"] = _digit_png(3), None
    for n, members in enumerate([sum(samples[:half], []), sum(samples[half:], []) + extra]):
        with tarfile.open(root / f"shards-{n:05d}.tar", "w") as tf:
            for name, data in members if n == 0 else members[::-1]:
                _add(tf, name, data)
    _write_table(root / "shards-00000.parquet", {"key": ["000000000"], "caption": ["x"]})
    (root / "shards-00000_stats.json").write_text("{}")
    return root, want, labels


def _write_table(path: Path, columns: dict, metadata: dict | None = None, **kw) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(columns)
    if metadata is not None:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path, **kw)


def _check_tar_units(units, want, labels):
    assert [u.name for u in units] == ["shards-00000.tar", "shards-00001.tar"]
    assert all(u.kind == "tar" for u in units)
    seen = []
    for u in units:
        problems: list[dict] = []
        got = list(unit_sources(u, problems))
        assert problems == []
        assert len(got) == unit_count(u)
        keys = [sample_key(s.member)[0] for s in got]
        assert keys == sorted(keys)  # sorted by key, whatever the archive order
        for s, key in zip(got, keys):
            assert s.name == f"{u.name}:{s.member}"
            assert s.read() == want[key], s.name
            assert s.label == labels[key]
        seen += keys
    assert sorted(seen) == sorted(want)  # every image once; the caption-only sample skipped
    return [s.name for u in units for s in unit_sources(u, [])]


def test_webdataset_brace_glob_folder(wds):
    root, want, labels = wds
    names = []
    for src in [f"{root}/shards-{{00000..00001}}.tar", f"{root}/*.tar", f"{root}/**/s*.tar", root]:
        units, problems = find_units([src])
        assert problems == []  # the folder's img2dataset sidecar parquet is not a unit
        names.append(_check_tar_units(units, want, labels))
    assert names[0] == names[1] == names[2] == names[3]
    assert not any(n.endswith(".seg.png") for n in names[0])  # the plain extension won
    # the same file named twice is one unit
    units, _ = find_units([root, f"{root}/shards-{{00000..00001}}.tar", root / "shards-00001.tar"])
    assert len(units) == 2


def test_tar_damage_and_missing_shard(wds, tmp_path):
    root, want, _ = wds
    data = (root / "shards-00000.tar").read_bytes()
    with tarfile.open(root / "shards-00000.tar") as tf:
        cut = [m for m in tf.getmembers() if m.name.endswith(".jpg") or m.name.endswith(".png")][3]
    (tmp_path / "cut.tar").write_bytes(data[: cut.offset + 100])  # inside a member's header
    (tmp_path / "bad.tar").write_bytes(b"not a tar archive" * 100)
    units, problems = find_units([tmp_path])
    assert [u.name for u in units] == ["bad.tar", "cut.tar"] and problems == []
    got = list(unit_sources(units[1], problems))
    assert [s.read() for s in got] == [want[f"{i:09d}"] for i in range(3)]
    assert unit_count(units[1]) == 3
    assert len(problems) == 1 and problems[0]["source"] == "cut.tar"
    assert "truncated or corrupt after 3 image members" in problems[0]["error"]
    problems = []
    assert list(unit_sources(units[0], problems)) == [] and unit_count(units[0]) == 0
    assert problems[0]["source"] == "bad.tar" and "cannot read" in problems[0]["error"]
    with pytest.raises(ValueError, match="not a readable tar archive") as e:
        find_units([tmp_path / "bad.tar"])
    assert "\n" not in str(e.value)
    units, problems = find_units([f"{root}/shards-{{00000..00002}}.tar"])
    assert len(units) == 2
    assert problems == [{"source": f"{root}/shards-00002.tar",
                         "error": f"no such file (named by the pattern "
                                  f"{root}/shards-{{00000..00002}}.tar)"}]  # fmt: skip


def test_parquet_datasets_layout(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    from jpeglm.data import parquet

    images = [data for data, _ in _images()]
    names = ["cat", "dog", "bird"]
    struct = pa.array([{"bytes": d, "path": f"{i}.x"} for i, d in enumerate(images)] + [None],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # fmt: skip
    features = {"image": {"_type": "Image"},
                "label": {"names": names, "_type": "ClassLabel"}}  # fmt: skip
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    labels = [i % 3 for i in range(len(images))] + [0]
    _write_table(tmp_path / "hf.parquet", {"label": labels, "image": struct}, meta,
                 row_group_size=3)  # fmt: skip
    monkeypatch.setattr(parquet, "BATCH_ROWS", 2)  # several record batches and row groups
    units, problems = find_units([tmp_path / "hf.parquet"])
    assert units == [Unit("parquet", str(tmp_path / "hf.parquet"), "hf.parquet")]
    got = list(unit_sources(units[0], problems))
    assert problems == [] and len(got) == unit_count(units[0]) == len(images) + 1
    assert [s.name for s in got] == [f"hf.parquet:{i}" for i in range(len(got))]
    assert [s.read() for s in got] == images + [b""]
    assert [s.label for s in got] == [names[i] for i in labels]
    assert isinstance(_read_image(got[-1].read, 32, False), str)  # the null row fails
    assert _read_image(got[0].read, 32, False).shape == (32, 32, 3)


def test_parquet_img2dataset_layout(tmp_path):
    pytest.importorskip("pyarrow")
    images = [data for data, _ in _images()][:4] + [b"garbage, not an image", None]
    keys = [f"{i:09d}" for i in range(len(images))]
    _write_table(tmp_path / "00000.parquet", {
        "key": keys, "caption": ["c"] * len(keys), "jpg": images,
        "width": [1] * len(keys), "label": ["a", "b", None, "d", "e", "f"]})  # fmt: skip
    units, problems = find_units([tmp_path])
    assert [u.kind for u in units] == ["parquet"]
    got = list(unit_sources(units[0], problems))
    assert problems == [] and unit_count(units[0]) == len(got) == len(images)
    assert {s.name: s.read() for s in got} == {
        f"00000.parquet:{k}": d or b"" for k, d in zip(keys, images)
    }
    assert [s.label for s in got] == ["a", "b", None, "d", "e", "f"]
    errors = [_read_image(s.read, 32, False) for s in got[-2:]]
    assert all(isinstance(e, str) and "\n" not in e for e in errors)  # reported, not raised
    with pytest.raises(ValueError, match="'caption': not a column of image bytes"):
        next(unit_sources(units[0], [], image_column="caption"))
    assert next(unit_sources(units[0], [], image_column="jpg")).read() == images[0]


def test_parquet_problems(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    _write_table(tmp_path / "meta.parquet", {"url": ["u"], "caption": ["c"], "n": [1]})
    unit = find_units([tmp_path / "meta.parquet"])[0][0]
    for call in (lambda: next(unit_sources(unit, [])), lambda: unit_count(unit)):
        with pytest.raises(ValueError, match="no image column") as e:
            call()
        assert "\n" not in str(e.value)
        assert all(c in str(e.value) for c in ("url (string)", "caption", "n (int64)"))
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(ValueError, match="not a parquet file") as e:
        find_units([tmp_path / "fake.parquet"])
    assert "\n" not in str(e.value)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "fake.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    unit = find_units([tmp_path / "sub"])[0][0]
    problems: list[dict] = []
    assert list(unit_sources(unit, problems)) == [] and unit_count(unit) == 0
    assert problems[0]["source"] == "fake.parquet"
    assert problems[0]["error"].startswith("not a readable parquet file")
    assert "\n" not in problems[0]["error"]
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install 'jpeglm\[parquet\]'"):
        unit_count(unit)


def test_lists_and_listing_problems(tmp_path):
    photos = bundled.photo_paths()
    (tmp_path / "imgs").mkdir()
    for p in photos[:2]:
        (tmp_path / "imgs" / p.name).write_bytes(p.read_bytes())
    lines = [json.dumps({"path": f"imgs/{photos[0].name}", "label": "cat"}),
             json.dumps({"path": str(photos[1]), "label": 3}), "",
             "not json", json.dumps({"label": "x"}),
             json.dumps({"path": f"imgs/{photos[1].name}", "label": [1]})]  # fmt: skip
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "list.txt").write_text(f"imgs/{photos[0].name}\nimgs/{photos[1].name}\n")
    units, problems = find_units([tmp_path / "list.jsonl", tmp_path / "list.txt"])
    assert [(u.name, u.label) for u in units] == [
        (f"imgs/{photos[0].name}", "cat"), (str(photos[1]), "3"),
        (f"imgs/{photos[1].name}", None)]  # fmt: skip  # the .txt's first line: named before
    assert [p["source"] for p in problems] == [f"{tmp_path / 'list.jsonl'} line {i}"
                                               for i in (4, 5, 6)]  # fmt: skip
    srcs = [s for u in units for s in unit_sources(u, [])]
    assert [s.read() for s in srcs] == [photos[0].read_bytes(), photos[1].read_bytes(),
                                        photos[1].read_bytes()]  # fmt: skip
    assert [s.label for s in srcs] == ["cat", "3", None]
    assert all(unit_count(u) == 1 for u in units)
    bad = os.fsdecode(b"\xff.png")
    (tmp_path / "imgs" / bad).write_bytes(photos[0].read_bytes())
    units, problems = find_units([tmp_path / "imgs"])
    assert len(units) == 2 and problems[0]["error"] == "file name is not valid UTF-8"
    with pytest.raises(FileNotFoundError, match="no such folder"):
        find_units([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found") as e:
        find_units([tmp_path / "empty", f"{tmp_path}/none-{{0..2}}.tar"])
    assert "\n" not in str(e.value)


def test_brace_patterns():
    assert expand_braces("s-{00000..00002}.tar") == [f"s-{i:05d}.tar" for i in range(3)]
    assert expand_braces("{a,b}/{8..10}.tar") == [f"{d}/{n}.tar" for d in "ab" for n in (8, 9, 10)]
    assert expand_braces("{0..6..3}{x}") == ["0{x}", "3{x}", "6{x}"]
    assert expand_braces("{2..0}") == ["2", "1", "0"]
    assert pattern_root("data/x/s-{0..1}/*.tar") == "data/x"
    assert sample_key("dir/0001.seg.png") == ("dir/0001", "seg.png")
    assert sample_key("a.b/c.jpg") == ("a.b/c", "jpg")
    assert sample_key("README") is None and sample_key("d/.hidden.jpg") is None


def test_untrusted_json_is_bounded(tmp_path):
    """A ``.jsonl`` line or a parquet file's ``huggingface`` metadata nested a million deep is a
    problem line or ignored metadata, never a RecursionError."""
    deep = "[" * 1_000_000 + "]" * 1_000_000
    img = tmp_path / "a.png"
    img.write_bytes(_digit_png(0))
    (tmp_path / "list.jsonl").write_text(deep + "\n" + json.dumps({"path": "a.png"}) + "\n")
    units, problems = find_units([tmp_path / "list.jsonl"])
    assert [u.name for u in units] == ["a.png"]
    assert len(problems) == 1 and "line 1" in problems[0]["source"]
    _write_table(tmp_path / "x.parquet", {"jpg": [_digit_png(1)]}, {b"huggingface": deep.encode()})
    (unit,), _ = find_units([tmp_path / "x.parquet"])
    assert [s.read() for s in unit_sources(unit, [])] == [_digit_png(1)]
