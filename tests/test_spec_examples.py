"""The spec's own examples (../shared/spec/*.md), run as written against the demo model.

Hub model names become ``"demo"`` (and ``load('org/name')`` loads the demo folder); nothing
else in a block is changed.  The blocks of examples.md and jupyter-guide.md run in order in
one namespace, like cells of a notebook.  The API reference's blocks are independent
illustrations that assume a context (``model``, ``input``, ``hidden_dim`` ...): each runs
alone in a fresh copy of that context; its signature blocks (not Python) are skipped.

A few blocks cannot run anywhere as written, or are meant to raise; each is listed below
with the reason, and the test checks that it fails with exactly that exception — so the
list cannot hide a real regression.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlxterp.loading import DEMO_DIR

SPEC = Path(__file__).resolve().parent.parent.parent / "shared" / "spec"
FILES = ["api-reference.md", "examples.md", "jupyter-guide.md"]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
HUB = re.compile(r"""(["'])mlx-community/[^"']+\1""")

# (file, a line of the block) -> the error it must raise, and why
CANNOT_RUN = {
    ("api-reference.md", 'results = model.activation_patching(..., metric="l2")'): (
        TypeError,
        "`...` stands for the arguments; not runnable",
    ),
    ("api-reference.md", "# Will raise ValueError"): (ValueError, "documented to raise"),
    ("api-reference.md", "# Will raise AttributeError"): (AttributeError, "documented to raise"),
    ("api-reference.md", "text = model.decode([128000, 9906, 1917])"): (
        ValueError,
        "Llama-3 token ids; the demo model refuses ids outside its vocabulary",
    ),
    ("examples.md", "tokens = mx.array([[128000, 9906, 1917]])"): (
        ValueError,
        "Llama-3 token ids; the demo model refuses ids outside its vocabulary",
    ),
    ("examples.md", "tokens.extend([220, 2983])"): (
        ValueError,
        "Llama-3 token ids; the demo model refuses ids outside its vocabulary",
    ),
    ("examples.md", "token_id, score, token_str = results[15][0]"): (
        ValueError,
        "results[15][0] is position 0's list of predictions (the documented "
        "structure); the example means results[15][-1][0]",
    ),
    ("examples.md", "hidden_dim = 4096"): (
        ValueError,
        "a 4096-wide steering vector; the demo model is 64 wide",
    ),
    ("examples.md", "layers=[0, 10, 20, 30, 40, 47]"): (
        ValueError,
        "layers of a 48-layer Qwen model; the demo model has 16",
    ),
    ("examples.md", "input_grad = grad_fn(input_tokens)"): (
        NameError,
        "`input_tokens` is never defined",
    ),
    ("examples.md", "gpt2_model = load_gpt2()"): (NameError, "`load_gpt2` is never defined"),
    ("examples.md", "custom_model = load_custom_model()"): (
        NameError,
        "`load_custom_model` is never defined",
    ),
    ("examples.md", "prompts=large_list,"): (NameError, "`large_list` is never defined"),
    ("examples.md", "with model.trace(input_text):"): (NameError, "`input_text` is never defined"),
    ("examples.md", "for chunk in chunks(large_dataset"): (NameError, "`chunks` is never defined"),
    ("jupyter-guide.md", "!uv add mlx-lm"): (SyntaxError, "a notebook shell command"),
    ("jupyter-guide.md", "interventions={'model.model.layers.8.mlp': lambda x: clean_mlp}"): (
        ValueError,
        "patches a 'clean input' activation into the longer 'corrupted input' run; "
        "the engine names both shapes",
    ),
    ("jupyter-guide.md", "steering_vector = pos_h - neg_h"): (
        ValueError,
        "a per-position difference of two 4-token prompts added to a 5-token "
        "prompt; the engine names both shapes",
    ),
}


def load_blocks(name: str) -> list[tuple[int, str]]:
    text = (SPEC / name).read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


def localize(code: str) -> str:
    return HUB.sub('"demo"', code).replace('load("demo")', f"load({str(DEMO_DIR)!r})")


def reference_context(demo, checkpoint_dir) -> dict:
    """The names the API reference's blocks take for granted."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx_lm
    from conftest import SimpleTransformer

    from mlxterp import InterpretableModel, interventions

    text = "The capital of France is"
    return {
        "InterpretableModel": InterpretableModel,
        "iv": interventions,
        "mx": mx,
        "nn": nn,
        "model": demo,
        "input": text,
        "input_text": text,
        "text": text,
        "prompts": ["The capital of France is", "Hello, how are", "The quick brown fox"],
        "large_list": [f"Sample prompt {i}" for i in range(40)],
        "hidden_dim": demo.hidden_size,
        "batch": 1,
        "seq_len": len(demo.encode(text)),
        "my_tokenizer": demo.tokenizer,
        "custom_model": SimpleTransformer(),
        "base_model": SimpleTransformer(),
        "gpt2_model": mlx_lm.load(checkpoint_dir("gpt2"))[0],
    }


@pytest.mark.skipif(not SPEC.exists(), reason="the spec folder is not beside this checkout")
@pytest.mark.parametrize("name", FILES)
def test_spec_examples_run(name, demo, checkpoint_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    reference = name == "api-reference.md"
    context = reference_context(demo, checkpoint_dir) if reference else {}
    namespace: dict = {"__name__": "__spec_example__"}
    failures = []
    for line, code in load_blocks(name):
        expected = next(
            (v for (f, marker), v in CANNOT_RUN.items() if f == name and marker in code), None
        )
        if reference:
            try:
                compile(code, name, "exec")
            except SyntaxError:
                continue  # a signature, not an example
            namespace = {"__name__": "__spec_example__", **context}
        try:
            exec(compile(localize(code), f"{name}:{line}", "exec"), namespace)
        except Exception as err:  # collect every failing block, not just the first
            if expected is None or not isinstance(err, expected[0]):
                failures.append(f"{name}:{line}: {type(err).__name__}: {err}")
        else:
            if expected is not None:
                failures.append(f"{name}:{line}: listed as unable to run ({expected[1]}) but ran")
    assert not failures, "\n".join(failures)
