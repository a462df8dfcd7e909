"""Preparing on many machines (issue 32): ``--part I/N`` parsed and read from a slurm array's or
torchrun's variables, the deterministic split of the sources, the checks of a folder of parts,
and the trainer reading a folder of parts or a glob as one dataset (and resuming across the
two spellings)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jpeglm.data import bundled as samples
from jpeglm.data.index import INDEX
from jpeglm.data.parts import (
    Part,
    expand_data_folders,
    parse_part,
    part_folders,
    part_from_env,
    read_data_folders,
    split,
    split_by_size,
)

# ------------------------------------------------------------------------------ parts


def test_part_names_and_parsing():
    p = parse_part("1/2")
    assert p == Part(1, 2) and str(p) == "1/2" and p.folder_name == "part-00001-of-00002"
    assert parse_part(" 0 / 1 ") == Part(0, 1)
    assert Part(12, 345).folder_name == "part-00012-of-00345"
    for bad in ("2/2", "3/2", "-1/2", "0/0", "1", "a/b", "1/2/3", "", "0/100000", "1.0/2"):
        with pytest.raises(ValueError, match="--part must be I/N") as e:
            parse_part(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="0 <= I < N"):
        Part(2, 2)


def test_part_from_env():
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert part_from_env({}) is None
    assert part_from_env({"SLURM_ARRAY_TASK_ID": ""}) is None  # empty: unset
    assert part_from_env({**slurm, "SLURM_ARRAY_TASK_ID": "2"}) == Part(2, 4)
    # --array=3-6: ids 3..6 are parts 0..3
    with_min = {**slurm, "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "6"}
    assert part_from_env(with_min) == Part(2, 4)
    assert part_from_env({**with_min, "SLURM_ARRAY_TASK_STEP": "1"}) == Part(2, 4)
    assert part_from_env({"RANK": "1", "WORLD_SIZE": "3"}) == Part(1, 3)
    # slurm first: an array of torchrun jobs splits by array task
    assert part_from_env({**with_min, "RANK": "0", "WORLD_SIZE": "8"}) == Part(2, 4)
    bad = [
        (slurm, "SLURM_ARRAY_TASK_ID=5 .*SLURM_ARRAY_TASK_COUNT=4"),  # no MIN: 5 >= 4
        ({**with_min, "SLURM_ARRAY_TASK_STEP": "2"}, "not consecutive"),
        ({**slurm, "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "9"}, "not consecutive"),
        ({**slurm, "SLURM_ARRAY_TASK_MIN": "7"}, "SLURM_ARRAY_TASK_ID=5 .*MIN=7"),
        ({"SLURM_ARRAY_TASK_ID": "0"}, "SLURM_ARRAY_TASK_COUNT is not"),
        ({**slurm, "SLURM_ARRAY_TASK_COUNT": "four"}, "SLURM_ARRAY_TASK_COUNT='four'"),
        ({"RANK": "3", "WORLD_SIZE": "3"}, "RANK=3 .*WORLD_SIZE=3"),
        ({"RANK": "x", "WORLD_SIZE": "3"}, "RANK='x' is not an integer"),
        ({"RANK": "0"}, "RANK and WORLD_SIZE"),
        ({"WORLD_SIZE": "2"}, "RANK and WORLD_SIZE"),
    ]
    for env, match in bad:
        with pytest.raises(ValueError, match=match) as e:
            part_from_env(env)
        assert "\n" not in str(e.value), env


def test_split_covers_every_item_once():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 5, 11, 13, 29):
        items = [f"s{i}" for i in range(n)]
        sizes = [int(x) for x in rng.integers(0, 1000, n)]
        for count in range(1, 8):
            by_count = [split(items, Part(i, count)) for i in range(count)]
            assert sum(by_count, []) == items  # each once, in order
            assert max(map(len, by_count)) - min(map(len, by_count)) <= 1
            by_size = [split_by_size(items, Part(i, count), sizes) for i in range(count)]
            assert sum(by_size, []) == items
            if sum(sizes):  # each part within one item's size of its share
                share = sum(sizes) / count
                for part in by_size:
                    got = sum(sizes[items.index(x)] for x in part)
                    assert abs(got - share) <= max(sizes) + 1e-9, (n, count, sizes)
    assert split(range(10), Part(1, 3)) == [3, 4, 5]
    assert split_by_size("abcd", Part(0, 2), [9, 1, 1, 1]) == ["a"]  # by size, not count
    assert split_by_size("abcd", Part(1, 2), [0, 0, 0, 0]) == ["c", "d"]  # no size: by count
    with pytest.raises(ValueError, match="3 sizes for 4 items"):
        split_by_size("abcd", Part(0, 2), [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        split_by_size("ab", Part(0, 2), [1, float("nan")])


# ------------------------------------------------------------------------------ folders of parts


def _fake_part(out, part: Part, complete: bool = True, **config) -> None:
    folder = out / part.folder_name
    folder.mkdir(parents=True, exist_ok=True)
    index = {
        "config": {"tokenizer": "abc", "seq_len": 128, "size": 32, "sources": 3 + part.index,
                   **config},
        "complete": complete, "shards": [], "sequences": 1,
    }  # fmt: skip
    (folder / INDEX).write_text(json.dumps(index))


def _one_line(exc_info, *words: str) -> None:
    text = str(exc_info.value)
    assert "\n" not in text
    for w in words:
        assert w in text, (w, text)


def test_part_folders_are_checked(tmp_path):
    out = tmp_path / "out"
    for i in range(3):
        _fake_part(out, Part(i, 3))
    (out / "notes").mkdir()  # other entries are not parts
    (out / "report.json").write_text("{}")
    assert part_folders(out) == [out / Part(i, 3).folder_name for i in range(3)]
    # parts' own config fields (the number of sources) differ; the others must not

    missing = tmp_path / "missing"
    _fake_part(missing, Part(0, 2))
    with pytest.raises(ValueError) as e:
        part_folders(missing)
    _one_line(e, "part 1 of 2 (part-00001-of-00002) is missing", "--part 1/2")

    unfinished = tmp_path / "unfinished"
    _fake_part(unfinished, Part(0, 2))
    _fake_part(unfinished, Part(1, 2), complete=False)
    with pytest.raises(ValueError) as e:
        part_folders(unfinished)
    _one_line(e, "part 1 of 2 (part-00001-of-00002) is not finished", "--part 1/2")
    (unfinished / Part(1, 2).folder_name / INDEX).unlink()  # started, nothing written yet
    with pytest.raises(ValueError) as e:
        part_folders(unfinished)
    _one_line(e, "is not finished (no index.json)", "--part 1/2")

    mixed = tmp_path / "mixed"
    _fake_part(mixed, Part(0, 2))
    _fake_part(mixed, Part(1, 2))
    _fake_part(mixed, Part(2, 3))
    with pytest.raises(ValueError) as e:
        part_folders(mixed)
    _one_line(e, "different splits (of 2 and of 3)")

    beyond = tmp_path / "beyond"
    _fake_part(beyond, Part(0, 1))
    (beyond / "part-00001-of-00001").mkdir()
    with pytest.raises(ValueError) as e:
        part_folders(beyond)
    _one_line(e, "part-00001-of-00001 is not a part of 1")

    config = tmp_path / "config"
    _fake_part(config, Part(0, 2))
    _fake_part(config, Part(1, 2), seq_len=256)
    with pytest.raises(ValueError) as e:
        part_folders(config)
    _one_line(e, "prepared differently (seq_len: 128 in part-00000-of-00002, 256 in part-00001")

    with pytest.raises(ValueError) as e:
        part_folders(tmp_path / "missing" / Part(0, 2).folder_name)
    _one_line(e, "holds no part folder")


def test_data_entries_are_expanded(tmp_path):
    out = tmp_path / "data" / "b_parts"
    for i in range(2):
        _fake_part(out, Part(i, 2))
    plain = tmp_path / "data" / "a_plain"
    plain.mkdir()
    (plain / INDEX).write_text("{}")
    parts = [out / Part(i, 2).folder_name for i in range(2)]
    assert expand_data_folders([str(out)]) == parts
    assert expand_data_folders([out, plain]) == [*parts, plain]
    assert expand_data_folders([str(tmp_path / "data" / "*") + "/"]) == [plain, *parts]
    assert expand_data_folders([str(out / "part-*")]) == parts
    (tmp_path / "data" / "c.txt").write_text("")  # files a glob matches are not folders
    assert expand_data_folders([str(tmp_path / "data" / "*")]) == [plain, *parts]
    with pytest.raises(ValueError) as e:
        expand_data_folders([str(tmp_path / "nothing" / "*")], "eval_data")
    _one_line(e, "eval_data: ", "matches no folder")
    with pytest.raises(FileNotFoundError) as e:
        expand_data_folders([str(tmp_path / "nothing")])
    _one_line(e, "train_data: ", "does not exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as e:
        expand_data_folders([tmp_path / "empty"])
    _one_line(e, "train_data: ", "neither a prepared folder", "nor a folder of parts")
    with pytest.raises(ValueError) as e:
        expand_data_folders([tmp_path / "data" / "c.txt"])
    _one_line(e, "is not a folder")
    (out / Part(1, 2).folder_name / INDEX).unlink()
    with pytest.raises(ValueError) as e:
        expand_data_folders([out])
    _one_line(e, "train_data: ", "part 1 of 2", "not finished")


# ------------------------------------------------------------------------------ the trainer


@pytest.fixture(scope="module")
def parted(tmp_path_factory):
    """Two parts prepared by the existing ``prepare`` from two halves of one image folder
    (split with :func:`split`), and the tokenizer."""
    from jpeglm import codec
    from jpeglm.data.prepare import prepare
    from jpeglm.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("parts")
    images = [c.resize((40, 40)) for c in samples.random_crops(30, 5, scale=(0.2, 0.6))]
    names = [f"{i:03d}.png" for i in range(len(images))]
    (root / "all").mkdir()
    for name, im in zip(names, images):
        im.save(root / "all" / name)
    streams = [codec.encode(root / "all" / n, size=32) for n in names]
    tok = Tokenizer.train(streams, vocab_size=300, progress=False)
    tok.save(root / "tok.jpeglm")
    out = root / "out"
    for i in range(2):  # as `jpeglm prepare root/all OUT --part i/2` on two machines
        prepare(root / "all", out, tok, size=32, seq_len=64, images_per_shard=8, workers=1,
                progress=False, part=Part(i, 2))  # fmt: skip
    return root, out


def test_a_folder_of_parts_is_one_dataset(parted):
    torch = pytest.importorskip("torch")
    from jpeglm.data.dataset import ShardDataset

    root, out = parted
    parts = [out / Part(i, 2).folder_name for i in range(2)]
    folders, indexes = read_data_folders([str(out)])
    assert folders == parts and [x["images"] for x in indexes] == [15, 15]
    whole = ShardDataset(folders, seed=1, indexes=indexes)
    by_hand = ShardDataset([str(p) for p in parts], seed=1)
    assert len(whole) == sum(x["sequences"] for x in indexes)
    seqs = [tuple(x.tolist()) for x in whole]
    assert seqs == [tuple(x.tolist()) for x in by_hand]  # the same sequences, the same order
    on_disk = [
        tuple(row.tolist())
        for p, index in zip(parts, indexes)
        for s in index["shards"]
        if s["sequences"]
        for row in np.load(p / s["file"])
    ]
    assert sorted(seqs) == sorted(on_disk)  # every sequence of both parts, once
    again = ShardDataset(out / "part-*", seed=1)  # a glob, expanded by the dataset itself
    assert again.folders == parts
    assert [tuple(x.tolist()) for x in again] == seqs  # deterministic
    assert [tuple(x.tolist()) for x in ShardDataset(out, seed=1)] == seqs
    whole.set_epoch(1)
    assert [tuple(x.tolist()) for x in whole] != seqs  # a new order each epoch
    assert torch.is_tensor(next(iter(whole)))


def test_training_reads_a_folder_of_parts_and_resumes_on_its_parts(parted, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from jpeglm.checkpoint.dcp import list_checkpoints
    from jpeglm.train import loop
    from jpeglm.train.config import TrainConfig

    root, out = parted
    seen = []

    class Recorded(loop.ShardDataset):
        def __init__(self, folders, **kw):
            super().__init__(folders, **kw)
            seen.append((list(map(str, self.folders)), len(self)))

    monkeypatch.setattr(loop, "ShardDataset", Recorded)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    total = sum(json.loads((p / INDEX).read_text())["sequences"] for p in part_folders(out))
    base = {"tokenizer": str(root / "tok.jpeglm"), "batch_size": 2, "warmup_steps": 0,
            "eval_every": 100, "ckpt_every": 2, "out": str(tmp_path / "run"),
            "progress": False}  # fmt: skip

    def run(train_data, **kw):
        overrides = {**base, "train_data": train_data, **kw}
        loop.train(TrainConfig.load(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()]))

    run([str(out)], max_steps=2)
    parts = [str(p) for p in part_folders(out)]
    assert seen == [(parts, total)]  # both parts' sequences, one dataset
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows if "loss" in json.loads(r)] == [1, 2]
    # the same data spelt as its parts (here a glob of them): the run resumes exactly
    run([str(out / "part-*")], max_steps=4, resume=True)
    assert seen[-1] == (parts, total)
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == "step_00000004"
