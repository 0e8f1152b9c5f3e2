"""The circuits found in the embedded demo model, and the prompt pairs that show them.

``docs/demo-model.md`` ("Circuits") tells how each was found with the project's own tools;
``tests/test_demo_circuits.py`` checks every claim on the shipped weights, and the sessions
``sessions/induction-heads.toml`` and ``sessions/ioi.toml`` replay them.  Heads are
``(layer, head)`` pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .demo_facts import NAMES, ioi_test_prompts
from .detectors import repeated_sequences

if TYPE_CHECKING:
    from .model import InterpretableModel

PREVIOUS_TOKEN_HEADS: tuple[tuple[int, int], ...] = (
    (10, 1),
    (10, 2),
    (8, 1),
    (10, 3),
    (8, 0),
    (10, 0),
    (6, 3),
    (9, 3),
    (6, 1),
    (4, 0),
    (9, 0),
    (7, 3),
    (9, 2),
    (7, 0),
    (7, 1),
    (6, 2),
)
"""The heads that attend from each token to the one before it (previous-token score >= 0.6
on repeated random runs), strongest first: sixteen, in layers 4-10."""

INDUCTION_HEADS: tuple[tuple[int, int], ...] = (
    (11, 3),
    (11, 2),
    (11, 0),
    (12, 3),
    (14, 0),
    (13, 1),
)
"""The heads that attend from a repeated token to the token after its first occurrence
(induction score >= 0.6, all of them >= 0.9), strongest first.  Any one of them can be
ablated without loss; ablating all six stops the copying."""

IOI_SUBJECT_SUPPRESSORS: tuple[tuple[int, int], ...] = (
    (13, 2),
    (12, 2),
    (13, 0),
    (7, 0),
    (11, 1),
    (15, 1),
)
"""The heads that carry the IOI answer to the logits: from the final token they attend to
the second mention of the subject (at least 0.8 of their attention) and lower the subject's
logit, so the other name wins.  Ordered by direct logit attribution (IO - S), largest
first."""

IOI_EARLY_SUBJECT_HEAD: tuple[int, int] = (0, 3)
"""The head whose clean output, patched into the ABC-corrupted run, recovers the most of the
IO - S logit difference: a layer-0 head that from the final token attends to the second
mention of the subject about ten times more than to either earlier name."""


def repeated_pair(
    model: InterpretableModel, length: int = 20, shown: int = 12, seed: int = 5
) -> tuple[list[int], list[int], tuple[int, int]]:
    """An induction test as token ids: the clean run is ``<s>`` + a random run ``A`` of
    ``length`` tokens + the first ``shown`` tokens of ``A`` again, so a copier predicts
    ``A[shown]``; the corrupted run has a different run ``B`` first, so there is nothing to
    copy.  Returns ``(clean, corrupted, (A[shown], B[shown]))``: the answer pair for
    ``metric="logit_diff"``."""
    if not 0 < shown < length:
        raise ValueError(f"shown must be between 1 and length - 1; got {shown} of {length}")
    first, other = repeated_sequences(model, seq_len=length, batch=2, seed=seed)
    start = len(first) - 2 * length  # 1 after a BOS, else 0
    run_a, run_b = first[start : start + length], other[start : start + length]
    clean = first[: start + length] + run_a[:shown]
    corrupted = other[: start + length] + run_a[:shown]
    return clean, corrupted, (run_a[shown], run_b[shown])


def ioi_pair(index: int = 0) -> tuple[str, str, tuple[str, str]]:
    """A held-out IOI prompt (``demo_facts.ioi_test_prompts()[index]``) and its ABC
    corruption: the second mention of the subject replaced by a third name, so the prompt no
    longer says who the indirect object is.  Returns ``(clean, corrupted, (" IO", " S"))``."""
    prompt = ioi_test_prompts()[index]
    third = next(n for n in NAMES[index % len(NAMES) :] + NAMES if n not in (prompt.io, prompt.s))
    head, _, tail = prompt.text.rpartition(prompt.s)
    return prompt.text, head + third + tail, (" " + prompt.io, " " + prompt.s)
