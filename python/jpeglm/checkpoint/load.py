"""Loading a model for sampling: from one path -- an HF folder, a trainer checkpoint
``step_N`` or a run folder -- the model, its tokenizer and what its images are (the
``jpeglm.json`` record: image size, quality, sequence length, special ids, recommended sampling
settings), and whether an image size fits its context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from jpeglm._io import show
from jpeglm.checkpoint.dcp import (
    list_checkpoints,
    load_train_checkpoint,
    model_args_from_state,
    read_train_state,
)
from jpeglm.checkpoint.files import (
    CHECKPOINT_STATE,
    HF_METADATA,
    SP_TOKENIZER,
    TOKENIZER_FILE,
    read_json,
)
from jpeglm.checkpoint.hf import load_pretrained
from jpeglm.conditioning import Conditioning
from jpeglm.inference.settings import SamplingSettings
from jpeglm.inference.settings import show as shown
from jpeglm.model import Transformer

if TYPE_CHECKING:
    from jpeglm.tokenizer import Tokenizer

__all__ = [
    "DEFAULT_INFO",
    "LoadedModel",
    "ModelRef",
    "check_context",
    "check_info",
    "check_tokenizer",
    "expected_tokens",
    "find_tokenizer",
    "load_model",
    "load_tokenizer",
    "model_folder",
    "read_info",
    "resolve",
    "resolve_model",
]

#: what a model folder without ``jpeglm.json`` is taken to make: the paper's format
DEFAULT_INFO: dict[str, Any] = {
    "format": "jpeglm-model", "version": 1, "image_size": 256, "quality": 25,
    "sampling": SamplingSettings().record(),
}  # fmt: skip


@dataclass
class LoadedModel:
    """A model with its tokenizer and what its images are: the ``jpeglm.json`` record (image
    size, quality, sequence length, special ids, recommended sampling settings)."""

    model: Transformer
    tokenizer: Any
    info: dict[str, Any]
    folder: Path

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def conditioning(self) -> Conditioning | None:
        """The class layout of a class-conditional model (its record's ``conditioning``),
        None for an unconditional one."""
        return conditioning_of(self.info)

    @property
    def quality(self) -> int:
        return int(self.info["quality"])


def model_folder(path: str | os.PathLike) -> Path:
    """The folder ``path`` names: the path itself when it exists (a folder ``./mnist32`` is
    that folder), else the bundled model of that name (``"mnist32"``, ``"mnist32-cond"``,
    ``"moving_mnist64"``: :func:`jpeglm.data.bundled.models`). FileNotFoundError listing the
    bundled names when it is neither."""
    from jpeglm.data import bundled

    p = Path(path)
    if os.path.lexists(p):
        if not p.is_dir():
            raise FileNotFoundError(f"no such model folder: {p} (not a folder)")
        return p
    named = bundled.models()
    if isinstance(path, str) and path in named:
        return named[path]
    known = ", ".join(named) or "none installed"
    raise FileNotFoundError(f"no such model folder: {p} (bundled models: {known})")


def resolve_model(path: str | os.PathLike) -> tuple[str, Path]:
    """What ``path`` names: ``("hf", folder)`` for an HF folder or a run folder with an
    export (``final/``), ``("dcp", step_N)`` for a trainer checkpoint or a run folder without
    one (its newest checkpoint). A bundled model's name names its folder (:func:`model_folder`:
    an existing path of that name wins)."""
    p = model_folder(path)
    if (p / "config.json").is_file():
        return "hf", p
    if (p / CHECKPOINT_STATE).is_file():
        return "dcp", p
    if (p / "final" / "config.json").is_file():
        return "hf", p / "final"
    cks = list_checkpoints(p)
    if cks:
        return "dcp", cks[-1]
    raise FileNotFoundError(
        f"{p} is not a model: no config.json (HF folder), {CHECKPOINT_STATE} (trainer "
        "checkpoint), final/ or step_N/ (run folder)"
    )


@dataclass(frozen=True)
class ModelRef:
    """A model path resolved once (:func:`resolve`): the kind of folder (``"hf"`` or ``"dcp"``),
    the folder itself, its record (``jpeglm.json`` or a trainer checkpoint's metadata, checked,
    over the defaults) and, for a trainer checkpoint, its ``train_state.json``. Handed down to
    the checks and to :func:`load_model`, so a command reads each of these files once."""

    kind: str
    folder: Path
    info: dict[str, Any]
    state: dict[str, Any] | None = None


def resolve(path: str | os.PathLike | ModelRef) -> ModelRef:
    """What ``path`` names (:func:`resolve_model`), with its record and train state read once;
    a :class:`ModelRef` is returned as it is."""
    if isinstance(path, ModelRef):
        return path
    kind, folder = resolve_model(path)
    state = read_train_state(folder) if kind == "dcp" else None
    return ModelRef(kind, folder, read_info(folder, state), state)


def read_info(folder: Path, state: dict | None = None) -> dict[str, Any]:
    """The model's ``jpeglm.json`` (or a trainer checkpoint's metadata), over the defaults.

    The record is checked here (:func:`check_info`), so a bad value in it is reported as the
    file's key (``…/jpeglm.json: sampling.top_p must be …``), never as the command line option
    it fills in."""
    info = {**DEFAULT_INFO, "sampling": dict(DEFAULT_INFO["sampling"])}
    found = None
    where = folder / HF_METADATA
    if state is not None:
        found = state.get("metadata")
        where = folder / CHECKPOINT_STATE
    elif (folder / HF_METADATA).is_file():
        found = read_json(folder / HF_METADATA, limit=1 << 20)
    if found is not None and not isinstance(found, dict):
        raise ValueError(f"{where}: metadata must be a JSON object, got {shown(found)}")
    if isinstance(found, dict):
        sampling = found.get("sampling", {})
        if not isinstance(sampling, dict):
            raise ValueError(f"{where}: sampling must be an object, got {shown(sampling)}")
        for k, v in found.items():
            if k == "sampling":
                info["sampling"].update(v)
            else:
                info[k] = v
        info["source"] = HF_METADATA
    else:
        info["source"] = "defaults"
    check_info(info, where)
    return info


def conditioning_of(info: dict[str, Any]) -> Conditioning | None:
    """The ``conditioning`` of a model record (checked by :func:`check_info`), or None."""
    rec = info.get("conditioning")
    return None if rec is None else Conditioning.from_record(rec, "conditioning")


def check_info(info: dict[str, Any], where: str | os.PathLike) -> None:
    """ValueError naming the file ``where`` and the key when a model record's value cannot be
    used: ``kind`` image / video; for images ``image_size`` and ``quality`` as the codec takes
    them (:func:`jpeglm.codec.check_size` / :func:`~jpeglm.codec.check_quality`); ``sampling``'s
    ``temperature`` / ``top_k`` / ``top_p`` as :class:`SamplingSettings` takes them (its own
    checks, the same ones the command line's options meet)."""
    from jpeglm import codec

    advice = "(a bad value in the model's record: fix the file, or remove the key for the default)"

    def bad(key: str, must: str, value: Any) -> ValueError:
        return ValueError(f"{where}: {key} must be {must}, got {shown(value)} {advice}")

    kind = info.get("kind", "image")
    if kind not in ("image", "video"):
        raise bad("kind", '"image" or "video"', kind)
    if kind == "image":
        size, quality = info.get("image_size"), info.get("quality")
        try:
            codec.check_size(size)
        except (TypeError, ValueError):
            raise bad("image_size", f"a multiple of 16 in 16..{codec.MAX_SIZE}", size) from None
        try:
            codec.check_quality(quality)
        except (TypeError, ValueError):
            raise bad("quality", "an integer in 1..100", quality) from None
    if info.get("conditioning") is not None:  # a class-conditional model (issue 33)
        Conditioning.from_record(info["conditioning"], f"{where}: conditioning")
    rec = info["sampling"]
    try:
        SamplingSettings(temperature=rec.get("temperature"), top_k=rec.get("top_k"),
                         top_p=rec.get("top_p"))  # fmt: skip
    except ValueError as e:  # "top_p must be in (0, 1], got 5": named as the record's key
        raise ValueError(f"{where}: sampling.{e} {advice}") from None


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer file: jpeglm's own, or the official sentencepiece ``.model``."""
    from jpeglm.tokenizer import load_file

    return load_file(path)


def find_tokenizer(folder: Path) -> Path | None:
    """The tokenizer file inside a model folder: jpeglm's own, else a sentencepiece one."""
    for name in (TOKENIZER_FILE, SP_TOKENIZER):
        if (folder / name).is_file():
            return folder / name
    return None


def load_model(
    path: str | os.PathLike | ModelRef,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer: str | os.PathLike | None = None,
    backend: str | None = None,
) -> LoadedModel:
    """Everything sampling needs from one path: an HF folder, a trainer checkpoint ``step_N``
    or a run folder (its ``final/`` export, else its newest checkpoint), or a bundled model's
    name (``"mnist32-cond"``: :func:`model_folder`). The tokenizer is the
    one inside unless ``tokenizer`` is given; the image format comes from ``jpeglm.json``
    (defaults for folders without one: 256 px, quality 25, the official checkpoint's).
    ``path`` may be a :class:`ModelRef` already resolved (:func:`resolve`)."""
    ref = resolve(path)  # a ModelRef: its files are not read again
    kind, folder, state = ref.kind, ref.folder, ref.state
    tok_path = Path(tokenizer) if tokenizer else find_tokenizer(folder)
    if tok_path is None:
        raise ValueError(f"no tokenizer in {folder}: pass one (--tokenizer)")
    tok = load_tokenizer(tok_path)
    info = dict(ref.info)
    check_tokenizer(info, tok, tok_path, folder)  # before any weight is read
    if kind == "hf":
        model = load_pretrained(folder, dtype=dtype, device=device, backend=backend)
    else:
        args = model_args_from_state(state)
        with torch.device("meta"):
            model = Transformer(args, backend=backend)
        model.to_empty(device="cpu")
        load_train_checkpoint(folder, model, None)
        model = model.to(device=device, dtype=dtype or torch.float32)
    if model.args.vocab_size < tok.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {model.args.vocab_size}"
        )
    info.setdefault("seq_len", model.args.max_seq_len)
    return LoadedModel(model.eval(), tok, info, folder)


def check_tokenizer(
    info: dict[str, Any], tok: Tokenizer, tok_path: str | os.PathLike, folder: str | os.PathLike
) -> None:
    """ValueError when the model's record names the tokenizer it was trained with (its
    ``tokenizer_fingerprint``) and ``tok`` is another one: another vocabulary of the same size
    loads, but most of what it samples is not the stream the model means."""
    want = info.get("tokenizer_fingerprint")
    if not isinstance(want, str) or not want:
        return  # an official / older folder: nothing recorded to compare
    from jpeglm.data.index import tokenizer_fingerprint

    have = tokenizer_fingerprint(tok)
    if have != want:
        raise ValueError(
            f"the tokenizer {show(tok_path)} (fingerprint {have}) is not the one the model "
            f"in {show(folder)} was trained with (fingerprint {want}, its record): leave out "
            "--tokenizer to use the model's own"
        )


def expected_tokens(info: dict[str, Any], tokenizer: Tokenizer, size: int, quality: int) -> float:
    """About how many tokens one ``size`` x ``size`` image takes (BOS and EOS included): scaled
    from the trained images' mean when the metadata has it and the quality is the trained
    one, else measured on the bundled photos encoded at that size and quality."""
    per_image = info.get("tokens_per_image")
    if isinstance(per_image, (int, float)) and per_image > 0 and quality == info["quality"]:
        return float(per_image) * (size / info["image_size"]) ** 2
    from jpeglm import codec
    from jpeglm.data import bundled as samples

    counts = [len(tokenizer.encode(codec.encode(im, quality=quality, size=size))) + 2
              for im in samples.photo_paths()[:3]]  # fmt: skip
    return float(np.mean(counts))


def check_context(loaded: LoadedModel, size: int, quality: int) -> None:
    """Refuse up front an image size whose streams cannot fit the model's context."""
    need = expected_tokens(loaded.info, loaded.tokenizer, size, quality)
    context = loaded.model.args.max_seq_len
    if need > context:
        trained, trained_q = loaded.info["image_size"], loaded.info["quality"]
        what = f"a {size}x{size} image at quality {quality} takes about {need:,.0f} tokens"
        if size != trained:
            hint = f"use --size {trained} (what it was trained on)"
        elif quality != trained_q:
            hint = f"use --quality {trained_q} (what it was trained on)"
        else:  # the trained size and quality: the record contradicts the model itself
            raise ValueError(
                f"{what}, the size and quality this model was trained on, but its context is only "
                f"{context:,} tokens: its record (jpeglm.json: image_size, tokens_per_image) "
                "does not match its config.json max_position_embeddings; fix the record or use "
                "a model with a longer context"
            )
        raise ValueError(
            f"{what} but this model's context is {context:,}: {hint} or a model with a longer "
            "context"
        )
