"""The memory plan (jpeglm.train.memory): measured activations, the fit, the per-GPU totals;
and its command line (jpeglm.cli.plan)."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from jpeglm.cli.plan import parse_size  # noqa: E402
from jpeglm.model import ModelArgs  # noqa: E402
from jpeglm.train import memory as plan  # noqa: E402

GiB = 2**30


def _small(layers: int = 1, **kw) -> ModelArgs:
    base = dict(dim=96, n_layers=layers, n_heads=4, hidden_dim=288, vocab_size=16, max_seq_len=512)
    return ModelArgs(**{**base, **kw})


@pytest.mark.parametrize("precision", ["autocast", "bf16"])
def test_checkpointing_order(precision):
    a = _small(layers=2)
    got = {m: plan.measure(a, 128, m, precision).activations for m in plan.AC_MODES}
    assert got["none"] > got["selective"] > got["full"] > 0


def test_dispatch_measure_equals_saved_tensor_hooks():
    a = _small(layers=2)
    hooks = plan.saved_tensor_bytes(a, 128)
    live = plan.measure(a, 128, "none").activations
    # the hooks also see the two int64 index tensors made outside the measured forward
    assert abs(live - hooks) <= 2 * 128 * 8 + 64


def test_linear_in_seq_len():
    a = _small(layers=2)
    for mode in plan.AC_MODES:
        per_token = [plan.measure(a, t, mode).activations / t for t in (64, 128, 256)]
        assert max(per_token) - min(per_token) < 0.002 * min(per_token)


def test_autocast_copies_are_two_bytes_per_matmul_weight():
    a = _small(layers=2)
    _, _, matmul, _ = plan.param_counts(a)
    assert plan.measure(a, 64, "none").casts == 2 * matmul


@pytest.mark.parametrize("precision", ["autocast", "bf16"])
def test_fit_predicts_held_out_config(precision):
    fit = plan.fit_activations(precision)
    assert fit.max_rel_residual < 0.03
    a = _small(layers=3, dim=320, n_heads=8, n_kv_heads=4, hidden_dim=864, vocab_size=100)
    seq = 300
    for mode in plan.AC_MODES:
        m = plan.measure(a, seq, mode, precision)
        predicted = seq * (3 * fit.layer_bytes(a, mode) + fit.head_bytes(a, mode))
        assert predicted == pytest.approx(m.activations, rel=0.01)
        assert seq * fit.backward_bytes(a, mode) == pytest.approx(m.backward, rel=0.08)


def test_full_checkpointing_formula_bounds_the_measured_peak():
    """activations(full) = L block inputs + one block recomputed; with the backward working set it
    covers the measured peak, and not by much."""
    fit = plan.fit_activations("autocast")
    a = _small(layers=3, dim=192, n_heads=6, hidden_dim=512, vocab_size=8)
    seq = 200
    m = plan.measure(a, seq, "full")
    planned = seq * (
        3 * fit.layer_bytes(a, "full")
        + fit.head_bytes(a, "full")
        + fit.layer_bytes(a, "none")
        + fit.backward_bytes(a, "none")
    )
    measured = m.activations + m.backward
    assert measured <= planned <= 1.25 * measured


def test_fsdp_states_are_ddp_over_n():
    a = ModelArgs.from_name("1B", max_seq_len=12288)
    single = {r.ac: r for r in plan.plan(a, gpus=1)}
    fsdp = {r.ac: r for r in plan.plan(a, gpus=8) if r.strategy == "FSDP"}
    for ac in plan.AC_MODES:
        s, f = single[ac], fsdp[ac]
        assert f.params * 8 == pytest.approx(s.params)
        assert f.optimizer * 8 == pytest.approx(s.optimizer)
        assert f.grads * 8 == pytest.approx(s.grads)


def test_7b_verdicts():
    a = ModelArgs.from_name("7B", max_seq_len=12288)
    mem = parse_size("80GB")
    rows = {(r.strategy, r.ac): r for r in plan.plan(a, gpus=8)}
    assert not any(rows["DDP", ac].fits(mem) for ac in plan.AC_MODES)  # 16+ B/param alone
    assert rows["FSDP", "full"].fits(mem)
    assert not rows["FSDP", "none"].fits(mem)
    accum = {(r.strategy, r.ac): r for r in plan.plan(a, gpus=8, accum=4)}
    assert accum["FSDP", "full"].grads > rows["FSDP", "full"].grads + 4 * 6e9


def test_parse_size():
    assert parse_size("80GB") == 80 * GiB
    assert parse_size("141GiB") == 141 * GiB
    assert parse_size("24") == 24 * GiB
    assert parse_size("512MB") == 512 * 2**20
    for bad in ("abc", "", "-5GB", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jpeglm.cli", "plan", *args], capture_output=True, text=True
    )


def test_cli_table():
    r = _cli("--model", "7B", "--gpus", "8", "--gpu-mem", "80GB")
    assert r.returncode == 0, r.stderr
    assert "| FSDP | full |" in r.stdout and "| DDP | none |" in r.stdout
    assert "does not fit" in r.stdout and "| fits |" in r.stdout


@pytest.mark.parametrize(
    "args", [["--gpus", "0"], ["--gpu-mem", "abc"], ["--model", "13B"], ["--seq-len", "x"]]
)
def test_cli_bad_input(args):
    r = _cli(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_cli_config(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'model = "1B"\ntrain_data = ["shards"]\ntokenizer = "tok.json"\nbatch_size = 16\n'
        "micro_batch_size = 2\nfsdp = true\n"
    )
    r = _cli(str(cfg), "--gpus", "8")
    assert r.returncode == 0, r.stderr
    assert "1B:" in r.stdout and "micro-batch 2" in r.stdout and "(config)" in r.stdout
    r = _cli(str(cfg), "nope=1")
    assert r.returncode == 2 and "unknown config key" in r.stderr
