"""Session files: round trips, the sidecar, atomic saves, bad and hostile files."""

from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx
import pytest

from mlxterp import interventions as iv
from mlxterp.session import Session, SessionError, replay, storage

PROMPT = "The capital of France is"
HEAD = "format = 1\n[model]\nref = 'demo'\n"


@pytest.fixture
def recorded(manager, tmp_path):
    s = Session.new("demo", tmp_path / "s.toml", manager)
    s.run(manager, "trace", text=PROMPT)
    s.set_intervention("layers.3", iv.add_vector(mx.arange(64, dtype=mx.float32) / 640))
    s.run(manager, "logit_lens", text=PROMPT, target=" Paris", layers=[0, 8, 15])
    s.clear_interventions()
    s.run(manager, "generate", prompt=PROMPT, max_tokens=3)
    return s


def sidecars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.safetensors")}


def test_autosave_after_each_step(manager, tmp_path):
    path = tmp_path / "auto.toml"
    s = Session.new("demo", path, manager)
    s.run(manager, "trace", text=PROMPT)
    assert [st.kind for st in Session.load(path).steps] == ["trace"]
    s.run(manager, "generate", prompt=PROMPT, max_tokens=2)
    assert [st.kind for st in Session.load(path).steps] == ["trace", "generate"]


def test_no_path_no_file_until_saved(manager, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Session.new("demo", None, manager)
    s.run(manager, "trace", text=PROMPT)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SessionError, match="no file yet"):
        s.save()
    assert s.save(tmp_path / "later.toml").exists() and s.path == tmp_path / "later.toml"


def test_round_trip_keeps_params_summaries_and_arrays(recorded):
    again = Session.load(recorded.path)
    assert again.model_ref == "demo" and again.fingerprint == recorded.fingerprint
    assert [s.kind for s in again.steps] == [
        "trace",
        "interventions",
        "logit_lens",
        "interventions",
        "generate",
    ]
    for a, b in zip(recorded.steps, again.steps, strict=True):
        assert (a.index, a.created) == (b.index, b.created)
        assert a.summary == b.summary
    vector = again.steps[1].params["intervention"]["params"]["vector"]
    assert isinstance(vector, mx.array)
    assert mx.array_equal(
        vector, recorded.steps[1].params["intervention"]["params"]["vector"]
    ).item()
    assert again.steps[0].summary["top_tokens"][0] == " Paris"
    assert 'array = "steps.1.params.intervention.params.vector"' in recorded.path.read_text()
    assert list(sidecars(recorded.path.parent)) == [
        storage.sidecar_name(recorded.path, {"steps.1.params.intervention.params.vector": vector})
    ]


def test_sidecar_only_while_there_are_arrays(manager, tmp_path):
    path = tmp_path / "plain.toml"
    s = Session.new("demo", path, manager)
    s.run(manager, "trace", text=PROMPT)
    assert sidecars(tmp_path) == {} and "sidecar" not in path.read_text()
    s.set_intervention("layers.2", iv.add_vector(mx.ones((64,))))
    assert len(sidecars(tmp_path)) == 1
    s.steps.pop()  # drop the only step that holds an array
    s.save()
    assert sidecars(tmp_path) == {} and "sidecar" not in path.read_text()


def test_save_removes_only_the_sidecar_it_named_before(recorded):
    folder = recorded.path.parent
    mine = next(iter(sidecars(folder)))
    keep = [
        "s.notes.safetensors",
        "s.0123456789ab.safetensors.bak",
        "other.0123456789ab.safetensors",
        "s.ZZZZZZZZZZZZ.safetensors",
        "s.0123456789ab.safetensors",  # looks like one of s's, but s.toml does not name it
    ]
    for name in keep:
        (folder / name).write_bytes(b"not mine")
    recorded.save()
    assert {p.name for p in folder.iterdir()} == set(keep) | {mine, "s.toml", ".mlxterp.lock"}
    recorded.steps[1].params["intervention"]["params"]["vector"] = mx.zeros((64,))
    recorded.save()
    assert mine not in sidecars(folder) and set(keep) <= {p.name for p in folder.iterdir()}


def test_sidecar_name_follows_content_shape_and_dtype(tmp_path):
    path = tmp_path / "x.toml"
    a = mx.arange(6, dtype=mx.float32)
    names = {
        storage.sidecar_name(path, {"k": v})
        for v in (a, a.reshape(2, 3), a.astype(mx.float16), a + 1, a.reshape(3, 2).T)
    }
    assert len(names) == 5
    assert storage.sidecar_name(path, {"k": a}) == storage.sidecar_name(path, {"k": mx.array(a)})


def test_failed_rename_leaves_previous_files_intact(recorded, manager, monkeypatch):
    before, old_sidecars = recorded.path.read_bytes(), sidecars(recorded.path.parent)

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(SessionError, match=r"step 5 is recorded, but the autosave.*disk full"):
        recorded.run(
            manager,
            "steering",
            positive="I love this",
            negative="I hate this",
            layer=6,
            prompt="I think this",
            max_tokens=2,
        )
    monkeypatch.undo()
    assert recorded.path.read_bytes() == before
    assert sidecars(recorded.path.parent) == old_sidecars
    assert not list(recorded.path.parent.glob(".*tmp*"))
    assert len(Session.load(recorded.path).steps) == 5
    assert len(recorded.steps) == 6 and recorded.dirty  # kept in memory, not lost


def test_failed_toml_writer_leaves_previous_files_intact(recorded, monkeypatch):
    before, old_sidecars = recorded.path.read_bytes(), sidecars(recorded.path.parent)
    recorded.steps[1].params["intervention"]["params"]["vector"] = mx.zeros((64,))  # new sidecar

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.tomli_w, "dumps", dies)
    with pytest.raises(KeyboardInterrupt):
        recorded.save()
    assert recorded.path.read_bytes() == before
    assert sidecars(recorded.path.parent) == old_sidecars  # no orphan sidecar either


def test_failure_between_sidecar_and_toml_keeps_the_old_pair(recorded, monkeypatch):
    before, old_sidecars = recorded.path.read_bytes(), sidecars(recorded.path.parent)
    recorded.steps[1].params["intervention"]["params"]["vector"] = mx.zeros((64,))
    real_replace, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the sidecar went in; the TOML rename fails
            raise OSError("power cut (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(SessionError, match="power cut"):
        recorded.save()
    monkeypatch.undo()
    assert recorded.path.read_bytes() == before
    assert old_sidecars.items() <= sidecars(recorded.path.parent).items()
    again = Session.load(recorded.path)  # the old TOML still finds its own sidecar
    assert mx.allclose(
        again.steps[1].params["intervention"]["params"]["vector"],
        mx.arange(64, dtype=mx.float32) / 640,
    ).item()


@pytest.mark.parametrize(
    "content, message",
    [
        ("this is = not [ toml", r"not valid TOML: .*line 1, column"),
        ("format = 99\n[model]\nref = 'demo'\n", "format 99"),
        ("format = true\n[model]\nref = 'demo'\n", "format True"),
        ("format = 1.0\n[model]\nref = 'demo'\n", "format 1.0"),
        ("format = 1\n", "names no model"),
        ("format = 1\nmodel = 'demo'\n", "names no model"),
        (
            "format = 1\n[model]\nref = 'demo'\nparameters = 'many'\n",
            "parameters must be an integer",
        ),
        ("format = 1\nmeta = 'x'\n[model]\nref = 'demo'\n", "'meta' must be a table"),
        (HEAD + "[[steps]]\nkind = 'exec'\n", "step 0: unknown step kind 'exec'"),
        (HEAD + "[[steps]]\nkind = 5\n", "step 0: the step has no kind"),
        (HEAD + "[steps]\nkind = 'trace'\n", "'steps' must be an array of tables"),
        (HEAD + "[[steps]]\nkind = 'trace'\nparams = 'x'\n", "params must be a table"),
        (
            HEAD + "[[steps]]\nkind = 'trace'\ncreated = 2024-01-01\n[steps.params]\ntext = 'hi'\n",
            "created must be a string",
        ),
        (
            HEAD + "[[steps]]\nkind = 'trace'\n[steps.params]\ntext = 'hi'\ntop_k = 'x'\n",
            "step 0: step 'trace': top_k must be an integer",
        ),
        (
            HEAD + "[[steps]]\nkind = 'trace'\n[steps.params]\ntext = 'hi'\nshell = 'rm -rf /'\n",
            "takes no parameter 'shell'",
        ),
        (
            HEAD + "[[steps]]\nkind = 'generate'\n[steps.params]\n"
            "prompt = 'hi'\nmax_tokens = 100000000\n",
            "max_tokens must be an integer from 1 to 1024",
        ),
        (
            HEAD + "[[steps]]\nkind = 'trace'\n[steps.params]\ntext = { array = 'x' }\n",
            "names no sidecar",
        ),
        (
            HEAD + "[[steps]]\nkind = 'trace'\n[steps.params]\ntext = { array = 5 }\n",
            "names no sidecar",
        ),
        ("format = 1\nsidecar = 'gone.safetensors'\n[model]\nref = 'demo'\n", "which is missing"),
        (
            "format = 1\nsidecar = '../../etc/passwd'\n[model]\nref = 'demo'\n",
            "cannot be a sidecar: the name must not start with a dot",
        ),
        ("format = 1\nsidecar = 3\n[model]\nref = 'demo'\n", "the sidecar must be a file name"),
    ],
)
def test_bad_files_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(SessionError, match=message):
        Session.load(path)


def test_unreadable_and_absent_files(tmp_path):
    with pytest.raises(SessionError, match="no session file"):
        Session.load(tmp_path / "absent.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00\x81 garbage")
    with pytest.raises(SessionError, match="not a text file"):
        Session.load(binary)


def test_sidecar_that_is_not_safetensors(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x80\x04\x95 a pickle, not tensors")
    path = tmp_path / "bad.toml"
    path.write_text("format = 1\nsidecar = 'x.safetensors'\n" + HEAD[len("format = 1\n") :])
    with pytest.raises(SessionError, match="not a safetensors file"):
        Session.load(path)


def test_array_missing_from_the_sidecar(tmp_path):
    mx.save_safetensors(str(tmp_path / "x.safetensors"), {"other": mx.ones((3,))})
    path = tmp_path / "bad.toml"
    path.write_text(
        "format = 1\nsidecar = 'x.safetensors'\n"
        + HEAD[len("format = 1\n") :]
        + "[[steps]]\nkind = 'interventions'\n[steps.params]\naction = 'set'\n"
        "module = 'layers.1'\n[steps.params.intervention]\nkind = 'add_vector'\n"
        "params = { vector = { array = 'steps.0.vector' } }\n"
    )
    with pytest.raises(SessionError, match=r"step 0: the array 'steps.0.vector' is missing"):
        Session.load(path)


INTERVENTION = HEAD + (
    "[[steps]]\nkind = 'interventions'\n[steps.params]\naction = 'set'\n"
    "module = 'layers.1'\n[steps.params.intervention]\n"
)


@pytest.mark.parametrize(
    "table, message",
    [
        (
            "kind = 'os.system'\nparams = { command = 'touch pwned' }\n",
            "unknown intervention kind 'os.system'",
        ),
        ("kind = 'custom'\nparams = { fn = 'lambda x: x' }\n", "custom callable cannot be rebuilt"),
        (
            "kind = 'scale'\nparams = { factor = 2.0, hook = '__import__(\"os\")' }\n",
            "takes no parameter",
        ),
        ("kind = 'scale'\nparams = { factor = 'eval' }\n", "scale factor must be a number"),
        ("kind = 'scale'\nparams = 'x'\n", "params must be a table"),
        (
            "kind = 'scale'\nparams = { factor = 2.0 }\npositions = ['a']\n",
            "positions must be token indices",
        ),
        ("kind = 'noise'\nparams = { std = 0.1, seed = 'x' }\n", "seed must be an integer"),
        ("kind = 'add_vector'\nparams = { vector = 'abc' }\n", "needs an mx.array vector"),
        ("kind = 'compose'\nparams = { steps = [1, 2] }\n", "not an intervention description"),
    ],
)
def test_bad_recorded_interventions_are_refused_on_load(tmp_path, table, message):
    path = tmp_path / "iv.toml"
    path.write_text(INTERVENTION + table)
    with pytest.raises(
        SessionError, match=f"step 0: the intervention on 'layers.1' is not valid: .*{message}"
    ):
        Session.load(path)


def test_hostile_file_runs_nothing(tmp_path, manager):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    path = tmp_path / "hostile.toml"
    path.write_text(
        HEAD + f"[[steps]]\nkind = 'trace'\n[steps.params]\ntext = \"{payload}\"\n"
        "[steps.summary]\ntop_ids = [1]\n"
        f"[[steps]]\nkind = 'logit_lens'\n[steps.params]\ntext = 'hi'\ntarget = \"{payload}\"\n"
        f"[[steps]]\nkind = 'activation_patching'\n[steps.params]\nclean = 'a'\ncorrupted = 'b'\n"
        f'component = "{payload}"\nmetric = "{payload}"\n'
    )
    report = replay(path, manager)  # the payload is only ever a prompt or a name
    assert not marker.exists()
    assert [s.ok for s in report.steps] == [False, False, False]
    assert "top_ids" in report.steps[0].message or "difference" in report.steps[0].message
    assert all("cannot run" in s.message for s in report.steps[1:])
