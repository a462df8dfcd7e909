"""The token layout of class conditioning (issue 33): class i is id V + i, the null class
V + C, the model's vocabulary V + C + 1; records round-trip; bad layouts are one line."""

from __future__ import annotations

import pytest

from jpeglm.conditioning import MAX_CLASSES, Conditioning


def test_layout_and_record():
    c = Conditioning(("0", "1", "cat"), base=320, dropout=0.2, cfg=3)
    assert (c.classes, c.null_id, c.vocab_size) == (3, 323, 324)
    assert [c.id_of(n) for n in c.names] == [320, 321, 322]
    assert [c.is_cond(t) for t in (319, 320, 323, 324)] == [False, True, True, False]
    assert Conditioning.from_record(c.record()) == c
    assert c.record()["cfg"] == 3.0 and isinstance(c.cfg, float)
    with pytest.raises(ValueError, match=r"unknown class 'dog' \(the classes: 0, 1, cat\)"):
        c.id_of("dog")


@pytest.mark.parametrize(
    "names,base,kw,msg",
    [((), 320, {}, "at least one class"), (("a", "a"), 320, {}, "'a' given twice"),
     (("all",), 320, {}, "'all' cannot"), ((" a",), 320, {}, "trimmed"), (("a",), 0, {}, "base"),
     (("a",), 320, {"dropout": 1.0}, "dropout out of range"),
     (("a",), 320, {"cfg": float("nan")}, "cfg must be a number"),
     (tuple(map(str, range(MAX_CLASSES + 1))), 320, {}, "exceed the limit")],
)  # fmt: skip
def test_bad_layouts(names, base, kw, msg):
    with pytest.raises(ValueError, match=msg):
        Conditioning(names, base, **kw)


def test_untrusted_record():
    for bad in (None, [], {"names": "ab"}, {"names": ["a"], "base": "320"}):
        with pytest.raises(ValueError, match="^model/jpeglm.json: "):
            Conditioning.from_record(bad, "model/jpeglm.json")


def test_a_model_record_with_conditioning(tmp_path):
    pytest.importorskip("torch")
    import json

    from jpeglm.checkpoint.load import conditioning_of, read_info

    c = Conditioning(("0", "1"), base=300, cfg=2.0)
    (tmp_path / "jpeglm.json").write_text(json.dumps({"conditioning": c.record()}))
    assert conditioning_of(read_info(tmp_path)) == c
    (tmp_path / "jpeglm.json").write_text(json.dumps({}))
    assert conditioning_of(read_info(tmp_path)) is None
    (tmp_path / "jpeglm.json").write_text(json.dumps({"conditioning": {"names": ["a", "a"]}}))
    with pytest.raises(ValueError, match=r"jpeglm.json: conditioning: class name 'a' given twice"):
        read_info(tmp_path)
