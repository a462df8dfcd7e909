"""The trainer's configuration: :class:`TrainConfig` (read from TOML with ``key=value``
overrides, every field type- and range-checked, ``--help`` / ``--print-config`` text made from
its fields' comments) and the learning-rate schedule it sets (:func:`lr_at`).

Importing this module does not import torch: ``jpeglm plan`` reads configs too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from jpeglm._io import check_nesting, parse_toml, too_deep

__all__ = ["TrainConfig", "lr_at"]


@dataclass
class TrainConfig:
    """Everything a training run is told: the keys of its TOML file (``jpeglm train --help``
    lists them with their defaults; :meth:`validate` checks them)."""

    # model
    model: str = "tiny"  #: a ModelArgs.from_name preset
    model_args: dict[str, Any] = field(default_factory=dict)  #: overrides of the preset
    backend: str | None = None  #: kernels: None (auto) | "torch" | "triton"
    compile: bool = False  #: torch.compile the model
    # data
    train_data: list[str] = field(default_factory=list)  #: shard folders, folders of parts, globs
    eval_data: list[str] = field(default_factory=list)
    tokenizer: str = ""  #: tokenizer file (checked against the shards)
    cond_dropout: float = 0.1  #: labelled shards: P(COND -> the null class) per image, in [0, 1)
    guidance: float = 1.0  #: labelled shards: the default guidance scale recorded (1: off)
    # optimisation
    batch_size: int = 8  #: global batch (sequences per optimizer step, over all ranks)
    micro_batch_size: int = 0  #: per rank per forward; 0: batch_size / world (no accumulation)
    max_steps: int = 1000
    stop_at: int = 0  #: stop (with a checkpoint) at this step; the schedule still ends at max_steps
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  #: clip the global gradient norm to this; 0: no clipping
    seed: int = 0
    # evaluation, checkpoints, logs
    eval_every: int = 200
    eval_batches: int = 8
    ckpt_every: int = 500
    keep: int = 2
    out: str = "runs/jpeglm"
    resume: bool = False  #: continue the run in OUT from its newest readable checkpoint
    progress: bool = True
    fsdp: bool = False  #: shard parameters (FSDP2 fully_shard) instead of DDP
    activation_checkpoint: str = "none"  #: "none" | "full" | "selective" (recompute in backward)
    init_from: str = ""  #: an HF folder: initial weights (and architecture); no optimizer state
    export_dtype: str = "float32"  #: dtype of the HF export written into OUT/final
    export_shard_size: int = 5 * 2**30  #: bytes per safetensors file of the export
    tensorboard: bool = True  #: also log to OUT/tb when tensorboard is installed
    peak_flops: float = 0.0  #: per-device peak FLOP/s for MFU; 0: by GPU name (none on CPU)

    @classmethod
    def load(cls, path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
        """Read a TOML file and apply ``key=value`` overrides (values parsed as TOML)."""
        raw: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"no such config file: {p}")
            if p.stat().st_size > 1 << 20:
                raise ValueError(f"{p}: config file too large")
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{p} is not a TOML file (not UTF-8 text)") from e
            raw = parse_toml(text, str(p))  # nesting bounded: one line, no RecursionError
        for o in overrides:
            if "=" not in o:
                raise ValueError(f"override {o!r} is not key=value")
            k, v = o.split("=", 1)
            what = f"the override {k.strip()}=..."
            try:
                raw[k.strip()] = tomllib.loads(f"v = {v}")["v"]
            except tomllib.TOMLDecodeError:
                raw[k.strip()] = v  # a bare string
            except RecursionError:
                raise too_deep(what) from None
            check_nesting(raw[k.strip()], what)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
        for k in ("train_data", "eval_data"):
            if isinstance(raw.get(k), str):
                raw[k] = [raw[k]]
        cfg = cls(**raw)
        cfg.validate()
        return cfg

    @classmethod
    def default_toml(cls) -> str:
        """A complete config with every key at its default, one comment line each."""
        help_lines = dict(
            (line.split("=", 1)[0].strip(), line) for line in cls.keys_help().splitlines()
        )
        out = ["# jpeglm train config: every key at its default (`jpeglm train --help`)."]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            comment = help_lines[f.name].split(")", 1)[-1].strip()
            if comment:
                out.append(f"# {comment}")
            if default is None:
                out.append(f"# {f.name} = (unset)")
            elif isinstance(default, dict):
                body = ", ".join(f"{k} = {json.dumps(v)}" for k, v in default.items())
                out.append(f"{f.name} = {{{body}}}" if body else f"{f.name} = {{}}")
            else:
                out.append(f"{f.name} = {json.dumps(default)}")
        return "\n".join(out) + "\n"

    @classmethod
    def keys_help(cls) -> str:
        """Every key with its type, default and meaning (for ``--help``)."""
        import inspect

        comments: dict[str, str] = {}
        for line in inspect.getsource(cls).splitlines():
            line = line.strip()
            if "#:" in line and ":" in line.split("#:")[0]:
                comments[line.split(":", 1)[0].strip()] = line.split("#:", 1)[1].strip()
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append(
                f"  {f.name} = {json.dumps(default)}  ({f.type})  {comments.get(f.name, '')}"
            )
        return "\n".join(rows)

    def validate(self) -> None:
        """Check every field's type and range; ``ValueError`` naming the first bad one."""
        from jpeglm.model import CONFIGS, ModelArgs
        from jpeglm.model.activation_checkpoint import ACTIVATION_CHECKPOINT_MODES

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = str(f.type)
            ok = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                "bool": isinstance(value, bool),
                "str": isinstance(value, str),
                "str | None": value is None or isinstance(value, str),
                "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
                "dict[str, Any]": isinstance(value, dict),
            }[kind]
            if not ok:
                raise ValueError(f"{f.name} must be {_KIND_NAMES[kind]}, got {value!r}")
            if kind == "float":
                if not math.isfinite(value):
                    raise ValueError(f"{f.name} must be a finite number, got {value!r}")
                setattr(self, f.name, float(value))
        if not self.train_data:
            raise ValueError(
                "train_data: give at least one prepared shard folder (or a folder of parts, or "
                "a glob)"
            )
        if not self.tokenizer:
            raise ValueError("tokenizer: give the tokenizer file the shards were made with")
        for k in ("batch_size", "max_steps", "eval_every", "eval_batches", "ckpt_every", "keep",
                  "export_shard_size"):  # fmt: skip
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be positive, got {getattr(self, k)}")
        for k in ("micro_batch_size", "stop_at", "warmup_steps", "seed", "weight_decay",
                  "min_lr", "grad_clip", "peak_flops"):  # fmt: skip
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0 (1: no guidance), got {self.guidance}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must not exceed max_steps ({self.max_steps})"
            )
        for k in ("beta1", "beta2", "cond_dropout"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if self.micro_batch_size > self.batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) exceeds batch_size ({self.batch_size})"
            )
        if self.model not in CONFIGS:
            raise ValueError(f"model must be one of {', '.join(CONFIGS)}, got {self.model!r}")
        fields = {f.name for f in dataclasses.fields(ModelArgs)} - {"vocab_size", "max_seq_len"}
        unknown = sorted(set(self.model_args) - fields)
        if unknown:
            raise ValueError(
                f"model_args: unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(fields))}"
            )
        try:
            ModelArgs.from_name(self.model, **self.model_args)
        except (TypeError, ValueError) as e:
            raise ValueError(f"model_args: {e}") from e
        if self.backend not in (None, "auto", "torch", "triton"):
            raise ValueError(f"backend must be auto, torch or triton, got {self.backend!r}")
        if self.activation_checkpoint not in ACTIVATION_CHECKPOINT_MODES:
            raise ValueError(
                f"activation_checkpoint must be one of {', '.join(ACTIVATION_CHECKPOINT_MODES)}"
            )
        if self.export_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError("export_dtype must be float32, bfloat16 or float16")
        if not self.out:
            raise ValueError("out: give the run folder")


_KIND_NAMES = {
    "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
    "str | None": "a string", "list[str]": "a list of strings (or one string)",
    "dict[str, Any]": "a table of key = value",
}  # fmt: skip


# --------------------------------------------------------------------------- learning rate


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))
