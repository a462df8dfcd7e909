"""The trainer with class labels (issue 33): COND dropout (rate, determinism, independent of the
world size), no loss at COND, the vocabulary V + C + 1, the ``conditioning`` record in
checkpoints / ``final/`` / exports, exact resume, and the refusals. Tiny models on the CPU;
labelled shard folders are made here from the shared prepared world (``[BOS, COND, stream...,
EOS]`` packed and cut as ``prepare`` does)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jpeglm_trainutil import cfg as _cfg  # noqa: E402

from jpeglm.conditioning import Conditioning  # noqa: E402
from jpeglm.data.index import read_index  # noqa: E402
from jpeglm.train import conditioning as tc  # noqa: E402
from jpeglm.train.batches import targets_of  # noqa: E402
from jpeglm.train.config import TrainConfig  # noqa: E402
from jpeglm.train.loop import main, train  # noqa: E402

NAMES = ("cat", "dog", "ship")


def relabel(src: Path, dest: Path, names: tuple[str, ...] = NAMES) -> Conditioning:
    """``src`` (a prepared folder) as ``prepare --labels`` would write it: COND after every BOS
    (image ``k`` of class ``k % C``), the packed stream cut again into ``seq_len`` sequences,
    the last padded, and the index's ``labels`` / ``label_counts``."""
    index = read_index(src)
    c = index["config"]
    base, seq_len, pad, bos = c["vocab_size"], c["seq_len"], c["pad_id"], c["bos_id"]
    cond = Conditioning(names, base)
    flat = np.concatenate(
        [np.load(src / s["file"]).reshape(-1) for s in index["shards"] if s["sequences"]]
    ).astype(np.int64)
    flat = flat[flat != pad]
    starts = np.flatnonzero(flat == bos)
    assert len(starts) == index["images"]
    classes = np.arange(len(starts)) % len(names)
    flat = np.insert(flat, starts + 1, base + classes)
    n = -(-len(flat) // seq_len)
    seqs = np.full(n * seq_len, pad, dtype=np.uint16)
    seqs[: len(flat)] = flat
    dest.mkdir()
    for f in src.iterdir():
        if not f.name.startswith("shard_") and f.name != "index.json":
            shutil.copy(f, dest / f.name)
    np.save(dest / "shard_000000.npy", seqs.reshape(n, seq_len))
    pad_tokens = n * seq_len - len(flat)
    counts = {name: int((classes == i).sum()) for i, name in enumerate(names)}
    new = {**index, "config": {**c, "labels": cond.record()}, "sequences": n,
           "tokens": int(len(flat)), "pad_tokens": pad_tokens, "label_counts": counts,
           "shards": [{"file": "shard_000000.npy", "sequences": n, "images": index["images"],
                       "tokens": int(len(flat)), "bytes": index["bytes"],
                       "pad_tokens": pad_tokens, "carry_tokens": 0,
                       "max_id": int(seqs.max())}]}  # fmt: skip
    (dest / "index.json").write_text(json.dumps(new))
    return cond


@pytest.fixture(scope="module")
def labelled(world, tmp_path_factory):
    """(world root, train folder, held folder, conditioning) with labels."""
    root, _ = world
    d = tmp_path_factory.mktemp("labelled")
    cond = relabel(root / "train_shards", d / "train")
    relabel(root / "held_shards", d / "held")
    return root, d / "train", d / "held", cond


def _args(labelled, out: Path, **kw) -> list[str]:
    root, tr, held, _ = labelled
    base = {"train_data": [str(tr)], "eval_data": [str(held)], **_SHORT, "max_steps": 4}
    base.update(kw)
    return _cfg(root, out, **base)


#: a short run: a checkpoint and an evaluation every 2 steps
_SHORT = {"ckpt_every": 2, "eval_every": 2, "eval_batches": 2, "tensorboard": False,
          "warmup_steps": 1}  # fmt: skip


def _plain(root: Path, out: Path, steps: int) -> None:
    """A short unlabelled run."""
    train(TrainConfig.load(None, _cfg(root, out, **{**_SHORT, "max_steps": steps})))


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------- dropout


def _batch(cond: Conditioning, rows: int, per_row: int, seq_len: int = 64) -> torch.Tensor:
    """Random stream ids below ``base`` with ``per_row`` [BOS, class] pairs per row."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, cond.base - 3, (rows, seq_len), generator=g)
    for j in range(per_row):
        x[:, j * 8] = cond.base - 3  # BOS
        x[:, j * 8 + 1] = cond.base + torch.randint(0, cond.classes, (rows,), generator=g)
    return x


def test_dropout_rate_is_binomial_and_touches_only_cond():
    cond = Conditioning(NAMES, 300)
    x = _batch(cond, 500, 4)  # 2000 CONDs
    n = 2000
    for p in (0.1, 0.5, 0.95):
        y = tc.drop_conditions(x, cond, p, seed=0, step=3, places=range(500))
        dropped = int((y == cond.null_id).sum())
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(dropped - n * p) < 4 * sigma, (p, dropped)
        changed = y != x
        assert (y[changed] == cond.null_id).all() and cond.is_cond(int(x[changed][0]))
        assert torch.equal(y[~changed], x[~changed])  # nothing but COND moves
    assert tc.drop_conditions(x, cond, 0.0, 0, 3, range(500)) is x  # p = 0: exactly none
    y = tc.drop_conditions(x, cond, 1 - 1e-12, 0, 3, range(500))
    assert int((y == cond.null_id).sum()) == n  # p -> 1: all
    # already-null COND stays null, and ids outside the range are never touched
    z = x.clone()
    z[:, 1] = cond.null_id
    assert (tc.drop_conditions(z, cond, 0.5, 0, 3, range(500))[:, 1] == cond.null_id).all()


def test_dropout_is_deterministic_and_independent_of_the_world_size():
    cond = Conditioning(NAMES, 300)
    x = _batch(cond, 8, 3)
    a = tc.drop_conditions(x, cond, 0.5, 7, 11, range(8))
    assert torch.equal(a, tc.drop_conditions(x, cond, 0.5, 7, 11, range(8)))
    assert not torch.equal(a, tc.drop_conditions(x, cond, 0.5, 7, 12, range(8)))  # other step
    assert not torch.equal(a, tc.drop_conditions(x, cond, 0.5, 8, 11, range(8)))  # other seed
    # one rank with micro-batches of 4 vs two ranks with micro-batches of 2: rank r reads the
    # global batch's sequences r, r + 2, ... -- each sequence draws the same
    cfg = TrainConfig(train_data=["x"], tokenizer="t", cond_dropout=0.5, seed=7)
    one = torch.cat([b for _, b in tc.drop_in_step([(0, x[:4]), (0, x[4:])], cond, cfg, 11, 1, 0)])
    assert torch.equal(one, a)
    for rank in (0, 1):
        mine = x[rank::2]
        two = tc.drop_in_step([(0, mine[:2]), (0, mine[2:])], cond, cfg, 11, 2, rank)
        assert torch.equal(torch.cat([b for _, b in two]), a[rank::2])


# ---------------------------------------------------------------------------- no loss at COND


def test_no_loss_at_cond(make_tiny_model):
    cond = Conditioning(NAMES, 300)
    x = _batch(cond, 2, 3)
    x[1, 9] = cond.null_id  # a dropped one too
    t = targets_of(x, None, cond)
    at = (x[:, 1:] >= cond.base) & (x[:, 1:] <= cond.null_id)
    assert int(at.sum()) == 6 and (t[at] == -100).all() and torch.equal(t[~at], x[:, 1:][~at])
    assert torch.equal(targets_of(x, None, (cond.base, cond.null_id)), t)
    model = make_tiny_model(cond.vocab_size, max_seq_len=64)
    plain = model(x[:, :-1], targets=t)
    # the hidden states (so the logits) of the positions that predict COND, perturbed
    before = at  # position i predicts x[:, i + 1]

    def perturb(module, inputs, output):
        return output + 5.0 * before.unsqueeze(-1) * torch.randn_like(output)

    hook = model.norm.register_forward_hook(perturb)
    try:
        with torch.no_grad():
            torch.testing.assert_close(model(x[:, :-1], targets=t), plain, rtol=0, atol=0)
            unmasked = model(x[:, :-1], targets=targets_of(x, None))
        hook.remove()
        hook = None
        with torch.no_grad():
            assert not torch.isclose(unmasked, model(x[:, :-1], targets=targets_of(x, None)))
    finally:
        if hook is not None:
            hook.remove()


def test_bytes_per_token_counts_no_cond(labelled):
    _, tr, _, cond = labelled
    index = read_index(tr)
    assert tc.bytes_per_token(index, None) == index["bytes"] / index["tokens"]
    assert tc.bytes_per_token(index, cond) == index["bytes"] / (index["tokens"] - index["images"])


# --------------------------------------------------------------------------------- training


def test_a_labelled_run_records_its_conditioning(labelled, tmp_path):
    from jpeglm.checkpoint import dcp
    from jpeglm.checkpoint.load import load_model

    _, _, _, cond = labelled
    out = tmp_path / "run"
    m = train(TrainConfig.load(None, _args(labelled, out, cond_dropout=0.2, guidance=3.0)))
    assert math.isfinite(m["eval_bits_per_byte"]) and m["eval_bits_per_byte"] > 0
    want = Conditioning(NAMES, cond.base, dropout=0.2, cfg=3.0)
    final = load_model(out / "final")
    assert final.conditioning == want and final.model.args.vocab_size == cond.vocab_size
    assert json.loads((out / "final" / "jpeglm.json").read_text())["conditioning"] == want.record()
    step = load_model(dcp.list_checkpoints(out)[-1])  # a trainer checkpoint: the same record
    assert step.conditioning == want
    for k, v in final.model.state_dict().items():
        torch.testing.assert_close(step.model.state_dict()[k], v)
    dcp.export(dcp.list_checkpoints(out)[-1], tmp_path / "exported")  # `jpeglm export`
    assert load_model(tmp_path / "exported").conditioning == want


def test_an_unlabelled_record_has_no_conditioning(world, tmp_path):
    root, _ = world
    out = tmp_path / "plain"
    _plain(root, out, 2)
    rec = json.loads((out / "final" / "jpeglm.json").read_text())
    assert "conditioning" not in rec
    assert rec.keys() == {"format", "version", "image_size", "quality", "seq_len", "bos_token_id",
                          "eos_token_id", "tokenizer_fingerprint", "bytes_per_token",
                          "tokens_per_image", "sampling", "kind"}  # fmt: skip


def test_resume_with_labels_is_exact(labelled, tmp_path):
    full = tmp_path / "a"
    train(TrainConfig.load(None, _args(labelled, full, max_steps=6, cond_dropout=0.5)))
    part = tmp_path / "b"
    train(TrainConfig.load(None, _args(labelled, part, max_steps=6, cond_dropout=0.5, stop_at=2)))
    train(TrainConfig.load(None, _args(labelled, part, max_steps=6, cond_dropout=0.5,
                                       resume=True)))  # fmt: skip
    assert _losses(part) == _losses(full) and len(_losses(full)) == 6
    other = tmp_path / "c"  # the dropout changes the losses (so the draw is what matched)
    train(TrainConfig.load(None, _args(labelled, other, max_steps=6, cond_dropout=0.0)))
    assert _losses(other) != _losses(full)


# --------------------------------------------------------------------------------- refusals


def test_refusals_are_one_line(labelled, world, tmp_path, capsys):
    root, tr, held, cond = labelled
    err = _one_line_error(capsys, _args(labelled, tmp_path / "x",
                                        eval_data=[str(root / "held_shards")]))  # fmt: skip
    assert "carries class labels" in err and "does not" in err
    other = tmp_path / "other"
    relabel(root / "held_shards", other, ("a", "b", "c", "d"))
    err = _one_line_error(capsys, _args(labelled, tmp_path / "x", eval_data=[str(other)]))
    assert "other classes" in err
    for bad in ("cond_dropout=1.0", "cond_dropout=-0.1", "guidance=-1"):
        err = _one_line_error(capsys, [*_args(labelled, tmp_path / "x"), bad])
        assert bad.split("=")[0] in err
    # init_from an unconditional model of another vocabulary than the tokenizer's
    from jpeglm.checkpoint.hf import save_pretrained
    from jpeglm.model import ModelArgs, Transformer

    odd = tmp_path / "odd"
    save_pretrained(Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2,
                                          vocab_size=cond.base + 7)), odd)  # fmt: skip
    err = _one_line_error(capsys, _args(labelled, tmp_path / "y", init_from=str(odd)))
    assert f"needs {cond.vocab_size}" in err and "unconditional" in err
    # resume a labelled run on data of other classes (the same count: the same vocabulary)
    run = tmp_path / "z"
    train(TrainConfig.load(None, _args(labelled, run, max_steps=2, eval_every=10)))
    renamed = tmp_path / "renamed"
    relabel(root / "train_shards", renamed, ("a", "b", "c"))
    err = _one_line_error(capsys, _args(labelled, run, max_steps=4, resume=True,
                                        train_data=[str(renamed)], eval_data=[]))  # fmt: skip
    assert "cannot resume" in err and "cat" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # nothing written


def test_two_ranks_draw_the_same_dropout_as_one(labelled, tmp_path):
    from jpeglm_trainutil import run

    kw = {"max_steps": 3, "eval_every": 100, "ckpt_every": 100, "cond_dropout": 0.5}
    one = run(_args(labelled, tmp_path / "one", **kw))
    assert one.returncode == 0, one.stderr[-2000:]
    two = run(_args(labelled, tmp_path / "two", **kw), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    np.testing.assert_allclose(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-4)


def test_init_from_an_unconditional_model_grows_its_vocabulary(labelled, world, tmp_path):
    """A conditional run initialised from an unconditional model of the same tokenizer (a
    released model fine-tuned on labels): the vocabulary grows by the classes and the null id;
    the model's own rows are kept and the new rows initialised afresh, the same on any world
    size (they come from the seeded initialisation)."""
    from jpeglm.checkpoint.load import load_model

    root, tr, held, cond = labelled
    plain = tmp_path / "plain"
    _plain(root, plain, 1)
    base = load_model(plain / "final").model
    assert base.args.vocab_size == cond.base
    run = tmp_path / "grown"
    train(TrainConfig.load(None, _args(labelled, run, max_steps=1, lr=1e-9, min_lr=1e-10,
                                       init_from=str(plain / "final"))))  # fmt: skip
    grown = load_model(run / "final")
    m = grown.model
    assert m.args.vocab_size == cond.vocab_size and grown.conditioning.names == cond.names
    emb, old = m.tok_embeddings.weight.detach(), base.tok_embeddings.weight.detach()
    torch.testing.assert_close(emb[: cond.base], old.to(emb.dtype), rtol=0, atol=1e-6)
    assert emb[cond.base :].abs().sum() > 0  # the class rows: initialised, not zero
