"""Turning what a user passes to a trace into the array the model runs on.

Accepted: ``str``; ``list[str]`` (right-padded, true length per row kept);
``list[int]`` (one sequence, batch added); ``list[list[int]]``; ``mx.array`` of token ids
shaped ``(seq,)`` or ``(batch, seq)``; any other array (embeddings, custom models) as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from .errors import InputError


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
        lengths = self.lengths
        return bool(lengths) and min(lengths) != max(lengths)


class TextCodec:
    """The tokenizer face a trace needs: encode with BOS, decode, pad id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise InputError(
                "text input needs a tokenizer: InterpretableModel(model, tokenizer=...), "
                "or pass token ids / arrays instead"
            )
        if not isinstance(text, str):
            raise InputError(f"expected a string prompt, got {type(text).__name__}")
        if not text.strip():
            raise InputError("the prompt is empty; type some text to run the model on")
        ids = self.tokenizer.encode(text)
        return [int(i) for i in (ids.ids if hasattr(ids, "ids") else ids)]

    def encode_piece(self, text: str) -> list[int]:
        """Token ids of ``text`` as a continuation: no BOS or other special tokens."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return [int(i) for i in (ids.ids if hasattr(ids, "ids") else ids)]

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
    return (
        isinstance(x, (list, tuple))
        and len(x) > 0
        and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in x)
    )


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
    prepared = _prepare(inputs, codec, max_length)
    if vocab_size is not None and prepared.tokens is not None:
        bad = sorted({t for row in prepared.tokens for t in row if not 0 <= t < vocab_size})
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
            raise InputError(
                f"token ids {shown} are outside this model's vocabulary (0..{vocab_size - 1}); "
                "were they made by another model's tokenizer?"
            )
    return prepared


def _prepare(inputs: Any, codec: TextCodec, max_length: int | None) -> PreparedInput:
    if isinstance(inputs, str):
        rows, texts = [codec.encode(inputs)], [inputs]
    elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
        rows, texts = [codec.encode(t) for t in inputs], list(inputs)
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
            return PreparedInput(array, tokens=array.tolist())
        return PreparedInput(array)
    elif isinstance(inputs, (list, tuple)) and not inputs:
        raise InputError("the input list is empty; give a prompt, prompts or token ids")
    else:
        raise InputError(
            f"unsupported input {type(inputs).__name__}: use a string, a list of strings, "
            "a list of token ids, or an mx.array"
        )
    for row in rows:
        if not row:
            raise InputError("a prompt encodes to no tokens")
        _check_length(len(row), max_length)
    return PreparedInput(_pad(rows, codec.pad_id), tokens=rows, texts=texts)


def _check_length(n: int, max_length: int | None) -> None:
    if max_length is not None and n > max_length:
        raise InputError(
            f"the input has {n} tokens but the model takes at most {max_length}; shorten the prompt"
        )
