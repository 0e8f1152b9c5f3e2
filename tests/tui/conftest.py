"""Fixtures of the workbench's Pilot tests: one small checkpoint shared by every file (its
folder name is fixed: the status bar, and so the snapshots, show it), a manager holding it
and the demo model, and no user keymap."""

from __future__ import annotations

import pytest

from mlxterp.checkpoints import build_checkpoint
from mlxterp.session import SessionManager


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return str(build_checkpoint("llama", tmp_path_factory.mktemp("snapmodel", numbered=False)))


@pytest.fixture(scope="session")
def manager(model_dir):
    mgr = SessionManager()
    mgr.model(model_dir)
    mgr.model("demo")
    return mgr


@pytest.fixture(autouse=True)
def no_user_keymap(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXTERP_CONFIG_DIR", str(tmp_path / "config"))
