"""Traces: one forward pass with captured activations and interventions.

The forward pass runs when the ``with model.trace(...)`` block is entered, with the
interventions given up front.  Inside the block (and after it) ``.output.save()`` on a
module proxy returns the captured value and records it in ``trace.saved_values``;
``trace.activations`` holds every captured module output and stays readable after the
block.  After the trace, hooked or not, raised or not, the model is exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Union

import mlx.core as mx

from . import interventions as iv
from .errors import InterventionError, ModuleNameError
from .hooks import hooked, primary_array
from .inputs import PreparedInput
from .names import MODEL_OUTPUT, ModuleIndex

if TYPE_CHECKING:
    from .model import InterpretableModel

CaptureSpec = Union[None, str, list[str], tuple[str, ...]]


class ActivationMap(Mapping):
    """Captured activations keyed by canonical module name, reachable by every alias."""

    def __init__(self, index: ModuleIndex, values: dict[str, mx.array]):
        self._index = index
        self._values = values

    def _key(self, name: str) -> str:
        canonical = self._index.resolve(name)
        if canonical not in self._values:
            raise KeyError(
                f"{name!r} ({canonical}) was not captured in this trace; "
                "capture it with capture=[...] or leave capture= out to capture everything"
            )
        return canonical

    def __getitem__(self, name: str) -> mx.array:
        return self._values[self._key(name)]

    def get(self, name: str, default: Any = None) -> Any:
        """The activation, ``default`` if the module was not captured; a typo raises KeyError."""
        canonical = self._index.resolve(name)
        return self._values.get(canonical, default)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            return self._index.resolve(name) in self._values
        except KeyError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ActivationMap({len(self)} activations)"


class _Recorder:
    """The site of every hooked module during one forward pass."""

    def __init__(self, capture: set[str], interventions: dict[str, Callable], lengths):
        self.capture = capture
        self.interventions = interventions
        self.lengths = lengths
        self.values: dict[str, mx.array] = {}
        self.call_counts: dict[str, int] = {}
        self.intervened: list[tuple[str, mx.array]] = []

    def site(self, name: str) -> Callable[[Any], Any]:
        def on_output(out: Any) -> Any:
            array, rebuild = primary_array(out)
            if array is None:
                return out
            count = self.call_counts.get(name, 0)
            self.call_counts[name] = count + 1
            fn = self.interventions.get(name)
            if fn is not None:
                ctx = iv.SiteContext(name=name, lengths=self.lengths)
                array = iv.apply(fn, array, ctx)
                self.intervened.append((name, array))
                out = rebuild(array)
            if name in self.capture and count == 0:
                self.values[name] = array
            return out

        return on_output


def resolve_capture(index: ModuleIndex, capture: CaptureSpec) -> list[str]:
    """Canonical names for ``capture`` (None: every module). Unknown names raise."""
    if capture is None:
        return list(index.modules)
    patterns = [capture] if isinstance(capture, str) else list(capture)
    names: list[str] = []
    for pattern in patterns:
        found = index.match(pattern)
        if not found:
            if any(ch in pattern for ch in "*?["):
                raise ModuleNameError(f"capture pattern {pattern!r} matches no module")
            index.resolve(pattern)  # raises the helpful error
        names.extend(n for n in found if n != MODEL_OUTPUT)
    return list(dict.fromkeys(names))


class Trace:
    """Context manager for one traced forward pass (see module docstring).

    Attributes after entering: ``output`` (final logits, float32), ``activations``,
    ``saved_values``, ``inputs`` (token ids per row), ``lengths`` (real tokens per row).
    """

    def __init__(
        self,
        model: InterpretableModel,
        inputs: Any,
        interventions: dict[str, Callable] | None = None,
        capture: CaptureSpec = None,
    ):
        self._model = model
        index = model._index
        self._prepared: PreparedInput = model._prepare(inputs)
        self.interventions: dict[str, Callable] = {}
        for name, fn in (interventions or {}).items():
            if not callable(fn):
                raise InterventionError(f"intervention for {name!r} is not callable: {fn!r}")
            canonical = index.resolve(name)
            if canonical == MODEL_OUTPUT:
                raise InterventionError("intervene on a module, not on the model output")
            if canonical in self.interventions:
                raise InterventionError(
                    f"two interventions name the same module {canonical!r}; compose them"
                )
            self.interventions[canonical] = fn
        self._capture = resolve_capture(index, capture)
        self.saved_values: dict[str, Any] = {}
        self._saved_canonical: dict[str, str] = {}
        self.activations: ActivationMap = ActivationMap(index, {})
        self.output: mx.array | None = None

    # ------------------------------------------------------------------ running
    def __enter__(self) -> Trace:
        self._run()
        self._model._push_trace(self)
        return self

    def __exit__(self, *exc) -> None:
        self._model._pop_trace(self)

    def _run(self) -> None:
        model = self._model
        index = model._index
        capture = set(self._capture)
        recorder = _Recorder(capture, self.interventions, self._prepared.lengths)
        hooked_names = [n for n in index.modules if n in capture or n in self.interventions]
        sites = [(index.modules[n], recorder.site(n)) for n in hooked_names]
        with model._forward_lock, hooked(sites):
            logits = model._forward(self._prepared.array)
        output = logits.astype(mx.float32) if logits.dtype in (mx.float16, mx.bfloat16) else logits
        to_eval = [output, *recorder.values.values()]
        finite = None
        if recorder.intervened:
            finite = mx.isfinite(output).all()
            to_eval.append(finite)
        mx.eval(to_eval)
        if finite is not None and not finite.item():
            raise InterventionError(_nonfinite_message(recorder, model))
        values = dict(recorder.values)
        values[MODEL_OUTPUT] = output
        self.output = output
        self.activations = ActivationMap(index, values)
        self.call_counts = dict(recorder.call_counts)

    # ------------------------------------------------------------------ reading
    @property
    def inputs(self) -> list[list[int]] | None:
        """Token ids of each row, without padding (None for non-token inputs)."""
        return self._prepared.tokens

    @property
    def input_ids(self) -> mx.array:
        """The array the model ran on (padded token ids, or the raw input array)."""
        return self._prepared.array

    @property
    def lengths(self) -> list[int] | None:
        """Real tokens per row (padded batches: position ``lengths[b]-1`` is row b's last)."""
        return self._prepared.lengths

    def last_token(self, activation: mx.array) -> mx.array:
        """``activation[b, lengths[b]-1]`` for every row: each row's last real position."""
        lengths = self.lengths or [activation.shape[1]] * activation.shape[0]
        idx = mx.array([n - 1 for n in lengths])
        return activation[mx.arange(activation.shape[0]), idx]

    def get_activation(self, name: str) -> mx.array | None:
        """The captured output of module ``name`` (any alias); None if it was not captured.

        An unknown name raises ``KeyError`` with the closest real names.
        """
        return self.activations.get(name)

    def get(self, name: str) -> Any | None:
        """A value saved with ``.save()``, by the name it was saved under or any alias.

        ``trace.get("layers.3.output")`` after ``model.layers[3].output.save()``.  Returns
        None when nothing was saved for that module; an unknown module raises ``KeyError``.
        """
        if name in self.saved_values:
            return self.saved_values[name]
        module = name[: -len(".output")] if name.endswith(".output") else name
        if module in ("output", "model.output"):
            canonical = MODEL_OUTPUT
        else:
            canonical = self._model._index.resolve(module)
        for key, saved_canonical in self._saved_canonical.items():
            if saved_canonical == canonical:
                return self.saved_values[key]
        return None

    def _save(self, key: str, canonical: str) -> mx.array:
        value = self.activations._values.get(canonical)
        if value is None:
            reason = (
                "it was not called in this forward pass"
                if canonical in self._capture
                else "it was not captured: add it to capture=[...]"
            )
            raise KeyError(f"no output for {key!r} ({canonical}): {reason}")
        self.saved_values[key] = value
        self._saved_canonical[key] = canonical
        return value

    def __repr__(self) -> str:
        shape = tuple(self.output.shape) if self.output is not None else None
        return f"Trace(output={shape}, {len(self.activations)} activations)"


def _nonfinite_message(recorder: _Recorder, model: InterpretableModel) -> str:
    culprits = [n for n, a in recorder.intervened if not mx.isfinite(a).all().item()]
    if culprits:
        name = culprits[0]
        fn = recorder.interventions[name]
        return (
            f"the intervention {fn!r} on {name!r} produced NaN or inf values, so the model's "
            "output is not finite; check its parameters (the model itself is unchanged)"
        )
    names = ", ".join(f"{fn!r} on {n!r}" for n, fn in recorder.interventions.items())
    return (
        f"with the interventions {names} the model's output contains NaN or inf; "
        "the model itself is unchanged"
    )
