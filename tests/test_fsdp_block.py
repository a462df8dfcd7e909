"""FSDP2 on CPU (2 ranks, gloo) with the Triton backend in Triton's interpreter: every
parameter's gradient of a sharded one-block model under activation checkpointing none /
selective / full equals the unsharded PyTorch reference's, and the RoPE tables reach the
block in float32 under the trainer's mixed-precision policy (issue 26). One torchrun of
tests/fsdp_block.py (~15 s) serves every test here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:  # not imported here: the ranks import it
    pytest.skip("needs triton", allow_module_level=True)

from jpeglm_trainutil import env, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
GRAD_RTOL = 1e-4  # ||g - g_ref|| / ||g_ref||, every parameter, fp32


@pytest.fixture(scope="module")
def fsdp_block(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fsdp_block") / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(HERE / "fsdp_block.py"), str(out)]  # fmt: skip
    r = subprocess.run(cmd, env={**env(), "TRITON_INTERPRET": "1"}, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def test_rope_tables_reach_the_block_in_fp32_under_the_fsdp_policy(fsdp_block):
    """jpeglm.train.parallel.mixed_precision (bf16 parameters, cast_forward_inputs=False): the
    activations arrive in bf16, the tables in fp32. FSDP2's default policy would cast the
    tables to bf16 too -- the case this guards against, checked here so the probe is known to
    see it."""
    tables = fsdp_block["tables"]
    assert tables["ours"] == {"x": "torch.bfloat16", "cos": "torch.float32",
                              "sin": "torch.float32"}  # fmt: skip
    assert tables["default"]["cos"] == tables["default"]["sin"] == "torch.bfloat16"


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("ac", ["none", "selective", "full"])
def test_fsdp_block_gradients_per_parameter(fsdp_block, ac, compiled):
    """Compiled: each block compiled before sharding with the checkpoint inside it (the
    trainer's order); the kernels are custom ops under the interpreter, triton_ops on a GPU."""
    assert fsdp_block["world"] == 2
    errors = fsdp_block["grads"][f"{ac} compiled" if compiled else ac]
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRAD_RTOL, f"{ac}: {worst} off by {errors[worst]:.2e} (relative)"


def test_trainer_shards_with_the_policy(monkeypatch):
    """build_model shards through jpeglm.train.parallel.shard -- bf16 parameters on CUDA, as stored
    on CPU -- whose policy never casts forward inputs."""
    import torch

    from jpeglm.model import ModelArgs
    from jpeglm.train import parallel

    for dtype in (torch.bfloat16, None):
        mp = parallel.mixed_precision(dtype)
        assert mp.param_dtype is dtype and mp.cast_forward_inputs is False
        assert mp.reduce_dtype is (torch.float32 if dtype else None)
    calls = []
    monkeypatch.setattr(parallel, "shard", lambda model, dtype: calls.append(dtype))
    cfg = SimpleNamespace(backend="torch", activation_checkpoint="none", compile=False,
                          fsdp=True, seed=0, init_from=None)  # fmt: skip
    parallel.build_model(ModelArgs.from_name("tiny"), cfg, torch.device("cpu"), world=2)
    assert calls == [None]
    # a CUDA device, as far as build_model looks at one (its type); nothing materialised
    monkeypatch.setattr(torch.nn.Module, "to_empty", lambda self, device: self)
    monkeypatch.setattr(parallel.Transformer, "reset_parameters", lambda self: None)
    parallel.build_model(ModelArgs.from_name("tiny"), cfg, SimpleNamespace(type="cuda"), world=2)
    assert calls == [None, torch.bfloat16]
