"""The GPU check's CPU-testable parts (issue 17): the model importable from a plain source
checkout, the wheel's package mapping, the summary writer, and the linear + CE chunking fact.
The script's dry run itself (`bash scripts/gpu_check.sh --dry`, ~2 minutes) runs in CI."""

from __future__ import annotations

import importlib.util
import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_model_imports_from_a_plain_source_checkout(tmp_path):
    """`PYTHONPATH=python` and nothing installed: `jpeglm.kernels` is the top-level kernels/
    folder. The interpreter runs with -S, so no .pth file (an editable install's finder)
    is loaded; site-packages is only on the path for torch and numpy."""
    pytest.importorskip("torch")
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "python" / "jpeglm", copy / "python" / "jpeglm",
                    ignore=shutil.ignore_patterns("data", "*.so", "__pycache__"))  # fmt: skip
    shutil.copytree(ROOT / "kernels", copy / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    paths = [str(copy / "python"), *site.getsitepackages()]
    code = (
        "import sys, jpeglm.model, jpeglm.kernels, jpeglm.kernels.reference as ref;"
        "from jpeglm.model import ModelArgs, Transformer;"
        "Transformer(ModelArgs.from_name('tiny'), backend='torch');"
        "assert not [m for m in sys.modules if 'editable' in m], sys.modules.keys();"
        "print(jpeglm.__file__); print(list(jpeglm.kernels.__path__)[0]); print(ref.__file__)"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(paths), "JPEGLM_BACKEND": "torch"}
    r = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    pkg, kernels, ref = r.stdout.split()
    assert Path(pkg) == copy / "python" / "jpeglm" / "__init__.py"
    assert Path(kernels) == copy / "kernels"
    assert Path(ref) == copy / "kernels" / "reference.py"


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
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
    spec.loader.exec_module(gpu_check)

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


def test_linear_cross_entropy_is_one_chunk_at_jpeglm_vocabulary():
    pytest.importorskip("triton")
    from jpeglm.kernels.fused_linear_cross_entropy import chunk_rows
    from jpeglm.model import CONFIGS, ModelArgs

    for name in set(CONFIGS) - {"tiny"}:  # tiny (width 64) is the CPU tests' toy
        dim = ModelArgs.from_name(name).dim
        assert chunk_rows(12288, 323, dim) >= 12288, name  # every row in one chunk
    assert -(-8192 // chunk_rows(8192, 32000, 4096)) == 8  # 32k vocabulary: 8 chunks
