"""The scan grammar behind other decoder stacks (issue 31): ``jpeglm.JpegLogitsProcessor`` in
``transformers``' ``generate``, the per-request ``ScanLogitsMask`` and the vLLM adapter.

transformers runs for real (a random tiny ``LlamaForCausalLM`` over a tokenizer trained here on
the bundled photos at 16 and 32 px): with the processor every sample, from BOS or from a
left-padded batch of prompts, is a strictly decodable image with EOS right after EOI; without
it the rate is measured (and printed with ``-s``). vLLM cannot be installed beside the CPU
torch: its adapter runs on a minimal fake ``vllm`` package (:func:`fake_vllm`) that mirrors
vLLM's v1 logits-processor interface as read from vllm-project/vllm:
``vllm/v1/sample/logits_processor/interface.py`` (commit 18ebdd48: ``BatchUpdate``,
``MoveDirectionality``, the ``LogitsProcessor`` ABC), ``builtin.py`` (bf17660a:
``process_dict_updates``, the order added, then removed, then moved) and ``__init__.py``
(6e052ba8: ``AdapterLogitsProcessor`` binding ``(prompt_ids, output_ids)`` to a 3-parameter
request callable, writing a row back only when a new tensor is returned).
"""

from __future__ import annotations

import abc
import enum
import functools
import importlib
import inspect
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import jpeglm
from jpeglm import codec
from jpeglm.data import bundled
from jpeglm.grammar import TokenConstraint
from jpeglm.tokenizer import Tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jpeglm.inference.processors import BEAMS_REFUSED, ScanLogitsMask  # noqa: E402
from jpeglm.inference.sample import clean_stream, prompt_stream  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok():
    docs = [codec.encode(p, quality=q, size=s) for p in bundled.photo_paths() for q in (20, 25)
            for s in (16, 32)]  # fmt: skip
    return Tokenizer.train(docs, 320, progress=False)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
        tie_word_embeddings=False,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def _stream(tok, size: int, i: int = 0) -> bytes:
    return codec.encode(bundled.photo_paths()[i], quality=25, size=size)


def _generate(model, tok, prompts: list[list[int]], size: int | None, seed: int, n: int = 400):
    """Left-padded ``prompts`` through ``generate(do_sample=True)``, with the processor for
    ``size`` (None: without); returns (padded prompt rows, output rows)."""
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    procs = [jpeglm.JpegLogitsProcessor(tok, size=size)] if size else []
    torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=n,
                         logits_processor=transformers.LogitsProcessorList(procs),
                         eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)  # fmt: skip
    return ids.tolist(), out[:, width:].tolist()


def _decodes(tok, prompt: list[int], output: list[int], size: int) -> bool:
    data = clean_stream(tok.decode(prompt + output))  # as the official code cuts samples
    try:
        return codec.decode(data).shape == (size, size, 3)
    except codec.JPEGError:
        return False


def _eos_after_eoi(tok, prompt: list[int], output: list[int]) -> bool:
    """The output ends with EOS right after the token that completes EOI (then padding)."""
    k = output.index(tok.eos_id)
    return tok.decode(prompt + output[:k]).endswith(b"\xff\xd9") and not any(
        t not in (tok.eos_id, tok.pad_id) for t in output[k:]
    )


@pytest.mark.parametrize("size", [16, 32])
def test_generate_from_bos_always_decodes(model, tok, size):
    prompts, outs = _generate(model, tok, [[tok.bos_id]] * 8, size, seed=size)
    for p, o in zip(prompts, outs):
        assert _decodes(tok, p, o, size)
        assert _eos_after_eoi(tok, p, o)


def test_generate_from_padded_prompts_always_decodes(model, tok):
    s0, s1 = _stream(tok, 32, 0), _stream(tok, 32, 1)
    cut = prompt_stream(s1, 1, 32)  # the first MCU row
    prompts = [[tok.bos_id] + tok.encode(prompt_stream(s0, 0, 32)),  # the header only
               [tok.bos_id] + tok.encode(cut),
               [tok.bos_id] + tok.encode(cut + s1[len(cut) : len(cut) + 7])]  # fmt: skip
    assert len({len(p) for p in prompts}) == 3
    padded, outs = _generate(model, tok, prompts, 32, seed=3)
    for p, o in zip(padded, outs):
        assert _decodes(tok, p, o, 32)
        assert _eos_after_eoi(tok, p, o)
    # the prompt is kept: the sample continues the given rows
    assert tok.decode(padded[1] + outs[1]).startswith(cut)


def test_without_the_processor_some_do_not_decode(model, tok):
    rates = {}
    for size in (16, 32):
        header = [tok.bos_id] + tok.encode(prompt_stream(_stream(tok, size), 0, size))
        for name, prompt in (("bos", [tok.bos_id]), ("header", header)):
            prompts, outs = _generate(model, tok, [prompt] * 16, None, seed=5, n=300)
            rates[size, name] = np.mean([_decodes(tok, p, o, size) for p, o in zip(prompts, outs)])
    print("decodable without the processor:", rates)
    assert all(r < 1 for r in rates.values())


def test_processor_is_reusable_across_generate_calls(model, tok):
    proc = jpeglm.JpegLogitsProcessor(tok, size=16)
    for batch, seed in ((3, 0), (5, 1), (5, 2)):
        ids = torch.full((batch, 1), tok.bos_id)
        torch.manual_seed(seed)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                             max_new_tokens=400, logits_processor=[proc],
                             eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)  # fmt: skip
        assert all(_decodes(tok, [], row[1:], 16) for row in out.tolist())


def test_beam_search_is_refused(model, tok):
    ids = torch.full((1, 1), tok.bos_id)
    with pytest.raises(ValueError, match=r"num_beams > 1 is not supported") as e:
        model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=2, max_new_tokens=4,
                       logits_processor=[jpeglm.JpegLogitsProcessor(tok, size=16)],
                       eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)  # fmt: skip
    assert "\n" not in str(e.value)
    # without generate's config in sight: caught when the rows come back reordered
    proc = jpeglm.JpegLogitsProcessor(tok, size=16)
    scores = torch.zeros(2, tok.vocab_size)
    a, b = torch.nonzero(proc(torch.full((2, 1), tok.bos_id), scores)[0] == 0)[:2, 0].tolist()
    proc(torch.tensor([[tok.bos_id, a], [tok.bos_id, b]]), scores)
    with pytest.raises(ValueError, match="num_beams > 1"):  # both rows now follow row 1's
        proc(torch.tensor([[tok.bos_id, b, 0], [tok.bos_id, b, 1]]), scores)
    assert BEAMS_REFUSED.count("\n") == 0


def test_prompt_not_a_canonical_prefix_is_refused(model, tok):
    bad = [[tok.bos_id] + tok.encode(b"\xff\xd8garbage")]
    with pytest.raises(ValueError, match="prompt 0 is not a canonical stream prefix"):
        _generate(model, tok, bad, 16, seed=0, n=2)
    with pytest.raises(ValueError, match="special token inside the stream"):
        _generate(model, tok, [[tok.bos_id, *tok.encode(_stream(tok, 16))[:3], tok.bos_id]],
                  16, seed=0, n=2)  # fmt: skip


# -- the per-request callable -----------------------------------------------------------------


def test_scan_logits_mask_equals_token_constraint(tok):
    ids = tok.encode(_stream(tok, 32, 2)) + [tok.eos_id]
    for p in (0, 9):  # from BOS alone, and from a prompt of 9 stream tokens
        tc = TokenConstraint.from_tokenizer(tok, 32)
        tc.start(1, prompts=[tok.decode(ids[:p])])
        f = ScanLogitsMask(tok, size=32)
        prompt = [tok.pad_id, tok.bos_id] + ids[:p]
        out: list[int] = []  # one list, grown as vLLM grows a request's outputs
        for t in ids[p:]:
            got = f(prompt, out, torch.zeros(tok.vocab_size)) > float("-inf")
            assert np.array_equal(got.numpy(), tc.mask()[0])
            tc.advance([t])
            out.append(t)
        only_eos = np.zeros(tok.vocab_size, dtype=bool)
        only_eos[tok.eos_id] = True  # after EOI (and after EOS): EOS alone
        assert np.array_equal(tc.mask()[0], only_eos)
        assert np.array_equal(f.allowed(prompt, out), only_eos)


def test_scan_logits_mask_resyncs_and_masks_padded_vocab(tok):
    ids = tok.encode(_stream(tok, 16))
    fresh = lambda out: ScanLogitsMask(tok, 16).allowed([tok.bos_id], out)  # noqa: E731
    f = ScanLogitsMask(tok, 16)
    f.allowed([tok.bos_id], ids[:20])
    for out in (ids[:12], ids[:5] + ids[6:12], ids[:30], list(reversed(ids[:3]))):
        try:
            want = fresh(out)
        except ValueError:  # not a legal history: the same error from both
            with pytest.raises(ValueError, match="breaks the canonical scan"):
                f.allowed([tok.bos_id], out)
            continue
        assert np.array_equal(f.allowed([tok.bos_id], out), want)
    # the model's vocabulary padded past the tokenizer's: the extra ids are masked
    logits = torch.randn(tok.vocab_size + 7)
    out = ScanLogitsMask(tok, 16)([tok.bos_id], ids[:4], logits)
    assert out is logits  # in place
    assert torch.isinf(out[tok.vocab_size :]).all()
    assert torch.equal(out[: tok.vocab_size] > float("-inf"), torch.from_numpy(fresh(ids[:4])))
    # every allowed token -inf already: uniform among the allowed, never an all -inf row
    out = ScanLogitsMask(tok, 16)([tok.bos_id], ids[:4], torch.full((tok.vocab_size,), -np.inf))
    assert torch.equal(out == 0, torch.from_numpy(fresh(ids[:4])))
    with pytest.raises(ValueError, match=r"^the prompt is not a canonical stream prefix"):
        ScanLogitsMask(tok, 16)([tok.bos_id, *tok.encode(b"\x00\x01")], [], logits)
    with pytest.raises(ValueError, match="1-D logits"):
        ScanLogitsMask(tok, 16)([tok.bos_id], [], torch.zeros(2, tok.vocab_size))


def test_top_level_name_is_lazy():
    import subprocess

    code = ("import sys, jpeglm; assert 'torch' not in sys.modules; "
            "assert 'transformers' not in sys.modules; c = jpeglm.JpegLogitsProcessor; "
            "import transformers; assert issubclass(c, transformers.LogitsProcessor)")  # fmt: skip
    env = {"PYTHONPATH": str(ROOT / "python"), "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# -- vLLM: the adapter over a fake vllm package ------------------------------------------------


def _fake_vllm_modules() -> dict[str, types.ModuleType]:
    """A minimal ``vllm`` with the v1 logits-processor interface (see the module docstring)."""

    class MoveDirectionality(enum.Enum):
        UNIDIRECTIONAL = enum.auto()
        SWAP = enum.auto()

    @dataclass(frozen=True)
    class BatchUpdate:
        batch_size: int
        removed: list
        added: list
        moved: list

    class SamplingParams:
        def __init__(self, extra_args=None):
            self.extra_args = extra_args

    class LogitsProcessor(abc.ABC):
        @classmethod
        def validate_params(cls, sampling_params):
            return None

        @abc.abstractmethod
        def __init__(self, vllm_config, device, is_pin_memory): ...

        @abc.abstractmethod
        def apply(self, logits): ...

        @abc.abstractmethod
        def is_argmax_invariant(self): ...

        def needs_output_token_ids(self):
            return False

        @abc.abstractmethod
        def update_state(self, batch_update): ...

    def process_dict_updates(entries, update, new_state):
        if not update:
            return False
        for index, params, prompt, output in update.added:
            state = new_state(params, prompt, output)
            if state is not None:
                entries[index] = state
            else:
                entries.pop(index, None)
        for index in update.removed:
            entries.pop(index, None)
        for a, b, direction in update.moved:
            ea, eb = entries.pop(a, None), entries.pop(b, None)
            if ea is not None:
                entries[b] = ea
            if eb is not None and direction == MoveDirectionality.SWAP:
                entries[a] = eb
        return True

    class AdapterLogitsProcessor(LogitsProcessor):
        def __init__(self, vllm_config, device, is_pin_memory):
            self.req_info = {}

        @abc.abstractmethod
        def new_req_logits_processor(self, params): ...

        def _new_state(self, params, prompt_ids, output_ids):
            lp = self.new_req_logits_processor(params)
            if not lp:
                return None
            three = len(inspect.signature(lp).parameters) == 3
            return functools.partial(lp, *([prompt_ids, output_ids] if three else [output_ids]))

        def update_state(self, batch_update):
            process_dict_updates(self.req_info, batch_update, self._new_state)

        def apply(self, logits):
            for i, lp in self.req_info.items():
                row = logits[i]
                new = lp(row)
                if new is not row:
                    logits[i] = new
            return logits

    mods = {n: types.ModuleType(n) for n in
            ("vllm", "vllm.v1", "vllm.v1.sample", "vllm.v1.sample.logits_processor")}  # fmt: skip
    mods["vllm"].SamplingParams = SamplingParams
    lp = mods["vllm.v1.sample.logits_processor"]
    for obj in (MoveDirectionality, BatchUpdate, LogitsProcessor, AdapterLogitsProcessor):
        setattr(lp, obj.__name__, obj)
    lp.process_dict_updates = process_dict_updates
    return mods


@pytest.fixture()
def fake_vllm(monkeypatch):
    for name, mod in _fake_vllm_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "jpeglm.inference.vllm_processor", raising=False)
    yield sys.modules["vllm.v1.sample.logits_processor"], sys.modules["vllm"].SamplingParams
    sys.modules.pop("jpeglm.inference.vllm_processor", None)


def _entry_point() -> str:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (target,) = meta["project"]["entry-points"]["vllm.logits_processors"].values()
    return target


def test_vllm_adapter_bookkeeping(fake_vllm, tok, tmp_path):
    lp, SamplingParams = fake_vllm
    module, qualname = _entry_point().split(":")  # as vLLM loads a "module:Class" name
    cls = getattr(importlib.import_module(module), qualname)
    assert issubclass(cls, lp.LogitsProcessor)
    tok.save(tmp_path / "tokenizer.jpeglm")  # the model folder's tokenizer
    cfg = types.SimpleNamespace(
        model_config=types.SimpleNamespace(model=str(tmp_path), tokenizer=str(tmp_path))
    )
    proc = cls(cfg, torch.device("cpu"), False)
    assert proc.is_argmax_invariant() is False and proc.needs_output_token_ids() is True
    with pytest.raises(ValueError, match="size"):
        cls.validate_params(SamplingParams({"jpeg_size": 17}))
    cls.validate_params(SamplingParams(None))

    s16, s32 = tok.encode(_stream(tok, 16)), tok.encode(_stream(tok, 32, 1))
    tok_file = str(tmp_path / "tokenizer.jpeglm")
    reqs = {  # name -> (params, prompt ids, output ids, size or None, the ids it will take)
        "a": (SamplingParams({"jpeg_size": 16}), [tok.bos_id], [], 16, s16),
        "plain": (SamplingParams(None), [5, 6], [], None, [9] * 9),
        "b": (SamplingParams({"jpeg_size": 32, "jpeg_tokenizer": tok_file}),
              [tok.bos_id] + s32[:6], [], 32, s32[6:]),
        "other": (SamplingParams({"temperature": 0.5}), [1], [], None, [9] * 9),
    }  # fmt: skip
    rows: list[str | None] = ["a", "plain", "b", "other"]  # the persistent batch's rows
    added = [(i, *reqs[n][:3]) for i, n in enumerate(rows)]
    proc.update_state(lp.BatchUpdate(4, [], added, []))

    def check():
        logits = torch.randn(len(rows), tok.vocab_size + 3)
        before = logits.clone()
        proc.apply(logits)
        for i, name in enumerate(rows):
            _, prompt, out, size, _ = reqs[name] if name else (None,) * 5
            if size is None:
                assert torch.equal(logits[i], before[i]), name  # left alone
            else:
                want = ScanLogitsMask(tok, size)(prompt, list(out), before[i].clone())
                assert torch.equal(logits[i], want), name

    def step():  # every request in the batch takes one more token (vLLM appends in place)
        for name in filter(None, rows):
            out, take = reqs[name][2], reqs[name][4]
            out.append(take[len(out)])

    check()
    for _ in range(3):
        step()
        proc.update_state(None)
        check()
    # a swap, then a one-way move into the row of a removed request
    proc.update_state(lp.BatchUpdate(4, [], [], [(0, 2, lp.MoveDirectionality.SWAP)]))
    rows[0], rows[2] = rows[2], rows[0]
    check()
    proc.update_state(lp.BatchUpdate(3, [3], [], [(2, 3, lp.MoveDirectionality.UNIDIRECTIONAL)]))
    rows[3], rows[2] = rows[2], None
    step()
    check()
    # a removed request's row is left alone; a new request in it starts from its own prompt
    proc.update_state(lp.BatchUpdate(2, [0], [], []))
    rows[0] = None
    check()
    reqs["c"] = (SamplingParams({"jpeg_size": 16}), [tok.bos_id], [], 16, s16)
    proc.update_state(lp.BatchUpdate(3, [], [(0, *reqs["c"][:3])], []))
    rows[0] = "c"
    step()
    check()
    assert set(proc.req_info) == {0, 3}


def test_official_recipe_prompt(tok):
    """A prompt as the official code builds it (BOS + sentencepiece ids of the braille text)
    over a sentencepiece tokenizer: accepted, with TokenConstraint's mask for the same bytes."""
    spm = pytest.importorskip("sentencepiece")
    from jpeglm.tokenizer import bytes_to_braille
    from jpeglm.tokenizer.sentencepiece import train_sentencepiece

    docs = [codec.encode(p, quality=25, size=32) for p in bundled.photo_paths()]
    model = train_sentencepiece(docs, 320, max_sentence_length=1 << 16)
    sp, sp_tok = spm.SentencePieceProcessor(model_proto=model), Tokenizer.from_sentencepiece(model)
    prefix = prompt_stream(docs[1], 1, 32)
    ids = [sp.bos_id()] + sp.encode(bytes_to_braille(prefix))
    tc = TokenConstraint.from_tokenizer(sp_tok, 32)
    tc.start(1, prompts=[prefix])
    got = ScanLogitsMask(sp_tok, 32)(ids, [], torch.zeros(sp.vocab_size())) == 0
    assert np.array_equal(got.numpy(), tc.mask()[0]) and got.sum() > 1
