"""The tuned lens on the demo model: identity translators are the logit lens exactly, a short
training run beats the logit lens on held-out text at every layer but the last, files round
trip and are refused on another model or when damaged.

Training text is the demo model's own training distribution: the corpus generator of
``scripts/train_demo_model.py`` (template English, capitals, landmarks, repeated word runs),
with one seed for training and another for held-out lines (any line also in the training
set dropped)."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import InputError, InterpretableModel, lens
from mlxterp.tuned_lens import (
    LensKL,
    TunedLens,
    lens_kl,
    load_tuned_lens,
    model_fingerprint,
    train_tuned_lens,
    tuned_lens,
)

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"


def demo_corpus(n: int, seed: int) -> list[str]:
    spec = importlib.util.spec_from_file_location(
        "train_demo", ROOT / "scripts/train_demo_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines: list[str] = module.corpus(n, seed)
    return lines


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[str]]:
    train = demo_corpus(300, 11)
    seen = set(train)
    held_out = [line for line in demo_corpus(80, 12) if line not in seen]
    return train, held_out


@pytest.fixture(scope="module")
def trained(demo, texts) -> TunedLens:
    """20 Adam steps of 8 windows of 64 tokens (about 10 s on 2 cores)."""
    return train_tuned_lens(demo, texts[0], steps=20, batch_size=8, max_length=64, seed=0)


def _same_lens(a, b) -> None:
    assert a.to_summary() == b.to_summary()
    assert a.top_ids == b.top_ids and a.top_probs == b.top_probs


def test_identity_lens_is_the_logit_lens_exactly(demo):
    identity = TunedLens.identity(demo)
    hidden = mx.random.normal((3, 5, 64))
    assert mx.array_equal(identity.translate([0, 7, 15], hidden), hidden)
    plain = lens.lens(demo, PROMPT, target=" Paris")
    read = tuned_lens(demo, PROMPT, identity, target=" Paris")
    _same_lens(read, plain)
    assert read.target_probs == plain.target_probs
    kl = lens_kl(demo, [PROMPT, "Big Ben is in"], identity)
    assert kl.tuned_kl == kl.logit_kl


def test_tuned_lens_beats_the_logit_lens_on_held_out_text(demo, trained, texts):
    train, held_out = texts
    assert len(held_out) >= 20 and not set(held_out) & set(train)
    result = lens_kl(demo, held_out, trained, batch_size=16)
    assert result.tokens > 400 and result.layers == list(range(16))
    assert result.tuned_kl is not None
    pairs = zip(result.logit_kl, result.tuned_kl, strict=True)
    for layer, (logit, tuned) in enumerate(list(pairs)[:-1]):
        assert tuned < logit, (layer, logit, tuned)
    assert result.logit_kl[-1] == 0.0 == result.tuned_kl[-1]  # the model's own prediction
    assert trained.training["steps"] == 20 and trained.training["tokens"] == 20 * 8 * 64


def test_reading_matches_the_lens_api(demo, trained):
    one = demo.tuned_lens(PROMPT, lens=trained, top_k=3, layers=[2, 9, 15], target=" Paris")
    assert one.layers == [2, 9, 15] and len(one.top_ids[0][0]) == 3
    assert one.title == "Tuned lens" and "Tuned lens" in one.heatmap(color=False)
    final = lens.lens(demo, PROMPT, layers=[15], top_k=3, target=" Paris")
    assert one.top_ids[-1] == final.top_ids[0]  # the last layer reads through the identity
    batch = tuned_lens(demo, [PROMPT, "Big Ben is in"], trained, top_k=3, layers=[2, 9, 15])
    alone = tuned_lens(demo, "Big Ben is in", trained, top_k=3, layers=[2, 9, 15])
    assert batch[1].top_ids == alone.top_ids
    np.testing.assert_allclose(batch[1].top_probs, alone.top_probs, atol=1e-5)


def test_save_load_round_trip(demo, trained, tmp_path):
    path = trained.save(tmp_path / "demo.toml")
    loaded = load_tuned_lens(path, demo)
    assert mx.array_equal(loaded.weight, trained.weight)
    assert mx.array_equal(loaded.bias, trained.bias)
    assert loaded.training == trained.training and loaded.digest == trained.digest
    _same_lens(demo.tuned_lens(PROMPT, lens=str(path)), tuned_lens(demo, PROMPT, trained))
    document = tomllib.loads(path.read_text())
    assert document["model"] == {
        "name": "demo",
        "fingerprint": model_fingerprint(demo),
        "num_layers": 16,
        "hidden_size": 64,
    }
    # saving another lens over it replaces the pair and removes the old sidecar
    TunedLens.identity(demo).save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, f"demo.{TunedLens.identity(demo).digest}.safetensors"]
    )
    assert mx.array_equal(load_tuned_lens(path).weight, TunedLens.identity(demo).weight)


@pytest.mark.parametrize("failing", ["mlx.core.save_safetensors", "tomli_w.dumps"])
def test_a_failed_save_leaves_the_existing_file_whole(
    demo, trained, tmp_path, monkeypatch, failing
):
    path = trained.save(tmp_path / "demo.toml")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(failing, lambda *_: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        TunedLens.identity(demo).save(path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_tuned_lens(path, demo).digest == trained.digest


def test_another_model_is_refused(demo, trained, tiny_llama, tmp_path):
    path = trained.save(tmp_path / "demo.toml")
    with pytest.raises(InputError, match="16 layers x 64 hidden"):
        load_tuned_lens(path, tiny_llama)
    other = InterpretableModel("demo")  # same shape, one weight changed
    layer = other.model.model.layers[3].mlp.down_proj
    layer.weight = layer.weight * 1.01
    with pytest.raises(InputError, match="trained on another model"):
        load_tuned_lens(path, other)
    with pytest.raises(InputError, match="trained on another model"):
        tuned_lens(other, PROMPT, trained)
    with pytest.raises(InputError, match="trained on another model"):
        lens_kl(other, [PROMPT], str(path))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda toml, side: toml.write_text(toml.read_text()[:40]), "not a readable"),
        (lambda toml, side: toml.write_text("x = 1\n"), "not a tuned lens file"),
        (
            lambda toml, side: toml.write_text(
                toml.read_text().replace("format = 1", "format = 9")
            ),
            "format 9",
        ),
        (
            lambda toml, side: toml.write_text(toml.read_text().split("[model]")[0]),
            "no \\[model\\]",
        ),
        (lambda toml, side: side.unlink(), "cannot be read"),
        (lambda toml, side: side.write_bytes(side.read_bytes()[:100]), "cannot be read"),
        (lambda toml, side: _flip_last_byte(side), "do not match the digest"),
    ],
    ids=[
        "truncated",
        "foreign",
        "format",
        "no model",
        "no weights",
        "cut weights",
        "edited weights",
    ],
)
def test_damaged_files_are_refused(demo, tmp_path, damage, message):
    lens_ = TunedLens.identity(demo)
    path = lens_.save(tmp_path / "lens.toml")
    damage(path, tmp_path / f"lens.{lens_.digest}.safetensors")
    with pytest.raises(InputError, match=message):
        load_tuned_lens(path)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_training_is_seeded_and_streams_any_token_form(demo, texts):
    lines = texts[0][:60]
    run = dict(steps=3, batch_size=2, max_length=16)
    first = train_tuned_lens(demo, lines, seed=5, **run)
    again = train_tuned_lens(demo, lines, seed=5, **run)
    assert mx.array_equal(first.weight, again.weight) and first.digest == again.digest
    assert first.digest != train_tuned_lens(demo, lines, seed=6, **run).digest
    ids = [demo.encode(line) for line in lines]
    assert train_tuned_lens(demo, ids, seed=5, **run).digest == first.digest
    as_arrays = [mx.array(row) for row in ids]
    assert train_tuned_lens(demo, as_arrays, seed=5, **run).digest == first.digest
    # a one-shot iterator ends training when it runs out
    short = train_tuned_lens(demo, iter(lines[:6]), steps=50, batch_size=1, max_length=16)
    assert 0 < short.training["steps"] < 50


def test_bad_arguments_are_refused(demo, tmp_path):
    lines = ["The capital of France is Paris."] * 4
    for kwargs, message in [
        ({"steps": 0}, "steps must be a positive int"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"max_length": 4096}, "takes at most 256 tokens"),
    ]:
        with pytest.raises(InputError, match=message):
            train_tuned_lens(demo, lines, **kwargs)
    with pytest.raises(InputError, match="not enough text"):
        train_tuned_lens(demo, iter(lines), max_length=200)
    with pytest.raises(InputError, match="training text must be"):
        train_tuned_lens(demo, [3.5], steps=1)
    with pytest.raises(InputError, match=r"\.toml"):
        TunedLens.identity(demo).save(tmp_path / "lens.bin")
    with pytest.raises(InputError, match="lens must be a TunedLens"):
        tuned_lens(demo, PROMPT, 42)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="empty"):
        lens_kl(demo, [])


def test_lens_kl_result_renders(demo, trained):
    result = lens_kl(demo, [PROMPT, "Big Ben is in"], trained, layers=[0, 8, 15])
    assert isinstance(result, LensKL) and result.layers == [0, 8, 15]
    tokens = len(demo.encode(PROMPT)) + len(demo.encode("Big Ben is in"))
    assert result.to_summary()["tokens"] == result.tokens == tokens
    table = result.table()
    assert "logit lens" in table and len(table.splitlines()) == 4
    chart = result.chart(color=False)
    assert "layer" in chart and "KL (nats)" in chart and "tuned lens" in chart
    plain = lens_kl(demo, PROMPT)
    assert plain.tuned_kl is None and "tuned_kl" not in plain.to_summary()


def test_a_session_step_replays_and_notices_other_weights(demo, trained, manager, tmp_path):
    from mlxterp.session import Session, replay

    lens_path = str(trained.save(tmp_path / "demo.toml"))
    session = Session.new("demo", tmp_path / "s.toml", manager)
    step = session.run(manager, "tuned_lens", text=PROMPT, lens=lens_path, target=" Paris")
    assert step.summary["lens_digest"] == trained.digest
    assert step.summary["top_ids"] == tuned_lens(demo, PROMPT, trained).to_summary()["top_ids"]
    assert replay(tmp_path / "s.toml", manager, tolerance=0.0).ok
    TunedLens.identity(demo).save(lens_path)  # other weights at the same path
    report = replay(tmp_path / "s.toml", manager, tolerance=0.0)
    assert not report.ok and "lens_digest" in report.format_text()
