"""Session steps: each kind runs through the engine, parameters are checked, interventions
stay active between steps, and summaries compare with a tolerance."""

from __future__ import annotations

import threading
from pathlib import Path

import mlx.core as mx
import pytest

from mlxterp import NotSerializableError
from mlxterp import interventions as iv
from mlxterp.attention import attention_patterns
from mlxterp.lens import lens
from mlxterp.patching import patching_sweep
from mlxterp.session import KINDS, Session, SessionError, SessionManager
from mlxterp.session.steps import compare
from mlxterp.steering import generate, steer, steering_vector

PROMPT = "The capital of France is"


@pytest.fixture
def session(manager):
    return Session.new("demo", None, manager)


def test_manager_loads_each_model_once(manager, demo):
    assert manager.model("demo") is demo is manager.model("demo")


def test_manager_loads_once_under_concurrent_requests(demo, monkeypatch):
    import mlxterp.session.session as module

    loads = []

    def slow_load(ref, dequantize):
        loads.append(ref)
        threading.Event().wait(0.05)
        return demo

    monkeypatch.setattr(module, "InterpretableModel", slow_load)
    mgr = SessionManager()
    got = []
    threads = [threading.Thread(target=lambda: got.append(mgr.model("demo"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["demo"] and all(m is demo for m in got) and len(got) == 4


def test_missing_model_is_a_session_error():
    s = Session.new("no/such-model-here")
    with pytest.raises(SessionError, match="cannot be loaded"):
        s.run(SessionManager(), "trace", text=PROMPT)
    assert s.steps == []


def test_step_records_kind_params_summary_and_result(session, manager, demo):
    step = session.run(manager, "trace", text=PROMPT, top_k=3)
    assert (step.index, step.kind, step.params) == (0, "trace", {"text": PROMPT, "top_k": 3})
    assert step.created.endswith("+00:00") and session.steps == [step]
    last = step.result.last_token(step.result.output)[0]
    expected = mx.argsort(-last)[:3].tolist()
    assert step.summary["top_ids"] == expected
    assert step.summary["top_tokens"] == [demo.token_to_str(i) for i in expected]
    assert step.summary["top_tokens"][0] == " Paris" and len(step.summary["layer_norms"]) == 16


def test_logit_lens_summary_is_the_engines(session, manager, demo):
    step = session.run(manager, "logit_lens", text=PROMPT, target=" Paris", layers=[0, 8, 15])
    direct = lens(demo, PROMPT, layers=[0, 8, 15], top_k=3, target=" Paris")
    assert step.summary["layers"] == [0, 8, 15]
    assert step.summary["top_strs"] == [[cell[0] for cell in row] for row in direct.top_strs]
    assert not compare(step.summary["target_probs"], direct.target_probs, 1e-6).differences
    assert step.summary["target_probs"][-1] > 0.5 > step.summary["target_probs"][0]


def test_patching_summary_is_the_engines(session, manager, demo):
    args = dict(
        clean=PROMPT,
        corrupted="The capital of Germany is",
        component="mlp",
        metric="logit_diff",
        answer=[" Paris", " Berlin"],
        layers=[0, 7, 15],
    )
    step = session.run(manager, "activation_patching", **args)
    direct = patching_sweep(
        demo,
        PROMPT,
        args["corrupted"],
        component="mlp",
        layers=[0, 7, 15],
        metric="logit_diff",
        answer=(" Paris", " Berlin"),
    )
    assert step.summary["layers"] == [0, 7, 15]
    assert not compare(
        step.summary["recovery"], [direct.recovery[x] for x in (0, 7, 15)], 1e-3
    ).differences


def test_generate_summary_is_the_engines(session, manager, demo):
    step = session.run(
        manager, "generate", prompt="river king apple garden letter river king", max_tokens=3
    )
    assert (
        step.summary["text"]
        == generate(demo, "river king apple garden letter river king", max_tokens=3)
        == " apple garden"
    )
    assert demo.decode(step.summary["token_ids"]).strip() == "apple garden"


def test_a_generate_step_streams_its_tokens(session, manager):
    heard: list[int] = []
    prompt = "river king apple garden letter river king"
    step = session.compute(manager, "generate", prompt=prompt, max_tokens=3, on_token=heard.append)
    assert heard == step.summary["token_ids"] and "on_token" not in step.params
    with pytest.raises(SessionError, match="only generate steps take on_token"):
        session.compute(manager, "trace", text=prompt, on_token=heard.append)


def test_attention_summary_is_the_engines(session, manager, demo):
    text = "river king apple garden letter river king apple garden"
    step = session.run(manager, "attention", text=text, layer=5)
    weights = attention_patterns(demo, text, layers=[5])[5][0]
    assert step.summary["last_query_argmax"] == mx.argmax(weights[:, -1], axis=-1).tolist()
    assert len(step.summary["last_query_max"]) == weights.shape[0]


def test_steering_keeps_its_vector(session, manager, demo):
    args = dict(positive="I love this movie. It is", negative="I hate this movie. It is", layer=11)
    step = session.run(
        manager, "steering", prompt="I hate this song. It is", coefficient=2.0, max_tokens=4, **args
    )
    vector = steering_vector(demo, args["positive"], args["negative"], 11)
    assert mx.allclose(step.summary["vector"], vector, atol=1e-5).item()
    assert (step.summary["baseline"], step.summary["steered"]) == steer(
        demo, "I hate this song. It is", vector, 11, coefficient=2.0, max_tokens=4
    )
    assert step.summary["baseline"] != step.summary["steered"]


def test_active_interventions_shape_trace_lens_and_generate(session, manager):
    runs = {
        "trace": dict(text=PROMPT),
        "logit_lens": dict(text=PROMPT, layers=[15]),
        "generate": dict(prompt=PROMPT, max_tokens=2),
    }
    before = {k: session.run(manager, k, **p).summary for k, p in runs.items()}
    session.set_intervention("layers.2", iv.scale(0.0))
    assert list(session.interventions) == ["model.layers.2"]
    during = {k: session.run(manager, k, **p).summary for k, p in runs.items()}
    session.remove_intervention("layers.2")
    after = {k: session.run(manager, k, **p).summary for k, p in runs.items()}
    assert session.interventions == {}
    for k in runs:
        assert during[k] != before[k], k
        assert after[k] == before[k], k


def test_interventions_do_not_touch_steps_that_do_not_use_them(session, manager):
    args = dict(text="river king apple garden river king apple", layer=3)
    before = session.run(manager, "attention", **args).summary
    session.set_intervention("layers.1", iv.scale(0.0))
    assert session.run(manager, "attention", **args).summary == before


def test_interventions_steps_record_the_canonical_module(session, manager):
    step = session.set_intervention("layers.3.mlp", iv.clamp(-1.0, 1.0).at(-1))
    assert step.params["module"] == "model.layers.3.mlp"  # params: the one source of truth
    assert step.summary == {
        "module": "model.layers.3.mlp",
        "active": {"model.layers.3.mlp": "clamp(min_val=-1.0, max_val=1.0) at [-1]"},
    }
    assert step.params["intervention"] == {
        "kind": "clamp",
        "positions": [-1],
        "params": {"min_val": -1.0, "max_val": 1.0},
    }
    session.clear_interventions()
    assert session.interventions == {} and session.steps[-1].summary == {"active": {}}


def test_unknown_module_is_refused_and_nothing_recorded(session, manager):
    with pytest.raises(KeyError, match=r"layers\.99"):
        session.set_intervention("layers.99.mlp", iv.scale(2.0))
    assert session.steps == [] and session.interventions == {}


def test_custom_callable_is_refused_with_the_step(session, manager):
    session.run(manager, "trace", text=PROMPT)
    with pytest.raises(NotSerializableError, match="step 1") as info:
        session.set_intervention("layers.1", lambda x: x * 2)
    assert "custom callable" in str(info.value)
    assert len(session.steps) == 1 and session.interventions == {}


def test_loaded_session_goes_on_under_its_active_interventions(manager, tmp_path):
    path = tmp_path / "go-on.toml"
    s = Session.new("demo", path, manager)
    s.set_intervention("layers.2", iv.add_vector(mx.ones((64,)) * 0.5))
    s.set_intervention("layers.5.mlp", iv.scale(0.0))
    s.remove_intervention("layers.5.mlp")
    live = s.run(manager, "trace", text=PROMPT).summary
    again = Session.load(path, manager)
    assert list(again.interventions) == ["model.layers.2"]
    assert again.run(manager, "trace", text=PROMPT).summary == live


@pytest.mark.parametrize(
    "kind, params, message",
    [
        ("trace", {"text": 5}, "text must be a prompt"),
        ("trace", {"text": PROMPT, "top_k": "x"}, "top_k must be an integer from 1 to 1024"),
        ("trace", {"text": PROMPT, "top_k": -2}, "top_k must be an integer"),
        ("trace", {"text": PROMPT, "top_k": True}, "top_k must be an integer"),
        ("trace", {"text": PROMPT, "temperature": 1.0}, "takes no parameter 'temperature'"),
        ("logit_lens", {"text": PROMPT, "layers": [0, "1"]}, "layers must be a list"),
        (
            "activation_patching",
            {"clean": PROMPT, "corrupted": PROMPT, "answer": [" Paris"]},
            "answer must be a pair",
        ),
        ("attention", {"text": PROMPT, "layer": 99}, "layer 99 is out of range"),
        (
            "steering",
            {"positive": "a", "negative": "b", "layer": 16, "prompt": "x"},
            "layer 16 is out of range",
        ),
        (
            "steering",
            {"positive": [], "negative": "b", "layer": 1, "prompt": "x"},
            "positive must be a string or a chat, or a list of them",
        ),
        (
            "generate",
            {"prompt": PROMPT, "max_tokens": 5000},
            "max_tokens must be an integer from 1 to 1024",
        ),
        ("interventions", {"action": "exec"}, "action must be one of"),
        ("interventions", {"action": "set", "module": "layers.1"}, "needs intervention="),
        ("interventions", {"action": "remove"}, "needs module="),
        ("generate", {}, "needs 'prompt'"),
        ("eval", {}, "unknown step kind 'eval'; the .* kinds are mlxterp.session.KINDS"),
        ("path_pathing", {}, "did you mean 'path_patching'"),
    ],
)
def test_bad_params_are_refused_before_running(session, manager, kind, params, message):
    with pytest.raises(SessionError, match=message):
        session.run(manager, kind, **params)
    assert session.steps == []


def test_every_kind_is_documented():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "sessions.md").read_text()
    for name, step_kind in KINDS.items():
        assert f"| `{name}` |" in doc and step_kind.doc
        for param in step_kind.params:
            assert f"`{param}`" in doc, (name, param)


@pytest.mark.parametrize(
    "recorded, replayed, tolerance, ok",
    [
        (0.5, 0.5004, 1e-3, True),
        (0.5, 0.502, 1e-3, False),
        (1000.0, 1000.5, 1e-3, True),  # relative for large values
        (3, 4, 10.0, False),  # ids compare exactly
        (" Paris", " paris", 1.0, False),
        (float("nan"), 0.5, 1.0, False),
        (0.5, float("nan"), 1.0, False),
        ([1.0, 2.0], [1.0], 1.0, False),
        ({"a": 1}, {"a": 1, "b": 2}, 1.0, False),
        (True, 1, 1.0, False),
        (mx.array([1.0, 2.0]), mx.array([1.0, 2.0005]), 1e-3, True),
        (mx.array([1.0, 2.0]), mx.array([1.0, float("nan")]), 1e-3, False),
        (mx.array([1.0, 2.0]), mx.array([[1.0, 2.0]]), 1e-3, False),
    ],
)
def test_compare(recorded, replayed, tolerance, ok):
    assert (not compare(recorded, replayed, tolerance).differences) is ok


def test_compare_reports_where_and_the_largest_gap():
    result = compare({"a": [0.1, 0.2], "b": "x"}, {"a": [0.1, 0.25], "b": "y"}, 1e-3)
    assert [d.path for d in result.differences] == ["a[1]", "b"]
    assert result.max_diff == pytest.approx(0.05)
