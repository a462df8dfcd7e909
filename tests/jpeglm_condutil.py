"""A tiny random class-conditional digit model folder for the tests of issue 34."""

from __future__ import annotations

from pathlib import Path

import torch

from jpeglm.conditioning import Conditioning
from jpeglm.data import bundled
from jpeglm.model import ModelArgs, Transformer

DIGITS = tuple(str(d) for d in range(10))


def make_cond_model(folder: Path, cfg: float = 2.0, seed: int = 0) -> Path:
    """A tiny random class-conditional 32x32 digit model folder (classes "0".."9", the shipped
    mnist32 tokenizer), as the conditional demo model is laid out."""
    from jpeglm.checkpoint.hf import save_hf
    from jpeglm.tokenizer import Tokenizer

    tok_file = bundled.DEMO_CHECKPOINT / "tokenizer.jpeglm"
    tok = Tokenizer.load(tok_file)
    cond = Conditioning(DIGITS, tok.vocab_size, dropout=0.1, cfg=cfg)
    torch.manual_seed(seed)
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=cond.vocab_size, max_seq_len=512)
    model = Transformer(args)
    meta = {"image_size": 32, "quality": 25, "kind": "image", "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id, "sampling": {"temperature": 0.7, "top_k": 8, "top_p": 0.9},
            "conditioning": cond.record()}  # fmt: skip
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return save_hf(folder, args, state, tokenizer=tok_file, metadata=meta)
