"""``InterpretableModel``: wrap any MLX model (or load one) for tracing and intervention."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import loading
from .errors import InputError
from .hooks import hooked, primary_array
from .inputs import PreparedInput, TextCodec, prepare
from .interventions import SiteContext
from .interventions import apply as apply_intervention
from .names import MODEL_OUTPUT, ModuleIndex
from .proxies import LayerListProxy, ModuleProxy, OutputProxy, model_output_proxy
from .tracing import CaptureSpec, Trace
from .unembed import Unembedder

_ARCH_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len")


class InterpretableModel:
    """An MLX model you can trace, read and intervene on.

    ``InterpretableModel("demo")`` (the embedded model), ``InterpretableModel("path/or/org/repo")``
    (through ``mlx_lm.load``) or ``InterpretableModel(module, tokenizer=...)`` for any
    ``mlx.nn.Module``.  The layer list is detected (``layers``, ``h``, nested paths);
    ``layer_attr`` names it explicitly.
    """

    def __init__(
        self,
        model: nn.Module | str,
        tokenizer: Any | None = None,
        layer_attr: str | None = None,
    ):
        self.name: str | None = None
        if isinstance(model, str):
            self.name = model
            module, loaded_tokenizer = loading.load(model)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        elif isinstance(model, nn.Module):
            module = model
        else:
            raise TypeError(
                f"InterpretableModel takes an mlx.nn.Module or a model name/folder, "
                f"got {type(model).__name__}"
            )
        self.model: nn.Module = module
        self.tokenizer = tokenizer
        self._codec = TextCodec(tokenizer)
        self._index = ModuleIndex(module, layer_attr)
        self._forward_lock = threading.RLock()
        self._local = threading.local()
        self._unembedder: Unembedder | None = None

    # ------------------------------------------------------------------ structure
    @property
    def layers(self) -> LayerListProxy:
        """The transformer layers: ``model.layers[3]``, ``len(model.layers)``, iteration."""
        if not self._index.layer_path:
            raise AttributeError(
                "no layer list was found in this model; pass layer_attr='path.to.list'"
            )
        return LayerListProxy(self)

    @property
    def output(self) -> OutputProxy:
        """The model's final output in the current trace (``model.output.save()``)."""
        return model_output_proxy(self)

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """``(canonical_name, module)`` for every module of the wrapped model."""
        return iter(self._index.modules.items())

    def module(self, name: str) -> ModuleProxy:
        """The module called ``name`` (any alias) as a proxy."""
        canonical = self._index.resolve(name)
        return ModuleProxy(self, canonical, self._index.short_name(canonical))

    def resolve(self, name: str) -> str:
        """Canonical name for any accepted form of a module name (``KeyError`` otherwise)."""
        return self._index.resolve(name)

    def layer_name(self, index: int, component: str | None = None) -> str:
        """Canonical name of layer ``index`` or of a component in it (``"attn"``, ``"mlp.up_proj"``)."""
        base = self._index.layer_name(index)
        return (
            base
            if not component or component == "output"
            else self._index.resolve(f"{base}.{component}")
        )

    @property
    def num_layers(self) -> int:
        return self._index.num_layers

    def parameters(self) -> dict[str, mx.array]:
        """Flat ``{name: array}`` of every parameter."""
        return dict(tree_flatten(self.model.parameters()))

    @property
    def config(self) -> dict[str, Any]:
        """The model's configuration (mlx-lm ``args``) as a dict; empty for custom models."""
        args = getattr(self.model, "args", None)
        if args is None:
            return {}
        return {k: v for k, v in vars(args).items() if not k.startswith("_")}

    @property
    def hidden_size(self) -> int | None:
        cfg = self.config
        for key in ("hidden_size", "n_embd", "d_model", "dim"):
            if isinstance(cfg.get(key), int):
                return cfg[key]
        return None

    @property
    def _input_vocab(self) -> int | None:
        """Rows of the token embedding (valid input ids), when the model has one."""
        vocab = self.config.get("vocab_size")
        return vocab if isinstance(vocab, int) and vocab > 0 else None

    @property
    def max_length(self) -> int | None:
        """Longest input the model's configuration admits, if it states one."""
        cfg = self.config
        for key in _ARCH_CONTEXT_KEYS:
            if isinstance(cfg.get(key), int) and cfg[key] > 0:
                return cfg[key]
        return None

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (with BOS where the tokenizer adds it)."""
        self._require_tokenizer()
        return self._codec.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text."""
        return [self.encode(t) for t in texts]

    def decode(self, tokens: list[int] | mx.array) -> str:
        """Text of token ids (list or 1-D array); special tokens are kept."""
        self._require_tokenizer()
        if isinstance(tokens, mx.array):
            if tokens.ndim > 1:
                if tokens.shape[0] != 1:
                    raise InputError(f"decode takes one sequence; got shape {tuple(tokens.shape)}")
                tokens = tokens[0]
            tokens = tokens.tolist()
        return self.tokenizer.decode([int(t) for t in tokens])

    def token_to_str(self, token_id: int) -> str:
        """The text of one token (``' world'``)."""
        self._require_tokenizer()
        return self.tokenizer.decode([int(token_id)])

    def token_id(self, token: int | str, *, first: bool = False) -> int:
        """A token id from an id or a string (``" Paris"``, leading space included).

        The string must be exactly one token, unless ``first=True`` takes its first token.
        """
        if isinstance(token, int) and not isinstance(token, bool):
            if token < 0:
                raise InputError(f"token id must be non-negative; got {token}")
            return int(token)
        if not isinstance(token, str) or not token:
            raise InputError(f"a token is a token id or a non-empty string; got {token!r}")
        self._require_tokenizer()
        ids = self._codec.encode_piece(token)
        if not ids:
            raise InputError(f"{token!r} encodes to no tokens")
        if len(ids) != 1 and not first:
            pieces = [self.token_to_str(i) for i in ids]
            raise InputError(
                f"{token!r} is {len(ids)} tokens {pieces}; give a string that is one token "
                "(often with its leading space) or a token id"
            )
        return ids[0]

    @property
    def vocab_size(self) -> int | None:
        """Size of the tokenizer's vocabulary (added tokens included), or None."""
        if self.tokenizer is None:
            return None
        inner = getattr(self.tokenizer, "_tokenizer", self.tokenizer)
        try:
            return len(inner)
        except TypeError:
            return getattr(inner, "vocab_size", None)

    def _require_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer: InterpretableModel(model, tokenizer=...)"
            )

    # ------------------------------------------------------------------ running
    def _prepare(self, inputs: Any) -> PreparedInput:
        return prepare(inputs, self._codec, self.max_length, self._input_vocab)

    def _forward(self, array: mx.array) -> mx.array:
        out = self.model(array)
        if isinstance(out, tuple):
            out = out[0]
        return out

    def __call__(self, inputs: Any) -> mx.array:
        """A plain forward pass (no capture): the model's output for ``inputs``."""
        prepared = self._prepare(inputs)
        with self._forward_lock:
            return self._forward(prepared.array)

    def trace(
        self,
        inputs: Any,
        interventions: dict[str, Callable] | None = None,
        capture: CaptureSpec = None,
    ) -> Trace:
        """A trace of one forward pass; use as ``with model.trace(inputs) as trace:``.

        ``interventions`` maps module names (any alias) to functions of the output.
        ``capture`` limits what is kept to names or glob patterns (default: everything).
        """
        return Trace(self, inputs, interventions, capture)

    def intervened(self, interventions: dict[str, Callable], lengths: list[int] | None = None):
        """Context manager: the interventions stay installed (no capture) for every forward
        in the block, e.g. during generation."""
        sites = []
        for name, fn in interventions.items():
            canonical = self._index.resolve(name)
            ctx = SiteContext(name=canonical, lengths=lengths)
            sites.append((self._index.modules[canonical], _intervention_site(fn, ctx)))
        return hooked(sites)

    # ------------------------------------------------------------------ trace stack
    def _push_trace(self, trace: Trace) -> None:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        stack.append(trace)

    def _pop_trace(self, trace: Trace) -> None:
        stack = getattr(self._local, "stack", [])
        if trace in stack:
            stack.remove(trace)

    def _current_trace(self, what: str) -> Trace:
        stack = getattr(self._local, "stack", None)
        if not stack:
            raise RuntimeError(
                f"{what}.save() needs an active trace: call it inside "
                "`with model.trace(...):`, or read trace.activations afterwards"
            )
        return stack[-1]

    # ------------------------------------------------------------------ read-out
    @property
    def unembedder(self) -> Unembedder:
        """The model's final norm + unembedding, found once."""
        if self._unembedder is None:
            self._unembedder = Unembedder(self.model, self._index)
        return self._unembedder

    def get_token_predictions(
        self, hidden_state: mx.array, top_k: int = 10, return_scores: bool = False
    ) -> list | list[list]:
        """Top tokens the model's read-out gives a hidden state.

        ``(hidden,)`` → a list of ids (or ``(id, logit)`` pairs with ``return_scores``);
        ``(batch, hidden)`` → one such list per row.  Tied, untied and quantized heads work;
        the final norm is applied as the model applies it.
        """
        if not isinstance(hidden_state, mx.array):
            hidden_state = mx.array(hidden_state)
        if hidden_state.ndim not in (1, 2):
            raise InputError(
                f"hidden_state must be (hidden,) or (batch, hidden); got {tuple(hidden_state.shape)}"
            )
        if top_k < 1:
            raise InputError("top_k must be at least 1")
        logits = self.unembedder(hidden_state)
        rows = logits[None] if logits.ndim == 1 else logits
        k = min(top_k, rows.shape[-1])
        order = mx.argsort(-rows, axis=-1)[:, :k]
        scores = mx.take_along_axis(rows, order, axis=-1)
        ids, vals = order.tolist(), scores.tolist()
        result = [
            [(i, float(s)) for i, s in zip(r_ids, r_vals)] if return_scores else list(r_ids)
            for r_ids, r_vals in zip(ids, vals)
        ]
        return result[0] if hidden_state.ndim == 1 else result

    # ------------------------------------------------------------------ analysis
    # Thin delegates: each method lives in its own module, documented there.
    def logit_lens(
        self, text, top_k: int = 1, layers=None, position=None, plot: bool = False, **kwargs
    ):
        """Top predictions of every layer at every position; see ``mlxterp.lens.logit_lens``."""
        from .lens import logit_lens

        return logit_lens(
            self, text, top_k=top_k, layers=layers, position=position, plot=plot, **kwargs
        )

    def activation_patching(
        self,
        clean_text,
        corrupted_text,
        component: str = "mlp",
        layers=None,
        metric: str = "l2",
        plot: bool = False,
        **kwargs,
    ):
        """Recovery % per layer from patching clean into corrupted; see ``mlxterp.patching``."""
        from .patching import activation_patching

        return activation_patching(
            self,
            clean_text,
            corrupted_text,
            component=component,
            layers=layers,
            metric=metric,
            plot=plot,
            **kwargs,
        )

    def attribution_patching(self, clean_text, corrupted_text, **kwargs):
        """Gradient estimate of every layer x position patch; see ``mlxterp.attribution``."""
        from .attribution import attribution_patching

        return attribution_patching(self, clean_text, corrupted_text, **kwargs)

    def attention_patterns(self, text, layers=None):
        """Softmax attention weights per layer and head; see ``mlxterp.attention``."""
        from .attention import attention_patterns

        return attention_patterns(self, text, layers=layers)

    def steering_vector(self, positive, negative, layer: int, **kwargs):
        """Mean difference of contrasting prompts at a layer; see ``mlxterp.steering``."""
        from .steering import steering_vector

        return steering_vector(self, positive, negative, layer, **kwargs)

    def generate(self, prompt, max_tokens: int = 20, interventions=None, **kwargs) -> str:
        """Greedy (or sampled) continuation, with interventions applied at every step."""
        from .steering import generate

        return generate(self, prompt, max_tokens=max_tokens, interventions=interventions, **kwargs)

    def __repr__(self) -> str:
        label = self.name or type(self.model).__name__
        return f"InterpretableModel({label}, {self.num_layers} layers, {len(self._index.modules)} modules)"


def _intervention_site(fn: Callable, ctx: SiteContext):
    def site(out: Any) -> Any:
        array, rebuild = primary_array(out)
        return out if array is None else rebuild(apply_intervention(fn, array, ctx))

    return site


__all__ = ["MODEL_OUTPUT", "InterpretableModel"]
