"""The trainer at scale, on CPU with gloo: FSDP2 learns like DDP and one process, its sharded
(DCP) checkpoints resume exactly -- after a stop, after SIGKILL, on another world size -- its HF
export loads in transformers, HF folders (sharded) start runs, two "nodes" on 127.0.0.1 match
one node, and SIGTERM checkpoints before exiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jpeglm_trainutil import cfg, command, env, free_port, losses, run  # noqa: E402

from jpeglm.checkpoint.dcp import list_checkpoints  # noqa: E402
from jpeglm.checkpoint.hf import load_hf_state, load_pretrained, save_pretrained  # noqa: E402
from jpeglm.checkpoint.load import check_context, load_model  # noqa: E402
from jpeglm.model import ModelArgs, Transformer  # noqa: E402

# 40 steps, accumulation of 2 micro-batches per rank on 2 ranks (4 on one process)
LONG = {"max_steps": 40, "batch_size": 8, "micro_batch_size": 2, "eval_every": 1000,
        "ckpt_every": 1000, "warmup_steps": 4}  # fmt: skip


def _ok(r) -> None:
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])


@pytest.fixture(scope="module")
def fsdp_ref(world, tmp_path_factory):
    """An uninterrupted 40-step FSDP run on 2 ranks (checkpoints every 10 steps)."""
    root, _ = world
    out = tmp_path_factory.mktemp("fsdp_ref")
    _ok(run(cfg(root, out, fsdp=True, **{**LONG, "ckpt_every": 10}), nproc=2))
    return out


def test_fsdp_equals_ddp_and_one_process(world, fsdp_ref, tmp_path):
    root, _ = world
    one = tmp_path / "one"
    # one process with micro-batches of 4: an epoch then holds as many sequences as on 2 ranks
    # with micro-batches of 2 (whole micro-batches per rank), so the data stream is the same
    _ok(run(cfg(root, one, **{**LONG, "micro_batch_size": 4})))
    ddp = tmp_path / "ddp"
    _ok(run(cfg(root, ddp, **LONG), nproc=2))
    a, b, c = losses(one), losses(ddp), losses(fsdp_ref)
    assert len(a) == len(b) == len(c) == 40
    np.testing.assert_allclose(c, b, rtol=1e-3)
    np.testing.assert_allclose(c, a, rtol=1e-3)
    assert c[-1] < c[0] - 0.5  # it learns (the FSDP bug: 5.72 -> 5.73)
    # the final weights agree too: both runs end in an HF export
    wa = load_hf_state(one / "final")[1]
    wc = load_hf_state(fsdp_ref / "final")[1]
    for k in wa:
        torch.testing.assert_close(wc[k], wa[k], rtol=1e-3, atol=1e-4)


def test_fsdp_checkpoint_is_sharded_dcp(fsdp_ref):
    cks = list_checkpoints(fsdp_ref)
    assert [c.name for c in cks] == ["step_00000030", "step_00000040"]  # keep = 2
    ck = cks[-1]
    assert (ck / ".metadata").is_file()
    assert (ck / "__0_0.distcp").is_file() and (ck / "__1_0.distcp").is_file()  # one per rank
    assert (ck / "rng_rank0.pt").is_file() and (ck / "rng_rank1.pt").is_file()
    state = json.loads((ck / "train_state.json").read_text())
    assert state["step"] == 40 and state["world"] == 2
    assert (ck / "tokenizer.jpeglm").is_file()
    assert not list(fsdp_ref.glob(".tmp*"))


def test_fsdp_stop_and_resume_is_exact(world, fsdp_ref, tmp_path):
    root, _ = world
    out = tmp_path / "b"
    _ok(run(cfg(root, out, fsdp=True, stop_at=20, **LONG), nproc=2))
    assert [c.name for c in list_checkpoints(out)] == ["step_00000020"]
    _ok(run(cfg(root, out, fsdp=True, resume=True, **LONG), nproc=2))
    assert losses(out) == losses(fsdp_ref)


def test_fsdp_sigkill_and_resume_is_exact(world, fsdp_ref, tmp_path):
    root, _ = world
    out = tmp_path / "k"
    args = cfg(root, out, fsdp=True, resume=True, **{**LONG, "ckpt_every": 5})
    rng = np.random.default_rng(1)
    for _ in range(2):
        proc = subprocess.Popen(command(args, 2), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        time.sleep(float(rng.uniform(8.0, 14.0)))
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, at once
        proc.wait()
        for ck in list_checkpoints(out):  # whatever is on disk is complete
            assert (ck / ".metadata").is_file() and (ck / "train_state.json").is_file()
            assert (ck / "__1_0.distcp").is_file()
    _ok(run(args, nproc=2))
    assert losses(out) == losses(fsdp_ref)


def test_resume_on_another_world_size(world, fsdp_ref, tmp_path):
    """A 2-rank FSDP checkpoint resumes on one process where the data position maps (same
    global batch, same sequences per epoch), and is refused in one line where it does not."""
    root, _ = world
    out = tmp_path / "w"
    _ok(run(cfg(root, out, fsdp=True, stop_at=20, **LONG), nproc=2))
    # one process, micro-batch 4: an epoch holds as many sequences as on 2 ranks of 2
    _ok(run(cfg(root, out, resume=True, **{**LONG, "micro_batch_size": 4})))
    np.testing.assert_allclose(losses(out), losses(fsdp_ref), rtol=1e-4)
    bad = tmp_path / "bad"
    _ok(run(cfg(root, bad, fsdp=True, stop_at=20, **LONG), nproc=2))
    r = run(cfg(root, bad, resume=True, **{**LONG, "batch_size": 4}))
    assert r.returncode == 2 and "cannot resume" in r.stderr
    assert "Traceback" not in r.stderr


def test_hf_export_loads_in_transformers(fsdp_ref, tmp_path):
    transformers = pytest.importorskip("transformers")
    final = fsdp_ref / "final"
    assert (final / "tokenizer.jpeglm").is_file() and (final / "jpeglm.json").is_file()
    meta = json.loads((final / "jpeglm.json").read_text())
    assert meta["image_size"] == 32 and meta["seq_len"] == 128
    ours = load_pretrained(final, backend="torch").eval()
    hf = transformers.LlamaForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    x = torch.randint(0, ours.args.vocab_size, (2, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), rtol=1e-4, atol=1e-4)
    # `jpeglm export` of the last step_N makes the same weights (sharded into several files)
    dest = tmp_path / "exported"
    cmd = [sys.executable, "-m", "jpeglm.cli", "export", str(fsdp_ref), str(dest)]
    r = subprocess.run([*cmd, "--max-shard-size", "20000"], env=env(), capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(list(dest.glob("model-*-of-*.safetensors"))) > 1
    a, b = load_hf_state(final)[1], load_hf_state(dest)[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and "exists" in r.stderr  # never written over


def test_sharded_hf_folder_loads_exactly_and_starts_a_run(world, tmp_path):
    root, tok = world
    torch.manual_seed(5)
    model = Transformer(ModelArgs.from_name("tiny", vocab_size=tok.vocab_size, max_seq_len=128))
    folder = tmp_path / "init"
    save_pretrained(model, folder, max_shard_size=30_000)
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (folder / "model.safetensors.index.json").is_file()
    loaded = load_pretrained(folder)
    for (n, p), (m, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert n == m and torch.equal(p, q)
    # a new run starts from these weights (one step at a tiny learning rate barely moves them),
    # on one process and sharded over two
    for nproc, extra in ((1, {}), (2, {"fsdp": True})):
        out = tmp_path / f"run{nproc}"
        _ok(run(cfg(root, out, init_from=str(folder), max_steps=1, lr=1e-9, min_lr=0.0,
                    warmup_steps=0, eval_every=1000, **extra), nproc=nproc))  # fmt: skip
        after = load_hf_state(out / "final")[1]
        for n, p in model.named_parameters():
            torch.testing.assert_close(after[n], p.detach(), rtol=0, atol=1e-6)


def test_two_nodes_on_localhost_match_one_node(world, tmp_path):
    """torchrun --nnodes 2 (one process each, c10d rendezvous on 127.0.0.1) == 2 processes on
    one node, for FSDP."""
    root, _ = world
    kw = {**LONG, "max_steps": 12}
    one = tmp_path / "one_node"
    _ok(run(cfg(root, one, fsdp=True, **kw), nproc=2))
    two = tmp_path / "two_nodes"
    port = free_port()
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=jpeglm-test",
            "-m", "jpeglm.train", *cfg(root, two, fsdp=True, **kw)]  # fmt: skip
    procs = [
        subprocess.Popen(node, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert losses(two) == losses(one)


def test_sigterm_checkpoints_then_exits_with_one_line(world, tmp_path):
    root, _ = world
    out = tmp_path / "t"
    args = cfg(root, out, **{**LONG, "max_steps": 100000, "ckpt_every": 100000})
    proc = subprocess.Popen(command(args), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (out / "metrics.jsonl").is_file() and len(losses(out)) >= 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143  # 128 + SIGTERM, as a shell reports it
    lines = [x for x in err.splitlines() if x.strip() and "Warning" not in x and "warn" not in x]
    assert len(lines) == 1 and "SIGTERM" in lines[0], err
    cks = list_checkpoints(out)
    assert len(cks) == 1
    step = json.loads((cks[0] / "train_state.json").read_text())["step"]
    assert step == len(losses(out)) >= 3


def test_a_full_disk_on_one_rank_stops_every_rank(world, tmp_path):
    """ENOSPC on rank 1 only, in its part of step 8's checkpoint (issue 28): no rank waits at a
    barrier for it; every rank stops (exit 2) with the one line, step 4 intact, no temp left;
    then resume=true goes on from step 4."""
    root, _ = world
    out = tmp_path / "full"
    args = cfg(root, out, fsdp=True, max_steps=12, eval_every=100, ckpt_every=4)
    start = time.monotonic()
    r = subprocess.run(command(args, 2), env={**env(), "JPEGLM_TEST_CHECKPOINT_HOOK": "enospc:8:1"},
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode != 0 and time.monotonic() - start < 240, r.stderr[-3000:]
    assert f"no space left in {out} for the checkpoint step_00000008" in r.stderr, r.stderr[-3000:]
    # no rank's traceback: the one there may be is torchrun's own report that workers failed
    assert r.stderr.count("Traceback") <= r.stderr.count("ChildFailedError"), r.stderr[-3000:]
    assert "CheckpointException" not in r.stderr and "enforce fail" not in r.stderr
    assert not list(out.glob(".tmp_step_*"))
    assert [p.name for p in list_checkpoints(out)] == ["step_00000004"]
    _ok(run([*args, "resume=true"], nproc=2))
    assert [p.name for p in list_checkpoints(out)][-1] == "step_00000012"


def test_load_model_takes_any_folder_a_run_writes(world, fsdp_ref, tmp_path):
    root, _ = world
    run_dir = load_model(fsdp_ref)  # the run folder: its final/ export
    assert run_dir.folder == fsdp_ref / "final" and run_dir.image_size == 32
    step = load_model(list_checkpoints(fsdp_ref)[-1])  # DCP shards
    assert step.image_size == 32 and step.quality == 25 and step.info["seq_len"] == 128
    a, b = dict(run_dir.model.named_parameters()), dict(step.model.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert run_dir.tokenizer.vocab_size == step.tokenizer.vocab_size
    # a run stopped early has no export: its newest checkpoint is used
    out = tmp_path / "early"
    _ok(run(cfg(root, out, fsdp=True, stop_at=4, **LONG), nproc=2))
    early = load_model(out)
    assert early.folder.name == "step_00000004"
    # images whose streams cannot fit the 128-token context are refused up front
    check_context(early, 16, 25)
    with pytest.raises(ValueError, match="context is 128"):
        check_context(early, 256, 25)
    with pytest.raises(FileNotFoundError, match="not a model"):
        load_model(tmp_path)


def test_compiled_blocks_and_activation_checkpointing_train_the_same(world, tmp_path):
    """compile=true (each block compiled before sharding) and activation checkpointing under
    FSDP give the losses of the plain run."""
    root, _ = world
    kw = {**LONG, "max_steps": 4}
    plain = tmp_path / "plain"
    _ok(run(cfg(root, plain, **kw)))
    compiled = tmp_path / "compiled"
    _ok(run(cfg(root, compiled, compile=True, **kw)))
    np.testing.assert_allclose(losses(compiled), losses(plain), rtol=1e-4)
    ref = tmp_path / "fsdp"
    _ok(run(cfg(root, ref, fsdp=True, **kw), nproc=2))
    for mode in ("full", "selective"):
        ac = tmp_path / mode
        _ok(run(cfg(root, ac, fsdp=True, activation_checkpoint=mode, **kw), nproc=2))
        np.testing.assert_allclose(losses(ac), losses(ref), rtol=1e-5)
