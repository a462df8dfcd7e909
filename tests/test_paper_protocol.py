"""The paper's completion protocol one flag away (issue 31): ``complete --fraction R`` builds the
prompt as the official inference code does (xhan77/jpeg-lm ``run.py``: BOS + the braille string
of the stripped stream cut after its ``int(32 * R)``-th ``FFD7`` marker, tokenized by
sentencepiece), and samples with the official settings unless given.

The official recipe is written here from its description, on sentencepiece itself: the prompt
ids must equal ours, ``[bos] + tokenizer.encode(prompt_stream(stream, fraction_rows(R)))``.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest

from jpeglm import codec
from jpeglm.cli import main
from jpeglm.data import bundled as samples
from jpeglm.inference.sample import default_rows, fraction_rows, prompt_stream
from jpeglm.tokenizer import Tokenizer
from jpeglm.tokenizer.base import bytes_to_braille
from jpeglm.tokenizer.sentencepiece import train_sentencepiece

torch = pytest.importorskip("torch")
spm = pytest.importorskip("sentencepiece")

RST7 = "\u28ff\u28d7"  # FF D7 as braille characters (byte + 10240)


def official_prompt_ids(sp, stream: bytes, ratio: float) -> list[int]:
    """The official ``build_prompt``: the braille string cut just after the n-th FFD7, n =
    int(TOTAL_PATCH_ROWS * ratio) with TOTAL_PATCH_ROWS = 32 (256 px), then BOS + its ids."""
    text = bytes_to_braille(stream)
    n = int(32 * ratio)
    ends = [m.end() for m in re.finditer(re.escape(RST7), text)]
    cut = text[: ends[n - 1]] if len(ends) >= n else text
    return [sp.bos_id()] + sp.encode(cut)


@pytest.fixture(scope="module", params=["plain", "official"])
def sp_bytes(request):
    """A sentencepiece model trained on braille bytes: with no dummy prefix or normalisation,
    and with sentencepiece's defaults (the dummy prefix "▁", merged with the header's first
    bytes; NFKC), as the released tokenizer may have been."""
    docs = [codec.encode(p, quality=25, size=s) for p in samples.photo_paths() for s in (32, 64)]
    official = request.param == "official"
    return train_sentencepiece(docs, 320, max_sentence_length=1 << 16, official=official)


@pytest.mark.parametrize(
    "size,fraction,rows",
    [(256, 0.25, 4), (256, 0.5, 8), (256, 0.75, 12), (256, 0.375, 6), (256, 0.4375, 7),
     (128, 0.5, 4), (64, 0.5, 2), (512, 0.25, 8)],
)  # fmt: skip
def test_fraction_rows(size, fraction, rows):
    assert fraction_rows(fraction, size) == rows


@pytest.mark.parametrize(
    "fraction,size,msg",
    [(0.3, 256, "inside row 5"), (0.25, 64, "keeps no FFD7"), (0.0, 256, r"in \(0, 1\)"),
     (1.0, 256, r"in \(0, 1\)"), (float("nan"), 256, r"in \(0, 1\)"), (True, 256, "a number"),
     ("0.5", 256, "a number")],
)  # fmt: skip
def test_fraction_refusals(fraction, size, msg):
    with pytest.raises(ValueError, match=msg):
        fraction_rows(fraction, size)


@pytest.mark.parametrize("ratio", [0.25, 0.375, 0.5, 0.75])
def test_prompt_ids_equal_the_official_recipe(sp_bytes, ratio):
    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    tok = Tokenizer.from_sentencepiece(sp_bytes)
    for path in samples.photo_paths():
        stream = codec.encode(path)  # 256 px, quality 25: the official stream
        cut = prompt_stream(stream, fraction_rows(ratio))
        assert cut.endswith(b"\xff\xd7")
        assert cut.count(b"\xff\xd7") == int(32 * ratio)
        assert [tok.bos_id] + tok.encode(cut) == official_prompt_ids(sp, stream, ratio)


def test_complete_api_fraction(tmp_path):
    from jpeglm.inference.sample import complete
    from jpeglm.model import ModelArgs, Transformer

    tok = Tokenizer.from_sentencepiece(
        train_sentencepiece(
            [codec.encode(p, size=64) for p in samples.photo_paths()],
            300,
            max_sentence_length=1 << 16,
        )  # fmt: skip
    )
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size,
                                  max_seq_len=2048)).eval()  # fmt: skip
    photo = samples.photo_paths()[0]
    a = complete(model, tok, [photo], size=64, fraction=0.5, max_tokens=40, seed=3,
                 constrained=False)  # fmt: skip
    b = complete(model, tok, [photo], rows=2, size=64, max_tokens=40, seed=3, constrained=False)
    assert a[0].tokens == b[0].tokens and a[0].data == b[0].data
    assert a[0].data.startswith(prompt_stream(codec.encode(photo, size=64), 2, 64))
    with pytest.raises(ValueError, match="not both"):
        complete(model, tok, [photo], rows=2, size=64, fraction=0.5)
    with pytest.raises(ValueError, match="keeps no FFD7"):
        complete(model, tok, [photo], size=64, fraction=0.25)
    assert default_rows(64) == 2


def test_complete_cli_fraction_on_the_hub_layout(tmp_path, capsys):
    from jpeglm_testutil import tiny_llama_config
    from test_hub_layout import save_hub

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tiny_llama_config(transformers, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=2,
                            max_position_embeddings=4096)  # fmt: skip
    hub = tmp_path / "hub"
    hub.mkdir()
    save_hub(transformers.LlamaForCausalLM(cfg).eval(), hub)
    docs = [codec.encode(p, quality=q, size=s) for p in samples.photo_paths() for q in (20, 25)
            for s in (16, 32)]  # fmt: skip
    (hub / "tokenizer.model").write_bytes(
        train_sentencepiece(docs, 320, max_sentence_length=1 << 16, official=True)
    )
    photo = samples.photo_paths()[0]
    out = tmp_path / "c"
    args = ["complete", "--model", str(hub), "-o", str(out), "--size", "64", "--fraction", "0.5",
            "--max-tokens", "3000", "--seed", "1", str(photo)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    jpg = (out / f"{photo.stem}.jpg").read_bytes()
    assert jpg.startswith(prompt_stream(codec.encode(photo, size=64), 2, 64)[:2])
    assert codec.decode(jpg).shape == (64, 64, 3)  # constrained: decodes strictly
    capsys.readouterr()
    # the Python API on the same folder: load_model, then complete at the fraction and sample
    from jpeglm.checkpoint.load import load_model
    from jpeglm.inference.sample import complete, generate

    loaded = load_model(hub)
    model, tok = loaded.model, loaded.tokenizer
    done = complete(model, tok, [photo], size=64, fraction=0.5, max_tokens=3000, seed=1)
    assert done[0].clean  # the CLI's completion (written with its tables), from the API
    assert (codec.decode(done[0].data) == codec.decode(jpg)).all()
    (s,) = generate(model, tok, size=16, max_tokens=1200, seed=2)
    assert s.clean and codec.decode(s.data).shape == (16, 16, 3)
    ev = tmp_path / "e"
    args = ["eval", "--model", str(hub), "-o", str(ev), "--size", "64", "--fraction", "0.5",
            "--max-tokens", "200", str(photo)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    res = json.loads((ev / "results.json").read_text())
    assert (res["fraction"], res["rows"]) == (0.5, 2)
    capsys.readouterr()
    refusals = [(["--fraction", "0.25"], "--fraction: fraction 0.25 keeps no FFD7"),
                (["--fraction", "0.5", "--rows", "1"], "not allowed with argument")]  # fmt: skip
    for bad, msg in refusals:
        with pytest.raises(SystemExit) if "--rows" in bad else _no_raise():
            rc = main(["complete", "--model", str(hub), "-o", str(tmp_path / "x"), "--size", "64",
                       *bad, str(photo)])  # fmt: skip
            assert rc == 2
        err = capsys.readouterr().err
        assert msg in err and not (tmp_path / "x").exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_fraction_ignores_the_records_sampling():
    from jpeglm.cli import model as cli_model

    args = argparse.Namespace(
        temperature=None, top_k=None, top_p=None, max_tokens=None, seed=0, batch_size=None,
        unconstrained=False, compile=False, dtype=None, device="cpu", size=None, quality=None,
    )  # fmt: skip
    record = {"temperature": 0.7, "top_k": 10, "top_p": 0.5}
    info = {"image_size": 256, "quality": 25, "sampling": record}
    for fraction, want in ((None, (0.7, 10, 0.5)), (0.5, (1.0, 50, 0.9))):
        ns = argparse.Namespace(**vars(args), fraction=fraction)
        cli_model._apply_model_defaults(ns, info)
        s = cli_model._settings(ns, ns.record)
        assert (s.temperature, s.top_k, s.top_p) == want
