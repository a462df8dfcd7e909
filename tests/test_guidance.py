"""Class-conditional sampling with classifier-free guidance (issue 33), on a tiny random model
of vocabulary ``V + C + 1``: the guided logits are ``u + s * (c - u)`` of two separate forwards
(exact at fp32), constrained guided samples all decode, ``cfg = 1`` runs no null rows,
jump-forward / shared prefill / int8 / compile keep working, no condition id is ever sampled,
bad input is refused in one line; the processors skip condition ids; the CLI's ``--label`` /
``--cfg``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jpeglm_testutil import photo_tokenizer  # noqa: E402

from jpeglm import codec  # noqa: E402
from jpeglm.conditioning import Conditioning  # noqa: E402
from jpeglm.data import bundled as samples  # noqa: E402
from jpeglm.inference import guidance, loop  # noqa: E402
from jpeglm.inference.sample import complete, generate, prompt_stream  # noqa: E402
from jpeglm.model import ModelArgs, Transformer  # noqa: E402
from jpeglm.tokenizer import Tokenizer  # noqa: E402

CLASSES = ("cat", "dog", "bird")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return photo_tokenizer(300)


@pytest.fixture(scope="module")
def cond(tok) -> Conditioning:
    return Conditioning(CLASSES, tok.vocab_size, cfg=3.0)


@pytest.fixture(scope="module")
def model(cond) -> Transformer:
    torch.manual_seed(0)
    args = ModelArgs.from_name("tiny", vocab_size=cond.vocab_size, max_seq_len=2048)
    return Transformer(args).eval()


def _calls(monkeypatch, model) -> list[int]:
    """The batch size of every model call the sampler makes, recorded."""
    rows: list[int] = []
    real = model.decode

    def decode(idx, *a, **kw):
        rows.append(idx.shape[0])
        return real(idx, *a, **kw)

    monkeypatch.setattr(model, "decode", decode)
    return rows


def _stepped(model, rows: list[list[int]], plen: int, steps: int) -> list[torch.Tensor]:
    """Logits of ``rows`` as the sampler computes them -- prefill of ``plen`` tokens, then one
    token per step through the KV cache -- in a forward of these rows alone."""
    loop.prepare_for_sampling(model, "fp32")
    model.setup_caches(len(rows), 2048)
    with torch.no_grad():
        idx = torch.tensor([r[:plen] for r in rows])
        out = [model.decode(idx, torch.arange(plen), plen, exact=True)]
        for k in range(plen, plen + steps):
            t = torch.tensor([[r[k]] for r in rows])
            out.append(model.decode(t, torch.tensor([k]), k + 1, exact=True))
    model.clear_caches()
    return out


@pytest.mark.parametrize("labels", [["cat"], ["cat", "bird"]])  # shared prefill / mixed batch
def test_guided_logits_are_the_mix_of_two_separate_forwards(model, tok, cond, labels,
                                                            monkeypatch):  # fmt: skip
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = guidance.Guidance.mix

    def mix(self, logits, vocab):
        out = real(self, logits, vocab)
        seen.append((logits.clone(), out.clone()))
        return out

    monkeypatch.setattr(guidance.Guidance, "mix", mix)
    rows = _calls(monkeypatch, model)
    s, n = 2.5, 2
    out = generate(model, tok, n=n, size=16, labels=labels, cfg=s, conditioning=cond,
                   max_tokens=1500, seed=4, jump_forward=False)  # fmt: skip
    b = n * len(labels)
    assert 2 * b in rows and set(rows) <= {2, 2 * b}  # one forward of 2B rows (prefill: 2)
    assert [x.label for x in out] == [lab for lab in labels for _ in range(n)]
    conds = [[tok.bos_id, cond.id_of(x.label)] + x.tokens for x in out]
    nulls = [[tok.bos_id, cond.null_id] + x.tokens for x in out]
    steps = min(len(x.tokens) for x in out) - 1
    assert steps > 20
    c, u = _stepped(model, conds, 2, steps), _stepped(model, nulls, 2, steps)
    v = tok.vocab_size
    for k in range(0, steps + 1):
        got, mixed = seen[k]
        assert mixed.dtype == torch.float32 and mixed.shape == (b, v)
        assert torch.equal(got[:b], c[k]) and torch.equal(got[b:], u[k])  # the two halves
        want = u[k][:, :v].float() + s * (c[k][:, :v].float() - u[k][:, :v].float())
        assert torch.equal(mixed, want)  # exact at fp32
    assert not torch.equal(seen[5][1], seen[5][0][:b, :v])  # guidance changed the logits


@pytest.mark.parametrize("size,n", [(16, 8), (32, 3)])
def test_constrained_guided_samples_all_decode(model, tok, cond, size, n):
    out = generate(model, tok, n=n, size=size, labels=["all"], conditioning=cond,
                   max_tokens=1500, seed=3, batch_size=5)  # fmt: skip
    assert len(out) == n * len(CLASSES)
    for s in out:
        assert s.clean and s.valid_mcus == s.total_mcus
        np.testing.assert_array_equal(codec.decode(s.data), s.image)  # strict decode
        assert max(s.tokens) < tok.vocab_size  # no condition id sampled
    imgs = samples.photo_paths()[:2]
    done = complete(model, tok, imgs, rows=size // 32, size=size, labels=["dog", "cat"], cfg=4.0,
                    conditioning=cond, max_tokens=1500, seed=1)  # fmt: skip
    assert [s.label for s in done] == ["dog", "cat"] and all(s.clean for s in done)
    for s, p in zip(done, imgs):
        head = prompt_stream(codec.encode(p, quality=25, size=size), size // 32, size)
        assert codec.decode(s.data).shape == (size, size, 3)
        assert s.data.startswith(head)  # the prompt is kept


def test_cfg_one_is_plain_conditional_sampling(model, tok, cond, monkeypatch):
    rows = _calls(monkeypatch, model)
    kw = dict(n=3, size=16, labels=["dog"], conditioning=cond, max_tokens=300, seed=2)
    one = generate(model, tok, cfg=1, **kw)
    assert rows and set(rows) <= {1, 3}  # conditional rows only: no null half
    recorded = generate(model, tok, **{**kw, "conditioning": dataclasses.replace(cond, cfg=1.0)})
    assert [s.tokens for s in recorded] == [s.tokens for s in one]  # cfg: the record's default
    rows.clear()
    guided = generate(model, tok, **kw)  # the record's cfg, 3
    assert set(rows) <= {2, 6} and [s.tokens for s in guided] != [s.tokens for s in one]
    # without labels: the null class, unguided
    rows.clear()
    null = generate(model, tok, n=2, size=16, conditioning=cond, max_tokens=300, seed=2)
    assert set(rows) <= {1, 2} and [s.label for s in null] == [None, None]


def test_jump_forward_and_shared_prefill_give_the_same_guided_samples(model, tok, cond,
                                                                      monkeypatch):  # fmt: skip
    fast, slow = {}, {}
    kw = dict(n=3, size=16, labels=["cat", "bird"], conditioning=cond, max_tokens=500, seed=7,
              batch_size=3)  # fmt: skip
    first = generate(model, tok, stats=fast, **kw)
    b = generate(model, tok, stats=slow, jump_forward=False, **kw)
    assert [s.data for s in first] == [s.data for s in b]
    assert fast["forced"] > 0 and fast["forwards"] < slow["forwards"]
    imgs = samples.photo_paths()[:2]
    a = complete(model, tok, imgs, rows=0, size=32, labels=["cat"], conditioning=cond,
                 max_tokens=300, seed=2)  # fmt: skip
    b = complete(model, tok, imgs, rows=0, size=32, labels=["cat"], conditioning=cond,
                 max_tokens=300, seed=2, jump_forward=False)  # fmt: skip
    assert [s.data for s in a] == [s.data for s in b]
    monkeypatch.setattr(loop, "SHARE_PROMPT", False)  # each row prefilled: the same samples
    rows = _calls(monkeypatch, model)
    each = generate(model, tok, n=4, size=16, labels=["cat"], conditioning=cond, max_tokens=500,
                    seed=7)  # fmt: skip
    assert rows[0] == 8  # the 4 prompts and their 4 null twins prefilled
    monkeypatch.setattr(loop, "SHARE_PROMPT", True)
    rows.clear()
    shared = generate(model, tok, n=4, size=16, labels=["cat"], conditioning=cond,
                      max_tokens=500, seed=7)  # fmt: skip
    assert rows[0] == 2 and [s.data for s in shared] == [s.data for s in each]


def test_guided_samples_are_deterministic_per_seed(model, tok, cond):
    kw = dict(n=3, size=16, labels=["cat"], conditioning=cond, max_tokens=200)
    a = generate(model, tok, seed=11, **kw)
    b = generate(model, tok, seed=11, **kw)
    c = generate(model, tok, seed=12, **kw)
    assert [s.tokens for s in a] == [s.tokens for s in b] != [s.tokens for s in c]
    assert len({str(s.tokens) for s in a}) == 3  # rows draw differently


def test_int8_guided_sampling(model, tok, cond):
    kw = dict(n=2, size=16, labels=["bird"], conditioning=cond, seed=3)
    out = generate(model, tok, dtype="int8", max_tokens=1500, **kw)
    assert all(s.clean for s in out) and model.inference["dtype"] == "int8"
    again = generate(model, tok, dtype="int8", max_tokens=1500, **kw)
    assert [s.data for s in again] == [s.data for s in out]
    model.clear_caches()


def test_compiled_guided_step_gives_the_same_samples(model, tok, cond):
    kw = dict(n=2, size=16, labels=["bird"], conditioning=cond, seed=3, max_tokens=60)
    eager = generate(model, tok, **kw)
    compiled = generate(model, tok, compile=True, **kw)
    assert [s.data for s in compiled] == [s.data for s in eager]
    assert any(key[0] == 4 for key in model._compiled_steps)  # the step of 2B = 4 rows
    model.clear_caches()


def test_no_condition_id_is_ever_sampled(tok, cond):
    """A model whose condition ids have by far the largest logits: still never drawn, with the
    grammar or without it, guided or not."""
    torch.manual_seed(1)
    m = Transformer(ModelArgs.from_name("tiny", vocab_size=cond.vocab_size, max_seq_len=2048))
    with torch.no_grad():
        m.output.weight[tok.vocab_size :] = 50 * m.output.weight[:3].abs().sum(0)
        m.norm.weight.abs_()
    m.eval()
    for cfg, constrained in ((1.0, False), (3.0, False), (3.0, True)):
        out = generate(m, tok, n=2, size=16, labels=["cat"], cfg=cfg, conditioning=cond,
                       constrained=constrained, max_tokens=40, seed=0)  # fmt: skip
        assert all(0 <= t < tok.vocab_size for s in out for t in s.tokens)


def test_refusals_are_one_line(model, tok, cond):
    def refused(match: str, **kw) -> None:
        with pytest.raises(ValueError, match=match) as e:
            generate(model, tok, n=1, size=16, max_tokens=5, **kw)
        assert "\n" not in str(e.value)

    refused("labels need a class-conditional model", labels=["cat"])
    refused("cfg needs labels", cfg=2.0, conditioning=cond)
    refused("cfg needs labels", cfg=2.0)
    refused("cfg must be >= 0", labels=["cat"], cfg=-1, conditioning=cond)
    refused("cfg must be a finite number", labels=["cat"], cfg=float("nan"), conditioning=cond)
    refused(r"unknown class 'cow' \(the classes: cat, dog, bird\)", labels=["cow"],
            conditioning=cond)  # fmt: skip
    refused("at least one class", labels=[], conditioning=cond)
    refused("tokenizer has 300 ids", labels=["cat"],
            conditioning=Conditioning(CLASSES, 299))  # fmt: skip
    refused("has no room", labels=["cat"], conditioning=Conditioning(CLASSES + ("x",), 300))
    with pytest.raises(ValueError, match="one label for every image or one per image"):
        complete(model, tok, samples.photo_paths()[:3], size=16, labels=["cat", "dog"],
                 conditioning=cond)  # fmt: skip


def test_an_unconditional_model_samples_as_before(model, tok):
    """``conditioning=None``: the prompts have no COND and the samples are the sampler's own
    (the golden test checks the shipped model token for token)."""
    a = generate(model, tok, n=2, size=16, max_tokens=100, seed=5)
    b = generate(model, tok, n=2, size=16, max_tokens=100, seed=5, labels=None, cfg=None,
                 conditioning=None)  # fmt: skip
    assert [s.tokens for s in a] == [s.tokens for s in b] and a[0].label is None


# ------------------------------------------------------------------------------------------------
# the processors: condition ids are prompt tokens


def test_scan_logits_mask_skips_the_condition_token(tok, cond):
    from jpeglm.inference.processors import ScanLogitsMask

    head = tok.encode(codec.encode(samples.photo_paths()[0], size=16)[:40])
    plain, with_cond = ScanLogitsMask(tok, 16), ScanLogitsMask(tok, 16)
    want = plain.allowed([tok.bos_id, *head], [])
    got = with_cond.allowed([tok.bos_id, cond.id_of("dog"), *head], [])
    np.testing.assert_array_equal(got, want)
    logits = torch.zeros(cond.vocab_size)
    with_cond([tok.bos_id, cond.null_id, *head], [], logits)
    assert torch.isinf(logits[tok.vocab_size :]).all()  # condition ids never sampled
    with pytest.raises(ValueError, match="outside the tokenizer"):  # never stream bytes
        ScanLogitsMask(tok, 16).allowed([tok.bos_id, *head, cond.id_of("cat")], [])


def test_jpeg_logits_processor_with_condition_tokens(tok, cond):
    transformers = pytest.importorskip("transformers")
    import jpeglm

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=cond.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
        tie_word_embeddings=False,
    )  # fmt: skip
    lm = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.tensor([[tok.bos_id, cond.id_of(c)] for c in ("cat", "dog", "bird", "cat")])
    torch.manual_seed(1)
    out = lm.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                      max_new_tokens=400, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                      logits_processor=[jpeglm.JpegLogitsProcessor(tok, size=16)])  # fmt: skip
    for row in out[:, 2:].tolist():
        assert all(t < tok.vocab_size for t in row)
        data = tok.decode([t for t in row if t not in (tok.eos_id, tok.pad_id)])
        assert codec.decode(data).shape == (16, 16, 3)


# ------------------------------------------------------------------------------------------------
# the command line


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, model, tok, cond):
    """A class-conditional model folder (its record has "conditioning") and an unconditional
    one, both 16 px."""
    from jpeglm.checkpoint.hf import save_hf

    d = tmp_path_factory.mktemp("cond_models")
    tok.save(d / "tok.jpeglm")
    meta = {"image_size": 16, "quality": 25, "kind": "image", "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id}  # fmt: skip
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    conditional = save_hf(d / "conditional", model.args, state, tokenizer=d / "tok.jpeglm",
                          metadata={**meta, "conditioning": cond.record()})  # fmt: skip
    torch.manual_seed(0)
    plain = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size, max_seq_len=2048))
    plain_dir = save_hf(d / "plain", plain.args, plain.state_dict(), tokenizer=d / "tok.jpeglm",
                        metadata=meta)  # fmt: skip
    return conditional, plain_dir


def test_cli_labels_name_the_outputs(model_dirs, tmp_path, capsys):
    from jpeglm.cli import main

    conditional, _ = model_dirs
    common = ["--model", str(conditional), "--max-tokens", "1500", "--seed", "1"]
    out = tmp_path / "s"
    assert main(["sample", *common, "-o", str(out), "-n", "2", "--label", "dog", "--label",
                 "cat", "--cfg", "2"]) == 0  # fmt: skip
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["sample_cat_000.png", "sample_cat_001.png", "sample_dog_000.png",
                     "sample_dog_001.png"]  # fmt: skip
    assert capsys.readouterr().out.count("clean") == 4
    out = tmp_path / "all"
    assert main(["sample", *common, "-o", str(out), "-n", "1", "--label", "all"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"sample_{c}_000.png"
                                                         for c in sorted(CLASSES)]  # fmt: skip
    out = tmp_path / "null"  # a conditional model without --label: the null class, as before
    assert main(["sample", *common, "-o", str(out), "-n", "1"]) == 0
    assert [p.name for p in out.glob("*.png")] == ["sample_000.png"]
    imgs = [str(p) for p in samples.photo_paths()[:2]]
    stems = [p.stem for p in samples.photo_paths()[:2]]
    out = tmp_path / "c"
    assert main(["complete", *common, "--rows", "0", "-o", str(out), "--label", "bird",
                 "--label", "cat", *imgs]) == 0  # fmt: skip
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"{s}_{c}.png" for s in stems for c in ("bird", "cat"))  # fmt: skip
    for p in out.glob("*.jpg"):
        assert codec.decode(p.read_bytes()).shape == (16, 16, 3)


def test_cli_refusals_before_loading(model_dirs, tmp_path, capsys, monkeypatch):
    from jpeglm.checkpoint import load
    from jpeglm.cli import main

    def never(*a, **kw):
        raise AssertionError("weights read")

    monkeypatch.setattr(load, "load_model", never)
    conditional, plain = model_dirs

    def refused(model, *more: str, match: str) -> None:
        rc = main(["sample", "--model", str(model), "-o", str(tmp_path / "o"), *more])
        err = capsys.readouterr().err
        assert rc == 2 and match in err and err.strip().count("\n") == 0, err

    refused(conditional, "--cfg", "2", match="--cfg needs --label")
    refused(conditional, "--label", "cat", "--cfg", "-1", match="--cfg must be >= 0")
    refused(plain, "--label", "cat", match="--label needs a class-conditional model")
    refused(conditional, "--label", "cow",
            match="--label: unknown class 'cow' (the classes: cat, dog, bird)")  # fmt: skip
    rc = main(["complete", "--model", str(plain), "-o", str(tmp_path / "o"), "--label", "cat",
               str(samples.photo_paths()[0])])  # fmt: skip
    assert rc == 2 and "--label needs a class-conditional" in capsys.readouterr().err
