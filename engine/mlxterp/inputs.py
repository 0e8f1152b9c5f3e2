"""Turning what a user passes to a trace into the array the model runs on, and checking
the scalars (numbers, seeds, token ids) that analyses take, so that MLX never sees a value
it cannot represent.

Accepted: ``str``; a chat (``[{"role": "user", "content": "..."}, ...]``, rendered by the
tokenizer's chat template with the generation prompt added); ``list`` of strings and chats
(right-padded, true length per row kept); ``list[int]`` (one sequence, batch added);
``list[list[int]]``; ``mx.array`` of token ids shaped ``(seq,)`` or ``(batch, seq)``; any
other array (embeddings, custom models) as is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard, cast

import mlx.core as mx
import numpy as np

from .errors import InputError, MlxterpError

MAX_TOKEN_ID = 2**31 - 1  # token ids travel as int32
FLOAT32_MAX = 3.4028234663852886e38
PROMPT_SLACK = 4  # normalizers can shorten text; the character bound allows for it
UNKNOWN_TOKEN_CHARS = 256  # the bound's longest token when the vocabulary cannot be read

Chat = Sequence[Mapping[str, str]]
"""Messages for a chat template: ``[{"role": "user", "content": "..."}, ...]``."""


def is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    """Whether ``value`` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def int_list(value: object) -> list[int | np.integer[Any]] | None:
    """``value`` as a non-empty list of ints (one int is a list of one), or None if it is not."""
    given: object = [value] if is_int(value) else value  # users pass anything
    given = list(given) if isinstance(given, Sequence) and not isinstance(given, str) else []
    wanted = [p for p in given if is_int(p)]
    return wanted if wanted and len(wanted) == len(given) else None


def is_chat(value: object) -> TypeGuard[Chat]:
    """Whether ``value`` is a chat: a non-empty list of messages, each a mapping with a
    string ``role`` and a string ``content`` (and only string values)."""
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(
            isinstance(m, Mapping)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in m.items())
            for m in value
        )
    )


def prompt_list(inputs: Any) -> list[Any] | None:
    """``inputs`` as a list of prompts, or None when it is one prompt.

    A list (or tuple) of strings and chats, or of token-id lists, is a list of prompts (run
    as one right-padded batch); a string, a chat, one list of token ids or an array is one
    prompt.  A list mixing text with token ids, or holding anything else, is refused.
    """
    if not isinstance(inputs, (list, tuple)) or not inputs or is_chat(inputs):
        return None
    if all(is_int(t) for t in inputs):
        return None
    if all(isinstance(t, str) or is_chat(t) for t in inputs):
        return list(inputs)
    if all(_is_int_list(t) for t in inputs):
        return list(inputs)
    kinds = sorted({type(t).__name__ for t in inputs})
    raise InputError(
        "a list of prompts holds strings only, or lists of token ids only (a chat counts as "
        f"a string); this one holds {', '.join(kinds)} (an array is one prompt: pass arrays "
        "one at a time)"
    )


def chosen_prompt(inputs: Any, messages: Any) -> Any:
    """The prompt of an entry point taking ``inputs`` or ``messages=`` (a chat): exactly
    one of them, and ``messages`` must be a chat."""
    if messages is None:
        if inputs is None:
            raise InputError("give a prompt: inputs (text, token ids ...) or messages=[...]")
        return inputs
    if inputs is not None:
        raise InputError("give the prompt once: inputs or messages=, not both")
    if not is_chat(messages):
        raise InputError(
            'messages= takes a chat: a list of {"role": ..., "content": ...} tables with '
            f"string values; got {shown(messages)}"
        )
    return messages


@dataclass
class PreparedInput:
    """The model's input array plus what is known about its tokens."""

    array: mx.array
    tokens: list[list[int]] | None = None  # real token ids per row (no padding)
    texts: list[str] | None = None

    @property
    def lengths(self) -> list[int] | None:
        """Real tokens per row, or None for non-token inputs."""
        return [len(t) for t in self.tokens] if self.tokens is not None else None

    @property
    def padded(self) -> bool:
        """Whether rows differ in length (so some carry padding)."""
        lengths = self.lengths
        return lengths is not None and len(set(lengths)) > 1


class TextCodec:
    """The tokenizer face a trace needs: encode with BOS, decode, pad id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._token_chars: int | None = None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` exactly as the tokenizer gives them (BOS included)."""
        self._check_text(text)
        ids = self.tokenizer.encode(text)
        return [int(i) for i in (ids.ids if hasattr(ids, "ids") else ids)]

    def encode_piece(self, text: str) -> list[int]:
        """Token ids of ``text`` as a continuation: no BOS or other special tokens."""
        self._check_text(text)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return [int(i) for i in (ids.ids if hasattr(ids, "ids") else ids)]

    def encode_prompt(self, text: str, max_length: int | None) -> list[int]:
        """Token ids of a prompt to run: refused when empty or when it cannot fit.

        A prompt longer than ``max_length`` tokens of the vocabulary's longest token (in
        characters, times a slack for normalizers) cannot fit the context whatever the
        tokenizer does, so it is refused before it is tokenized.
        """
        if text == "":
            raise InputError("the prompt is empty; type some text to run the model on")
        self._check_length_chars(text, max_length)
        return self.encode(text)

    def _check_length_chars(self, text: str, max_length: int | None) -> None:
        if max_length is not None:
            limit = max_length * self.longest_token_chars() * PROMPT_SLACK
            if len(text) > limit:
                raise InputError(
                    f"the prompt has {len(text)} characters; the model takes at most "
                    f"{max_length} tokens, which no text over {limit} characters fits in; "
                    "shorten the prompt"
                )

    def chat_text(self, messages: Chat) -> str:
        """``messages`` rendered by the tokenizer's chat template, with the generation
        prompt added (the text the model continues as the assistant)."""
        self._check_text("")
        template = getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise InputError(
                "this model's tokenizer has no chat template, so it cannot take messages; "
                "give the prompt as text, or load the model with a tokenizer that has one "
                "(chat_template in tokenizer_config.json, tokenizer.chat_template in a GGUF)"
            )
        try:
            text = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
            )
        except Exception as err:  # the template's own complaint (Jinja), e.g. a role it refuses
            raise InputError(f"the chat template cannot render these messages: {err}") from None
        if not isinstance(text, str):
            raise InputError(f"the chat template gave {type(text).__name__}, not text")
        return text

    def encode_chat(self, messages: Chat, max_length: int | None) -> tuple[str, list[int]]:
        """``(text, token ids)`` of a chat through the template: the template writes its
        own special tokens (BOS included where it has one), so none are added."""
        text = self.chat_text(messages)
        self._check_length_chars(text, max_length)
        return text, self.encode_piece(text)

    def longest_token_chars(self) -> int:
        """Characters in the vocabulary's longest token (read once)."""
        if self._token_chars is None:
            get_vocab = getattr(self.tokenizer, "get_vocab", None)
            vocab = get_vocab() if callable(get_vocab) else None
            keys = [k for k in vocab if isinstance(k, str)] if isinstance(vocab, dict) else []
            self._token_chars = max(map(len, keys), default=0) or UNKNOWN_TOKEN_CHARS
        return self._token_chars

    def _check_text(self, text: Any) -> None:
        if self.tokenizer is None:
            raise InputError(
                "text input needs a tokenizer: InterpretableModel(model, tokenizer=...), "
                "or pass token ids / arrays instead"
            )
        if not isinstance(text, str):
            raise InputError(f"expected a string prompt, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(
                f"the text has a lone surrogate {text[err.start]!r} at character {err.start}; "
                "text must be valid Unicode (a surrogate pair is two halves of one character)"
            ) from None

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(tok, attr, None)
            if isinstance(value, int):
                return value
            if isinstance(value, (list, set, tuple)) and value:
                return int(sorted(value)[0])
        return 0


def _is_int_list(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(is_int(i) for i in x)


def _pad(rows: list[list[int]], pad_id: int) -> mx.array:
    width = max(len(r) for r in rows)
    return mx.array([r + [pad_id] * (width - len(r)) for r in rows], dtype=mx.int32)


def prepare(
    inputs: Any,
    codec: TextCodec,
    max_length: int | None = None,
    vocab_size: int | None = None,
) -> PreparedInput:
    """Validate ``inputs`` and build the array to run, with per-row token lengths.

    Token ids outside ``[0, vocab_size)`` are refused (MLX would read out of bounds).
    """
    texts: list[str] | None
    if isinstance(inputs, str) or is_chat(inputs):
        texts, rows = _encode([inputs], codec, max_length)
    elif (
        isinstance(inputs, (list, tuple))
        and inputs
        and all(isinstance(t, str) or is_chat(t) for t in inputs)
    ):
        texts, rows = _encode(inputs, codec, max_length)
    elif _is_int_list(inputs):
        rows, texts = [[int(i) for i in inputs]], None
    elif isinstance(inputs, (list, tuple)) and inputs and all(_is_int_list(r) for r in inputs):
        rows, texts = [[int(i) for i in r] for r in inputs], None
    elif isinstance(inputs, (mx.array, np.ndarray)):
        array = mx.array(inputs) if isinstance(inputs, np.ndarray) else inputs
        if array.size == 0:
            raise InputError(f"the input array is empty (shape {tuple(array.shape)})")
        if mx.issubdtype(array.dtype, mx.integer):
            if array.ndim == 1:
                array = array[None, :]
            if array.ndim != 2:
                raise InputError(
                    f"token ids must be shaped (seq,) or (batch, seq); got {tuple(array.shape)}"
                )
            _check_length(array.shape[1], max_length)
            check_token_ids(array, vocab_size)
            tokens = cast(list[list[int]], array.tolist())  # a 2-D integer array
            return PreparedInput(array, tokens=tokens)
        return PreparedInput(array)
    elif isinstance(inputs, (list, tuple)) and not inputs:
        raise InputError("the input list is empty; give a prompt, prompts or token ids")
    else:
        raise InputError(
            f"unsupported input {type(inputs).__name__}: use a string, a chat (a list of "
            '{"role": ..., "content": ...} messages), a list of strings or chats, a list of '
            "token ids, or an mx.array"
        )
    for row in rows:
        if not row:
            raise InputError("a prompt encodes to no tokens")
        _check_length(len(row), max_length)
    check_token_ids(list(itertools.chain.from_iterable(rows)), vocab_size)
    return PreparedInput(_pad(rows, codec.pad_id), tokens=rows, texts=texts)


def _encode(
    prompts: Sequence[str | Chat], codec: TextCodec, max_length: int | None
) -> tuple[list[str], list[list[int]]]:
    """``(texts, token ids)`` of text and chat prompts (a chat's text is the template's)."""
    texts, rows = [], []
    for prompt in prompts:
        text, row = (
            (prompt, codec.encode_prompt(prompt, max_length))
            if isinstance(prompt, str)
            else codec.encode_chat(prompt, max_length)
        )
        texts.append(text)
        rows.append(row)
    return texts, rows


def check_token_ids(ids: Iterable[int] | mx.array, vocab_size: int | None) -> None:
    """``InputError`` naming the ids outside ``[0, vocab_size)`` (``[0, 2**31)`` if unknown).

    Every prepare runs it (each chunk of a sweep too), so it first compares only the
    smallest and largest id (on the device for an array; C loops for a list) and lists the
    ids at fault only when that check fails."""
    top = vocab_size - 1 if vocab_size is not None else MAX_TOKEN_ID
    if isinstance(ids, mx.array):
        low, high = (
            cast(list[int], mx.stack([ids.min(), ids.max()]).tolist()) if ids.size else (0, 0)
        )
        if low >= 0 and high <= top:
            return
        values = cast(list[int], ids.reshape(-1).tolist())  # integer ids
    else:
        values = ids if isinstance(ids, list) else list(ids)
        if not values or (min(values) >= 0 and max(values) <= top):
            return
    bad = sorted({t for t in values if not 0 <= t <= top})
    listed = ", ".join(map(shown, bad[:5])) + (" ..." if len(bad) > 5 else "")
    whose = "this model's vocabulary" if vocab_size is not None else "the int32 token range"
    raise InputError(
        f"token ids {listed} are outside {whose} (0..{top}); "
        "were they made by another model's tokenizer?"
    )


def finite_number(name: str, value: Any, error: type[MlxterpError] = InputError) -> float:
    """``value`` as a float, or ``error`` unless it is a real number within float32's range.

    MLX computes in at most float32, and a Python int beyond 64 bits does not even convert.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise error(f"{name} must be a number, got {shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
        raise error(
            f"{name} must be a finite number within +/-{FLOAT32_MAX:.4g} (float32's range); "
            f"got {shown(value)}"
        )
    return number


def check_seed(name: str, value: Any, error: type[MlxterpError] = InputError) -> int | None:
    """A random seed: None, or an int in ``0 .. 2**64 - 1`` (what ``mx.random.key`` takes)."""
    if value is None:
        return None
    if not is_int(value) or not 0 <= value < 2**64:
        raise error(f"{name} must be an integer in 0..2**64-1 (or None); got {shown(value)}")
    return int(value)


def _check_length(n: int, max_length: int | None) -> None:
    if max_length is not None and n > max_length:
        raise InputError(
            f"the input has {n} tokens but the model takes at most {max_length}; shorten the prompt"
        )


def shown(value: Any, width: int = 40) -> str:
    """``repr(value)`` cut to ``width`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 5]}...({len(text)} chars)"
