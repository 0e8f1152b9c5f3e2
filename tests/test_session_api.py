"""The session API the workbench codes against: compute (no state change) then record,
dirty and autosave_path, save's refusals, and the intervention list with its actions."""

from __future__ import annotations

import threading

import mlx.core as mx
import pytest

from mlxterp import interventions as iv
from mlxterp.session import (
    INTERVENTION_KINDS,
    InputError,
    InterventionEntry,
    InterventionError,
    MlxterpError,
    Session,
    SessionError,
    intervention_from_description,
    replay,
)

PROMPT = "The capital of France is"


def test_compute_records_nothing_and_record_appends(manager, tmp_path):
    path = tmp_path / "s.toml"
    s = Session.new("demo", path, manager)
    step = s.compute(manager, "trace", text=PROMPT)
    assert step.index == -1 and step.summary["top_tokens"][0] == " Paris"
    assert s.steps == [] and not s.dirty and not path.exists()
    assert s.record(step) is step and step.index == 0 and s.steps == [step]
    assert s.dirty and [x.kind for x in Session.load(path).steps] == ["trace"]  # autosaved
    with pytest.raises(SessionError, match="already recorded"):
        s.record(step)


def test_a_computed_step_that_is_never_recorded_leaves_no_trace(manager):
    s = Session.new("demo", None, manager)
    s.compute(manager, "interventions", action="set", module="layers.2", intervention=iv.zero_out)
    assert s.steps == [] and s.interventions == {} and s.intervention_entries() == []
    assert not s.dirty


def test_dirty_is_cleared_by_save_and_load(manager, tmp_path):
    s = Session.new("demo", None, manager)
    assert not s.dirty
    s.run(manager, "trace", text=PROMPT)
    assert s.dirty
    s.save(tmp_path / "a.toml")
    assert not s.dirty and s.path == tmp_path / "a.toml"
    assert not Session.load(s.path).dirty


def test_autosave_goes_to_autosave_path_not_the_session_file(manager, tmp_path):
    shipped = tmp_path / "shipped.toml"
    s = Session.new("demo", shipped, manager)
    s.run(manager, "trace", text=PROMPT)
    before = shipped.read_bytes()
    reopened = Session.load(shipped, manager)
    assert reopened.autosave_path == shipped  # by default it follows the path
    reopened.autosave_path = tmp_path / "recovery.toml"
    reopened.run(manager, "generate", prompt=PROMPT, max_tokens=2)
    assert shipped.read_bytes() == before
    assert len(Session.load(tmp_path / "recovery.toml").steps) == 2
    assert reopened.dirty and reopened.path == shipped  # the recovery file is not its path
    reopened.autosave_path = None
    reopened.run(manager, "trace", text=PROMPT)
    assert len(Session.load(tmp_path / "recovery.toml").steps) == 2


def test_save_refuses_a_missing_folder_and_names_the_loader_refuses(manager, tmp_path):
    s = Session.new("demo", None, manager)
    s.set_intervention("layers.3", iv.add_vector(mx.ones((64,))))
    for bad, why in [
        (tmp_path / "no" / "such" / "x.toml", "does not exist"),
        (tmp_path / ".hidden.toml", "must not start with a dot"),
        (tmp_path / "back\\slash.toml", "backslash"),
        (tmp_path / "x.safetensors", "names sidecars"),
        (tmp_path / ("y" * 251 + ".toml"), "file names go up to 255"),
    ]:
        with pytest.raises(SessionError, match=why):
            s.save(bad)
        assert s.path is None and s.dirty
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_intervention_actions_and_entries(manager, tmp_path):
    s = Session.new("demo", tmp_path / "iv.toml", manager)
    s.set_intervention("layers.2", iv.scale(0.5))
    s.set_intervention("layers.4.mlp", iv.zero_out.at(-1))
    s.set_intervention("model.layers.2", iv.scale(2.0))  # another name of the same module
    entries = s.intervention_entries()
    assert entries == [
        InterventionEntry("model.layers.2", {"kind": "scale", "params": {"factor": 2.0}}),
        InterventionEntry(
            "model.layers.4.mlp", {"kind": "zero_out", "params": {}, "positions": [-1]}
        ),
    ]
    s.run(manager, "interventions", action="disable", module="layers.2")
    assert [e.enabled for e in s.intervention_entries()] == [False, True]
    assert list(s.interventions) == ["model.layers.4.mlp"]  # what traces use
    step = s.run(manager, "trace", text=PROMPT)
    assert s.steps[-2].summary["active"] == {"model.layers.4.mlp": "zero_out() at [-1]"}
    reopened = Session.load(s.path, manager)
    assert reopened.intervention_entries() == s.intervention_entries()
    assert list(reopened.interventions) == ["model.layers.4.mlp"]
    s.run(manager, "interventions", action="enable", module="model.layers.2")
    s.run(manager, "interventions", action="remove", module="layers.4.mlp")
    assert [(e.module, e.enabled) for e in s.intervention_entries()] == [("model.layers.2", True)]
    for action in ("remove", "enable", "disable"):
        with pytest.raises(SessionError, match="there is none"):
            s.run(manager, "interventions", action=action, module="layers.9")
    s.clear_interventions()
    assert s.intervention_entries() == [] and s.interventions == {}
    assert replay(s.path, manager).ok
    assert step.summary["top_tokens"]  # the trace ran under the enabled one only


def test_record_refuses_a_step_computed_before_the_interventions_changed(manager):
    s = Session.new("demo", None, manager)
    stale = s.compute(manager, "trace", text=PROMPT)
    independent = s.compute(manager, "attention", text=PROMPT, layer=1)
    s.set_intervention("layers.2", iv.zero_out)
    with pytest.raises(SessionError, match="interventions changed while this trace step ran"):
        s.record(stale)
    s.record(independent)  # attention does not run under interventions
    assert [x.kind for x in s.steps] == ["interventions", "attention"]


def test_compute_from_a_worker_thread_then_record(manager):
    s = Session.new("demo", None, manager)
    out: list = []
    worker = threading.Thread(target=lambda: out.append(s.compute(manager, "trace", text=PROMPT)))
    worker.start()
    worker.join(timeout=120)
    assert s.steps == [] and len(out) == 1
    s.record(out[0])
    assert s.steps[0].summary["top_tokens"][0] == " Paris"


def test_intervention_descriptions_and_kinds():
    fn = intervention_from_description({"kind": "scale", "params": {"factor": 0.5}})
    assert mx.array_equal(fn(mx.ones((2,))), mx.full((2,), 0.5)).item()
    for bad in [{"kind": "os.system"}, {"kind": "scale", "params": {"x": 1}}, "scale", {}]:
        with pytest.raises(InterventionError):
            intervention_from_description(bad)
    assert set(INTERVENTION_KINDS) == {
        "zero_out",
        "scale",
        "add_vector",
        "replace_with",
        "clamp",
        "noise",
        "compose",
    }
    assert INTERVENTION_KINDS["scale"].params == ("factor",)
    assert INTERVENTION_KINDS["clamp"].required == ()
    samples = {
        "factor": 2.0,
        "vector": mx.ones((4,)),
        "value": 0.0,
        "steps": [{"kind": "zero_out"}],
        "min_val": -1.0,
        "std": 0.1,
        "seed": 1,
    }
    for kind in INTERVENTION_KINDS.values():
        assert set(kind.required) <= set(kind.params) and kind.doc
        params = {p: samples[p] for p in kind.params if p in samples}
        built = intervention_from_description({"kind": kind.name, "params": params})
        assert built(mx.ones((1, 2, 4))).shape == (1, 2, 4)


def test_errors_are_reexported_for_the_workbench():
    assert issubclass(SessionError, MlxterpError) and issubclass(InputError, MlxterpError)
    assert issubclass(InterventionError, MlxterpError)
