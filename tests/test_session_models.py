"""Models a session can be switched to: the listing of the places users keep them, and the
switch itself under the session's fingerprint check (steps of two models never mix)."""

from __future__ import annotations

import json
import shutil

import pytest

from mlxterp.loading import DEMO_DIR
from mlxterp.model_sources import HF_CACHE_SOURCE, LMSTUDIO_SOURCE, OLLAMA_SOURCE, find
from mlxterp.session import Session, SessionError, model_choices

PROMPT = "The capital of France is"


def mlx_folder(where):
    where.mkdir(parents=True)
    (where / "config.json").write_text("{}")
    (where / "model.safetensors").write_bytes(b"")
    return where


def test_model_choices_lists_every_place_with_a_name_that_opens_it(tmp_path, home):
    here = tmp_path / "work"
    local = mlx_folder(here / "mine")
    (here / "ggufs").mkdir()
    (here / "ggufs" / "small.gguf").write_bytes(b"GGUF")
    (here / "notes").mkdir()  # neither kind of model: not listed
    hub = home / ".cache" / "huggingface" / "hub"
    snapshot = mlx_folder(hub / "models--org--tiny" / "snapshots" / "abc")
    (hub / "models--org--tiny" / "refs").mkdir()
    (hub / "models--org--tiny" / "refs" / "main").write_text("abc")
    quants = hub / "models--org--quants" / "snapshots" / "def"
    quants.mkdir(parents=True)
    for name in ("a.gguf", "b.gguf"):
        (quants / name).write_bytes(b"GGUF")
    studio = mlx_folder(home / ".lmstudio" / "models" / "pub" / "chat")
    same_name = mlx_folder(home / ".lmstudio" / "models" / "org" / "tiny")  # HF wins
    blob = home / ".ollama" / "models" / "blobs" / "sha256-00ff"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"GGUF")
    manifest = home / ".ollama/models/manifests/registry.ollama.ai/library/llm/7b"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:00ff"}
    manifest.write_text(json.dumps({"layers": [layer]}))

    found = {(m.ref, m.source): m.path for m in model_choices(here)}
    assert next(iter(found)) == ("demo", "demo")
    assert found == {
        ("demo", "demo"): DEMO_DIR,
        (str(local), "local path"): local,
        (str(here / "ggufs" / "small.gguf"), "local path"): here / "ggufs" / "small.gguf",
        ("org/tiny", HF_CACHE_SOURCE): snapshot,
        ("org/quants/a.gguf", HF_CACHE_SOURCE): quants / "a.gguf",
        ("org/quants/b.gguf", HF_CACHE_SOURCE): quants / "b.gguf",
        ("pub/chat", LMSTUDIO_SOURCE): studio,
        (str(same_name), LMSTUDIO_SOURCE): same_name,  # "org/tiny" opens the HF one
        ("llm:7b", OLLAMA_SOURCE): blob,
    }
    for (ref, _source), path in found.items():
        if ref != "demo":
            assert find(ref) is not None and find(ref)[0] == path


def demo_copy(tmp_path, name="demo-copy"):
    return str(shutil.copytree(DEMO_DIR, tmp_path / name))


def test_a_session_without_steps_takes_any_model(tmp_path, manager, model_dir):
    session = Session.new("demo", manager=manager)
    fingerprint = session.fingerprint
    session.switch_model(model_dir, manager)
    assert session.model_ref == model_dir and session.fingerprint != fingerprint
    step = session.run(manager, "logit_lens", text=PROMPT)
    assert step.parameters == session.parameters
    assert session.model_mismatch(model_dir, manager) is None  # its own model


def test_steps_go_on_with_the_same_model_found_elsewhere(tmp_path, manager):
    session = Session.new("demo", manager=manager)
    first = session.run(manager, "logit_lens", text=PROMPT)
    session.save(tmp_path / "s.toml")
    copy = demo_copy(tmp_path)
    assert session.model_mismatch(copy, manager) is None
    session.switch_model(copy, manager)
    assert session.model_ref == copy and session.dirty  # the file is to name the copy
    again = session.run(manager, "logit_lens", text=PROMPT)
    assert again.summary == first.summary
    session.save()
    assert Session.load(tmp_path / "s.toml").model_ref == copy


def test_steps_never_mix_with_another_model(tmp_path, manager, model_dir):
    session = Session.new("demo", manager=manager)
    session.run(manager, "logit_lens", text=PROMPT)
    why = session.model_mismatch(model_dir, manager)
    assert why is not None and "fingerprint differs" in why
    with pytest.raises(SessionError, match="start a new session"):
        session.switch_model(model_dir, manager)
    assert session.model_ref == "demo" and len(session.steps) == 1


def test_a_step_computed_before_the_switch_is_not_recorded(tmp_path, manager, model_dir):
    session = Session.new("demo", manager=manager)
    step = session.compute(manager, "logit_lens", text=PROMPT)
    session.switch_model(model_dir, manager)
    with pytest.raises(SessionError, match="run it again"):
        session.record(step)
    assert session.steps == []


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mlxterp.checkpoints import build_checkpoint

    return str(build_checkpoint("llama", tmp_path_factory.mktemp("switch-llama")))
