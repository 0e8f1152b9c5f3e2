"""``InterpretableModel``: wrap any MLX model (or load one) for tracing and intervention."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import loading
from .errors import InputError, ModelAttributeError, ModelTypeError
from .heads import with_head_sites
from .hooks import Site, hooked, primary_array
from .inputs import Chat, PreparedInput, TextCodec, check_token_ids, chosen_prompt, is_int, prepare
from .interventions import InterventionFn, SiteContext, check_mapping
from .interventions import apply as apply_intervention
from .names import MODEL_OUTPUT, ModuleIndex
from .proxies import LayerListProxy, ModuleProxy, OutputProxy
from .tracing import CaptureSpec, Trace
from .unembed import Unembedder

if TYPE_CHECKING:
    from pathlib import Path

    from .activations import Layers
    from .attribution import AttributionResult
    from .causal_tracing import CausalTrace, FactTracing
    from .detectors import HeadDetection
    from .dla import LogitAttribution
    from .head_patching import HeadAttributionResult, HeadPatchingResult
    from .lens import LensResult, LogitLens
    from .patching import PatchingResult
    from .path_patching import PathPatchingResult, PathPatchingSweep
    from .steering import Prompts
    from .tuned_lens import LensKL, TunedLens

_ARCH_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len")

# get_token_predictions: ids, or (id, logit) pairs; one list per row for a batch.
Predictions = list[int] | list[tuple[int, float]] | list[list[int]] | list[list[tuple[int, float]]]


class InterpretableModel:
    """An MLX model you can trace, read and intervene on.

    ``InterpretableModel("demo")`` (the embedded model), ``InterpretableModel("path/or/org/repo")``
    (through ``mlx_lm.load``) or ``InterpretableModel(module, tokenizer=...)`` for any
    ``mlx.nn.Module``.  The layer list is detected (``layers``, ``h``, nested paths);
    ``layer_attr`` names it explicitly.  ``dequantize=True`` replaces quantized layers and
    embeddings by plain ones holding the same (dequantized) weights, in place, before
    anything else: the same numbers to float rounding, far faster where quantized kernels
    are slow (CPU), at the memory of the unquantized model (``loading.dequantize``).
    """

    def __init__(
        self,
        model: nn.Module | str,
        tokenizer: Any | None = None,
        layer_attr: str | None = None,
        dequantize: bool = False,
    ):
        self.name: str | None = None
        if isinstance(model, str):
            self.name = model
            module, loaded_tokenizer = loading.load(model)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        elif isinstance(model, nn.Module):
            module = model
        else:
            raise ModelTypeError(
                f"InterpretableModel takes an mlx.nn.Module or a model name/folder, "
                f"got {type(model).__name__}"
            )
        if dequantize:
            loading.dequantize(module)
        self.model: nn.Module = module
        # a Hugging Face tokenizer or mlx-lm's wrapper of one; None for custom models
        self.tokenizer: Any = tokenizer
        self._codec = TextCodec(tokenizer)
        self._index = ModuleIndex(module, layer_attr)
        # Hooks swap the classes of shared modules, so forwards of one model never overlap.
        self._forward_lock = threading.RLock()
        self._unembedder: Unembedder | None = None

    # ------------------------------------------------------------------ structure
    @property
    def module_index(self) -> ModuleIndex:
        """Every module's canonical name and the resolution of aliases (``mlxterp.names``)."""
        return self._index

    @property
    def layers(self) -> LayerListProxy:
        """The transformer layers: ``model.layers[3]``, ``len(model.layers)``, iteration."""
        if not self._index.layer_path:
            raise ModelAttributeError(
                "no layer list was found in this model; pass layer_attr='path.to.list'"
            )
        return LayerListProxy(self, self._index.layer_path)

    @property
    def output(self) -> OutputProxy:
        """The model's final output in the current trace (``model.output.save()``)."""
        return OutputProxy(self, MODEL_OUTPUT, "output")

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
        """Canonical name of layer ``index`` or of a component in it (``"attn"``,
        ``"mlp.up_proj"``)."""
        base = self._index.layer_name(index)
        return (
            base
            if not component or component == "output"
            else self._index.resolve(f"{base}.{component}")
        )

    def layer_index_of(self, name: str) -> int | None:
        """The layer module ``name`` (any alias) sits in, or None outside the layer list."""
        return self._index.layer_index_of(self._index.resolve(name))

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

    def _config_int(self, keys: Sequence[str]) -> int | None:
        """The first positive int the configuration holds under one of ``keys``."""
        cfg = self.config
        for key in keys:
            value = cfg.get(key)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def hidden_size(self) -> int | None:
        return self._config_int(loading.HIDDEN_KEYS)

    @property
    def _input_vocab(self) -> int | None:
        """Rows of the token embedding (valid input ids), when the model has one."""
        return self._config_int(("vocab_size",))

    @property
    def _token_limit(self) -> int | None:
        """How many token ids exist: the larger of the embedding's and the tokenizer's count."""
        sizes = [s for s in (self._input_vocab, self.vocab_size) if s]
        return max(sizes) if sizes else None

    @property
    def max_length(self) -> int | None:
        """Longest input the model's configuration admits, if it states one."""
        return self._config_int(_ARCH_CONTEXT_KEYS)

    # ------------------------------------------------------------------ tokens
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (with BOS where the tokenizer adds it)."""
        self.require_tokenizer()
        return self._codec.encode(text)

    def encode_chat(self, messages: Chat) -> list[int]:
        """Token ids of a chat (``[{"role": "user", "content": ...}, ...]``) through the
        tokenizer's chat template, with the generation prompt added; ``InputError`` when
        the tokenizer has no template."""
        self.require_tokenizer()
        return self._codec.encode_chat(messages, self.max_length)[1]

    def chat_text(self, messages: Chat) -> str:
        """The text the chat template makes of ``messages`` (generation prompt added)."""
        self.require_tokenizer()
        return self._codec.chat_text(messages)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text."""
        return [self.encode(t) for t in texts]

    def decode(self, tokens: list[int] | mx.array) -> str:
        """Text of token ids (list or 1-D array); special tokens are kept."""
        tokenizer = self.require_tokenizer()
        if isinstance(tokens, mx.array):
            if tokens.ndim > 1:
                if tokens.shape[0] != 1:
                    raise InputError(f"decode takes one sequence; got shape {tuple(tokens.shape)}")
                tokens = tokens[0]
            tokens = cast(list[int], tokens.reshape(-1).tolist())  # 1-D: a list of ints
        ids = [int(t) for t in tokens]
        check_token_ids(ids, self._token_limit)
        text: str = tokenizer.decode(ids)
        return text

    def token_to_str(self, token_id: int) -> str:
        """The text of one token (``' world'``)."""
        tokenizer = self.require_tokenizer()
        check_token_ids([int(token_id)], self._token_limit)
        text: str = tokenizer.decode([int(token_id)])
        return text

    def token_text(self, token_id: int) -> str:
        """Readable text of one token: its text, or the id as text when there is no tokenizer."""
        return self.token_to_str(token_id) if self.tokenizer is not None else str(int(token_id))

    def token_id(self, token: int | str) -> int:
        """A token id from an id or a string (``" Paris"``, leading space included).

        Every analysis that takes an answer or target reads it here.  The string must be
        exactly one token: a longer one is refused with the tokens it splits into.
        """
        if is_int(token):
            check_token_ids([int(token)], self._token_limit)
            return int(token)
        if not isinstance(token, str) or not token:
            raise InputError(f"a token is a token id or a non-empty string; got {token!r}")
        self.require_tokenizer()
        ids = self._codec.encode_piece(token)
        if not ids:
            raise InputError(f"{token!r} encodes to no tokens")
        if len(ids) != 1:
            pieces = [self.token_to_str(i) for i in ids]
            raise InputError(
                f"{token!r} is {len(ids)} tokens {pieces}, but an answer or target must be "
                f"one token: give its first token {pieces[0]!r}, another one-token string "
                "(often with its leading space) or a token id"
            )
        return ids[0]

    @property
    def quantized_on_cpu(self) -> bool:
        """Whether quantized layers run on MLX's CPU kernels, many times slower than plain
        ones there: load with ``dequantize=True`` (``mlxterp --dequantize``) to avoid it."""
        return mx.default_device() == mx.cpu and loading.quantized_count(self.model) > 0

    @property
    def vocab_size(self) -> int | None:
        """Size of the tokenizer's vocabulary (added tokens included), or None."""
        if self.tokenizer is None:
            return None
        inner = getattr(self.tokenizer, "_tokenizer", self.tokenizer)
        try:
            return len(inner)
        except TypeError:
            size = getattr(inner, "vocab_size", None)
            return size if isinstance(size, int) else None

    def require_tokenizer(self) -> Any:
        """The tokenizer; ``InputError`` (a ``ValueError``) when the model has none."""
        if self.tokenizer is None:
            raise InputError(
                "this model has no tokenizer: InterpretableModel(model, tokenizer=...)"
            )
        return self.tokenizer

    # ------------------------------------------------------------------ running
    def prepare(self, inputs: Any) -> PreparedInput:
        """Checked model input for anything a trace takes (text, a chat, ids, arrays), with
        row lengths; see ``mlxterp.inputs``."""
        return prepare(inputs, self._codec, self.max_length, self._input_vocab)

    def forward(self, prepared: PreparedInput) -> mx.array:
        """The wrapped model's output (the first one of a tuple) for prepared input."""
        with self._forward_lock:
            out = self.model(prepared.array)
        return cast(mx.array, out[0] if isinstance(out, tuple) else out)

    def __call__(self, inputs: Any = None, *, messages: Chat | None = None) -> mx.array:
        """A plain forward pass (no capture): the model's output for ``inputs`` (or the
        chat ``messages``, through the chat template)."""
        return self.forward(self.prepare(chosen_prompt(inputs, messages)))

    def trace(
        self,
        inputs: Any = None,
        interventions: Mapping[str, InterventionFn] | None = None,
        capture: CaptureSpec = None,
        *,
        messages: Chat | None = None,
    ) -> Trace:
        """A trace of one forward pass; use as ``with model.trace(inputs) as trace:``.

        ``messages=[{"role": "user", "content": ...}]`` instead of ``inputs`` runs a chat
        through the tokenizer's chat template (a chat passed as ``inputs`` does the same).
        ``interventions`` maps module names (any alias) to functions of the output.
        ``capture`` limits what is kept to names or glob patterns (default: everything).
        """
        return Trace(self, chosen_prompt(inputs, messages), interventions, capture)

    def run(
        self,
        inputs: Any = None,
        *,
        messages: Chat | None = None,
        interventions: Mapping[str, InterventionFn] | None = None,
        capture: CaptureSpec = None,
        output: bool = True,
    ) -> Trace:
        """The finished trace of one forward pass: ``model.trace`` without the ``with`` block.

        ``trace.output``, ``trace.activations`` (what ``capture`` names; everything by
        default) and ``trace.lengths`` are ready to read; interventions are applied.
        ``messages=`` runs a chat through the chat template, as in :meth:`trace`.
        ``output=False`` computes only what the captures need (the layers after the last
        captured module and the unembedding are skipped; ``trace.output`` then raises).
        """
        trace = Trace(self, chosen_prompt(inputs, messages), interventions, capture)
        return trace.execute(output=output)

    @contextmanager
    def hooked(self, sites: Sequence[tuple[str, Site]]) -> Iterator[None]:
        """For the block, hold this model's forward lock and hand each named module's
        output (any alias) to its site, which returns what the model sees instead."""
        modules = [(self._index.modules[self._index.resolve(name)], site) for name, site in sites]
        with self._forward_lock, hooked(modules):
            yield

    def intervened(
        self, interventions: Mapping[str, InterventionFn], lengths: list[int] | None = None
    ) -> AbstractContextManager[None]:
        """Context manager: the interventions stay installed (no capture) for every forward
        in the block, e.g. during generation."""
        sites: dict[str, Site] = {}
        heads: dict[str, InterventionFn] = {}
        for name, fn in check_mapping(interventions).items():
            canonical = self._index.resolve(name)
            if canonical in self._index.head_sites:
                heads[canonical] = fn
            else:
                sites[canonical] = _intervention_site(fn, SiteContext(canonical, lengths))

        def visit(name: str, array: mx.array) -> mx.array:
            return apply_intervention(heads[name], array, SiteContext(name, lengths))

        return self.hooked(with_head_sites(self._index, sites, (), heads, visit))

    # ------------------------------------------------------------------ read-out
    @property
    def unembedder(self) -> Unembedder:
        """The model's final norm + unembedding, found once."""
        if self._unembedder is None:
            self._unembedder = Unembedder(self.model, self._index)
        return self._unembedder

    def get_token_predictions(
        self, hidden_state: mx.array | np.ndarray, top_k: int = 10, return_scores: bool = False
    ) -> Predictions:
        """Top tokens the model's read-out gives a hidden state.

        ``(hidden,)`` → a list of ids (or ``(id, logit)`` pairs with ``return_scores``);
        ``(batch, hidden)`` → one such list per row.  Tied, untied and quantized heads work;
        the final norm is applied as the model applies it.
        """
        hidden = hidden_state if isinstance(hidden_state, mx.array) else mx.array(hidden_state)
        if hidden.ndim not in (1, 2):
            raise InputError(
                f"hidden_state must be (hidden,) or (batch, hidden); got {tuple(hidden.shape)}"
            )
        if top_k < 1:
            raise InputError("top_k must be at least 1")
        logits = self.unembedder(hidden)
        rows = logits[None] if logits.ndim == 1 else logits
        k = min(top_k, rows.shape[-1])
        order = mx.argsort(-rows, axis=-1)[:, :k]
        scores = mx.take_along_axis(rows, order, axis=-1)
        ids = cast(list[list[int]], order.tolist())  # (rows, k) ints
        vals = cast(list[list[float]], scores.tolist())
        if return_scores:
            pairs = [
                [(i, float(s)) for i, s in zip(r_ids, r_vals, strict=True)]
                for r_ids, r_vals in zip(ids, vals, strict=True)
            ]
            return pairs[0] if hidden.ndim == 1 else pairs
        return ids[0] if hidden.ndim == 1 else ids

    # ------------------------------------------------------------------ analysis
    # Thin delegates: each method lives in its own module, documented there.
    def logit_lens(
        self,
        text: Any,
        top_k: int = 1,
        layers: Layers = None,
        position: int | None = None,
        plot: bool = False,
        **kwargs: Any,
    ) -> LogitLens | list[LogitLens]:
        """Top predictions of every layer at every position (one dict per prompt for a list
        of prompts); see ``mlxterp.lens.logit_lens``."""
        from .lens import logit_lens

        result: LogitLens | list[LogitLens] = logit_lens(
            self, text, top_k=top_k, layers=layers, position=position, plot=plot, **kwargs
        )
        return result

    def tuned_lens(
        self, text: Any, lens: TunedLens | str | Path, **kwargs: Any
    ) -> LensResult | list[LensResult]:
        """What every layer predicts at every position through a trained tuned lens (a
        ``TunedLens`` or the path of a saved one); see ``mlxterp.tuned_lens``."""
        from .tuned_lens import tuned_lens

        result: LensResult | list[LensResult] = tuned_lens(self, text, lens, **kwargs)
        return result

    def activation_patching(
        self,
        clean_text: Any,
        corrupted_text: Any,
        component: str = "mlp",
        layers: Layers = None,
        metric: str = "l2",
        plot: bool = False,
        **kwargs: Any,
    ) -> dict[int, float] | PatchingResult | list[dict[int, float]] | list[PatchingResult]:
        """Recovery % per layer from patching clean into corrupted (one result per pair for
        lists of prompts); see ``mlxterp.patching``."""
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

    def attribution_patching(
        self, clean_text: Any, corrupted_text: Any, **kwargs: Any
    ) -> AttributionResult | list[AttributionResult]:
        """Gradient estimate of every layer x position patch (one result per pair for lists
        of prompts); see ``mlxterp.attribution``."""
        from .attribution import attribution_patching

        result: AttributionResult | list[AttributionResult] = attribution_patching(
            self, clean_text, corrupted_text, **kwargs
        )
        return result

    def head_outputs(self, inputs: Any, layers: Layers = None) -> dict[int, mx.array]:
        """Each head's share of the attention output per layer, ``(batch, seq, heads,
        hidden)``; see ``mlxterp.heads``."""
        from .heads import head_outputs

        return head_outputs(self, inputs, layers=layers)

    def direct_logit_attribution(
        self, text: Any, target: int | str, baseline: int | str | None = None, position: int = -1
    ) -> LogitAttribution:
        """The logit (difference) at ``position`` split into embedding, heads, MLPs, biases
        and remainders; see ``mlxterp.dla``."""
        from .dla import direct_logit_attribution

        return direct_logit_attribution(self, text, target, baseline, position)

    def head_patching(
        self, clean_text: Any, corrupted_text: Any, **kwargs: Any
    ) -> HeadPatchingResult | list[HeadPatchingResult]:
        """Recovery % per layer x head from patching each head's clean output into the
        corrupted run (one result per pair for lists of prompts); see
        ``mlxterp.head_patching.head_patching``."""
        from .head_patching import head_patching

        result: HeadPatchingResult | list[HeadPatchingResult] = head_patching(
            self, clean_text, corrupted_text, **kwargs
        )
        return result

    def head_attribution(
        self, clean_text: Any, corrupted_text: Any, **kwargs: Any
    ) -> HeadAttributionResult | list[HeadAttributionResult]:
        """Gradient estimate of patching every head at every position; see
        ``mlxterp.head_patching.head_attribution``."""
        from .head_patching import head_attribution

        result: HeadAttributionResult | list[HeadAttributionResult] = head_attribution(
            self, clean_text, corrupted_text, **kwargs
        )
        return result

    def path_patching(
        self, clean_text: Any, corrupted_text: Any, senders: str | Sequence[str], **kwargs: Any
    ) -> PathPatchingResult:
        """The effect of ``senders`` on the receivers through the paths between them only;
        see ``mlxterp.path_patching.path_patching``."""
        from .path_patching import path_patching

        return path_patching(self, clean_text, corrupted_text, senders, **kwargs)

    def path_patching_sweep(
        self, clean_text: Any, corrupted_text: Any, **kwargs: Any
    ) -> PathPatchingSweep:
        """Path patching from every head (and MLP) one sender at a time; see
        ``mlxterp.path_patching.path_patching_sweep``."""
        from .path_patching import path_patching_sweep

        return path_patching_sweep(self, clean_text, corrupted_text, **kwargs)

    def detect_heads(self, detections: Sequence[str] | None = None, **kwargs: Any) -> HeadDetection:
        """Score every head on induction / previous-token / duplicate-token / first-token
        patterns; see ``mlxterp.detectors.detect_heads``."""
        from .detectors import detect_heads

        return detect_heads(self, detections, **kwargs)

    def causal_trace(self, prompt: Any, subject: str | Sequence[int], **kwargs: Any) -> CausalTrace:
        """Causal tracing (noise the subject, restore one state at a time) of one prompt;
        see ``mlxterp.causal_tracing.causal_trace``."""
        from .causal_tracing import causal_trace

        return causal_trace(self, prompt, subject, **kwargs)

    def trace_facts(self, facts: Any, **kwargs: Any) -> FactTracing:
        """Causal tracing averaged over ``(prompt, subject, answer)`` facts; see
        ``mlxterp.causal_tracing.trace_facts``."""
        from .causal_tracing import trace_facts

        return trace_facts(self, facts, **kwargs)

    def train_tuned_lens(self, texts: Any, **kwargs: Any) -> TunedLens:
        """Train a tuned lens of this model on ``texts``; see
        ``mlxterp.tuned_lens.train_tuned_lens``."""
        from .tuned_lens import train_tuned_lens

        return train_tuned_lens(self, texts, **kwargs)

    def lens_kl(
        self, texts: Any, lens: TunedLens | str | Path | None = None, **kwargs: Any
    ) -> LensKL:
        """Mean KL to the final distribution per layer, logit lens and tuned lens; see
        ``mlxterp.tuned_lens.lens_kl``."""
        from .tuned_lens import lens_kl

        return lens_kl(self, texts, lens, **kwargs)

    def attention_patterns(self, text: Any, layers: Layers = None) -> dict[int, mx.array]:
        """Softmax attention weights per layer and head; see ``mlxterp.attention``."""
        from .attention import attention_patterns

        return attention_patterns(self, text, layers=layers)

    def steering_vector(
        self, positive: Prompts, negative: Prompts, layer: int, **kwargs: Any
    ) -> mx.array:
        """Mean difference of contrasting prompts at a layer; see ``mlxterp.steering``."""
        from .steering import steering_vector

        return steering_vector(self, positive, negative, layer, **kwargs)

    def generate(
        self,
        prompt: Any = None,
        max_tokens: int = 20,
        interventions: dict[str, InterventionFn] | None = None,
        *,
        messages: Chat | None = None,
        **kwargs: Any,
    ) -> str:
        """Greedy (or sampled) continuation, with interventions applied at every step;
        ``messages=`` continues a chat as the assistant (through the chat template)."""
        from .steering import generate

        return generate(
            self,
            chosen_prompt(prompt, messages),
            max_tokens=max_tokens,
            interventions=interventions,
            **kwargs,
        )

    def __repr__(self) -> str:
        label = self.name or type(self.model).__name__
        modules = len(self._index.modules)
        return f"InterpretableModel({label}, {self.num_layers} layers, {modules} modules)"


def _intervention_site(fn: InterventionFn, ctx: SiteContext) -> Site:
    def site(out: Any) -> Any:
        found = primary_array(out)
        if found is None:
            return out
        array, rebuild = found
        return rebuild(apply_intervention(fn, array, ctx))

    return site


__all__ = ["MODEL_OUTPUT", "InterpretableModel"]
