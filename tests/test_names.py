"""The module-name contract: canonical names, aliases, helpful errors."""

from __future__ import annotations

import mlx.nn as nn
import pytest
from conftest import SimpleTransformer

from mlxterp import InterpretableModel, ModuleNameError


@pytest.mark.parametrize(
    "alias",
    [
        "model.layers.1.self_attn",  # canonical
        "model.model.layers.1.self_attn",  # the seeds' prefixed form
        "layers.1.self_attn",  # short form
        "layers.1.attn",  # role alias
        "model.model.layers.1.attn",
        "1.self_attn",  # unique suffix
    ],
)
def test_aliases_reach_the_canonical_name(tiny_llama, alias):
    assert tiny_llama.resolve(alias) == "model.layers.1.self_attn"


def test_mlp_role_alias_and_nested(tiny_llama):
    assert tiny_llama.resolve("layers.0.mlp.down_proj") == "model.layers.0.mlp.down_proj"
    assert tiny_llama.resolve("layers.0.attn.o_proj") == "model.layers.0.self_attn.o_proj"
    assert tiny_llama.layers[0].attn.name == "model.layers.0.self_attn"
    assert tiny_llama.layers[-1].name == "model.layers.2"


def test_unknown_name_lists_closest(tiny_llama):
    with pytest.raises(ModuleNameError) as info:
        tiny_llama.resolve("layers.1.self_atn")
    assert isinstance(info.value, KeyError)
    assert "layers.1.self_attn" in info.value.candidates
    assert "Did you mean" in str(info.value)


def test_ambiguous_name_lists_candidates(tiny_llama):
    with pytest.raises(ModuleNameError, match="ambiguous") as info:
        tiny_llama.resolve("q_proj")
    assert len(info.value.candidates) == 3


def test_layer_detection_and_layer_attr():
    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.Module()
            self.transformer.blocks = [nn.Linear(8, 8) for _ in range(3)]
            self.extra = [nn.Linear(8, 8)]

        def __call__(self, x):
            for b in self.transformer.blocks:
                x = b(x)
            return x

    auto = InterpretableModel(Nested())
    assert auto.module_index.layer_path == "transformer.blocks" and len(auto.layers) == 3
    explicit = InterpretableModel(Nested(), layer_attr="transformer.blocks")
    assert explicit.layers[1].name == "transformer.blocks.1"
    assert (
        InterpretableModel(Nested(), layer_attr="blocks").module_index.layer_path
        == "transformer.blocks"
    )
    with pytest.raises(AttributeError, match=r"transformer\.blocks"):
        InterpretableModel(Nested(), layer_attr="transformer")


def test_layer_list_proxy_protocol():
    model = InterpretableModel(SimpleTransformer(num_layers=5))
    assert len(model.layers) == 5
    assert [p.name for p in model.layers] == [f"layers.{i}" for i in range(5)]
    with pytest.raises(IndexError, match="5 entries"):
        model.layers[5]
    assert hasattr(model.layers[0], "weight")  # attributes of the module itself


def test_named_modules_in_model_order(tiny_llama):
    names = [n for n, _ in tiny_llama.named_modules()]
    assert names.index("model.layers.2") > names.index("model.layers.1.self_attn.o_proj")
    assert "" not in names
