"""Editing one SAE feature in a forward pass (ablate, scale, clamp, steer), as a library
function and as a session step that saves and replays with the SAE inside the file."""

from __future__ import annotations

import tomllib

import mlx.core as mx
import pytest

from mlxterp import InputError
from mlxterp.sae import SAE, SAEConfig, feature_edit, feature_intervention, run_feature_edit
from mlxterp.sae.io import describe_sae, sae_from_description
from mlxterp.session import Session, replay

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def sae():
    """An untrained ReLU SAE on layer 4 of the demo model, with a bias that makes about
    half of its features fire, and a scale."""
    sae = SAE(64, SAEConfig(kind="relu", expansion_factor=2), "model.layers.4", 4, "demo")
    sae.b_enc = mx.random.normal((sae.d_sae,), key=mx.random.key(3))
    sae.scale = 0.5
    return sae


def layer4(demo, interventions=None):
    trace = demo.run(PROMPT, capture=["layers.4"], interventions=interventions)
    return trace.activations["layers.4"][0], trace.output[0, -1]


def firing(sae, demo):
    """A feature that fires on the last token, and one that fires on no token."""
    feats = sae.encode(layer4(demo)[0])
    live = int(mx.argmax(feats[-1]).item())
    dead = int(mx.argmin(mx.max(feats, axis=0)).item())
    assert feats[-1, live].item() > 0 and mx.max(feats[:, dead]).item() == 0
    return live, dead


def test_each_mode_moves_the_activation_along_the_decoder_direction_only(sae, demo):
    x, _ = layer4(demo)
    live, _ = firing(sae, demo)
    a = sae.encode(x)[:, live : live + 1]
    d = sae.W_dec[live] / sae.scale
    expected = {
        ("ablate", 0.0): x - a * d,
        ("scale", 0.0): x - a * d,
        ("scale", 2.5): x + 1.5 * a * d,
        ("scale", 1.0): x,
        ("clamp", 7.0): x + (7.0 - a) * d,
        ("steer", 4.0): x + 4.0 * d,
        ("steer", 0.0): x,
    }
    for (mode, value), want in expected.items():
        got = feature_edit(sae, live, mode, value)(x)
        assert mx.allclose(got, want, atol=1e-4).item(), mode
    assert mx.allclose(feature_intervention(sae, live, 0.0)(x), x - a * d, atol=1e-4).item()


def test_an_edit_at_positions_leaves_the_other_tokens(sae, demo):
    live, _ = firing(sae, demo)
    base, _ = layer4(demo)
    edited, _ = layer4(demo, {"layers.4": feature_edit(sae, live, "steer", 5.0, positions=-1)})
    assert mx.array_equal(edited[:-1], base[:-1]).item()
    assert not mx.allclose(edited[-1], base[-1]).item()


def test_run_feature_edit_reports_both_runs(sae, demo):
    live, dead = firing(sae, demo)
    x, logits = layer4(demo)
    n = x.shape[0]
    # a feature that never fires: ablating it changes nothing, exactly
    same = run_feature_edit(demo, PROMPT, sae, dead, "ablate", max_tokens=3)
    assert same.kl == 0.0 and same.edited_top == same.baseline_top
    assert same.edited_ids == same.baseline_ids and len(same.baseline_ids) == 3
    assert same.activation == same.edited_activation == [0.0] * n
    probs = mx.softmax(logits.astype(mx.float32))
    assert same.baseline_top[0] == (
        demo.token_to_str(int(mx.argmax(probs).item())),
        pytest.approx(mx.max(probs).item(), rel=1e-5),
    )
    assert same.baseline_text == demo.tokenizer.decode(same.baseline_ids)
    # steering hard along a feature at the last token moves the prediction
    steered = run_feature_edit(demo, PROMPT, sae, live, "steer", 60.0, positions=[-1], top_k=3)
    assert steered.positions == [n - 1] and len(steered.edited_top) == 3
    assert steered.kl > 0.01 and steered.edited_top != steered.baseline_top
    assert steered.activation == pytest.approx(sae.encode(x)[:, live].tolist(), rel=1e-5, abs=1e-6)
    assert steered.edited_activation[:-1] == pytest.approx(steered.activation[:-1], abs=1e-5)
    assert steered.edited_activation[-1] > steered.activation[-1]
    summary = steered.to_summary()
    assert summary["edited_tokens"] == [t for t, _ in steered.edited_top]
    assert summary["kl"] == steered.kl and summary["feature"] == live


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "double"}, "mode must be one of"),
        ({"feature": 128}, "feature must be an int"),
        ({"positions": [9]}, "outside the prompt's 6 tokens"),
        ({"max_tokens": 0}, "max_tokens must be a positive int"),
        ({"value": float("nan")}, "value must be"),
    ],
)
def test_bad_edits_are_refused(sae, demo, kwargs, message):
    args = {"feature": 1, **kwargs}
    with pytest.raises(InputError, match=message):
        run_feature_edit(demo, PROMPT, sae, **args)


def test_the_description_round_trips_and_bad_tables_are_refused(sae):
    again = sae_from_description(describe_sae(sae))
    x = mx.random.normal((3, 64), key=mx.random.key(0))
    assert mx.array_equal(again.encode(x), sae.encode(x)).item()
    assert (again.component, again.layer, again.scale) == (sae.component, 4, 0.5)
    with pytest.raises(InputError, match="weights table"):
        sae_from_description({"d_model": 64})
    table = describe_sae(sae)
    table["weights"] = {**table["weights"], "W_enc": mx.zeros((3, 3))}
    with pytest.raises(InputError, match="W_enc is missing or not shaped"):
        sae_from_description(table)


def test_a_feature_edit_step_saves_its_sae_and_replays_from_the_file_alone(
    sae, demo, manager, tmp_path
):
    live, _ = firing(sae, demo)
    path = tmp_path / "edit.toml"
    session = Session.new("demo", path, manager)
    step = session.run(
        manager, "feature_edit", text=PROMPT, sae=sae, feature=live, mode="clamp", value=9.0
    )
    assert step.summary["kl"] > 0 and step.params["sae"]["component"] == "model.layers.4"
    with open(path, "rb") as handle:
        saved = tomllib.load(handle)["steps"][0]["params"]["sae"]
    assert saved["weights"]["W_enc"] == {"array": "steps.0.params.sae.weights.W_enc"}
    assert saved["scale"] == 0.5 and saved["config"]["kind"] == "relu"
    report = replay(path, manager, tolerance=0.0)
    assert report.ok, report.format_text()
    loaded = Session.load(path, manager).steps[0]
    assert mx.array_equal(loaded.params["sae"]["weights"]["W_dec"], sae.W_dec).item()
