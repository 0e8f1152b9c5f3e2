"""Hostile and odd inputs: model folders that carry code or lie about their size, huge or
malformed prompts, out-of-range numbers.  Each is refused with one clear line (an
``MlxterpError`` naming the argument and what it accepts) before anything runs or is
allocated; nothing from a model folder is ever executed and nothing waits on stdin."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxterp import (
    InputError,
    InterpretableModel,
    InterventionError,
    MlxterpError,
    ModelLoadError,
)
from mlxterp import interventions as iv
from mlxterp.lens import lens
from mlxterp.steering import steer

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def _python(code: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the repository, ``stdin`` piped in."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def _cli(argv: list[str]) -> str:
    return f"import sys; from mlxterp_tui.cli import main; sys.exit(main({argv!r}))"


# --------------------------------------------------------------------------- foreign code
EVIL_CODE = """\
import pathlib
pathlib.Path({marker!r}).write_text("this code ran")
from transformers import PreTrainedTokenizerFast, LlamaConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
class EvilConfig(LlamaConfig):
    pass
"""


def _hostile_folder(tmp_path: Path, source: str, file: str, extra: dict[str, object]) -> Path:
    """A real tiny checkpoint whose ``file`` gains ``extra``, plus a .py that leaves a marker."""
    folder = tmp_path / "hostile"
    shutil.copytree(source, folder)
    data = json.loads((folder / file).read_text())
    data.update(extra)
    (folder / file).write_text(json.dumps(data))
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(tmp_path / "MARKER")))
    return folder


HOSTILE = {
    # transformers asks "run the custom code? [y/N]" for this one (no built-in class named)
    "tokenizer auto_map": (
        "tokenizer_config.json",
        {"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}, "tokenizer_class": "Evil"},
    ),
    "config auto_map": ("config.json", {"auto_map": {"AutoConfig": "evil.EvilConfig"}}),
    "mlx-lm model_file": ("config.json", {"model_file": "evil.py"}),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_folder_that_asks_to_run_code_is_refused_and_nothing_runs(case, tmp_path, checkpoint_dir):
    file, extra = HOSTILE[case]
    folder = _hostile_folder(tmp_path, checkpoint_dir("llama"), file, extra)
    # Someone at the terminal would answer "y": the pipe does, and must never be asked.
    run = _python(f"import mlxterp; mlxterp.InterpretableModel({str(folder)!r})", "y\n" * 5)
    assert not (tmp_path / "MARKER").exists(), "code from the model folder ran"
    assert run.returncode != 0
    assert "ModelLoadError" in run.stderr and "is refused" in run.stderr
    assert next(iter(extra)) in run.stderr  # names the key that asks for code
    assert "[y/N]" not in run.stdout + run.stderr


def test_transformers_is_told_never_to_trust_folder_code(tmp_path, checkpoint_dir):
    """Even past mlxterp's own check, the tokenizer is loaded with trust_remote_code=False."""
    file, extra = HOSTILE["tokenizer auto_map"]
    folder = _hostile_folder(tmp_path, checkpoint_dir("llama"), file, extra)
    code = f"""
        import mlxterp.loading as loading
        loading.check_folder = lambda folder: None  # skip the refusal: only transformers is left
        try:
            loading.load({str(folder)!r})
        except Exception as err:
            print(type(err).__name__)
        """
    run = _python(code, "y\n" * 5)
    assert not (tmp_path / "MARKER").exists(), "code from the model folder ran"
    assert "[y/N]" not in run.stdout + run.stderr
    assert "ModelLoadError" in run.stdout


def test_the_cli_refuses_a_code_carrying_folder(tmp_path, checkpoint_dir):
    file, extra = HOSTILE["tokenizer auto_map"]
    folder = _hostile_folder(tmp_path, checkpoint_dir("llama"), file, extra)
    run = _python(_cli(["--model", str(folder)]), "y\n" * 5)
    assert run.returncode == 2
    assert not (tmp_path / "MARKER").exists()
    assert "auto_map" in run.stderr and "Traceback" not in run.stderr


# --------------------------------------------------------------------------- paths
@pytest.mark.parametrize("name", ["/nonexistent", "/no/such/model", "./no-such-model", "~/no-x"])
def test_a_missing_folder_says_it_does_not_exist(name):
    with pytest.raises(ModelLoadError) as err:
        InterpretableModel(name)
    text = _one_line(err)
    assert "does not exist" in text and "hub" not in text


def test_a_name_under_an_existing_folder_is_a_path(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        InterpretableModel("models/llama-tiny")


def test_the_cli_says_a_missing_model_folder_does_not_exist():
    run = _python(_cli(["--model", "/nonexistent"]))
    assert run.returncode == 2
    assert "does not exist" in run.stderr and "hub" not in run.stderr
    assert "Traceback" not in run.stderr


# --------------------------------------------------------------------------- sizes
def _edited_copy(tmp_path: Path, source: str, **config: object) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(source, folder)
    data = json.loads((folder / "config.json").read_text())
    data.update(config)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def test_a_config_claiming_a_billion_layers_is_refused_before_building(tmp_path, checkpoint_dir):
    folder = _edited_copy(tmp_path, checkpoint_dir("llama"), num_hidden_layers=10**9)
    # In a child process with a time limit: building such a model grew without bound.
    code = f"""
        import resource, mlxterp
        try:
            mlxterp.InterpretableModel({str(folder)!r})
        except mlxterp.ModelLoadError as err:
            print("refused:", err)
        print("peak MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
        """
    run = _python(code, timeout=90)
    assert "refused:" in run.stdout and "num_hidden_layers=1000000000" in run.stdout
    assert "layers 0..1" in run.stdout
    peak = int(run.stdout.split("peak MB")[1])
    assert peak < 2048


@pytest.mark.parametrize(
    "key, value", [("hidden_size", 10**6), ("intermediate_size", 10**9), ("vocab_size", 10**9)]
)
def test_a_config_whose_sizes_the_weights_cannot_hold_is_refused(
    key, value, tmp_path, checkpoint_dir
):
    folder = _edited_copy(tmp_path, checkpoint_dir("llama"), **{key: value})
    with pytest.raises(ModelLoadError) as err:
        InterpretableModel(str(folder))
    text = _one_line(err)
    assert f"{key}={value}" in text and "does not describe these weights" in text


def test_a_safetensors_header_claiming_a_huge_length_is_refused(tmp_path, checkpoint_dir):
    folder = _edited_copy(tmp_path, checkpoint_dir("llama"))
    (folder / "model.safetensors").write_bytes((2**60).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        InterpretableModel(str(folder))


def test_a_thirty_million_character_prompt_is_refused_before_tokenizing():
    code = """
        import resource, time, mlxterp
        model = mlxterp.InterpretableModel("demo")
        start = time.monotonic()
        try:
            model.trace("a" * 30_000_000)
        except mlxterp.InputError as err:
            print("refused:", err)
        print("seconds", time.monotonic() - start)
        print("peak MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
        """
    run = _python(code, timeout=60)
    assert "refused:" in run.stdout and "30000000 characters" in run.stdout
    assert float(run.stdout.split("seconds")[1].split()[0]) < 10
    assert int(run.stdout.split("peak MB")[1]) < 2048


def test_the_character_bound_never_refuses_a_prompt_that_fits(demo):
    """A prompt of the longest token, as often as the context holds, runs."""
    longest = max((demo.token_to_str(i) for i in range(demo.vocab_size or 0)), key=len)
    limit = demo.max_length or 0
    text = longest * (limit - 1)  # one place left for BOS
    assert len(demo.encode(text)) <= limit
    with demo.trace(text) as trace:
        pass
    assert trace.lengths == [len(demo.encode(text))]


# --------------------------------------------------------------------------- arguments
def test_capture_must_be_names(demo):
    with pytest.raises(InputError) as err:
        demo.trace(PROMPT, capture=5)
    assert "capture" in _one_line(err)


def test_interventions_must_be_a_dict(demo):
    with pytest.raises(InterventionError) as err:
        demo.trace(PROMPT, interventions=[iv.zero_out])
    assert "dict" in _one_line(err) and "list" in str(err.value)
    with pytest.raises(InterventionError, match="dict"):
        demo.generate(PROMPT, max_tokens=1, interventions=[iv.zero_out])


@pytest.mark.parametrize("positions", ["x", 1.7, [0, "1"], True])
def test_positions_must_be_token_indices(positions):
    with pytest.raises(InterventionError) as err:
        iv.zero_out.at(positions)
    assert "positions must be a token index" in _one_line(err)


@pytest.mark.parametrize("token", [-1, 2**40])
def test_token_ids_out_of_range_are_refused(demo, token):
    for call in (demo.token_to_str, demo.token_id, lambda t: demo.decode([t])):
        with pytest.raises(InputError) as err:
            call(token)
        assert "0.." in _one_line(err)
    with pytest.raises(InputError, match="vocabulary"):
        demo.trace([1, token])


@pytest.mark.parametrize("text", ["\ud800", "ok \udfff then"])
def test_a_lone_surrogate_is_refused(demo, text):
    for call in (demo.trace, demo.encode):
        with pytest.raises(InputError) as err:
            call(text)
        assert "surrogate" in _one_line(err)


def test_encode_does_what_the_tokenizer_does_and_only_an_empty_trace_is_refused(demo):
    assert demo.encode(" ") == list(demo.tokenizer.encode(" "))
    assert demo.encode("") == list(demo.tokenizer.encode(""))
    with demo.trace(" ") as trace:
        pass
    assert trace.inputs == [demo.encode(" ")]
    with pytest.raises(InputError, match="empty"):
        demo.trace("")


BIG = 10**30


@pytest.mark.parametrize(
    "fn", [iv.scale(BIG), iv.clamp(min_val=-BIG), iv.replace_with(BIG), iv.scale(-BIG)]
)
def test_big_integers_are_numbers_not_internal_errors(demo, fn):
    """10**30 is a float32 number: it runs (or is refused as non-finite), never bad_cast."""
    try:
        with demo.trace(PROMPT, interventions={"layers.0.mlp": fn}):
            pass
    except InterventionError as err:
        assert "NaN or inf" in str(err)


@pytest.mark.parametrize(
    "make",
    [
        lambda v: iv.scale(v),
        lambda v: iv.clamp(max_val=v),
        lambda v: iv.clamp(min_val=v),
        lambda v: iv.replace_with(v),
        lambda v: iv.noise(std=v),
    ],
)
@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), -float("inf"), 10**40, 10**400],
    ids=["nan", "inf", "-inf", "10**40", "10**400"],
)
def test_non_finite_or_oversized_numbers_are_refused_at_construction(make, value):
    with pytest.raises(InterventionError) as err:
        make(value)
    assert "finite number within" in _one_line(err)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_noise_seeds_outside_uint64_are_refused(demo, seed):
    with pytest.raises(InterventionError) as err:
        iv.noise(0.1, seed=seed)
    assert "0..2**64-1" in _one_line(err)
    with pytest.raises(InputError, match=re.escape("0..2**64-1")):
        demo.generate(PROMPT, max_tokens=1, temperature=1.0, seed=seed)


def test_the_largest_seed_works(demo):
    with demo.trace(PROMPT, interventions={"layers.0": iv.noise(0.1, seed=2**64 - 1)}):
        pass


def test_steering_coefficients_are_checked(demo):
    vector = mx.ones((demo.hidden_size or 0,))
    for bad in (float("nan"), 10**40, "4"):
        with pytest.raises(InputError) as err:
            steer(demo, PROMPT, vector, 0, coefficient=bad, max_tokens=1)
        assert "coefficient" in _one_line(err)
    try:
        steer(demo, PROMPT, vector, 0, coefficient=BIG, max_tokens=1)
    except InterventionError as err:  # the only acceptable failure: a non-finite output
        assert "NaN or inf" in str(err)
    with pytest.raises(InputError, match="temperature"):
        demo.generate(PROMPT, max_tokens=1, temperature=float("nan"))


def test_an_intervention_that_calls_the_model_is_refused(demo):
    before = demo(PROMPT)

    def calls_the_model(x):
        demo(PROMPT)
        return x

    with (
        pytest.raises(InterventionError) as err,
        demo.trace(PROMPT, interventions={"layers.1": calls_the_model}),
    ):
        pass
    assert "without calling the model" in _one_line(err)
    with pytest.raises(InterventionError, match="without calling the model"):
        demo.generate(PROMPT, max_tokens=1, interventions={"layers.1": calls_the_model})
    assert np.array_equal(np.array(demo(PROMPT)), np.array(before))
    with demo.trace(PROMPT, interventions={"layers.1": iv.compose().add(iv.scale(2)).build()}):
        pass  # a composed intervention nests applications and is not mistaken for one


def test_every_refusal_here_is_an_mlxterp_error():
    assert issubclass(InputError, MlxterpError) and issubclass(InterventionError, MlxterpError)
    assert issubclass(ModelLoadError, MlxterpError)


# --------------------------------------------------------------------------- answers
def _multi_token(model: InterpretableModel) -> tuple[str, list[str]]:
    for text in (" Parisian", " Londoner", " zqxjv", " xylophonequartz"):
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > 1:
            return text, [model.token_to_str(i) for i in ids]
    raise AssertionError("no multi-token string found in the demo vocabulary")


def test_a_multi_token_answer_is_refused_the_same_way_everywhere(demo):
    answer, pieces = _multi_token(demo)
    calls = {
        "lens target": lambda: lens(demo, PROMPT, target=answer),
        "patching": lambda: demo.activation_patching(
            PROMPT, "The capital of Germany is", metric="logit_diff", answer=(answer, " Berlin")
        ),
        "attribution": lambda: demo.attribution_patching(
            PROMPT, "The capital of Germany is", metric="logit_diff", answer=(" Berlin", answer)
        ),
        "token_id": lambda: demo.token_id(answer),
    }
    messages = set()
    for where, call in calls.items():
        with pytest.raises(InputError) as err:
            call()
        text = _one_line(err)
        assert repr(pieces) in text and repr(pieces[0]) in text, where
        messages.add(text)
    assert len(messages) == 1


def test_token_ids_are_checked_by_their_bounds_first(demo, monkeypatch):
    # prepare runs the check on every call (every chunk of a sweep): an array goes to it
    # whole (min/max on the device), token lists flat (min/max in C), never a generator
    # that a Python loop has to walk.
    from mlxterp import inputs

    seen = []
    real = inputs.check_token_ids
    monkeypatch.setattr(
        inputs, "check_token_ids", lambda ids, top: seen.append(ids) or real(ids, top)
    )
    demo.prepare(mx.array([[1, 2, 3], [4, 5, 6]]))
    demo.prepare([[1, 2], [3, 4, 5]])
    demo.prepare("The capital of France is")
    assert isinstance(seen[0], mx.array) and seen[0].shape == (2, 3)
    assert seen[1] == [1, 2, 3, 4, 5] and isinstance(seen[2], list)


@pytest.mark.parametrize("as_array", [True, False])
def test_out_of_range_token_ids_are_all_named(as_array):
    from mlxterp.inputs import check_token_ids

    ids = [[5, -1, 7], [99, 3, -1]]
    with pytest.raises(
        InputError, match=r"token ids -1, 99 are outside this model's vocabulary \(0..9\)"
    ):
        check_token_ids(mx.array(ids) if as_array else [t for r in ids for t in r], 10)
    check_token_ids(mx.array([[0, 9]]) if as_array else [0, 9], 10)  # the bounds themselves pass
    check_token_ids(mx.array([], dtype=mx.int32) if as_array else [], 10)
