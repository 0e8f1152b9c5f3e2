"""Steering vectors and generation with interventions.

* ``steering_vector`` — mean activation of positive prompts minus that of negative prompts
  at one layer (or a component of it), read at each prompt's last real token or averaged
  over its tokens.
* ``generate`` — a continuation, token by token, with the model's KV cache (mlx-lm models)
  and the interventions installed for every step; greedy at temperature 0.
* ``steer`` — the same prompt continued without and with ``coefficient * vector`` added to a
  layer's output.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from . import interventions as iv
from .activations import is_int, position_index
from .errors import InputError, InterventionError
from .inputs import Chat, check_seed, finite_number, is_chat

if TYPE_CHECKING:
    from .model import InterpretableModel

Prompts = str | Chat | Sequence[str | Chat]
"""Text prompts or chats (``[{"role": "user", "content": ...}]``), one or a list."""
TokenListener = Callable[[int], "bool | None"]
"""Called with each generated token id as it is made; returning ``False`` stops there."""


def steering_vector(
    model: InterpretableModel,
    positive: Prompts,
    negative: Prompts,
    layer: int,
    component: str | None = None,
    position: int | str = -1,
) -> mx.array:
    """Mean activation over ``positive`` prompts minus the mean over ``negative`` ones.

    Read at ``model.layer_name(layer, component)`` (the layer output by default), at each
    prompt's own token ``position`` (``-1``: its last real token) or averaged over its real
    tokens with ``position="mean"``.  A prompt may be a chat (through the chat template).
    Returns a float32 vector ``(hidden,)``.
    """
    pos, neg = _prompt_list(positive, "positive"), _prompt_list(negative, "negative")
    if not (is_int(position) or position == "mean"):
        raise InputError(f"position must be a token index or 'mean'; got {position!r}")
    name = model.layer_name(layer, component)
    trace = model.run(pos + neg, capture=[name])
    act = trace.activations[name]
    if act.ndim != 3:
        raise InputError(
            f"{name} outputs shape {tuple(act.shape)}; a steering vector needs (batch, seq, hidden)"
        )
    lengths = trace.lengths or [act.shape[1]] * act.shape[0]
    act = act.astype(mx.float32)
    if position == "mean":
        real = mx.arange(act.shape[1])[None, :] < mx.array(lengths)[:, None]
        rows = (act * real[..., None]).sum(axis=1) / mx.array(lengths, dtype=mx.float32)[:, None]
    else:
        index, _ = position_index(lengths, int(position))
        rows = mx.take_along_axis(act, index[:, :, None], axis=1)[:, 0]
    return rows[: len(pos)].mean(axis=0) - rows[len(pos) :].mean(axis=0)


def generate(
    model: InterpretableModel,
    prompt: Any,
    max_tokens: int = 20,
    interventions: Mapping[str, iv.InterventionFn] | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    on_token: TokenListener | None = None,
) -> str:
    """The text the model writes after ``prompt`` (the continuation only).

    Up to ``max_tokens`` tokens, stopping at the tokenizer's end-of-sequence token;
    ``interventions`` (module name → function, as in ``model.trace``) act on every step.
    Greedy at ``temperature=0``, else sampled (``seed`` makes it reproducible).
    ``on_token(token_id)`` is called with each new token as it is made (to stream it); a
    ``False`` from it stops generation there.
    """
    text, _ids = generate_with_ids(
        model, prompt, max_tokens, interventions, temperature, seed, on_token
    )
    return text


def generate_with_ids(
    model: InterpretableModel,
    prompt: Any,
    max_tokens: int = 20,
    interventions: Mapping[str, iv.InterventionFn] | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    on_token: TokenListener | None = None,
) -> tuple[str, list[int]]:
    """``(continuation, its token ids)``: :func:`generate`'s text and the ids behind it."""
    model.require_tokenizer()
    prompt_ids = _prompt_ids(model, prompt)
    new_ids = generate_tokens(
        model,
        prompt_ids,
        max_tokens,
        interventions,
        temperature,
        seed,
        stop_ids=_eos_ids(model.tokenizer),
        on_token=on_token,
    )
    full, head = model.decode(prompt_ids + new_ids), model.decode(prompt_ids)
    text = full[len(head) :] if full.startswith(head) else model.decode(new_ids)
    return text, new_ids


def generate_tokens(
    model: InterpretableModel,
    prompt_ids: list[int],
    max_tokens: int = 20,
    interventions: Mapping[str, iv.InterventionFn] | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    stop_ids: frozenset[int] = frozenset(),
    on_token: TokenListener | None = None,
) -> list[int]:
    """The token ids generated after ``prompt_ids`` (see :func:`generate`); a token in
    ``stop_ids`` ends generation and is not returned, and so does reaching the model's
    context length, or ``on_token`` returning ``False`` for a token (which is kept).
    Models whose forward takes no ``cache`` are re-run on the whole sequence at each
    step."""
    if not is_int(max_tokens) or max_tokens < 1:
        raise InputError(f"max_tokens must be a positive int; got {max_tokens!r}")
    temperature = finite_number("temperature", temperature)
    if temperature < 0:
        raise InputError(f"temperature must be a number >= 0; got {temperature!r}")
    seed = check_seed("seed", seed)
    if not prompt_ids:
        raise InputError("the prompt is empty; give at least one token to continue")
    interventions = iv.check_mapping(interventions)
    module = model.model
    cache = make_prompt_cache(module) if _takes_cache(module) else None
    key = mx.random.key(seed) if seed is not None else None
    limit = model.max_length
    tokens = list(prompt_ids)
    new: list[int] = []
    with model.intervened(interventions):  # holds the model's forward lock
        step = list(tokens)
        while len(new) < max_tokens and (limit is None or len(tokens) < limit):
            out = (
                module(mx.array([step]), cache=cache)
                if cache is not None
                else module(mx.array([tokens]))
            )
            logits = (out[0] if isinstance(out, tuple) else out)[0, -1].astype(mx.float32)
            sub = None
            if key is not None:
                key, sub = mx.random.split(key)
            token = (
                mx.argmax(logits)
                if temperature == 0
                else mx.random.categorical(logits / temperature, key=sub)
            )
            finite = mx.isfinite(logits).all()
            mx.eval(token, finite)
            if not finite.item():
                raise InterventionError(_nonfinite_message(interventions, len(new)))
            token_id = int(cast(int, token.item()))  # argmax / categorical: an integer
            if token_id in stop_ids:
                break
            tokens.append(token_id)
            new.append(token_id)
            step = [token_id]
            if on_token is not None and on_token(token_id) is False:
                break
    return new


def steer(
    model: InterpretableModel,
    prompt: Any,
    vector: mx.array,
    layer: int,
    coefficient: float = 4.0,
    max_tokens: int = 20,
) -> tuple[str, str]:
    """``(baseline, steered)`` continuations of ``prompt``: without, then with
    ``coefficient * vector`` added to layer ``layer``'s output at every position and step."""
    if not isinstance(vector, mx.array):
        raise InputError(f"the steering vector must be an mx.array; got {type(vector).__name__}")
    if not mx.isfinite(vector).all().item():
        raise InterventionError("the steering vector contains NaN or inf values")
    coefficient = finite_number("coefficient", coefficient)
    name = model.layer_name(layer)
    baseline = generate(model, prompt, max_tokens=max_tokens)
    steered = generate(
        model,
        prompt,
        max_tokens=max_tokens,
        interventions={name: iv.add_vector(vector * coefficient)},
    )
    return baseline, steered


def _prompt_list(prompts: Prompts, which: str) -> list[str | Chat]:
    if isinstance(prompts, str) or is_chat(prompts):
        return [prompts]
    if (
        isinstance(prompts, (list, tuple))
        and prompts
        and all(isinstance(p, str) or is_chat(p) for p in prompts)
    ):
        return list(prompts)
    raise InputError(f"{which} must be a prompt or a non-empty list of prompts; got {prompts!r}")


def _prompt_ids(model: InterpretableModel, prompt: Any) -> list[int]:
    prepared = model.prepare(prompt)
    if prepared.tokens is None or len(prepared.tokens) != 1:
        raise InputError("generate continues one prompt: a string or one sequence of token ids")
    return prepared.tokens[0]


def _eos_ids(tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids: mlx-lm's ``eos_token_ids`` set and/or ``eos_token_id``."""
    ids: set[int] = set()
    for attr in ("eos_token_ids", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        values = (
            [value]
            if is_int(value)
            else value
            if isinstance(value, (list, set, tuple, frozenset))
            else []
        )
        ids.update(int(v) for v in values if is_int(v))
    return frozenset(ids)


def _takes_cache(module: Any) -> bool:
    try:
        return "cache" in inspect.signature(module.__call__).parameters
    except (TypeError, ValueError):
        return False


def _nonfinite_message(interventions: Mapping[str, iv.InterventionFn], step: int) -> str:
    if interventions:
        named = ", ".join(f"{fn!r} on {name!r}" for name, fn in interventions.items())
        return (
            f"generation step {step + 1}: with the interventions {named} the model's output "
            "contains NaN or inf; check their values (the model itself is unchanged)"
        )
    return f"generation step {step + 1}: the model's output contains NaN or inf"
