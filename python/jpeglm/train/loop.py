"""The JPEG-LM trainer: read it top to bottom.

    jpeglm train CONFIG.toml [key=value ...]            # one process (CPU or one GPU)
    torchrun --nproc_per_node N -m jpeglm.train CONFIG.toml [key=value ...]   # DDP / FSDP

The config (TOML; see :class:`TrainConfig` for every key) names the model, the prepared
shards (``jpeglm prepare``), the tokenizer, and the optimisation: AdamW (fused on CUDA),
linear warm-up then cosine decay, gradient accumulation and clipping, bf16 autocast on GPU
and fp32 on CPU. Every ``eval_every`` steps the held-out shards give a loss and bits per byte;
every ``ckpt_every`` steps a checkpoint ``OUT/step_N`` is written atomically (a
torch.distributed.checkpoint folder: every rank writes its shard of model + optimizer, plus
step / data position / RNG; see :mod:`jpeglm.checkpoint.dcp`) and only the last ``keep`` are
kept; ``resume=true`` continues from the newest one exactly as if never stopped, on the same
or (where the data position maps exactly) another number of ranks. At the end the weights
are gathered into an HF folder ``OUT/final`` (with the tokenizer) that transformers and
``jpeglm sample`` load. Shards of ``prepare --labels`` make a class-conditional model (vocab
V + C + 1, COND dropped to the null class with probability ``cond_dropout``, no loss on COND,
the classes and ``guidance`` in its record: :mod:`jpeglm.train.conditioning`). SIGINT /
SIGTERM finish the step, checkpoint and exit (a second signal during that checkpoint's write
is deferred until it is whole). One trainer per run folder: rank 0 holds ``OUT/.jpeglm-lock``
(``flock``; the kernel releases it if the process dies) for the whole run, and a second trainer
is refused naming the holder's pid.

Scale: ``fsdp=true`` shards with FSDP2 (per block, then the root; bf16 compute and fp32
gradient reduction on CUDA; the model is built on the meta device and each rank materialises
only its shard), ``activation_checkpoint="full"|"selective"`` trades compute for activation
memory, ``compile=true`` compiles each block. ``jpeglm plan`` tells what fits. Rank 0 logs
(tqdm, ``metrics.jsonl``, TensorBoard in ``OUT/tb`` when installed, ``loss.png``): loss,
tokens/s, model FLOP/s and MFU (FLOPs per token 6N + 6 L d T: causal attention counted as
half).

Multi-node: the same command under torchrun on every node, e.g.
``torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500
-m jpeglm.train CONFIG fsdp=true`` (all nodes see one shared file system for OUT).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from jpeglm._io import folder_lock, record_outputs, show, writable_folder
from jpeglm.conditioning import Conditioning
from jpeglm.data.dataset import ShardDataset
from jpeglm.data.index import tokenizer_fingerprint
from jpeglm.data.parts import read_data_folders
from jpeglm.model import ModelArgs
from jpeglm.train import conditioning, parallel, run_folder
from jpeglm.train.batches import (
    check_shards,
    data_position,
    epoch_sequences,
    micro_batches,
    targets_of,
)
from jpeglm.train.config import TrainConfig, lr_at
from jpeglm.train.metrics import _null, _plot, _tensorboard, peak_flops

__all__ = ["Interrupted", "evaluate", "main", "train"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, ds: ShardDataset, micro: int, n_batches: int,
             device: torch.device, bytes_per_token: float, autocast: torch.autocast,
             pad_id: int | None = None, cond: Conditioning | None = None) -> dict:  # fmt: skip
    """Mean held-out loss over ``n_batches`` micro-batches per rank, averaged over ranks (every
    rank runs the same number of forwards, as FSDP's collectives need). ``cond``: a labelled
    run's classes (no loss on COND; ``bytes_per_token`` counts no COND either)."""
    model.eval()
    losses = []
    ds.set_epoch(0)
    ds.start = 0
    it = iter(ds)
    for _ in range(n_batches):
        seqs = [s for _, s in zip(range(micro), it)]
        if len(seqs) < micro:
            break
        x = torch.stack(seqs).to(device)
        with autocast:
            losses.append(model(x[:, :-1], targets=targets_of(x, pad_id, cond)).float())
    model.train()
    t = torch.stack(losses).mean() if losses else torch.tensor(float("nan"), device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
        t = t / dist.get_world_size()
    loss = float(t)
    return {"eval_loss": loss, "eval_bits_per_byte": loss / math.log(2) / bytes_per_token}


class _Stop:
    """SIGINT / SIGTERM during training: finish the step, checkpoint, exit with one line. A
    second signal stops at once -- except while a checkpoint is being written (:meth:`writing`):
    then it is deferred until the checkpoint is whole (one line says so), so that no signal
    ever leaves a torn ``.tmp_step_N`` and no checkpoint."""

    def __init__(self, rank: int = 0) -> None:
        self.signal: int | None = None
        self._old: dict = {}
        self._writing: str | None = None  # the checkpoint being written
        self._said = False
        self._rank = rank

    def __enter__(self) -> _Stop:
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        if self.signal is not None and self._writing is None:  # a second signal: stop now
            raise KeyboardInterrupt
        if self.signal is not None and not self._said:
            import signal

            self._said = True
            if self._rank == 0:
                print(f"jpeglm train: {signal.Signals(signum).name} again: finishing the "
                      f"checkpoint {self._writing} first, then stopping", file=sys.stderr,
                      flush=True)  # fmt: skip
        if self.signal is None:
            self.signal = signum

    @contextlib.contextmanager
    def writing(self, name: str):  # noqa: ANN201
        """While the checkpoint ``name`` is written, every signal is deferred."""
        self._writing = name
        try:
            yield
        finally:
            self._writing = None

    def __exit__(self, *exc) -> bool:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False

    def requested(self, device: torch.device) -> bool:
        """True on every rank when any rank got a signal (so all checkpoint together)."""
        flag = self.signal is not None
        if dist.is_initialized():
            t = torch.tensor([int(flag)], device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag


def train(cfg: TrainConfig) -> dict:
    """Run training; returns the final metrics (rank 0). One trainer per run folder: rank 0
    holds ``OUT/.jpeglm-lock`` for the whole run (:func:`jpeglm._io.folder_lock`)."""
    with contextlib.ExitStack() as held:
        metrics, stopped = _train(cfg, held)
    parallel.leave_process_group()
    if stopped is not None:
        raise stopped
    return metrics


def _train(cfg: TrainConfig, held: contextlib.ExitStack) -> tuple[dict, Interrupted | None]:
    from tqdm.auto import tqdm

    from jpeglm.checkpoint import dcp as ckpt
    from jpeglm.checkpoint.hf import save_hf
    from jpeglm.tokenizer import Tokenizer

    rank, world, device = parallel.setup_distributed()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    # -- check everything before any long work
    tok = Tokenizer.load(cfg.tokenizer)
    fingerprint = tokenizer_fingerprint(tok)
    # folders of parts and globs expanded once; each index.json read once, given to all below
    train_data, train_indexes = read_data_folders(cfg.train_data, "train_data")
    eval_data, eval_indexes = read_data_folders(cfg.eval_data, "eval_data")
    index = train_indexes[0]
    folders = [("train_data", train_data, train_indexes), ("eval_data", eval_data, eval_indexes)]
    cond = conditioning.data_conditioning(folders, tok.vocab_size)  # None: no labels
    vocab = cond.vocab_size if cond is not None else tok.vocab_size  # V + C + 1 with labels
    seq_len = check_shards(train_data, fingerprint, cfg.tokenizer, "train_data", vocab,
                           train_indexes)  # fmt: skip
    if eval_data:
        eval_len = check_shards(eval_data, fingerprint, cfg.tokenizer, "eval_data", vocab,
                                eval_indexes)  # fmt: skip
        if eval_len > seq_len:
            raise ValueError(
                f"eval_data has sequences of {eval_len} tokens, longer than the model's context "
                f"({seq_len}, from train_data)"
            )
    train_ds = ShardDataset(train_data, seed=cfg.seed, rank=rank, world=world,
                            indexes=train_indexes)  # fmt: skip
    eval_ds = ShardDataset(eval_data, shuffle=False, rank=rank, world=world,
                           indexes=eval_indexes) if eval_data else None  # fmt: skip
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
    if cfg.init_from:
        run_folder._check_init_from(Path(cfg.init_from))
        args = conditioning.init_args(cfg.init_from, vocab, cond)
        args = dataclasses.replace(args, max_seq_len=max(seq_len, args.max_seq_len))
    else:
        args = ModelArgs.from_name(
            cfg.model, vocab_size=vocab, max_seq_len=seq_len, **cfg.model_args
        )
    parallel.check_memory(args, cfg, device, world)
    bytes_per_token = conditioning.bytes_per_token(index, cond)
    out = Path(cfg.out)

    # one trainer per run folder: taken before anything in it is looked at or written
    def lock() -> None:
        writable_folder(out)
        held.enter_context(folder_lock(out, "another trainer"))  # held until the run ends

    parallel.on_rank0(lock)
    existing = ckpt.list_checkpoints(out)
    if existing and not cfg.resume:
        raise ValueError(
            f"{out} already holds a run ({existing[-1].name}): pass resume=true to continue it, "
            "or choose a new out"
        )
    if not cfg.resume and (out / "metrics.jsonl").is_file():
        raise ValueError(
            f"{out} already holds a run's metrics.jsonl: pass resume=true to continue it, or "
            "choose a new out"
        )
    legacy = cfg.resume and bool(existing)
    parallel.on_rank0(lambda: run_folder._claim_run_files(out, legacy=legacy))
    if cfg.resume and not existing and rank == 0:
        note = run_folder._nothing_to_resume(out)
        if note:
            print(f"jpeglm train: {note}", file=sys.stderr, flush=True)
            run_folder._truncate_metrics(out / "metrics.jsonl", 0)

    model, fwd = parallel.build_model(args, cfg, device, world)
    opt = parallel.build_optimizer(model, cfg, device)
    step, epoch, skip = 0, 0, 0
    run_id = run_folder._run_id(rank)
    if cfg.resume and existing:
        state = run_folder.resume(existing, model, opt, args, rank)
        conditioning.check_resumed(state, cond, show(existing[-1]))
        step, run_id = state["step"], state.get("run_id", run_id)
        pos = data_position(state, cfg, len(train_ds), micro, world)
        epoch, skip = pos["epoch"], pos["skip"]
        if rank == 0:
            run_folder._truncate_metrics(out / "metrics.jsonl", step)
    sharded = cfg.fsdp and world > 1
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and not sharded
    )  # FSDP casts parameters itself (MixedPrecisionPolicy)

    meta = conditioning.with_record(run_folder._metadata(index, tok, seq_len), cond, cfg)
    train_state = {
        "run_id": run_id, "batch_size": cfg.batch_size, "micro_batch_size": micro, "world": world,
        "epoch_sequences": epoch_sequences(len(train_ds), micro, world),
        "model_args": dataclasses.asdict(args), "config": dataclasses.asdict(cfg),
        "metadata": meta,
    }  # fmt: skip
    writer = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        log = open(out / "metrics.jsonl", "a")  # noqa: SIM115 - closed at the end
        record_outputs([out / "metrics.jsonl"])
        writer = _tensorboard(out, cfg)
    batches = micro_batches(train_ds, micro, epoch, skip)
    flops_per_token = model.flops_per_token(seq_len - 1)  # causal attention counted as half
    peak = peak_flops(device, cfg.peak_flops)
    bar = tqdm(
        total=cfg.max_steps, initial=step, desc="train", disable=rank != 0 or not cfg.progress
    )
    metrics: dict = {}
    t_last = time.perf_counter()
    stop = _Stop(rank)
    with stop:
        while step < cfg.max_steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            # The step's loss is the mean over every target token of the global batch, whatever
            # the split into ranks and micro-batches (padding makes token counts differ): each
            # micro-batch's mean is weighted by its share of the step's tokens.
            step_batches = [next(batches) for _ in range(accum)]
            epoch = step_batches[-1][0]
            if cond is not None:  # classifier-free guidance: COND -> null at random
                step_batches = conditioning.drop_in_step(step_batches, cond, cfg, step, world, rank)
            targets = [targets_of(x, tok.pad_id, cond) for _, x in step_batches]
            counts = [int((t != -100).sum()) for t in targets]
            total = torch.tensor([float(sum(counts))], device=device)
            if world > 1:
                dist.all_reduce(total)
            n_total = max(float(total.item()), 1.0)
            loss_sum = torch.zeros((), device=device)
            for a, ((_, x), t, n) in enumerate(zip(step_batches, targets, counts)):
                x = x.to(device, non_blocking=True)
                if n == 0:  # only padding: one dummy target, weighted 0 (keeps collectives)
                    t = t.clone()
                    t.view(-1)[0] = 0
                t = t.to(device, non_blocking=True)
                last = a == accum - 1
                if sharded:  # reduce-scatter only after the last micro-batch
                    model.set_requires_gradient_sync(last)
                ctx = fwd.no_sync() if not last and hasattr(fwd, "no_sync") else _null()
                with ctx, autocast:  # ranks' gradients are averaged: scale by the world size
                    loss = fwd(x[:, :-1], targets=t) * (n * world / n_total)
                loss.backward()
                loss_sum += loss.detach() / world
            if world > 1:
                dist.all_reduce(loss_sum)
            loss_value = float(loss_sum)  # one host sync per step
            norm = parallel.clip_grad_norm_(model, cfg.grad_clip)
            if not (math.isfinite(loss_value) and math.isfinite(norm)):
                raise ValueError(
                    f"step {step + 1}: the loss is {loss_value} (gradient norm {norm}); "
                    "nothing of this step is kept -- lower lr, or resume=true from the last "
                    "checkpoint"
                )
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            if rank == 0:
                tokens_per_s = cfg.batch_size * (seq_len - 1) / dt
                metrics = {"step": step, "loss": loss_value, "lr": lr_at(step - 1, cfg),
                           "grad_norm": norm, "tokens_per_s": tokens_per_s,
                           "model_flops_per_s": tokens_per_s * flops_per_token}  # fmt: skip
                if peak:
                    metrics["mfu"] = tokens_per_s * flops_per_token / (peak * world)
                bar.set_postfix(loss=f"{loss_value:.3f}")
                bar.update(1)
            if eval_ds is not None and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                ev = evaluate(fwd, eval_ds, micro, cfg.eval_batches, device, bytes_per_token,
                              autocast, tok.pad_id, cond)  # fmt: skip
                metrics.update(ev)
                t_last = time.perf_counter()  # evaluation is not training throughput
            if rank == 0:
                log.write(json.dumps(metrics) + "\n")
                log.flush()
                if writer is not None:
                    for k, v in metrics.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
            interrupted = stop.requested(device)
            stopping = interrupted or (cfg.stop_at > 0 and step >= cfg.stop_at)
            if step % cfg.ckpt_every == 0 or step == cfg.max_steps or stopping:
                with stop.writing(f"step_{step:08d}"):
                    ckpt.save_train_checkpoint(
                        out, step, model, opt, train_state, keep=cfg.keep, tokenizer=cfg.tokenizer
                    )
                # a signal during the write: the checkpoint just written is where to stop
                stopping = stopping or stop.requested(device)
                t_last = time.perf_counter()
            if stopping:
                break
    bar.close()
    if step == cfg.max_steps and not stop.signal:
        # the run's result as an HF folder: what transformers and `jpeglm sample` load
        full = ckpt.gather_full_state(model)

        def export() -> None:
            if rank == 0:  # replaces only an HF folder of jpeglm's files (final/ was claimed)
                ckpt.write_hook_call(out / ".tmp_final")
                save_hf(out / "final", args, full, dtype=_dtype(cfg.export_dtype),
                        max_shard_size=cfg.export_shard_size, tokenizer=cfg.tokenizer,
                        metadata=meta, replace=True)  # fmt: skip
                record_outputs([out / "final"])

        try:  # every rank learns of rank 0's failure (no rank left at a barrier)
            ckpt.on_every_rank(export)
        except Exception as e:
            if not ckpt.disk_full(e):
                raise
            last = ckpt.list_checkpoints(out)[-1]
            raise ValueError(
                f"no space left in {show(out)} for the final export final/ (the weights: about "
                f"{ckpt.weights_size(model)}): the run itself is complete in {last.name}; free "
                f"some space, then: jpeglm export {show(last)} {show(out / 'final')}"
            ) from None
    if rank == 0:
        log.close()
        if writer is not None:
            writer.close()
        _plot(out)
    if stop.signal is not None:
        import signal

        name = signal.Signals(stop.signal).name
        return metrics, Interrupted(
            stop.signal, f"{name}: stopped at step {step}, checkpoint written; resume=true goes on"
        )
    return metrics, None


class Interrupted(Exception):
    """Training was stopped by SIGINT / SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("Config keys (TOML file and/or key=value overrides):")
        print(TrainConfig.keys_help())
        return 0
    if argv and argv[0] == "--print-config":
        print(TrainConfig.default_toml(), end="")
        return 0
    if not argv:
        print("jpeglm train: error: give a config file and/or key=value overrides (see --help)",
              file=sys.stderr)  # fmt: skip
        return 2
    path, overrides = (None, argv) if "=" in argv[0] else (argv[0], argv[1:])
    try:
        cfg = TrainConfig.load(path, overrides)
        m = train(cfg)
    except Interrupted as e:
        print(f"jpeglm train: {e}", file=sys.stderr)
        return 128 + e.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
    except KeyboardInterrupt:
        print("jpeglm train: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"jpeglm train: error: {e}", file=sys.stderr)
        parallel.leave_after_error()
        return 2
    except OSError as e:
        from jpeglm.checkpoint.dcp import disk_full

        if not disk_full(e):
            raise
        where = f" writing {show(e.filename)}" if e.filename else ""
        print(f"jpeglm train: error: no space left on the device{where}: free some space, then "
              "resume=true (from the newest checkpoint)", file=sys.stderr)  # fmt: skip
        return 2
    print(json.dumps(m))
    return 0
