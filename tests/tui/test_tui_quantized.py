"""A quantized model on a CPU: the workbench says its kernels are slow there and how to
avoid them; ``--dequantize`` (workbench, ``open``, ``replay``) loads it as plain layers."""

from __future__ import annotations

import mlx.core as mx
import pytest

pytest.importorskip("textual")

from textual.widgets import Static

from mlxterp.session import Session, SessionManager, replay_main
from mlxterp_tui import cli
from mlxterp_tui.app import WorkbenchApp
from mlxterp_tui.panes.model_tree import SLOW_QUANTIZED

from .pilot_helpers import settle

PROMPT = "The capital of France is"
ON_CPU = mx.default_device() == mx.cpu  # on a Mac's GPU the quantized kernels are fast
pytestmark = pytest.mark.anyio


@pytest.fixture
def quantized(checkpoint_dir) -> str:
    return checkpoint_dir("llama_4bit")


async def model_line(manager: SessionManager, ref: str) -> str:
    app = WorkbenchApp(ref, manager=manager)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        return str(app.query_one("#model-info", Static).render())


async def test_the_model_pane_says_a_quantized_model_is_slow_on_a_cpu(quantized):
    line = await model_line(SessionManager(), quantized)
    assert (SLOW_QUANTIZED in line) == ON_CPU
    assert SLOW_QUANTIZED not in await model_line(SessionManager(dequantize=True), quantized)
    assert SLOW_QUANTIZED not in await model_line(SessionManager(), "demo")  # not quantized


def test_dequantize_loads_plain_layers(quantized):
    plain = SessionManager(dequantize=True).model(quantized)
    packed = SessionManager().model(quantized)
    assert not plain.quantized_on_cpu and packed.quantized_on_cpu == ON_CPU
    assert not any("scales" in m for _, m in plain.model.named_modules())
    assert any("scales" in m for _, m in packed.model.named_modules())


def test_a_session_recorded_quantized_replays_dequantized(quantized, tmp_path, capsys):
    """The same numbers, to float rounding: every lens probability within 1e-3."""
    session = Session.new(quantized, path=tmp_path / "q.toml", manager=SessionManager())
    session.run(session.manager, "logit_lens", text=PROMPT)
    assert replay_main([str(tmp_path / "q.toml"), "--dequantize"]) == 0
    assert "1 of 1 steps match" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["--dequantize", "--model", "M"], ["--model", "M"], ["open", "S", "--dequantize"]],
)
def test_the_command_line_flag_reaches_the_manager(argv, quantized, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(WorkbenchApp, "run", lambda app: seen.append(app.mgr))
    path = tmp_path / "s.toml"
    Session.new(quantized, path=path, manager=SessionManager()).save()
    argv = [quantized if a == "M" else str(path) if a == "S" else a for a in argv]
    assert cli.main(argv) == 0
    (manager,) = seen
    assert manager.dequantize == ("--dequantize" in argv)
    assert manager.model(quantized).quantized_on_cpu == (ON_CPU and not manager.dequantize)
