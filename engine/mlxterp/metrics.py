"""Metrics on final-position logits, shared by activation and attribution patching.

Each metric maps logits ``(batch, vocab)`` to one float32 value per row:

* distances to the clean run's logits — ``l2``, ``cosine``, ``mse`` and ``kl``
  (KL(clean ‖ run) from log-softmax, so it stays finite on 150k-token vocabularies);
* ``logit_diff`` — ``logit[a] - logit[b]`` for an answer pair (clean answer, corrupted answer).

Everything is computed in float32 whatever the model's dtype.  ``recovery`` turns values
into the percentage of the clean-vs-corrupted gap that a patch closes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import mlx.core as mx

from .errors import InputError

if TYPE_CHECKING:
    from .model import InterpretableModel

Answer = int | str


def _rows(x: mx.array) -> mx.array:
    x = x.astype(mx.float32)
    return x[None] if x.ndim == 1 else x


def l2_distance(x: mx.array, ref: mx.array) -> mx.array:
    """Euclidean distance per row, scaled by the largest difference so it cannot overflow."""
    diff = _rows(x) - _rows(ref)
    scale = mx.max(mx.abs(diff), axis=-1, keepdims=True)
    safe = mx.where(scale > 0, scale, 1.0)
    return scale[:, 0] * mx.sqrt(mx.sum(mx.square(diff / safe), axis=-1))


def cosine_distance(x: mx.array, ref: mx.array) -> mx.array:
    """``1 - cos(x, ref)`` per row (vectors are normalised first, so no overflow)."""
    a, b = _rows(x), _rows(ref)
    a = a / mx.maximum(mx.linalg.norm(a, axis=-1, keepdims=True), 1e-30)
    b = b / mx.maximum(mx.linalg.norm(b, axis=-1, keepdims=True), 1e-30)
    return 1.0 - mx.sum(a * b, axis=-1)


def mse(x: mx.array, ref: mx.array) -> mx.array:
    """Mean squared difference per row."""
    return mx.mean(mx.square(_rows(x) - _rows(ref)), axis=-1)


def kl_divergence(x: mx.array, ref: mx.array) -> mx.array:
    """KL(softmax(ref) ‖ softmax(x)) per row, from log-softmax: finite for any finite logits."""
    log_q = _log_softmax(_rows(x))
    log_p = _log_softmax(_rows(ref))
    p = mx.exp(log_p)
    terms = mx.where(p > 0, p * (log_p - log_q), 0.0)
    return mx.maximum(mx.sum(terms, axis=-1), 0.0)


def _log_softmax(x: mx.array) -> mx.array:
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


DISTANCES: dict[str, Callable[[mx.array, mx.array], mx.array]] = {
    "l2": l2_distance,
    "cosine": cosine_distance,
    "mse": mse,
    "kl": kl_divergence,
}
METRICS = (*DISTANCES, "logit_diff")


def check_metric(name: str) -> None:
    """``InputError`` listing the metrics unless ``name`` is one."""
    if name not in METRICS:
        raise InputError(f"unknown metric {name!r}; choose one of: {', '.join(METRICS)}")


def answer_ids(model: InterpretableModel, answer: Sequence[Answer] | None) -> tuple[int, int]:
    """``(clean_id, corrupted_id)`` from a pair of token ids or one-token strings (read by
    ``model.token_id``, as every answer and target is)."""
    if answer is None or isinstance(answer, str) or len(answer) != 2:
        raise InputError(
            "metric='logit_diff' needs answer=(clean_answer, corrupted_answer), e.g. "
            "(' Paris', ' London') or two token ids"
        )
    clean, corrupted = answer
    return model.token_id(clean), model.token_id(corrupted)


def answer_pairs(model: InterpretableModel, answer: Any, count: int) -> list[tuple[int, int]]:
    """The answer pairs of ``count`` (clean, corrupted) prompt pairs: one pair for all of them
    (``[(clean_id, corrupted_id)]``) or one per prompt pair (a list of ``count`` pairs)."""
    if (
        isinstance(answer, (list, tuple))
        and answer
        and all(isinstance(a, (list, tuple)) for a in answer)
    ):
        if len(answer) != count:
            raise InputError(
                f"answer holds {len(answer)} answer pairs for {count} prompt pairs: give one "
                "(clean_answer, corrupted_answer) pair for all of them or one per prompt pair"
            )
        return [answer_ids(model, a) for a in answer]
    return [answer_ids(model, answer)]


class Metric:
    """One metric, bound to what it compares against: ``metric(logits) -> (rows,)`` float32.

    Distances measure the way to the clean logits; ``logit_diff`` reads the answer pair.
    ``clean_logits`` is one row ``(vocab,)`` that every scored row is compared with, or
    ``(rows, vocab)``: one reference per scored row.  Likewise ``answer`` is one
    ``(clean_id, corrupted_id)`` pair or a list of them, one per row.  ``select`` picks the
    references of some rows, so one metric scores a batch that mixes prompt pairs.
    """

    def __init__(
        self,
        name: str,
        clean_logits: mx.array,
        answer: tuple[int, int] | list[tuple[int, int]] | None = None,
    ):
        check_metric(name)
        self.answers: mx.array | None = None  # (1 or rows, 2) token ids
        if name == "logit_diff":
            if answer is None:
                raise InputError("metric='logit_diff' needs answer=(clean_id, corrupted_id)")
            pairs = answer if isinstance(answer, list) else [answer]
            vocab = clean_logits.shape[-1]
            for token_id in (t for pair in pairs for t in pair):
                if token_id >= vocab:
                    raise InputError(
                        f"answer token id {token_id} is outside the vocabulary ({vocab} tokens)"
                    )
            self.answers = mx.array(pairs, dtype=mx.int32).reshape(-1, 2)
        self.name = name
        self.clean_logits = clean_logits.astype(mx.float32)

    def select(self, rows: mx.array) -> Metric:
        """This metric with the references (clean logits, answers) of ``rows`` only: row ``i``
        of what the result scores is compared with reference ``rows[i]``."""
        picked = copy.copy(self)  # one reference (a row of one) serves every row as it is
        if self.clean_logits.ndim == 2 and self.clean_logits.shape[0] > 1:
            picked.clean_logits = self.clean_logits[rows]
        if self.answers is not None and self.answers.shape[0] > 1:
            picked.answers = self.answers[rows]
        return picked

    def __call__(self, logits: mx.array) -> mx.array:
        if self.answers is None:  # the answers come with logit_diff
            return DISTANCES[self.name](logits, self.clean_logits)
        picked = mx.take_along_axis(_rows(logits), self.answers, axis=-1)  # (rows, 2)
        return picked[:, 0] - picked[:, 1]


def recovery(
    values: Sequence[float], clean_value: float, corrupted_value: float
) -> tuple[list[float], str | None]:
    """Percent of the way from the corrupted value to the clean one, per value, and a note.

    ``(v - corrupted) / (clean - corrupted) * 100``: for distances (clean value 0) this is
    ``(baseline - patched) / baseline * 100``.  When clean and corrupted give the same value
    every recovery is 0 and the note says why.
    """
    gap = clean_value - corrupted_value
    if gap == 0:
        return [0.0] * len(values), (
            "the clean and corrupted runs give the same metric value, so there is nothing to "
            "recover: every recovery is reported as 0"
        )
    return [(float(v) - corrupted_value) / gap * 100.0 + 0.0 for v in values], None
