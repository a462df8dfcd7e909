"""The GPU check's CPU-testable parts (issues 17, 26): the model importable from a plain source
checkout, the wheel's package mapping, the summary writer, the linear + CE chunking fact, and
the script itself -- its stage order and time caps against the 540 s budget, a row for every
stage and two files in the output folder even when the budget is spent, and exit 2 where
nvidia-smi sees a GPU that torch cannot use. The full dry run (`bash scripts/gpu_check.sh
--dry`, ~1-2 minutes) runs in CI."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
ORDER = ["env", "kernels", "model", "train", "memory", "decode", "graph_breaks", "core", "pytest"]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
    spec.loader.exec_module(gpu_check)
    return gpu_check


def run_script(*args: str, env: dict | None = None, timeout: float = 120):
    return subprocess.run(["bash", str(SCRIPT), *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_model_imports_from_a_plain_source_checkout(tmp_path):
    """`PYTHONPATH=python` and nothing installed: `jpeglm.kernels` is the top-level kernels/
    folder. The interpreter runs with -S, so no .pth file (an editable install's finder)
    is loaded; site-packages is only on the path for torch and numpy."""
    pytest.importorskip("torch")
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "python" / "jpeglm", copy / "python" / "jpeglm",
                    ignore=shutil.ignore_patterns("assets", "*.so", "__pycache__"))  # fmt: skip
    shutil.copytree(ROOT / "kernels", copy / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    paths = [str(copy / "python"), *site.getsitepackages()]
    code = (
        "import sys, importlib.util, jpeglm.model, jpeglm.kernels;"
        "from jpeglm.model import ModelArgs, Transformer;"
        "Transformer(ModelArgs.from_name('tiny'), backend='torch');"
        "assert not [m for m in sys.modules if 'editable' in m], sys.modules.keys();"
        "print(jpeglm.__file__); print(list(jpeglm.kernels.__path__)[0]);"
        "print(importlib.util.find_spec('jpeglm.kernels.rms_norm').origin)"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(paths), "JPEGLM_BACKEND": "torch"}
    r = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    pkg, kernels, ref = r.stdout.split()
    assert Path(pkg) == copy / "python" / "jpeglm" / "__init__.py"
    assert Path(kernels) == copy / "kernels"
    assert Path(ref) == copy / "kernels" / "rms_norm.py"


def test_installed_package_keeps_its_mapping():
    """Wheels and editable installs map kernels/ to jpeglm/kernels (pyproject), and
    python/jpeglm has no kernels folder of its own to collide with that mapping."""
    import jpeglm.kernels

    text = (ROOT / "pyproject.toml").read_text()
    assert '"jpeglm/kernels" = "kernels"' in text
    assert not (ROOT / "python" / "jpeglm" / "kernels").exists()
    folders = [Path(p) for p in jpeglm.kernels.__path__]
    assert any((f / "fused_linear_cross_entropy.py").is_file() for f in folders), folders


def test_summary_is_markdown_with_every_stage(tmp_path):
    gpu_check = load_gpu_check()

    (tmp_path / "1_env.json").write_text(json.dumps({
        "status": "PASS", "headline": "NVIDIA H200, 132 SMs", "failures": [],
        "data": {"device": "NVIDIA H200", "SMs": 132, "memory GiB": 139.8, "date": "2026-12-01",
                 "torch": "2.11.0"},
    }))  # fmt: skip
    (tmp_path / "1_env.md").write_text("### 1 env\n\n| what | value |\n|---|---|\n")
    (tmp_path / "2_kernels.json").write_text(json.dumps({
        "status": "FAIL", "headline": "3/4 within limits", "failures": ["RoPE bf16 dx: 1e-1"],
        "data": {},
    }))  # fmt: skip
    (tmp_path / "stages.tsv").write_text(
        "1\tenv\tPASS\t4\t\n2\tkernels\tFAIL\t150\ttimed out after 150s\n3\tmodel\tSKIP\t0\t\n"
    )
    text = gpu_check.summary(tmp_path, dry=False).read_text()
    assert text.startswith("## GPU check\n")
    assert "Card: NVIDIA H200 (132 SMs, 139.8 GiB" in text and "Date: 2026-12-01" in text
    assert "| 1 env | PASS | 4 s | NVIDIA H200, 132 SMs |" in text
    row = "| 2 kernels | FAIL | 150 s | timed out after 150s; 3/4 within limits -- failed: RoPE"
    assert row in text
    assert "| 3 model | SKIP | 0 s |" in text and "### 1 env" in text
    assert "`gpu_check.tar.gz` beside this summary" in text
    elsewhere = gpu_check.summary(tmp_path, dry=False, dest=tmp_path / "out" / "summary.md")
    assert elsewhere == tmp_path / "out" / "summary.md" and elsewhere.read_text() == text


def test_linear_cross_entropy_is_one_chunk_at_jpeglm_vocabulary():
    pytest.importorskip("triton")
    from jpeglm.kernels.fused_linear_cross_entropy import chunk_rows
    from jpeglm.model import CONFIGS, ModelArgs

    for name in set(CONFIGS) - {"tiny"}:  # tiny (width 64) is the CPU tests' toy
        dim = ModelArgs.from_name(name).dim
        assert chunk_rows(12288, 323, dim) >= 12288, name  # every row in one chunk
    assert -(-8192 // chunk_rows(8192, 32000, 4096)) == 8  # 32k vocabulary: 8 chunks


def test_stage_order_and_caps_fit_the_budget():
    """The new order (issue 26: training and memory before the slow decode compile, pytest
    last), and GPU caps that leave pytest at least 45 s of the 540 s budget after the
    reserve and ~15 s of set-up -- every stage gets to run. The stage module knows the same
    stages in the same order."""
    r = run_script("--list")
    assert r.returncode == 0, r.stderr
    head, *rows = r.stdout.split("\n")
    budget, reserve = int(head.split()[1]), int(head.split()[-1])
    assert budget == 540
    stages = [row.split() for row in rows if row.strip()]
    assert [s[1] for s in stages] == ORDER
    assert [int(s[0]) for s in stages] == list(range(1, 10))
    caps = {s[1]: int(s[2]) for s in stages}
    assert caps.pop("pytest") == 0  # the last: what is left
    assert budget - reserve - 15 - sum(caps.values()) >= 45, caps
    assert list(load_gpu_check().STAGES) == [n for n in ORDER if n != "core"]


def test_spent_budget_still_leaves_a_row_per_stage_and_two_files(tmp_path):
    """With no budget every stage is SKIP "budget spent" -- still one STAGE line and one
    summary row each, in order -- and the output folder holds summary.md and the archive."""
    pytest.importorskip("torch")
    out = tmp_path / "out"
    out.mkdir()
    (out / "3_model.json").write_text("{}")  # an older run's file: cleared
    r = run_script("--dry", env={"JPEGLM_GPU_OUT": str(out), "JPEGLM_GPU_BUDGET": "1",
                                 "JPEGLM_VENDOR": str(tmp_path / "none")})  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [x.split() for x in r.stdout.splitlines() if x.startswith("STAGE ")]
    assert [x[2] for x in lines] == ORDER
    assert all(x[3] == "SKIP" for x in lines if x[2] != "core"), lines
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tar.gz", "summary.md"]
    text = (out / "summary.md").read_text()
    rows = [x for x in text.splitlines() if x.startswith("| ") and " s | " in x]
    assert [x.split(" | ")[0].split()[-1] for x in rows] == ORDER
    assert "budget was spent" in text
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"stages.tsv", "log.txt", "core.log", "8_core.md"} <= names


def test_gpu_without_cuda_torch_is_an_error_not_a_dry_run(tmp_path):
    """nvidia-smi answers but torch sees no CUDA (a CPU-only wheel on a GPU machine): exit 2
    with one line, nothing run."""
    pytest.importorskip("torch")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3'\n")
    smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "",
           "JPEGLM_GPU_OUT": str(tmp_path / "out")}  # fmt: skip
    r = run_script(env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "nvidia-smi sees a GPU but torch" in r.stderr and "has no CUDA" in r.stderr
    assert "STAGE" not in r.stdout and not (tmp_path / "out" / "summary.md").exists()
