"""A run folder belongs to one run: one trainer at a time holds it (a second is refused in one
line naming the holder's pid; the lock goes with the process), and a run replaces only the
files it wrote there (a user's ``loss.png``, a user-made ``final/``)."""

from __future__ import annotations

import subprocess
import time

import pytest

torch = pytest.importorskip("torch")

from jpeglm_trainutil import cfg as _cfg  # noqa: E402
from jpeglm_trainutil import run as _run  # noqa: E402

from jpeglm._io import LOCK_FILE, folder_lock  # noqa: E402


def test_two_trainers_into_one_run_folder(world, tmp_path):
    root, _ = world
    out = tmp_path / "run"
    first = _run(_cfg(root, out, max_steps=100_000, ckpt_every=100_000, eval_every=100_000),
                 popen={"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE})  # fmt: skip
    try:
        t0 = time.monotonic()
        while time.monotonic() < t0 + 120 and first.poll() is None:
            lock = out / LOCK_FILE
            if lock.is_file() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode()
        second = _run(_cfg(root, out, max_steps=2, seed=1))
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"in use by another trainer (pid {first.pid}" in lines[0]
        assert first.poll() is None  # the first goes on
    finally:
        first.kill()
        first.wait()
    with folder_lock(out):  # the kernel released the dead trainer's lock
        pass


def test_a_lock_file_that_is_a_link_is_not_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("the user's")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).symlink_to(target)
    with pytest.raises(ValueError, match="cannot open the lock file"):
        with folder_lock(tmp_path / "run"):
            pass
    assert target.read_text() == "the user's"
