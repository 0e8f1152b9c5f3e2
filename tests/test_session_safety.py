"""Saves that never lose a sidecar another file names, concurrent and killed saves,
symbolic links and long names, replay comparisons that cannot say "matches" wrongly, the
``mlxterp replay`` command's exit codes, and steps from several threads."""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import interventions as iv
from mlxterp.session import (
    Session,
    SessionError,
    Step,
    replay,
    replay_main,
    storage,
)
from mlxterp.session.steps import compare

ROOT = Path(__file__).resolve().parent.parent
MLXTERP = ROOT / ".venv" / "bin" / "mlxterp"
PROMPT = "The capital of France is"
HEAD = "format = 1\n[model]\nref = 'demo'\n"


def with_vector(path: Path, value: float, size: int = 64) -> Session:
    """A session (no model run) whose one step holds an array, so it has a sidecar."""
    s = Session("demo", path)
    description = {"kind": "add_vector", "params": {"vector": mx.full((size,), value)}}
    s.steps = [
        Step(
            0,
            "interventions",
            {"action": "set", "module": "model.layers.1", "intervention": description},
            {"module": "model.layers.1"},
        )
    ]
    return s


def vector_of(path: Path) -> float:
    step = Session.load(path).steps[0]
    return step.params["intervention"]["params"]["vector"][0].item()


def hidden(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith(".")} - {storage.LOCK_NAME}


# --------------------------------------------------------------------------- sidecars
def test_a_copy_of_the_file_keeps_its_sidecar(tmp_path):
    a = with_vector(tmp_path / "a.toml", 1.0)
    a.save()
    shutil.copy(tmp_path / "a.toml", tmp_path / "a-copy.toml")
    first = set(tmp_path.glob("*.safetensors"))
    a.steps[0].params["intervention"]["params"]["vector"] = mx.full((64,), 2.0)
    a.save()  # names a new sidecar; the old one is still named by the copy
    assert vector_of(tmp_path / "a-copy.toml") == 1.0 and vector_of(tmp_path / "a.toml") == 2.0
    second = set(tmp_path.glob("*.safetensors")) - first
    a.steps[0].params["intervention"]["params"]["vector"] = mx.full((64,), 3.0)
    a.save()  # the sidecar a.toml named before is named by nobody else: removed
    assert first < set(tmp_path.glob("*.safetensors")) and not second & set(tmp_path.glob("*"))
    assert vector_of(tmp_path / "a-copy.toml") == 1.0


def test_sibling_files_with_one_stem_keep_their_sidecars(tmp_path):
    exp, other = with_vector(tmp_path / "exp.toml", 1.0), with_vector(tmp_path / "exp.session", 5.0)
    exp.save()
    other.save()
    exp.steps[0].params["intervention"]["params"]["vector"] = mx.full((64,), 2.0)
    exp.save()
    other.save()
    assert vector_of(tmp_path / "exp.session") == 5.0 and vector_of(tmp_path / "exp.toml") == 2.0
    # the same content in both: one sidecar, and removing it from one keeps it for the other
    same = with_vector(tmp_path / "exp.session", 2.0)
    same.save()
    exp.steps[0].params["intervention"]["params"]["vector"] = mx.full((64,), 7.0)
    exp.save()
    assert vector_of(tmp_path / "exp.session") == 2.0


def test_a_hard_link_to_the_old_file_keeps_its_sidecar(tmp_path):
    a = with_vector(tmp_path / "a.toml", 1.0)
    a.save()
    os.link(tmp_path / "a.toml", tmp_path / "b.toml")
    a.steps[0].params["intervention"]["params"]["vector"] = mx.full((64,), 2.0)
    a.save()
    assert vector_of(tmp_path / "b.toml") == 1.0


def test_a_corrupt_sidecar_is_rewritten_by_the_next_save(tmp_path):
    a = with_vector(tmp_path / "a.toml", 1.0)
    a.save()
    (side,) = tmp_path.glob("*.safetensors")
    side.write_bytes(side.read_bytes()[:40])  # truncated
    with pytest.raises(SessionError, match="not a safetensors file"):
        Session.load(tmp_path / "a.toml")
    a.save()  # same content, same name: the damaged file is replaced
    assert vector_of(tmp_path / "a.toml") == 1.0
    side.write_bytes(side.read_bytes().replace(b"\x00\x00\x80?", b"\x00\x00\x00@"))  # 1.0 -> 2.0
    a.save()
    assert vector_of(tmp_path / "a.toml") == 1.0


def test_temporary_files_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    a = with_vector(tmp_path / "a.toml", 1.0)
    a.save()
    for name in (".mlxterp-tmp-abc123.toml", ".mlxterp-tmp-def456.safetensors"):
        (tmp_path / name).write_bytes(b"half written")
    a.save()
    assert hidden(tmp_path) == set()


def test_a_symlinked_session_loads_and_saves_through_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    target, link = tmp_path / "real" / "exp.toml", tmp_path / "links" / "exp.toml"
    with_vector(target, 1.0).save()
    link.symlink_to(target)
    s = Session.load(link)  # the sidecar lies beside the target
    assert s.path == link and vector_of(link) == 1.0
    s.steps[0].params["intervention"]["params"]["vector"] = mx.full((64,), 2.0)
    s.save()
    assert link.is_symlink() and vector_of(target) == 2.0
    assert list((tmp_path / "links").iterdir()) == [link]  # nothing written beside the link
    assert len(list((tmp_path / "real").glob("*.safetensors"))) == 1


def test_a_long_legal_name_saves_and_loads(tmp_path):
    name = "n" * 250 + ".toml"  # 255 bytes: the limit of most file systems
    with_vector(tmp_path / name, 1.0).save()
    assert vector_of(tmp_path / name) == 1.0
    (side,) = tmp_path.glob("*.safetensors")
    assert len(side.name.encode()) <= 255
    wide = "é" * 125 + ".toml"  # 255 bytes of two-byte characters
    with_vector(tmp_path / wide, 2.0).save()
    assert vector_of(tmp_path / wide) == 2.0


def test_discard_removes_the_file_and_a_sidecar_no_one_else_names(tmp_path):
    with_vector(tmp_path / "a.toml", 1.0).save()
    with_vector(tmp_path / "b.toml", 2.0).save()
    shutil.copy(tmp_path / "b.toml", tmp_path / "b-copy.toml")
    Session.discard(tmp_path / "a.toml")
    Session.discard(tmp_path / "b.toml")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "b-copy.toml",
        next(p.name for p in tmp_path.glob("b.*.safetensors")),
    ]
    assert vector_of(tmp_path / "b-copy.toml") == 2.0


def test_a_save_over_a_file_naming_a_foreign_sidecar_removes_nothing_outside(tmp_path):
    (tmp_path / "keep").mkdir()
    victim = tmp_path / "keep" / "precious.safetensors"
    victim.write_bytes(b"not a session's")
    (tmp_path / "work").mkdir()
    path = tmp_path / "work" / "s.toml"
    path.write_text('format = 1\nsidecar = "../keep/precious.safetensors"\n[model]\nref = "demo"\n')
    with_vector(path, 1.0).save()  # a new session saved over the hostile file
    Session.discard(path)
    assert victim.read_bytes() == b"not a session's"
    weights = tmp_path / "work" / "model.safetensors"  # a model folder's weights
    weights.write_bytes(b"weights")
    path.write_text('format = 1\nsidecar = "model.safetensors"\n[model]\nref = "demo"\n')
    with_vector(path, 1.0).save()
    Session.discard(path)
    assert weights.read_bytes() == b"weights"


def test_a_save_waits_for_the_folder_lock_then_fails_clearly(tmp_path, monkeypatch):
    a = with_vector(tmp_path / "a.toml", 1.0)
    a.save()
    before = (tmp_path / "a.toml").read_bytes()
    monkeypatch.setattr(storage, "LOCK_TIMEOUT", 0.3)
    with storage._folder_lock(tmp_path):  # another save holds the folder
        a.steps[0].params["intervention"]["params"]["vector"] = mx.full((64,), 2.0)
        with pytest.raises(SessionError, match=r"has held '\.mlxterp\.lock' for 0\.3 s"):
            a.save()
    assert (tmp_path / "a.toml").read_bytes() == before
    a.save()
    assert vector_of(tmp_path / "a.toml") == 2.0


WRITER = """
import sys
import mlx.core as mx
from mlxterp.session import Session, Step

path, tag, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
size = int(sys.argv[4])
s = Session("demo", path)
for i in range(rounds if rounds > 0 else 10**9):
    vector = mx.full((size,), tag * 1000 + i % 7)
    s.steps = [Step(0, "interventions", {"action": "set", "module": "model.layers.1",
        "intervention": {"kind": "add_vector", "params": {"vector": vector}}},
        {"module": "model.layers.1"})]
    s.save()
    Session.load(path)  # the file just saved (or the other writer's) loads, sidecar and all
    print(i, flush=True)
"""


def writer(path: Path, tag: int, rounds: int, size: int = 64) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(tag), str(rounds), str(size)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.adversarial
def test_two_processes_saving_one_session_at_once(tmp_path):
    path = tmp_path / "shared.toml"
    procs = [writer(path, tag, 20) for tag in (1, 2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert out.split()[-1] == "19"
    # loadable, its sidecar present, and the last save of one of the two (i = 19: 19 % 7 = 5)
    assert vector_of(path) in (1005.0, 2005.0)
    assert hidden(tmp_path) == set()


@pytest.mark.adversarial
def test_kill_9_during_saves_never_damages_the_file(tmp_path):
    path = tmp_path / "k.toml"
    with_vector(path, 0.5).save()
    rng = random.Random(12)
    for _ in range(2):
        proc = writer(path, 3, 0, size=1_000_000)  # 4 MB sidecars: kills land mid-write
        assert proc.stdout is not None
        proc.stdout.readline()  # it has saved once
        threading.Event().wait(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        Session.load(path)  # the last complete save, with its sidecar
    survivor = Session.load(path)
    survivor.save()  # the next save cleans what the killed ones left half-written
    assert hidden(tmp_path) == set()
    for side in tmp_path.glob("*.safetensors"):  # a complete, unnamed sidecar may stay
        assert isinstance(mx.load(str(side)), dict)


# --------------------------------------------------------------------------- names
def test_an_edited_summary_that_names_another_module_is_refused(manager, tmp_path):
    s = Session.new("demo", tmp_path / "m.toml", manager)
    s.set_intervention("layers.3", iv.zero_out)
    text = (tmp_path / "m.toml").read_text()
    assert text.count('module = "model.layers.3"') == 2  # params and summary agree
    params, summary = text.split("[steps.summary]")
    edited = params + "[steps.summary]" + summary.replace('"model.layers.3"', '"model.layers.5"')
    (tmp_path / "m.toml").write_text(edited)
    with pytest.raises(SessionError, match=r"the summary names module .* but the params name"):
        Session.load(tmp_path / "m.toml")


def test_load_and_replay_use_the_same_module(manager, tmp_path):
    path = tmp_path / "alias.toml"
    path.write_text(
        "format = 1\n[model]\nref = 'demo'\n[[steps]]\nkind = 'interventions'\n"
        "[steps.params]\naction = 'set'\nmodule = 'layers.3'\n"
        "intervention = { kind = 'zero_out' }\n"
        "[steps.summary]\nmodule = 'model.layers.3'\n"
        "[steps.summary.active]\n'model.layers.3' = 'zero_out()'\n"
    )
    reopened = Session.load(path, manager)
    assert list(reopened.interventions) == ["layers.3"]  # as its params say
    assert replay(path, manager).ok
    reopened.run(manager, "interventions", action="disable", module="model.layers.3")
    assert reopened.intervention_entries()[0].module == "model.layers.3"
    assert reopened.interventions == {}


# --------------------------------------------------------------------------- compare
@pytest.mark.parametrize(
    ("recorded", "replayed"),
    [
        (math.inf, 3e38),
        (math.inf, -math.inf),
        (1.0, math.nan),
        (math.nan, math.nan),
        ([1e30, 1.0], [1e30, 5e26]),
    ],
)
def test_non_finite_and_per_element_differences_never_match(recorded, replayed):
    assert compare(recorded, replayed, 1e-3).differences
    assert compare(mx.array(recorded), mx.array(replayed), 1e-3).differences
    assert compare(mx.array(recorded), replayed, 1e-3).differences


def test_equal_values_match_within_the_tolerance_per_element():
    assert not compare(math.inf, math.inf, 0.0).differences
    assert not compare(
        mx.array([math.inf, 1e30, 1.0]), [math.inf, 1.0005e30, 1.0009], 1e-3
    ).differences
    report = compare(mx.array([1e30, 1.0, 2.0]), mx.array([1e30, 5e26, 2.0]), 1e-3)
    assert report.differences[0].path == "[1]" and report.max_diff == pytest.approx(5e26)
    assert compare(mx.array([1.0, math.nan]), mx.array([1.0, 2.0]), 1e-3).max_diff == math.inf
    big = np.full((3,), 1e6, dtype=np.float32)
    assert not compare(mx.array(big), mx.array(big * (1 + 5e-4)), 1e-3).differences


# --------------------------------------------------------------------------- the command
def mlxterp(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MLXTERP), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
        **kwargs,
    )


def one_clear_line(result: subprocess.CompletedProcess, says: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and says in lines[-1] and len(lines[-1]) < 300, result.stderr[-500:]


@pytest.fixture(scope="module")
def small_session(tmp_path_factory, manager):
    path = tmp_path_factory.mktemp("cli") / "small.toml"
    Session.new("demo", path, manager).run(manager, "trace", text=PROMPT)
    return path


def test_replay_refuses_hostile_files_with_exit_2(tmp_path, capsys):
    deep = tmp_path / "deep.toml"
    deep.write_text("format = 1\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    one_clear_line(mlxterp("replay", str(deep)), "nests tables or arrays too deeply")
    nested = tmp_path / "nested.toml"
    nested.write_text("format = 1\nx = " + "[" * 40 + "]" * 40 + "\n")
    long = tmp_path / "long.toml"
    long.write_text(
        "format = 1\n[model]\nref = 'demo'\n[[steps]]\nkind = 'trace'\n"
        f"[steps.params]\ntext = '{'a' * 2_000_000}'\n"
    )
    huge_kind = tmp_path / "kind.toml"
    huge_kind.write_text(
        f"format = 1\n[model]\nref = 'demo'\n[[steps]]\nkind = '{'k' * 500_000}'\n"
    )
    for path, says in [
        (nested, "deeper than 32"),
        (long, "a string of 2,000,000 characters"),
        (huge_kind, "unknown step kind 'kkkk"),
    ]:
        code = replay_main([str(path)])
        out, err = capsys.readouterr()
        one_clear_line(subprocess.CompletedProcess([], code, out, err), says)


def test_replay_refuses_a_tolerance_that_is_not_finite_and_non_negative(small_session, capsys):
    says = "--tolerance: must be a finite number >= 0"
    one_clear_line(mlxterp("replay", str(small_session), "--tolerance=nan"), says)
    for tolerance in ["inf", "-1", "-inf", "x", "1e999"]:
        code = replay_main([str(small_session), f"--tolerance={tolerance}"])
        out, err = capsys.readouterr()
        one_clear_line(subprocess.CompletedProcess([], code, out, err), says)


def test_replay_into_a_closed_pipe_exits_2_without_a_traceback(small_session):
    proc = subprocess.Popen(
        [str(MLXTERP), "replay", str(small_session)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -c1` that has already exited
    err = proc.stderr.read()
    proc.wait(timeout=300)
    one_clear_line(subprocess.CompletedProcess([], proc.returncode, "", err), "output was closed")


def test_replay_on_a_terminal_that_is_not_utf8(small_session, tmp_path):
    """Tokens the terminal cannot show are printed escaped; the exit code stays the
    replay's own (here 1: a recorded token was edited)."""
    text = small_session.read_text().replace('" Paris"', '" Pärïs—"', 1)
    changed = tmp_path / "mismatch.toml"
    changed.write_text(text)
    env = {"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"}
    bad = mlxterp("replay", str(changed), env=env)
    assert bad.returncode == 1 and "MISMATCH" in bad.stdout, bad.stderr[-2000:]
    assert "P\\xe4r\\xefs\\u2014" in bad.stdout and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- threads
@pytest.mark.adversarial
def test_steps_from_several_threads_at_once(manager, tmp_path):
    s = Session.new("demo", tmp_path / "threads.toml", manager)
    other = Session.new("demo", None, manager)  # another session on the same model
    errors: list[BaseException] = []

    def work(session: Session, n: int) -> None:
        try:
            for i in range(3):
                session.run(manager, "trace", text=f"{PROMPT} {n} {i}")
                session.run(manager, "logit_lens", text=PROMPT, layers=[n % 4, 15])
        except BaseException as err:  # collected: the test fails on any of them
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s if n % 2 else other, n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert [st.index for st in s.steps] == list(range(12))
    assert len(Session.load(tmp_path / "threads.toml").steps) == 12
    assert len(other.steps) == 12
    assert replay(tmp_path / "threads.toml", manager).ok


THREADED_SCRIPT = """
import threading
from mlxterp.session import Session, SessionManager
manager, session = SessionManager(), Session.new("demo")
def work(n):
    session.record(session.compute(manager, "trace", text=f"The capital of France is {n}"))
for n in range(3):  # one worker after another, as the workbench runs them
    worker = threading.Thread(target=work, args=(n,))
    worker.start()
    worker.join()
print(len(session.steps), "steps")
"""


@pytest.mark.adversarial
def test_a_process_whose_worker_threads_ran_steps_exits_cleanly(tmp_path):
    """Regression: MLX aborts a process at exit ("terminate called without an active
    exception", code 134) once a thread that ran a forward has ended without clearing its
    streams; the workbench's workers are such threads.  All MLX work of the session layer
    now runs on one thread of its own that clears its streams at exit."""
    for _ in range(2):  # the abort was certain, not occasional; twice for good measure
        out = subprocess.run(
            [sys.executable, "-c", THREADED_SCRIPT], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0 and "3 steps" in out.stdout, out.stderr[-2000:]
        assert "terminate called" not in out.stderr
