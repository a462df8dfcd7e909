"""The JPEG-LM trainer: read it top to bottom.

    jpeglm train CONFIG.toml [key=value ...]            # one process (CPU or one GPU)
    torchrun --nproc_per_node N -m jpeglm.train CONFIG.toml [key=value ...]   # DDP / FSDP

The config (TOML; see :class:`TrainConfig` for every key) names the model, the prepared
shards (``jpeglm prepare``), the tokenizer, and the optimisation: AdamW (fused on CUDA),
linear warm-up then cosine decay, gradient accumulation and clipping, bf16 autocast on GPU
and fp32 on CPU. Every ``eval_every`` steps the held-out shards give a loss and bits per byte;
every ``ckpt_every`` steps a checkpoint is written atomically (HF-loadable safetensors
weights + optimizer / scheduler / RNG / data position) and only the last ``keep`` are kept;
``resume=true`` continues from the newest one exactly as if never stopped. Rank 0 logs
(tqdm, ``metrics.jsonl``, ``loss.png``) and writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
import torch.distributed as dist

from jpeglm._io import atomic_open, atomic_write_text
from jpeglm.data import ShardDataset, read_index
from jpeglm.model import ModelArgs, Transformer


@dataclass
class TrainConfig:
    # model
    model: str = "tiny"  #: a ModelArgs.from_name preset
    model_args: dict[str, Any] = field(default_factory=dict)  #: overrides of the preset
    backend: str | None = None  #: kernels: None (auto) | "torch" | "triton"
    compile: bool = False  #: torch.compile the model
    # data
    train_data: list[str] = field(default_factory=list)  #: prepared shard folders
    eval_data: list[str] = field(default_factory=list)
    tokenizer: str = ""  #: tokenizer file (checked against the shards)
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
    grad_clip: float = 1.0
    seed: int = 0
    # evaluation, checkpoints, logs
    eval_every: int = 200
    eval_batches: int = 8
    ckpt_every: int = 500
    keep: int = 2
    out: str = "runs/jpeglm"
    resume: bool = False
    progress: bool = True
    fsdp: bool = False  #: shard parameters (FSDP2 fully_shard) instead of DDP

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
            raw = tomllib.loads(p.read_text())
        for o in overrides:
            if "=" not in o:
                raise ValueError(f"override {o!r} is not key=value")
            k, v = o.split("=", 1)
            try:
                raw[k.strip()] = tomllib.loads(f"v = {v}")["v"]
            except tomllib.TOMLDecodeError:
                raw[k.strip()] = v  # a bare string
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

    def validate(self) -> None:
        if not self.train_data:
            raise ValueError("train_data: give at least one prepared shard folder")
        if not self.tokenizer:
            raise ValueError("tokenizer: give the tokenizer file the shards were made with")
        for k in ("batch_size", "max_steps", "eval_batches", "keep"):
            if getattr(self, k) <= 0:
                raise ValueError(f"{k} must be positive")
        if self.warmup_steps < 0 or self.lr <= 0 or self.min_lr < 0:
            raise ValueError("lr, min_lr and warmup_steps must be non-negative (lr > 0)")


# ------------------------------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "python": list(random.getstate()[1]),
    }


def _checkpoints(out: Path) -> list[Path]:
    return sorted(out.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(out: Path, step: int, model: Transformer, opt, cfg: TrainConfig,
                    data_pos: dict) -> Path:  # fmt: skip
    """Write ``out/step_N`` atomically: a temp folder renamed into place, keep-last-k."""
    final = out / f"step_{step:08d}"
    tmp = out / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    state = {"step": step, "optimizer": opt.state_dict(), "rng": _rng_state(), "data": data_pos}
    with atomic_open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
    atomic_write_text(tmp / "train_config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
    fd = os.open(tmp, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoints(out)[: -cfg.keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: Transformer, opt) -> dict:
    """Restore weights, optimizer and RNG; returns the state (step, data position)."""
    from safetensors.torch import load_file

    try:
        state = torch.load(path / "state.pt", weights_only=True)
        weights = load_file(path / "model.safetensors")
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: one clear message
        raise ValueError(f"corrupt checkpoint {path}: {e}") from e
    params = dict(model.named_parameters(remove_duplicate=False))
    names = model._hf_names()
    missing = sorted(set(names.values()) - set(weights))
    if missing:
        raise ValueError(f"corrupt checkpoint {path}: missing tensors {missing[:5]}")
    with torch.no_grad():
        for ours, theirs in names.items():
            if params[ours].shape != weights[theirs].shape:
                raise ValueError(
                    f"checkpoint {path}: {theirs} has shape {tuple(weights[theirs].shape)}"
                )
            params[ours].copy_(weights[theirs])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(("MT19937", np.array(state["rng"]["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["rng"]["python"]), None))
    return state


# ------------------------------------------------------------------------------------------------


def _setup_distributed() -> tuple[int, int, torch.device]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _batches(ds: ShardDataset, micro: int, start_epoch: int, skip: int):
    """Endless micro-batches of (micro, seq_len) tokens; resumes at (epoch, skip sequences)."""
    epoch = start_epoch
    while True:
        ds.set_epoch(epoch)
        ds.start = skip
        buf = []
        for seq in ds:
            buf.append(seq)
            if len(buf) == micro:
                yield epoch, torch.stack(buf)
                buf = []
        epoch, skip = epoch + 1, 0


@torch.no_grad()
def evaluate(model, ds: ShardDataset, micro: int, n_batches: int, device, bytes_per_token: float,
             autocast) -> dict:  # fmt: skip
    model.eval()
    losses = []
    ds.set_epoch(0)
    ds.start = 0
    it = iter(ds)
    for _ in range(n_batches):
        seqs = [s for _, s in zip(range(micro), it)]
        if not seqs:
            break
        x = torch.stack(seqs).to(device)
        with autocast:
            losses.append(model(x[:, :-1], targets=x[:, 1:]).float().item())
    model.train()
    loss = float(np.mean(losses))
    return {"eval_loss": loss, "eval_bits_per_byte": loss / math.log(2) / bytes_per_token}


def train(cfg: TrainConfig) -> dict:
    """Run training; returns the final metrics (rank 0)."""
    from tqdm.auto import tqdm

    from jpeglm.tokenizer import Tokenizer

    rank, world, device = _setup_distributed()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    # -- check everything before any long work
    tok = Tokenizer.load(cfg.tokenizer)
    from jpeglm.data import tokenizer_fingerprint

    index = read_index(cfg.train_data[0])
    if index["config"]["tokenizer"] != tokenizer_fingerprint(tok):
        raise ValueError(
            f"{cfg.train_data[0]} was prepared with another tokenizer than {cfg.tokenizer}"
        )
    train_ds = ShardDataset(cfg.train_data, seed=cfg.seed, rank=rank, world=world)
    eval_ds = (
        ShardDataset(cfg.eval_data, shuffle=False, rank=rank, world=world)
        if cfg.eval_data
        else None
    )
    seq_len = train_ds.seq_len
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} ranks")
    per_rank = cfg.batch_size // world
    micro = cfg.micro_batch_size or per_rank
    if per_rank % micro:
        raise ValueError(f"micro_batch_size {micro} does not divide the per-rank batch {per_rank}")
    accum = per_rank // micro
    if len(train_ds) < micro:
        raise ValueError(
            f"{len(train_ds)} training sequences per rank: fewer than one micro-batch of {micro}"
        )
    args = ModelArgs.from_name(
        cfg.model, vocab_size=tok.vocab_size, max_seq_len=seq_len, **cfg.model_args
    )
    bytes_per_token = index["bytes"] / max(1, index["tokens"])

    model = Transformer(args, backend=cfg.backend).to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]  # matrices; not norms
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda",
    )  # fmt: skip
    out = Path(cfg.out)
    step, epoch, skip = 0, 0, 0
    if cfg.resume and _checkpoints(out):
        state = load_checkpoint(_checkpoints(out)[-1], model, opt)
        step, epoch, skip = state["step"], state["data"]["epoch"], state["data"]["skip"]
    fwd = model
    if world > 1:
        if cfg.fsdp:
            from torch.distributed.fsdp import fully_shard

            for layer in model.layers:
                fully_shard(layer)
            fully_shard(model)
        else:
            fwd = torch.nn.parallel.DistributedDataParallel(model)
    if cfg.compile:
        fwd = torch.compile(fwd)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        log = open(out / "metrics.jsonl", "a")  # noqa: SIM115 - closed at the end
    batches = _batches(train_ds, micro, epoch, skip)
    flops_per_token = model.flops_per_token(seq_len - 1)
    bar = tqdm(
        total=cfg.max_steps, initial=step, desc="train", disable=rank != 0 or not cfg.progress
    )
    metrics: dict = {}
    t0, tokens_done = time.perf_counter(), 0
    while step < cfg.max_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss_sum = 0.0
        for a in range(accum):
            epoch, x = next(batches)
            x = x.to(device, non_blocking=True)
            sync = a == accum - 1 or world == 1 or cfg.fsdp
            ctx = fwd.no_sync() if not sync and hasattr(fwd, "no_sync") else _null()
            with ctx, autocast:
                loss = fwd(x[:, :-1], targets=x[:, 1:]) / accum
            loss.backward()
            loss_sum += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_done += cfg.batch_size * (seq_len - 1)
        if world > 1:
            t = torch.tensor([loss_sum], device=device)
            dist.all_reduce(t)
            loss_sum = t.item() / world
        if rank == 0:
            dt = time.perf_counter() - t0
            metrics = {"step": step, "loss": loss_sum, "lr": lr_at(step - 1, cfg),
                       "grad_norm": float(norm), "tokens_per_s": tokens_done / dt}  # fmt: skip
            metrics["model_flops_per_s"] = tokens_done / dt * flops_per_token  # / peak = MFU
            bar.set_postfix(loss=f"{loss_sum:.3f}")
            bar.update(1)
        if eval_ds is not None and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            ev = evaluate(
                model, eval_ds, micro, cfg.eval_batches, device, bytes_per_token, autocast
            )
            metrics.update(ev)
        if rank == 0:
            log.write(json.dumps(metrics) + "\n")
            log.flush()
        stopping = cfg.stop_at > 0 and step >= cfg.stop_at
        if step % cfg.ckpt_every == 0 or step == cfg.max_steps or stopping:
            data_pos = _data_position(step, accum, micro, len(train_ds))
            if rank == 0:
                save_checkpoint(out, step, model, opt, cfg, data_pos)
            if world > 1:
                dist.barrier()
        if stopping:
            break
    bar.close()
    if rank == 0:
        log.close()
        _plot(out)
    if world > 1:
        dist.destroy_process_group()
    return metrics


def _data_position(step: int, accum: int, micro: int, per_epoch: int) -> dict:
    """Where the data stream is after ``step`` optimizer steps. ``_batches`` yields only whole
    micro-batches and starts each epoch afresh (a partial one at the end is dropped): mirror
    that exactly, so a resumed run sees the very same batches."""
    consumed = step * accum  # micro-batches
    per_epoch_mb = per_epoch // micro
    return {"epoch": consumed // per_epoch_mb, "skip": (consumed % per_epoch_mb) * micro}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _plot(out: Path) -> None:
    """loss.png from metrics.jsonl (skipped when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train")
    ev = [r for r in rows if "eval_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    with atomic_open(out / "loss.png", "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    path, overrides = (None, argv) if "=" in argv[0] else (argv[0], argv[1:])
    try:
        cfg = TrainConfig.load(path, overrides)
        m = train(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"jpeglm train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
