"""SAE work as session steps: training (with progress, stoppable), the strongest features of
a prompt and a feature's dashboard; the SAE kept once in the sidecar and read back whole."""

from __future__ import annotations

import dataclasses
import itertools
import json
import struct
import tomllib

import mlx.core as mx
import pytest

from mlxterp.sae import SAEConfig, evaluate, train_sae
from mlxterp.sae.io import sae_from_description
from mlxterp.session import Session, SessionError, replay

TEXTS = [
    "The capital of France is Paris.",
    "I love this song. It is lovely.",
    "Big Ben is in London.",
    "The capital of Germany is Berlin.",
] * 12
CONFIG = {"expansion_factor": 2, "k": 4, "batch_size": 32, "epochs": 2}
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def trained(manager):
    """A session with a train_sae step recorded (what the progress listener heard too)."""
    session = Session.new("demo", None, manager)
    heard = []
    step = session.compute(
        manager, "train_sae", texts=TEXTS, layer=6, config=CONFIG, on_progress=heard.append
    )
    session.record(step)
    return session, step, heard


def test_train_sae_step_is_the_library_training(trained, demo):
    _, step, heard = trained
    sae = train_sae(demo, TEXTS, layer=6, config=SAEConfig(**CONFIG), progress=False)
    assert mx.array_equal(step.result.W_dec, sae.W_dec).item()
    assert step.summary["component"] == "model.layers.6" == step.result.component
    assert step.summary["training"]["steps"] == sae.training_stats["steps"] == len(heard)
    measured = evaluate(sae, demo, TEXTS)
    assert step.summary["measured"]["explained_variance"] == pytest.approx(
        measured["explained_variance"], abs=1e-5
    )


def test_progress_reaches_the_end_and_counts_tokens(trained):
    *_, heard = trained
    assert [p.steps for p in heard] == list(range(1, len(heard) + 1))
    assert heard[-1].fraction == 1.0 and heard[-1].epoch == 1
    assert heard[-1].tokens == trained[1].summary["training"]["tokens"]
    assert all(a.tokens < b.tokens for a, b in itertools.pairwise(heard))


def test_a_listener_stops_training_and_says_so(manager):
    session = Session.new("demo", None, manager)
    heard = []

    def listener(progress):
        heard.append(progress)
        return progress.steps < 2

    step = session.compute(
        manager, "train_sae", texts=TEXTS, layer=6, config=CONFIG, on_progress=listener
    )
    assert len(heard) == 2 and step.summary["training"]["stopped"] is True
    assert step.summary["training"]["steps"] == 2


def test_listeners_only_for_kinds_that_take_them(manager):
    session = Session.new("demo", None, manager)
    with pytest.raises(SessionError, match="only train_sae steps take on_progress"):
        session.compute(manager, "trace", text=PROMPT, on_progress=print)
    with pytest.raises(SessionError, match="only generate steps take on_token"):
        session.compute(manager, "train_sae", texts=TEXTS, layer=6, on_token=print)


def test_unknown_settings_are_refused_before_training(manager):
    session = Session.new("demo", None, manager)
    with pytest.raises(SessionError, match="SAEConfig settings"):
        session.compute(manager, "train_sae", texts=TEXTS, layer=6, config={"epoch": 2})
    with pytest.raises(SessionError, match="list of texts"):
        session.compute(manager, "train_sae", texts="one text", layer=6)


def test_a_step_records_every_setting_so_a_new_default_cannot_change_its_replay(trained, tmp_path):
    session, step, _ = trained
    every = dataclasses.asdict(SAEConfig(**CONFIG))
    assert step.params["config"] == every  # the given four and every default
    loaded = tomllib.loads(session.save(tmp_path / "settings.toml").read_text())
    assert loaded["steps"][0]["params"]["config"] == every


def test_bad_settings_are_refused_before_training(manager):
    session = Session.new("demo", None, manager)
    with pytest.raises(SessionError, match=r"step 'train_sae': config: SAEConfig\.seed"):
        session.compute(manager, "train_sae", texts=TEXTS, layer=6, config={"seed": -1})


def _tensor_names(sidecar) -> list[str]:
    raw = sidecar.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return [k for k in json.loads(raw[8 : 8 + size]) if k != "__metadata__"]


def test_browsing_steps_keep_the_sae_once_and_replay(trained, manager, tmp_path):
    session, step, _ = trained
    sae = step.result
    features = session.run(manager, "sae_features", sae=sae, text=PROMPT, k=3)
    assert len(features.summary["per_position"]) == len(features.summary["tokens"])
    feature = features.summary["pooled"][0][0]
    board = session.run(
        manager, "feature_dashboard", sae=sae, texts=TEXTS, feature=feature, text=PROMPT, k=3
    )
    assert board.summary["feature"] == feature and len(board.summary["contexts"]) <= 3
    assert board.summary["on_prompt"]["tokens"] == features.summary["tokens"]
    # the prompt's strongest feature fires on the prompt where prompt_features said
    peak = max(board.summary["on_prompt"]["values"])
    assert peak == pytest.approx(features.summary["pooled"][0][1], abs=1e-4)
    path = session.save(tmp_path / "sae.toml")
    (sidecar,) = tmp_path.glob("sae.*.safetensors")
    weights = [n for n in _tensor_names(sidecar) if "W_dec" in n]
    assert weights == ["steps.0.summary.sae.weights.W_dec"]  # three steps, one copy
    loaded = Session.load(path, manager)
    again = sae_from_description(loaded.steps[2].params["sae"])
    assert mx.array_equal(again.W_enc, sae.W_enc).item()
    report = replay(path, manager, tolerance=0.0)
    assert report.ok, report.format_text()
