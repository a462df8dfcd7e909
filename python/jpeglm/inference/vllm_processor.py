"""The scan grammar behind vLLM's v1 logits-processor interface: decodable JPEG-LM samples from
vLLM.

A thin :class:`AdapterLogitsProcessor` over :class:`jpeglm.inference.processors.ScanLogitsMask`
(one per request; vLLM's adapter keeps them by batch row through added / removed / moved
requests). Load it with ``LLM(model=..., logits_processors=[
"jpeglm.inference.vllm_processor:JpegLogitsProcessor"])``, or install jpeglm, whose entry point
in the ``vllm.logits_processors`` group loads it into every engine. It acts only on requests
that ask for it, through ``SamplingParams(extra_args={"jpeg_size": 256})`` (the image's side in
px); ``"jpeg_tokenizer": PATH`` names the tokenizer file, else it is the model folder's own
(``tokenizer.jpeglm``, else the official ``tokenizer.model``; a Hub id is looked up in the
Hugging Face cache vLLM downloaded it to). Requests without ``jpeg_size`` are left alone.

Written against the v1 interface (``vllm/v1/sample/logits_processor/``: ``interface.py``,
``builtin.py``, ``__init__.py``) of vLLM's main branch as stored at commits 18ebdd48
(interface, state), bf17660a (builtin) and 6e052ba8 (``__init__``): vLLM >= 0.10.2, on the v1
model runner (later releases whose default model runner is V2 need
``VLLM_USE_V2_MODEL_RUNNER=0``). This module imports vLLM; nothing else in jpeglm does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from jpeglm.codec import check_size
from jpeglm.inference.processors import ScanLogitsMask

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

__all__ = ["SIZE_ARG", "TOKENIZER_ARG", "JpegLogitsProcessor"]

#: ``SamplingParams.extra_args`` key that turns the grammar on for a request (image side in px)
SIZE_ARG = "jpeg_size"
#: optional ``extra_args`` key: the tokenizer file (default: the model folder's)
TOKENIZER_ARG = "jpeg_tokenizer"


def _args(params: SamplingParams) -> dict[str, Any]:
    return getattr(params, "extra_args", None) or {}


class JpegLogitsProcessor(AdapterLogitsProcessor):
    """vLLM v1 logits processor: requests with ``extra_args={"jpeg_size": N}`` sample only
    decodable canonical JPEG streams of N x N images (EOS forced after EOI)."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        super().__init__(vllm_config, device, is_pin_memory)
        mc = getattr(vllm_config, "model_config", None)
        self._sources = [s for s in (getattr(mc, "tokenizer", None), getattr(mc, "model", None))
                         if s]  # fmt: skip
        self._tokenizers: dict[str | None, Any] = {}  # loaded on the first request needing one

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """ValueError (at the request's entry) for a bad ``jpeg_size`` or ``jpeg_tokenizer``."""
        args = _args(sampling_params)
        if SIZE_ARG in args:
            check_size(args[SIZE_ARG])
        path = args.get(TOKENIZER_ARG)
        if path is not None and not isinstance(path, str):
            raise ValueError(f"extra_args[{TOKENIZER_ARG!r}] must be a path, got {path!r}")

    def is_argmax_invariant(self) -> bool:
        """False: masking changes the greedy choice."""
        return False

    def needs_output_token_ids(self) -> bool:
        """True: the automaton reads every generated id (not async scheduling's placeholders)."""
        return True

    def new_req_logits_processor(self, params: SamplingParams) -> ScanLogitsMask | None:
        """A fresh automaton for a request asking for ``jpeg_size``; None for the others."""
        args = _args(params)
        if SIZE_ARG not in args:
            return None
        return ScanLogitsMask(self._tokenizer(args.get(TOKENIZER_ARG)), args[SIZE_ARG])

    def _tokenizer(self, path: str | None) -> Any:
        if path not in self._tokenizers:
            from jpeglm.checkpoint.load import load_tokenizer

            self._tokenizers[path] = load_tokenizer(path or self._model_tokenizer())
        return self._tokenizers[path]

    def _model_tokenizer(self) -> Path:
        from jpeglm.checkpoint.files import SP_TOKENIZER, TOKENIZER_FILE
        from jpeglm.checkpoint.load import find_tokenizer

        for source in self._sources:
            if Path(source).is_dir():
                if (found := find_tokenizer(Path(source))) is not None:
                    return found
                continue
            try:  # a Hub id: the files vLLM downloaded
                from huggingface_hub import try_to_load_from_cache
            except ImportError:
                break
            for name in (TOKENIZER_FILE, SP_TOKENIZER):
                hit = try_to_load_from_cache(source, name)
                if isinstance(hit, str):
                    return Path(hit)
        raise ValueError(
            f"no jpeglm or sentencepiece tokenizer in {self._sources}: pass "
            f"extra_args[{TOKENIZER_ARG!r}]"
        )
