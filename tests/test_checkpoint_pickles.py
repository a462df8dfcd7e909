"""No code carried by a trainer checkpoint runs: a ``step_N`` folder whose DCP ``.metadata`` (or
a shard's non-tensor item, or a tensor item) is a pickle with a ``__reduce__`` payload is refused
in one line by ``jpeglm sample``, ``jpeglm export`` and ``jpeglm train ... resume=true``, and the
payload -- which would create a marker file -- never runs. Also: the restricted unpickler
admits a real checkpoint's metadata, and every other unpickling path reads weights only."""

from __future__ import annotations

import io
import pickle
import shutil

import pytest

torch = pytest.importorskip("torch")

from jpeglm_trainutil import cfg as _cfg  # noqa: E402

from jpeglm import cli  # noqa: E402
from jpeglm.checkpoint.dcp import list_checkpoints  # noqa: E402
from jpeglm.checkpoint.dcp_reader import MetadataUnpickler, read_metadata  # noqa: E402


class Payload:
    """Unpickled without restriction, creates ``marker`` (what an attacker's code would do)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.fixture(scope="module")
def run(world, tmp_path_factory):
    """A finished 2-step run of the tiny model on the shared prepared world."""
    root, _ = world
    out = tmp_path_factory.mktemp("pickles") / "run"
    rc = cli.main(["train", *_cfg(root, out, max_steps=2, ckpt_every=2, eval_every=2,
                                  eval_batches=1)])  # fmt: skip
    assert rc == 0
    return root, out


def _hostile(run, tmp_path, where: str) -> tuple:
    """A copy of the run folder whose only checkpoint carries the payload ``where``."""
    root, out = run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    shutil.rmtree(folder / "final")
    step = list_checkpoints(folder)[-1]
    marker = tmp_path / "PWNED"
    meta_file = step / ".metadata"
    if where == "metadata":  # the whole file is the payload
        meta_file.write_bytes(pickle.dumps(Payload(marker)))
    elif where == "nested":  # a real Metadata, the payload deep inside it
        meta = read_metadata(meta_file)
        meta.storage_meta.modules = [Payload(marker)]
        meta_file.write_bytes(pickle.dumps(meta))
    else:  # a shard item (an optimizer number, or a weight) read from a file of payload
        meta = read_metadata(meta_file)
        evil = pickle.dumps(Payload(marker), protocol=2)  # torch.load's protocol
        (step / "__9_0.distcp").write_bytes(evil)
        prefix = "optim.param_groups.0.lr" if where == "bytes" else "model.tok_embeddings"
        key = next(k for k in meta.storage_data if k.fqn.startswith(prefix))
        info = meta.storage_data[key]
        info.relative_path, info.offset, info.length = "__9_0.distcp", 0, len(evil)
        meta_file.write_bytes(pickle.dumps(meta))
    return root, folder, step, marker


def _one_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for p in parts:
        assert p in lines[0], err


@pytest.mark.parametrize("where", ["metadata", "nested", "bytes", "tensor"])
def test_a_checkpoint_payload_never_runs(run, tmp_path, capsys, where):
    root, folder, step, marker = _hostile(run, tmp_path, where)
    cases = [
        ["sample", "--model", str(step), "-o", str(tmp_path / "s"), "-n", "1"],
        ["export", str(step), str(tmp_path / "hf")],
        ["train", *_cfg(root, folder, max_steps=4, ckpt_every=2, eval_every=2, resume=True)],
    ]  # fmt: skip
    if where == "bytes":  # only resuming reads the optimizer's items
        cases = cases[2:]
    for argv in cases:
        capsys.readouterr()
        rc = cli.main(argv)
        err = capsys.readouterr().err
        assert not marker.exists(), f"the payload ran under jpeglm {argv[0]}"
        assert rc == 2, err
        if where in ("metadata", "nested"):
            _one_line(err, ".metadata", "refusing", "not DCP checkpoint metadata")
        else:
            _one_line(err, "corrupt checkpoint")
    assert not (tmp_path / "hf").exists()
    assert not list_checkpoints(folder)[-1].name.endswith("04")  # nothing trained on


def test_metadata_outside_its_folder_refused(run, tmp_path):
    _, out = run
    step = tmp_path / "step"
    shutil.copytree(list_checkpoints(out)[-1], step)
    meta = read_metadata(step / ".metadata")
    next(iter(meta.storage_data.values())).relative_path = "../../etc/passwd"
    (step / ".metadata").write_bytes(pickle.dumps(meta))
    with pytest.raises(ValueError, match="outside its folder"):
        read_metadata(step / ".metadata")


def test_the_unpickler_admits_real_metadata_only(run):
    _, out = run
    data = (list_checkpoints(out)[-1] / ".metadata").read_bytes()
    meta = MetadataUnpickler(io.BytesIO(data)).load()
    assert meta.state_dict_metadata == pickle.loads(data).state_dict_metadata
    for evil in (pickle.dumps(print), pickle.dumps(shutil.rmtree)):
        with pytest.raises(pickle.UnpicklingError, match="not DCP checkpoint metadata"):
            MetadataUnpickler(io.BytesIO(evil)).load()


def test_rng_state_files_are_read_weights_only(run, tmp_path, capsys):
    """``rng_rank0.pt`` with a payload: resume refuses the checkpoint; the payload never runs."""
    root, out = run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    shutil.rmtree(folder / "final")
    step = list_checkpoints(folder)[-1]
    marker = tmp_path / "PWNED"
    (step / "rng_rank0.pt").write_bytes(pickle.dumps(Payload(marker)))
    rc = cli.main(["train", *_cfg(root, folder, max_steps=4, ckpt_every=2, eval_every=2,
                                  resume=True)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists()
    _one_line(err, "rng_rank0.pt")
