"""Labels in data (issue 33, ``prepare --labels``): each image's label read from each source kind
(class folders, webdataset ``.cls`` members, parquet HF ClassLabel and img2dataset string
columns, ``.jsonl`` lists, the bundled MNIST digits written as an ImageFolder tree); the shards
carry COND right after every BOS (the class's id, the null id without a label); ``label_counts``
over the images packed; ``--label-names`` order and a label outside them (skipped, reported);
two parts agree on the names; without ``--labels`` the shards are exactly as before; the CLI's
one-line refusals."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jpeglm import codec
from jpeglm.cli import main
from jpeglm.conditioning import Conditioning
from jpeglm.data import bundled
from jpeglm.data import prepare as data
from jpeglm.data.index import check_shard_files, read_index
from jpeglm.data.labels import (
    NO_LABEL,
    index_conditioning,
    parse_label_names,
    shard_conditioning,
    sort_names,
)
from jpeglm.data.parts import Part, part_folders
from jpeglm.data.sources import read_sources
from jpeglm.data.units import find_units, folder_label, unit_labels, unit_sources
from jpeglm.tokenizer import Tokenizer

SIZE = 32
KW = {"size": SIZE, "seq_len": 64, "images_per_shard": 3, "progress": False}
GARBAGE = b"\xff\xd8\xff\xe0 not an image"
CLASSES = ("2", "10", "3")  # sorted numerically: 2, 3, 10 (as text: 10, 2, 3)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _ext(b: bytes) -> str:
    return "jpg" if b[:2] == b"\xff\xd8" else "png"


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    """key -> image bytes: 3 bundled photos and 7 digits."""
    files = [p.read_bytes() for p in bundled.photo_paths()[:3]]
    digits, _ = bundled.mnist()
    files += [_png(digits[i * 500]) for i in range(7)]
    return {f"{i:09d}": b for i, b in enumerate(files)}


@pytest.fixture(scope="module")
def labels(images) -> dict[str, str | None]:
    """key -> label: the classes in turn, the last image without one."""
    keys = list(images)
    out: dict[str, str | None] = {k: CLASSES[i % 3] for i, k in enumerate(keys)}
    out[keys[-1]] = None
    return out


@pytest.fixture(scope="module")
def tok(images) -> Tokenizer:
    streams = [codec.encode(Image.open(io.BytesIO(b)), size=SIZE) for b in images.values()]
    return Tokenizer.train(streams, vocab_size=300, progress=False)


@pytest.fixture(scope="module")
def want(images, tok) -> dict[str, tuple[int, ...]]:
    """Each image's tokens, made without prepare."""
    return {k: tuple(tok.encode(codec.encode(Image.open(io.BytesIO(b)), size=SIZE)))
            for k, b in images.items()}  # fmt: skip


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _parquet(path: Path, columns: dict, features: dict | None = None) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(columns)
    if features is not None:
        meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        table = table.replace_schema_metadata(meta)
    pq.write_table(table, path, row_group_size=4)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, images, labels) -> dict[str, tuple[list[str], dict]]:
    """The same labelled images as each source kind: kind -> (SRC list, prepare options)."""
    root = tmp_path_factory.mktemp("labelled")
    keys = list(images)
    folder = root / "folder"
    for k, b in images.items():
        sub = folder / labels[k] if labels[k] is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{k}.{_ext(b)}").write_bytes(b)
    (root / "wds").mkdir()
    half = len(keys) // 2
    for n, ks in enumerate([keys[:half], keys[half:] + ["000000099"]]):
        with tarfile.open(root / "wds" / f"shards-{n:05d}.tar", "w") as tf:
            for k in ks:
                b = images.get(k, GARBAGE)  # 000000099: a corrupt image with a label
                _add(tf, f"{k}.{_ext(b)}", b)
                if labels.get(k, "3") is not None:
                    _add(tf, f"{k}.cls", f"{labels.get(k, '3')}\n".encode())
    pa = pytest.importorskip("pyarrow")
    hf_names = ["10", "2", "3"]  # the ClassLabel's order is not the class order
    struct = pa.array([{"bytes": images[k], "path": f"{k}.png"} for k in keys],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # fmt: skip
    cells = [None if labels[k] is None else hf_names.index(labels[k]) for k in keys]
    _parquet(
        root / "hf.parquet",
        {"image": struct, "label": pa.array(cells, pa.int64())},
        {"image": {"_type": "Image"}, "label": {"names": hf_names, "_type": "ClassLabel"}},
    )
    _parquet(root / "i2d.parquet", {"key": keys, "jpg": [images[k] for k in keys],
                                    "label": ["decoy"] * len(keys),
                                    "cls": [labels[k] for k in keys]})  # fmt: skip
    lines = []
    for k in keys:
        row = {"path": f"img/{k}.{_ext(images[k])}"}
        if labels[k] is not None:
            row["label"] = int(labels[k]) if labels[k] == "10" else labels[k]  # ints too
        lines.append(json.dumps(row))
    (root / "img").mkdir()
    for k, b in images.items():
        (root / "img" / f"{k}.{_ext(b)}").write_bytes(b)
    (root / "list.jsonl").write_text("\n".join(lines) + "\n")
    return {
        "folder": ([str(folder)], {}),
        "webdataset": ([f"{root}/wds/shards-{{00000..00001}}.tar"], {}),
        "hf": ([str(root / "hf.parquet")], {}),
        "img2dataset": ([str(root / "i2d.parquet")], {"label_column": "cls"}),
        "jsonl": ([str(root / "list.jsonl")], {}),
    }


def _key(name: str) -> str:
    """The image key of a source name (``2/000000003.png``, ``shards-00000.tar:000000003.jpg``,
    ``hf.parquet:3``, ``i2d.parquet:000000003``, ``img/000000003.png``)."""
    stem = Path(name.rpartition(":")[2]).name.split(".")[0]
    return f"{int(stem):09d}"


def decode(out: Path) -> dict[str, tuple[int | None, tuple[int, ...]]]:
    """Each packed image's COND (None without labels) and tokens (between BOS [COND] and EOS),
    keyed by its name in ``sources.txt`` (skipped sources left out)."""
    index = json.loads((out / "index.json").read_text())
    cfg = index["config"]
    head = 2 if "labels" in cfg else 1
    seqs = [np.load(out / s["file"]) for s in index["shards"] if s["sequences"]]
    flat = np.concatenate(seqs).reshape(-1).tolist()
    bos, eos = cfg["bos_id"], cfg["eos_id"]
    got, i = [], 0
    while i < len(flat) and flat[i] == bos:
        j = flat.index(eos, i + head)
        got.append((flat[i + 1] if head == 2 else None, tuple(flat[i + head : j])))
        i = j + 1
    assert all(t == cfg["pad_id"] for t in flat[i:])  # only the last sequence's padding
    skipped = {s["source"] for s in index["skipped"]}
    names = [n for n in read_sources(out) if n not in skipped]
    assert len(names) == len(got) == index["images"]
    return dict(zip(names, got))


@pytest.mark.parametrize("kind", ["folder", "webdataset", "hf", "img2dataset", "jsonl"])
def test_labels_from_each_source_kind(sources, tok, images, labels, want, tmp_path, kind):
    src, opts = sources[kind]
    index = data.prepare(src, tmp_path / "o", tok, labels=True, **opts, **KW)
    cond = Conditioning.from_record(index["config"]["labels"])
    assert cond.names == ("2", "3", "10") and cond.base == tok.vocab_size  # numeric order
    assert index_conditioning(read_index(tmp_path / "o")) == cond
    got = decode(tmp_path / "o")
    assert {_key(n) for n in got} == set(images)
    for name, (c, toks) in got.items():
        k = _key(name)
        assert c == (cond.null_id if labels[k] is None else cond.id_of(labels[k])), name
        assert toks == want[k], name
    counts = Counter(NO_LABEL if x is None else x for x in labels.values())
    assert index["label_counts"] == {"2": counts["2"], "3": counts["3"], "10": counts["10"],
                                     NO_LABEL: 1}  # fmt: skip
    assert sum(s["images"] for s in index["shards"]) == sum(index["label_counts"].values())
    assert index["tokens"] == sum(len(t) + 3 for t in want.values())  # BOS COND ... EOS
    if kind == "webdataset":  # the corrupt image of class 3: reported, not counted
        assert [_key(s["source"]) for s in index["skipped"]] == ["000000099"]


def test_without_labels_the_shards_are_as_before(sources, tok, images, want, tmp_path):
    """Class folders without --labels: the same names as ever, no COND, the very bytes of the
    stream BOS tokens EOS ... cut into sequences (built here from the expected tokens)."""
    src, _ = sources["folder"]
    index = data.prepare(src, tmp_path / "plain", tok, **KW)
    assert "labels" not in index["config"] and "label_counts" not in index
    assert all("label_counts" not in s for s in index["shards"])
    names = read_sources(tmp_path / "plain")
    assert names == [u.name for u in find_units(src)[0]]
    flat = [t for n in names for t in (tok.bos_id, *want[_key(n)], tok.eos_id)]
    flat += [tok.pad_id] * (-len(flat) % KW["seq_len"])
    shards = [np.load(tmp_path / "plain" / s["file"]) for s in index["shards"] if s["sequences"]]
    assert np.concatenate(shards).reshape(-1).tolist() == flat
    # with labels: the same stream with one COND after each BOS
    data.prepare(src, tmp_path / "cond", tok, labels=True, **KW)
    got = decode(tmp_path / "cond")
    assert read_sources(tmp_path / "cond") == names
    assert [toks for _, toks in got.values()] == [want[_key(n)] for n in names]


def test_label_names_order_and_a_label_outside_them(sources, tok, labels, tmp_path):
    src, _ = sources["folder"]
    index = data.prepare(src, tmp_path / "o", tok, labels=True, label_names=["10", "2"], **KW)
    cond = Conditioning(("10", "2"), tok.vocab_size)
    assert index["config"]["labels"] == cond.record()
    got = decode(tmp_path / "o")
    outside = sorted(k for k, x in labels.items() if x == "3")
    assert sorted(_key(s["source"]) for s in index["skipped"]) == outside  # skipped, reported
    assert all("label '3' is not one of the label names" in s["error"] for s in index["skipped"])
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["skipped"] == index["skipped"]
    for name, (c, _) in got.items():
        x = labels[_key(name)]
        assert c == (cond.null_id if x is None else cond.id_of(x))
    n = Counter(labels.values())
    assert index["label_counts"] == {"10": n["10"], "2": n["2"], NO_LABEL: n[None]}
    # another order is another configuration: refused, never mixed into these shards
    with pytest.raises(ValueError, match="different configuration"):
        data.prepare(src, tmp_path / "o", tok, labels=True, label_names=["2", "10"], **KW)


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_two_parts_agree_on_the_names(sources, tok, tmp_path, kind):
    src, _ = sources[kind]
    whole = data.prepare(src, tmp_path / "whole", tok, labels=True, **KW)
    seen: dict = {}
    for i in range(2):
        idx = data.prepare(src, tmp_path / "parts", tok, labels=True, part=Part(i, 2), **KW)
        assert idx["config"]["labels"] == whole["config"]["labels"]
        seen.update(decode(tmp_path / "parts" / Part(i, 2).folder_name))
    assert len(part_folders(tmp_path / "parts")) == 2  # the same configuration
    assert seen == decode(tmp_path / "whole")
    # each part of the folder lacks a class (sorted: 000000009.png, 10/, 2/ | 2/, 3/): its names
    # still come from all the units
    for i, lacks in enumerate(("3", "10")):
        idx = read_index(tmp_path / "parts" / Part(i, 2).folder_name)
        assert (idx["label_counts"][lacks] == 0) == (kind == "folder")


def test_resumed_run_with_labels_is_byte_identical(sources, tok, tmp_path):
    src, _ = sources["folder"]
    data.prepare(src, tmp_path / "a", tok, labels=True, **KW)
    index = data.prepare(src, tmp_path / "b", tok, labels=True, **KW)
    files = [s["file"] for s in index["shards"] if s["sequences"]]
    assert len(files) >= 3
    (tmp_path / "b" / files[1]).unlink()  # a shard removed in the middle
    (tmp_path / "b" / files[-1]).unlink()
    again = data.prepare(src, tmp_path / "b", tok, labels=True, **KW)
    assert again["label_counts"] == index["label_counts"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_folder_labels_in_the_units(sources):
    assert folder_label("cat/x.jpg") == "cat" and folder_label("cat/young/x.jpg") == "cat"
    assert folder_label("x.jpg") is None
    units, _ = find_units(sources["folder"][0])
    assert [u.label for u in units] == [folder_label(u.name) for u in units]
    assert {u.label for u in units} == {"10", "2", "3", None}
    srcs = [s for u in units for s in unit_sources(u, [])]
    assert [s.label for s in srcs] == [u.label for u in units]
    assert [x for u in units for x in unit_labels(u)] == [u.label for u in units]


def test_label_column_named_and_missing(sources, tok, tmp_path):
    src, _ = sources["img2dataset"]
    unit = find_units(src)[0][0]
    assert set(unit_labels(unit)) == {"decoy"}  # the default column: "label"
    assert unit_labels(unit, label_column="cls")[-1] is None
    with pytest.raises(ValueError, match="label column 'nope': no such column") as e:
        data.prepare(src, tmp_path / "o", tok, labels=True, label_column="nope", **KW)
    assert "\n" not in str(e.value) and "cls (string)" in str(e.value)
    with pytest.raises(ValueError, match="label column 'nope'"):  # before any work
        data.prepare(src, tmp_path / "n", tok, labels=True, label_names=["1"],
                     label_column="nope", **KW)  # fmt: skip
    assert not (tmp_path / "n").exists()
    with pytest.raises(ValueError, match="need labels=True"):
        data.prepare(src, tmp_path / "o", tok, label_column="cls", **KW)


def test_bundled_mnist_augmented_copies(tmp_path):
    """``copies``: each digit as is (``_0``) and rotated/shifted copies, the demo scripts' seeded
    augmentation (the same rng draws, in the same order, as their original loop); flat or as a
    tree; bad ``copies`` refused before anything is written."""
    root, n = bundled.mnist_folder(tmp_path / "a", "held", held_per_digit=2, copies=3)
    assert n == 60 and len(list(root.rglob("*.png"))) == 60
    x, y = bundled.mnist()
    _, held = bundled.mnist_split(2)
    rng = np.random.default_rng(0)  # the scripts' loop, as they were written
    for i in held:
        for k in range(3):
            im = Image.fromarray(x[i])
            if k:
                dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
                im = im.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR,
                               translate=(dx, dy))  # fmt: skip
            got = np.asarray(Image.open(root / str(y[i]) / f"{i:04d}_{k}.png"))
            assert np.array_equal(got, np.asarray(im))
            assert k or np.array_equal(got, x[i])
    first = np.asarray(Image.open(root / str(y[held[0]]) / f"{held[0]:04d}_1.png"))
    assert not np.array_equal(first, x[held[0]])  # a copy is not the digit as is
    flat, n = bundled.mnist_folder(tmp_path / "f", "held", held_per_digit=2, copies=2,
                                   folders=False)  # fmt: skip
    assert n == 40 and all(f.is_file() for f in flat.iterdir()) and len(list(flat.iterdir())) == 40
    assert (flat / f"{held[0]:04d}_1.png").read_bytes() == (
        root / str(y[held[0]]) / f"{held[0]:04d}_1.png").read_bytes()  # fmt: skip
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="copies must be"):
            bundled.mnist_folder(tmp_path / "b", copies=bad)
    assert not (tmp_path / "b").exists()


def test_bundled_mnist_as_a_labelled_folder(tok, tmp_path):
    root, n = bundled.mnist_folder(tmp_path / "digits", "held", held_per_digit=2)
    assert n == 20 and sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    _, held = bundled.mnist_split(2)
    x, y = bundled.mnist()
    files = sorted(root.rglob("*.png"))
    assert sorted(int(f.stem) for f in files) == sorted(held.tolist())
    for f in files[:3]:
        assert int(f.parent.name) == y[int(f.stem)]
        assert np.array_equal(np.asarray(Image.open(f)), x[int(f.stem)])
    with pytest.raises(ValueError, match="not an empty folder"):
        bundled.mnist_folder(root)
    tok.save(tmp_path / "tok.jpeglm")
    args = ["prepare", str(root), str(tmp_path / "o"), "--tokenizer", str(tmp_path / "tok.jpeglm"),
            "--size", "32", "--seq-len", "64", "--labels", "--quiet"]  # fmt: skip
    assert main(args) == 0
    index = read_index(tmp_path / "o")
    cond = index_conditioning(index)
    assert cond.names == tuple(str(d) for d in range(10))  # numeric order
    assert index["label_counts"] == {**{str(d): 2 for d in range(10)}, NO_LABEL: 0}
    for name, (c, _) in decode(tmp_path / "o").items():
        assert c == cond.id_of(str(y[int(Path(name).stem)]))
    # the trainer's check of the shards needs the grown vocabulary
    with pytest.raises(ValueError, match="prepared with --labels"):
        check_shard_files(tmp_path / "o", index, tok.vocab_size)
    check_shard_files(tmp_path / "o", index, cond.vocab_size)


def test_names_and_their_limits(tok, sources, tmp_path):
    assert sort_names(["10", "2", None, "-1", "2"]) == ["-1", "2", "10"]
    assert sort_names(["b", "10", "a", "2"]) == ["10", "2", "a", "b"]
    assert parse_label_names(" cat , dog ") == ["cat", "dog"]
    (tmp_path / "names.txt").write_text("cat\n\n dog \n")
    assert parse_label_names(f"@{tmp_path / 'names.txt'}") == ["cat", "dog"]
    for names, match in ((["a", "a"], "given twice"), (["all"], "'all' cannot"),
                         (["a", ""], "non-empty"), ([NO_LABEL], "cannot be a class name"),
                         ([], "no image has a label")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            shard_conditioning(names, 300)
    with pytest.raises(ValueError, match="more than the 65536 uint16 shards hold"):
        shard_conditioning([str(i) for i in range(10)], 65530)
    shard_conditioning([str(i) for i in range(5)], 65530)  # 65536 ids: fit
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "x.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    with pytest.raises(ValueError, match="no image has a label"):
        data.prepare([tmp_path / "none"], tmp_path / "o", tok, labels=True, **KW)


def test_cli_refusals_in_one_line(sources, tok, tmp_path, capsys):
    tok.save(tmp_path / "tok.jpeglm")
    base = ["prepare", *sources["folder"][0], str(tmp_path / "o"), "--tokenizer",
            str(tmp_path / "tok.jpeglm"), "--size", "32", "--seq-len", "64", "--quiet"]  # fmt: skip
    for extra, match in (
        (["--label-names", "2,3"], "--label-names needs --labels"),
        (["--label-column", "cls"], "--label-column needs --labels"),
        (["--labels", "--label-names", "2,2"], "given twice"),
        (["--labels", "--label-names", "2,,3"], "non-empty"),
        (["--labels", "--label-names", "all"], "'all' cannot"),
        (["--labels", "--label-names", "@" + str(tmp_path / "missing.txt")], "no such file"),
    ):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and match in err, (extra, err)
    assert not (tmp_path / "o").exists()  # refused before any work
    (tmp_path / "names.txt").write_text("3\n2\n10\n")
    assert main(base + ["--labels", "--label-names", f"@{tmp_path / 'names.txt'}"]) == 0
    assert "3 classes (3 with images), 1 images without a label" in capsys.readouterr().out
    assert read_index(tmp_path / "o")["config"]["labels"]["names"] == ["3", "2", "10"]
