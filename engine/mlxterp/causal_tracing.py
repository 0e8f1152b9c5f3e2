"""Causal tracing (Meng et al., "Locating and Editing Factual Associations in GPT", ROME):
where in the network a fact is recalled.

The **corrupted run** adds Gaussian noise to the token embeddings of the subject (``noise``
times the standard deviation of the embedding matrix's entries, seeded), which destroys
the model's knowledge of *what* the subject is.  Each **restored run** is the corrupted run
with the clean value of one site put back at one position: the hidden state leaving layer
``l`` (``component=None``), or the output of the ``mlp`` / ``attn`` module (any component
name a layer has) of every layer in a window of ``window`` layers centred on ``l``
(``l - window // 2`` up to ``l + ceil(window / 2)``, clipped at the ends).  Reported are the
probability of the answer in each run, the **total effect** ``p_clean - p_corrupted`` and,
per layer x position, the **indirect effect** ``p_restored - p_corrupted``.

**Speed.**  The restored runs go through ``mlxterp.patching.run_patched_rows``: every
layer x position is a row of one batched forward of the tiled corrupted prompt (a row mask
picks each row's sites and position), rows are ordered by the lowest layer they restore,
and a batch starting at layer ``a`` starts from the corrupted run's output of layer
``a - 1`` (so the layers below are never computed).  The corruption is installed on the
embedding for all of these forwards (``model.intervened``).

**A dataset of facts** (``(prompt, subject, answer)``, any iterable, read once) is traced
fact by fact and aggregated as it goes, so memory stays flat: the mean indirect effect per
layer for each kind of position (as in the paper's figures: the first, middle and last
subject token, the first token after the subject, further tokens, the last token), and the
mean clean / corrupted probabilities and total effect.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import plotting
from .activations import Layers, is_int, layer_indices
from .errors import InputError
from .inputs import check_seed, finite_number, int_list
from .interventions import add_vector
from .metrics import Metric
from .patching import Interventions, PatchingSetup, check_batch_size, row_patch, run_patched_rows

if TYPE_CHECKING:
    from .model import InterpretableModel
    from .tracing import Trace

CATEGORIES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)
HIDDEN_WINDOW, MODULE_WINDOW = 1, 10  # default windows: the hidden state, a module's output
TraceRow = tuple[int, int, int]
"""One restored run: its prompt (always 0), the index into the traced layers, the position."""


class AnswerProbability(Metric):
    """The softmax probability of one answer token at each row: ``metric(logits) ->
    (rows,)`` float32 (a :class:`~mlxterp.metrics.Metric` for the batched runner; bound as a
    logit difference of the answer with itself, which checks the id against the logits)."""

    def __init__(self, clean_logits: mx.array, answer: int):
        super().__init__("logit_diff", clean_logits, (answer, answer))
        self.name = "probability"
        self.answer = answer

    def __call__(self, logits: mx.array) -> mx.array:
        rows = logits.astype(mx.float32).reshape(-1, logits.shape[-1])
        return mx.softmax(rows, axis=-1)[:, self.answer]


class CausalTraceSummary(TypedDict):
    """``CausalTrace.to_summary()``: plain values (``restored`` is layers x positions)."""

    component: str
    window: int
    answer: str
    answer_id: int
    subject: list[int]
    layers: list[int]
    positions: list[int]
    tokens: list[str]
    p_clean: float
    p_corrupted: float
    total_effect: float
    restored: list[list[float]]
    length: int


@dataclass
class CausalTrace:
    """Causal tracing of one prompt (see module docstring).

    ``restored[i][j]`` is the answer's probability with ``component`` restored around layer
    ``layers[i]`` at position ``positions[j]``; ``subject`` is the subject's token range
    ``[start, end)``; ``tokens`` the text of ``positions``; ``length`` the prompt's tokens.
    """

    component: str
    window: int
    answer: str
    answer_id: int
    subject: tuple[int, int]
    layers: list[int]
    positions: list[int]
    tokens: list[str]
    p_clean: float
    p_corrupted: float
    restored: list[list[float]]
    length: int

    @property
    def total_effect(self) -> float:
        """``p_clean - p_corrupted``: what the corruption took away."""
        return self.p_clean - self.p_corrupted

    @property
    def indirect(self) -> list[list[float]]:
        """``p_restored - p_corrupted`` per layer x position."""
        return [[p - self.p_corrupted for p in row] for row in self.restored]

    def by_layer(self, position: int | None = None) -> list[float]:
        """The indirect effect per layer at ``position`` (default: the subject's last token;
        negative counts from the end)."""
        wanted = self.subject[1] - 1 if position is None else position
        if is_int(wanted) and wanted < 0:
            wanted += self.length
        if wanted not in self.positions:
            raise InputError(f"position {position} was not traced; traced: {self.positions}")
        j = self.positions.index(wanted)
        return [row[j] for row in self.indirect]

    def to_summary(self) -> CausalTraceSummary:
        """Plain values to store and compare."""
        return {
            "component": self.component,
            "window": self.window,
            "answer": self.answer,
            "answer_id": self.answer_id,
            "subject": list(self.subject),
            "layers": list(self.layers),
            "positions": list(self.positions),
            "tokens": list(self.tokens),
            "p_clean": self.p_clean,
            "p_corrupted": self.p_corrupted,
            "total_effect": self.total_effect,
            "restored": [list(row) for row in self.restored],
            "length": self.length,
        }

    def heatmap(self, cmap: str = "Purples", cell_width: int = 6, color: bool = True) -> str:
        """The indirect effect as a coloured grid: rows are tokens (the subject's marked
        ``*``), columns layers, as in the paper's figures."""
        start, end = self.subject
        grid = [list(col) for col in zip(*self.indirect, strict=True)]
        labels = [
            f"{tok}*" if start <= p < end else tok
            for p, tok in zip(self.positions, self.tokens, strict=True)
        ]
        title = (
            f"Indirect effect on p({self.answer}) restoring {self.component} "
            f"(window {self.window}; rows: tokens, * subject; columns: layers)"
        )
        return _effect_heatmap(grid, labels, self.layers, title, cmap, cell_width, color)

    def chart(
        self, position: int | None = None, width: int = 80, height: int = 20, color: bool = True
    ) -> str:
        """The indirect effect per layer at ``position`` (default: the subject's last token)
        as a terminal bar chart."""
        values = self.by_layer(position)
        fig = plotting.bar_chart(
            self.layers,
            values,
            title=f"Indirect effect on p({self.answer}) restoring {self.component} per layer",
            xlabel="layer",
            ylabel="p_restored - p_corrupted",
        )
        return plotting.to_text(fig, width=width, height=height, color=color)


def embedding_std(model: InterpretableModel, rows_per_chunk: int = 4096) -> float:
    """Standard deviation of the token embedding matrix's entries (quantized embeddings
    dequantized), read in chunks of rows."""
    module = _embedding(model)[1]
    vocab = int(module["weight"].shape[0])
    total = square = 0.0
    for start in range(0, vocab, rows_per_chunk):
        rows = module(mx.arange(start, min(vocab, start + rows_per_chunk))).astype(mx.float32)
        total += rows.sum().item()
        square += (rows * rows).sum().item()
    count = vocab * int(module(mx.array([0])).shape[-1])
    mean = total / count
    return math.sqrt(max(square / count - mean * mean, 0.0))


def _embedding(model: InterpretableModel) -> tuple[str, nn.Module]:
    name = model.unembedder.embed_name
    if name is None:
        raise InputError("causal tracing corrupts the token embeddings; this model has none found")
    module = model.module(name).module
    if not isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
        raise InputError(f"{name} is a {type(module).__name__}, not a token embedding")
    return name, module


def subject_range(
    model: InterpretableModel, ids: Sequence[int], subject: str | Sequence[int]
) -> tuple[int, int]:
    """The token range ``[start, end)`` of ``subject`` in the prompt ``ids``: a substring of
    the prompt's text (its first occurrence; every token overlapping it) or a ``(start,
    end)`` pair of token positions."""
    n = len(ids)
    if isinstance(subject, str):
        if not subject:
            raise InputError("subject is an empty string")
        ends = [len(model.decode(list(ids[:k]))) for k in range(n + 1)]
        text = model.decode(list(ids))
        at = text.find(subject)
        if at < 0:
            raise InputError(f"subject {subject!r} is not in the prompt {text!r}")
        tokens = [k for k in range(n) if ends[k] < at + len(subject) and ends[k + 1] > at]
        return tokens[0], tokens[-1] + 1
    pair = int_list(subject)
    if pair is None or len(pair) != 2:
        raise InputError(
            f"subject must be a substring of the prompt or a (start, end) token range; "
            f"got {subject!r}"
        )
    start, end = (int(p) + n if p < 0 else int(p) for p in pair)
    if not 0 <= start < end <= n:
        raise InputError(f"subject range {subject!r} is not a non-empty range of the {n} tokens")
    return start, end


def window_layers(center: int, window: int, num_layers: int) -> range:
    """The layers a window of ``window`` centred on ``center`` covers, clipped at the ends."""
    return range(max(0, center - window // 2), min(num_layers, center - window // 2 + window))


def causal_trace(
    model: InterpretableModel,
    prompt: Any,
    subject: str | Sequence[int],
    target: int | str | None = None,
    component: str | None = None,
    window: int | None = None,
    noise: float = 3.0,
    seed: int = 0,
    layers: Layers = None,
    positions: int | Sequence[int] | None = None,
    batch_size: int | None = None,
) -> CausalTrace:
    """Causal tracing of one prompt (see module docstring).

    ``subject`` is a substring of the prompt or a ``(start, end)`` token range; ``target``
    the answer token whose probability is traced (id or one-token string; default: the
    clean run's top prediction).
    ``component`` is restored (None: the hidden state leaving the layer; ``"mlp"``,
    ``"attn"`` ...) over ``window`` layers (default 1 for the hidden state, 10 for a
    module) around each of ``layers`` (default all) at each of ``positions`` (default all);
    ``noise`` is the noise's standard deviation in units of the embedding matrix's, drawn
    with ``seed``.  ``batch_size`` bounds the restored runs per forward.
    """
    return _trace(
        model, prompt, subject, target, component, window, noise, seed, layers, positions,
        batch_size, None,
    )  # fmt: skip


def _trace(
    model: InterpretableModel,
    prompt: Any,
    subject: str | Sequence[int],
    answer: int | str | None,
    component: str | None,
    window: int | None,
    noise: float,
    seed: int,
    layers: Layers,
    positions: int | Sequence[int] | None,
    batch_size: int | None,
    std: float | None,
) -> CausalTrace:
    """:func:`causal_trace`, with the embedding's ``std`` given when already known."""
    if component is not None and not isinstance(component, str):
        raise InputError(f"component must be a module name such as 'mlp'; got {component!r}")
    check_batch_size(batch_size)
    width = (HIDDEN_WINDOW if component is None else MODULE_WINDOW) if window is None else window
    if not is_int(width) or width < 1:
        raise InputError(f"window must be a positive int; got {window!r}")
    scale = finite_number("noise", noise)
    noise_seed = check_seed("seed", seed) or 0
    centers = layer_indices(model, layers)
    covered = sorted({i for c in centers for i in window_layers(c, width, model.num_layers)})
    sites = {i: model.layer_name(i, component) for i in covered}  # unknown names raise here
    embed_name, embed = _embedding(model)
    prepared = model.prepare(prompt)
    if prepared.array.shape[0] != 1 or not prepared.tokens:
        raise InputError("causal tracing takes one prompt (text, a chat or token ids)")
    ids = prepared.tokens[0]
    n = len(ids)
    start, end = subject_range(model, ids, subject)
    cols = _positions(positions, n)

    clean = model.run(prepared.array, capture=list(sites.values()))
    clean_final = clean.output[0, -1]
    top = cast(int, mx.argmax(clean_final).item())  # an index
    answer_id = top if answer is None else model.token_id(answer)
    score = AnswerProbability(clean_final, answer_id)  # refuses an id beyond the logits

    sigma = embedding_std(model) if std is None else std
    hidden = int(embed(mx.array([ids[0]])).shape[-1])
    draw = np.random.default_rng(noise_seed).standard_normal((end - start, hidden))
    offsets = np.zeros((n, hidden), dtype=np.float32)
    offsets[start:end] = draw * scale * sigma
    corruption = {embed_name: add_vector(mx.array(offsets))}

    setup = PatchingSetup(
        centers,
        [sites[c] for c in centers],
        component or "output",
        clean,
        score,
        prepared,
        [n],
        [cols],
        [],
        False,
    )
    rows: list[TraceRow] = [(0, j, t) for j in range(len(centers)) for t in cols]

    def first_layer(row: TraceRow) -> int:
        return window_layers(centers[row[1]], width, model.num_layers)[0]

    def restores(chunk: list[TraceRow], owners: mx.array, corrupted: Trace) -> Interventions:
        masks: dict[int, np.ndarray] = {}
        for r, (_, j, t) in enumerate(chunk):
            for i in window_layers(centers[j], width, model.num_layers):
                masks.setdefault(i, np.zeros((len(chunk), n), dtype=bool))[r, t] = True
        return {
            sites[i]: row_patch(clean.activations[sites[i]], mx.array(mask))
            for i, mask in masks.items()
        }

    with model.intervened(corruption):
        sweep = run_patched_rows(model, setup, rows, first_layer, restores, batch_size)
    return CausalTrace(
        component=component or "hidden",
        window=width,
        answer=model.token_text(answer_id),
        answer_id=answer_id,
        subject=(start, end),
        layers=centers,
        positions=cols,
        tokens=[model.token_text(ids[t]) for t in cols],
        p_clean=sweep.clean[0],
        p_corrupted=sweep.corrupted[0],
        restored=[[sweep.values[(0, j, t)] for t in cols] for j in range(len(centers))],
        length=n,
    )


def _positions(positions: int | Sequence[int] | None, n: int) -> list[int]:
    """Prompt positions to restore at (negative ones count from the end): all by default."""
    if positions is None:
        return list(range(n))
    wanted = int_list(positions)
    if wanted is None:
        raise InputError(f"positions must be an int or a list of ints; got {positions!r}")
    out = []
    for p in wanted:
        q = int(p) + n if p < 0 else int(p)
        if not 0 <= q < n:
            raise InputError(f"position {p} is outside the prompt's {n} tokens")
        out.append(q)
    return sorted(set(out))


def categories(subject: tuple[int, int], length: int) -> dict[str, list[int]]:
    """The positions of each kind in ``CATEGORIES`` for a subject ``[start, end)`` in a
    prompt of ``length`` tokens (kinds a prompt lacks are left out; a one-token subject is
    both the first and the last subject token, the prompt's last token is always ``last
    token``)."""
    start, end = subject
    kinds = {
        "first subject token": [start],
        "middle subject tokens": list(range(start + 1, end - 1)),
        "last subject token": [end - 1],
        "first subsequent token": [end] if end < length - 1 else [],
        "further tokens": list(range(end + 1, length - 1)),
        "last token": [length - 1],
    }
    return {name: cols for name, cols in kinds.items() if cols}


class FactTracingSummary(TypedDict):
    """``FactTracing.to_summary()``: plain values."""

    component: str
    window: int
    layers: list[int]
    facts: int
    p_clean: float
    p_corrupted: float
    total_effect: float
    indirect: dict[str, list[float]]
    counts: dict[str, int]


@dataclass
class FactTracing:
    """Causal tracing averaged over a dataset of facts.

    ``indirect[kind][i]`` is the mean indirect effect of restoring at layer ``layers[i]``
    at the positions of ``kind`` (see :func:`categories`; within a fact the positions of a
    kind are averaged first), over the ``counts[kind]`` facts that have such positions;
    ``p_clean`` / ``p_corrupted`` / ``total_effect`` are means over all ``facts``.
    """

    component: str
    window: int
    layers: list[int]
    facts: int
    p_clean: float
    p_corrupted: float
    indirect: dict[str, list[float]]
    counts: dict[str, int]

    @property
    def total_effect(self) -> float:
        """Mean ``p_clean - p_corrupted`` over the facts."""
        return self.p_clean - self.p_corrupted

    def to_summary(self) -> FactTracingSummary:
        """Plain values to store and compare."""
        return {
            "component": self.component,
            "window": self.window,
            "layers": list(self.layers),
            "facts": self.facts,
            "p_clean": self.p_clean,
            "p_corrupted": self.p_corrupted,
            "total_effect": self.total_effect,
            "indirect": {k: list(v) for k, v in self.indirect.items()},
            "counts": dict(self.counts),
        }

    def heatmap(self, cmap: str = "Purples", cell_width: int = 6, color: bool = True) -> str:
        """The mean indirect effect as a coloured grid: rows are kinds of position, columns
        layers."""
        kinds = list(self.indirect)
        grid = [self.indirect[k] for k in kinds]
        title = (
            f"Mean indirect effect restoring {self.component} (window {self.window}) over "
            f"{self.facts} facts (rows: positions, columns: layers)"
        )
        return _effect_heatmap(grid, kinds, self.layers, title, cmap, cell_width, color)


def _effect_heatmap(
    grid: list[list[float]],
    rows: list[str],
    layers: list[int],
    title: str,
    cmap: str,
    cell_width: int,
    color: bool,
) -> str:
    """Effects (rows x layers) as a coloured grid symmetric around 0, signed values shown."""
    return plotting.heatmap_text(
        grid,
        rows,
        [str(layer) for layer in layers],
        [[f"{v:+.2f}"[: cell_width - 1] for v in row] for row in grid],
        cmap=cmap,
        cell_width=cell_width,
        centred=True,
        color=color,
        title=title,
    )


def trace_facts(
    model: InterpretableModel,
    facts: Iterable[Sequence[Any]],
    component: str | None = None,
    window: int | None = None,
    noise: float = 3.0,
    seed: int = 0,
    layers: Layers = None,
    batch_size: int | None = None,
) -> FactTracing:
    """Causal tracing of every ``(prompt, subject, answer)`` in ``facts`` (an answer of
    None: the clean top prediction), averaged as it goes (see :class:`FactTracing`); the
    other arguments are :func:`causal_trace`'s, every fact traced at all its positions with
    the same noise seed."""
    std = embedding_std(model)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    total = np.zeros(2)  # p_clean, p_corrupted
    seen, width, centers, name = 0, 0, [], ""
    for k, fact in enumerate(facts):
        if isinstance(fact, str) or not isinstance(fact, Sequence) or len(fact) != 3:
            raise InputError(f"fact {k} must be (prompt, subject, answer); got {fact!r}")
        prompt, subject, answer = fact
        traced = _trace(
            model, prompt, subject, answer, component, window, noise, seed, layers, None,
            batch_size, std,
        )  # fmt: skip
        effect = np.asarray(traced.indirect)  # layers x positions (all of them)
        for kind, cols in categories(traced.subject, traced.length).items():
            sums[kind] = sums.get(kind, 0) + effect[:, cols].mean(axis=1)
            counts[kind] = counts.get(kind, 0) + 1
        total += (traced.p_clean, traced.p_corrupted)
        seen, width, centers, name = seen + 1, traced.window, traced.layers, traced.component
    if not seen:
        raise InputError("facts is empty; give (prompt, subject, answer) triples")
    return FactTracing(
        component=name,
        window=width,
        layers=centers,
        facts=seen,
        p_clean=float(total[0] / seen),
        p_corrupted=float(total[1] / seen),
        indirect={
            kind: [float(v) for v in sums[kind] / counts[kind]]
            for kind in CATEGORIES
            if kind in sums
        },
        counts={kind: counts[kind] for kind in CATEGORIES if kind in counts},
    )
