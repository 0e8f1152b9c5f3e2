"""Feature dashboards: what one SAE feature responds to and what it writes, and which
features a prompt lights up — the data of a feature browser, as plain results.

* :func:`feature_dashboard` — over a dataset, streamed (texts run ``batch_size`` at a time;
  memory does not grow with the dataset): the top-activating contexts (one per text, at its
  strongest token, with a window of tokens around it and the feature on each), the
  activation histogram, how often the feature fires, and the tokens whose logits its
  decoder direction raises and lowers most (:func:`~mlxterp.sae.feature_logit_effects`).
* :func:`feature_on_prompt` — the feature's activation on every token of one prompt.
* :func:`prompt_features` — the strongest features at each position of one prompt.

Token texts are kept raw; ``line()`` methods show them through
``mlxterp.token_display.display_token``.  Every result has ``to_summary()`` (plain values).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..errors import InputError
from ..token_display import display_token
from .analysis import (
    check_feature,
    check_k,
    feature_logit_effects,
    sae_component,
    top_features_for_text,
)
from .model import SAE

if TYPE_CHECKING:
    from ..model import InterpretableModel

MARK = ("«", "»")  # around the activating token in a context line


@dataclass
class Context:
    """One top-activating context: text ``text_index`` of the dataset at its strongest
    token ``position``; ``tokens`` (raw) and ``values`` (the feature on each) cover
    positions ``start ..`` of the text around it."""

    text_index: int
    position: int
    activation: float
    start: int
    tokens: list[str]
    values: list[float]

    def line(self, width: int | None = None) -> str:
        """The window as one visible line, the activating token between « »."""
        shown = [display_token(t, keep_spaces=True) for t in self.tokens]
        at = self.position - self.start
        shown[at] = f"{MARK[0]}{shown[at]}{MARK[1]}"
        return display_token("".join(shown), width, keep_spaces=True)

    def to_summary(self) -> dict[str, Any]:
        return {
            "text_index": self.text_index,
            "position": self.position,
            "activation": self.activation,
            "start": self.start,
            "tokens": self.tokens,
            "values": self.values,
        }


@dataclass
class Histogram:
    """Counts of the feature's non-zero activations in ``len(counts)`` equal bins from 0 to
    ``edges[-1]`` (``edges`` has one more entry than ``counts``); ``zeros`` tokens where
    it did not fire."""

    edges: list[float]
    counts: list[int]
    zeros: int

    def to_summary(self) -> dict[str, Any]:
        return {"edges": self.edges, "counts": self.counts, "zeros": self.zeros}


class _StreamingHistogram:
    """Exact counts in ``bins`` equal bins from 0, streamed: when a value passes the top,
    the bin width doubles and neighbouring bins merge (so ``bins`` must be even)."""

    def __init__(self, bins: int):
        self.counts = np.zeros(bins, dtype=np.int64)
        self.width = 0.0
        self.zeros = 0

    def add(self, values: np.ndarray) -> None:
        positive = values[values > 0].astype(np.float64)
        self.zeros += int(values.size - positive.size)
        if positive.size == 0:
            return
        top = float(positive.max())
        if self.width == 0.0:
            self.width = top / len(self.counts)
        while top > self.width * len(self.counts):
            halves = self.counts.reshape(-1, 2).sum(1)
            self.counts = np.concatenate([halves, np.zeros_like(halves)])
            self.width *= 2
        where = np.minimum((positive / self.width).astype(np.int64), len(self.counts) - 1)
        self.counts += np.bincount(where, minlength=len(self.counts))

    def result(self) -> Histogram:
        edges = [self.width * i for i in range(len(self.counts) + 1)]
        return Histogram(edges, [int(c) for c in self.counts], self.zeros)


@dataclass
class FeatureDashboard:
    """What :func:`feature_dashboard` found for one feature."""

    component: str
    feature: int
    tokens: int  # real tokens read
    density: float  # fraction of them on which the feature fired
    max_activation: float
    mean_activation: float  # over the tokens where it fired (0.0 if none)
    contexts: list[Context]  # strongest first
    histogram: Histogram
    promoted: list[tuple[str, float]]  # (token, logit) its decoder direction raises most
    suppressed: list[tuple[str, float]]  # ... and lowers most

    def to_summary(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "feature": self.feature,
            "tokens": self.tokens,
            "density": self.density,
            "max_activation": self.max_activation,
            "mean_activation": self.mean_activation,
            "contexts": [c.to_summary() for c in self.contexts],
            "histogram": self.histogram.to_summary(),
            "promoted": [[t, v] for t, v in self.promoted],
            "suppressed": [[t, v] for t, v in self.suppressed],
        }


def feature_dashboard(
    sae: SAE,
    model: InterpretableModel,
    texts: Sequence[Any],
    feature: int,
    k: int = 10,
    window: int = 8,
    bins: int = 20,
    batch_size: int = 8,
    top_logits: int = 10,
) -> FeatureDashboard:
    """A feature's dashboard over ``texts`` (strings or token-id lists), read in batches
    of ``batch_size``: the ``k`` texts where it fires most, each at its strongest token
    with up to ``window`` tokens either side; a ``bins``-bin histogram (even ``bins``) of
    its non-zero activations; its density, largest and mean activation; and the
    ``top_logits`` tokens its decoder direction raises and lowers most."""
    feature, k, top_logits = check_feature(sae, feature), check_k(k), check_k(top_logits)
    batch_size = check_k(batch_size)
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise InputError(f"window must be an int >= 0; got {window!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2 or bins % 2:
        raise InputError(f"bins must be an even int >= 2; got {bins!r}")
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise InputError("texts must be a non-empty list of texts (or of token-id lists)")
    component = sae_component(sae, model)
    token_text = model.token_text
    best: list[tuple[float, int, Context]] = []  # min-heap of the k strongest: (activation,
    # -text index: an earlier text wins a tie, context)
    histogram = _StreamingHistogram(bins)
    seen = fired = 0
    total = peak = 0.0
    for first in range(0, len(texts), batch_size):
        chunk = list(texts[first : first + batch_size])
        trace = model.run(chunk, capture=[component])
        acts = trace.activations[component]  # (batch, seq, d_model)
        lengths = trace.lengths or [acts.shape[1]] * acts.shape[0]
        values = np.asarray(sae.encode(acts)[..., feature])  # (batch, seq)
        ids = cast(list[list[int]], trace.inputs)
        for row, n in enumerate(lengths):
            real = values[row, :n]
            histogram.add(real)
            on = real[real > 0]
            seen, fired, total = seen + n, fired + on.size, total + float(on.sum())
            if on.size == 0:
                continue
            pos = int(real.argmax())
            peak = max(peak, float(real[pos]))
            key = (float(real[pos]), -(first + row))
            if len(best) == k and key <= best[0][:2]:
                continue
            lo, hi = max(0, pos - window), min(n, pos + window + 1)
            context = Context(
                first + row,
                pos,
                key[0],
                lo,
                [token_text(t) for t in ids[row][lo:hi]],
                [float(v) for v in real[lo:hi]],
            )
            (heapq.heappush if len(best) < k else heapq.heapreplace)(best, (*key, context))
    effects = feature_logit_effects(sae, model, feature, top_logits)
    return FeatureDashboard(
        component=component,
        feature=feature,
        tokens=seen,
        density=fired / max(seen, 1),
        max_activation=peak,
        mean_activation=total / fired if fired else 0.0,
        contexts=[c for *_, c in sorted(best, key=lambda item: item[:2], reverse=True)],
        histogram=histogram.result(),
        promoted=effects["promoted"],
        suppressed=effects["suppressed"],
    )


@dataclass
class PromptActivation:
    """One feature's activation on every token of a prompt."""

    feature: int
    tokens: list[str]
    values: list[float]

    def line(self, width: int | None = None) -> str:
        """The prompt as one line, each token followed by the feature's value where it
        fires (``Paris[3.2]``)."""
        shown = [
            display_token(t, keep_spaces=True) + (f"[{v:.3g}]" if v > 0 else "")
            for t, v in zip(self.tokens, self.values, strict=True)
        ]
        return display_token("".join(shown), width, keep_spaces=True)

    def to_summary(self) -> dict[str, Any]:
        return {"feature": self.feature, "tokens": self.tokens, "values": self.values}


def feature_on_prompt(
    sae: SAE, model: InterpretableModel, text: Any, feature: int
) -> PromptActivation:
    """``feature``'s activation on each token of one prompt (text or token ids)."""
    feature = check_feature(sae, feature)
    component = sae_component(sae, model)
    trace = model.run(text, capture=[component])
    acts = trace.activations[component]
    if acts.ndim != 3 or acts.shape[0] != 1:
        raise InputError(f"feature_on_prompt reads one prompt; got activations {acts.shape}")
    n = trace.lengths[0] if trace.lengths else acts.shape[1]
    values = cast(list[float], sae.encode(acts[0, :n])[:, feature].tolist())
    ids = trace.inputs[0] if trace.inputs else []
    return PromptActivation(feature, [model.token_text(t) for t in ids], values)


@dataclass
class PromptFeatures:
    """The strongest features at each position of one prompt, and over the whole of it."""

    tokens: list[str]
    per_position: list[list[tuple[int, float]]]  # (feature, activation), strongest first
    pooled: list[tuple[int, float]]  # (feature, max activation over the tokens)

    def lines(self, width: int | None = None) -> list[str]:
        """One line per token: the token, then its features as ``#feature value``."""
        return [
            display_token(
                f"{display_token(t)}  " + "  ".join(f"#{f} {v:.3g}" for f, v in row),
                width,
                keep_spaces=True,
            )
            for t, row in zip(self.tokens, self.per_position, strict=True)
        ]

    def to_summary(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "per_position": [[[f, v] for f, v in row] for row in self.per_position],
            "pooled": [[f, v] for f, v in self.pooled],
        }


def prompt_features(sae: SAE, model: InterpretableModel, text: Any, k: int = 5) -> PromptFeatures:
    """The ``k`` strongest firing features at each position of one prompt, and pooled
    (:func:`~mlxterp.sae.top_features_for_text` as a result with ``to_summary``)."""
    found = top_features_for_text(sae, model, text, k)
    return PromptFeatures(found["tokens"], found["per_position"], found["pooled"])
