"""Replay: saved sessions re-run to the same numbers; mismatches, failing steps and the
headless ``mlxterp replay`` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from mlxterp import interventions as iv
from mlxterp.session import Session, SessionError, replay, replay_main

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "sessions").glob("*.toml"))
PROMPT = "The capital of France is"
HEAD = "format = 1\n[model]\nref = 'demo'\n"


@pytest.fixture
def recorded(manager, tmp_path):
    s = Session.new("demo", tmp_path / "s.toml", manager)
    s.run(manager, "trace", text=PROMPT)
    s.set_intervention("layers.3", iv.add_vector(mx.ones((64,)) * 0.1))
    s.run(manager, "logit_lens", text=PROMPT, target=" Paris", layers=[0, 8, 15])
    s.clear_interventions()
    s.run(manager, "generate", prompt=PROMPT, max_tokens=3)
    return s


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_shipped_sessions_exist():
    assert {p.name for p in SHIPPED} >= {
        "factual-recall.toml",
        "induction.toml",
        "induction-heads.toml",
        "ioi.toml",
        "steering.toml",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_sessions_replay(path, manager):
    report = replay(path, manager)
    assert report.ok, report.format_text()
    assert len(report.steps) >= 3 and not report.warnings


def test_replay_matches_and_catches_a_changed_token(recorded, manager):
    report = replay(recorded.path, manager)
    assert report.ok, report.format_text()
    assert [s.index for s in report.steps] == [0, 1, 2, 3, 4]
    edit(recorded.path, '" Paris"', '" Berlin"')
    bad = replay(recorded.path, manager)
    assert [s.ok for s in bad.steps] == [False, True, True, True, True]
    assert "top_tokens[0]: recorded ' Berlin', now ' Paris'" in bad.steps[0].message
    assert "FAIL" in bad.format_text() and "MISMATCH" in bad.format_text()


def test_replay_tolerance_decides_numbers(recorded, manager):
    prob = recorded.steps[0].summary["top_probs"][0]
    edit(recorded.path, f"    {prob},", f"    {prob - 0.01:.6f},")
    assert not replay(recorded.path, manager, tolerance=1e-3).ok
    loose = replay(recorded.path, manager, tolerance=0.05)
    assert loose.ok and loose.steps[0].max_diff == pytest.approx(0.01, abs=1e-4)


def test_replay_needs_the_recorded_interventions(recorded, manager):
    """The lens ran under an add_vector: replaying it without that intervention differs."""
    recorded.steps[1].params["intervention"]["params"]["vector"] = mx.zeros((64,))
    recorded.save()
    report = replay(recorded.path, manager)
    assert [s.ok for s in report.steps] == [True, True, False, True, True]
    assert "target_probs" in report.steps[2].message or "top_" in report.steps[2].message


def test_replay_of_a_live_session(recorded, manager):
    report = replay(recorded, manager)
    assert report.ok and report.path == str(recorded.path)
    assert len(recorded.steps) == 5  # replay does not add to the session


def test_a_failing_step_is_reported_and_replay_goes_on(manager, tmp_path):
    path = tmp_path / "fails.toml"
    path.write_text(
        HEAD + "[[steps]]\nkind = 'attention'\n[steps.params]\ntext = 'hi'\nlayer = 99\n"
        "[[steps]]\nkind = 'interventions'\n[steps.params]\naction = 'set'\n"
        "module = 'layers.99'\nintervention = { kind = 'zero_out' }\n"
        "[[steps]]\nkind = 'interventions'\n[steps.params]\naction = 'clear'\n"
        "[steps.summary.active]\n"
    )
    report = replay(path, manager)
    assert [s.ok for s in report.steps] == [False, False, True]
    assert "cannot run: layer 99 is out of range" in report.steps[0].message
    assert "cannot run: " in report.steps[1].message and "layers.99" in report.steps[1].message


def test_replay_warns_when_the_model_differs(recorded, manager):
    count = sum(v.size for v in manager.model("demo").parameters().values())
    edit(recorded.path, f"parameters = {count}", f"parameters = {count + 1}")
    edit(recorded.path, 'fingerprint = "', 'fingerprint = "0')
    report = replay(recorded.path, manager)
    assert report.ok and len(report.warnings) == 2
    assert "the model differs" in report.format_text() and f"{count + 1}" in report.format_text()


def test_bad_tolerance_and_missing_model(recorded, manager, tmp_path):
    for bad in (-1, float("nan"), float("inf"), True):
        with pytest.raises(SessionError, match="tolerance must be a finite number >= 0"):
            replay(recorded.path, manager, tolerance=bad)
    path = tmp_path / "m.toml"
    path.write_text("format = 1\n[model]\nref = 'no/such-model-here'\n")
    with pytest.raises(SessionError, match="cannot be loaded"):
        replay(path)


def test_replay_main_exit_codes(recorded, tmp_path, capsys):
    assert replay_main([str(recorded.path)]) == 0
    assert "5 of 5 steps match" in capsys.readouterr().out
    edit(recorded.path, '" Paris"', '" Berlin"')
    assert replay_main([str(recorded.path), "--tolerance", "0.5"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert replay_main([str(recorded.path), "--tolerance", "-2"]) == 2
    capsys.readouterr()
    assert replay_main([str(tmp_path / "absent.toml")]) == 2
    assert "no session file" in capsys.readouterr().err  # errors go to stderr
    assert replay_main([]) == 2 and "usage: mlxterp replay" in capsys.readouterr().err
    assert replay_main(["--help"]) == 0 and "--tolerance" in capsys.readouterr().out


def test_replay_command_runs_headless(tmp_path):
    """The ``mlxterp`` console script's replay path, in a fresh process."""

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "mlxterp_tui.cli", "replay", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )

    ok = run(str(ROOT / "sessions" / "steering.toml"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "steps match" in ok.stdout and "textual" not in ok.stderr.lower()
    bad = tmp_path / "bad.toml"
    bad.write_text("not toml [")
    broken = run(str(bad))
    assert broken.returncode == 2 and "not valid TOML" in broken.stderr
    assert "Traceback" not in broken.stdout + broken.stderr
