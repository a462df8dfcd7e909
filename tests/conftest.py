from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A small prepared dataset shared by the trainer tests (see trainutil.make_world)."""
    pytest.importorskip("torch")
    from trainutil import make_world

    return make_world(tmp_path_factory.mktemp("data"))
