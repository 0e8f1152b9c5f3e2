"""Traces: one forward pass with captured activations and interventions.

The forward pass runs when the ``with model.trace(...)`` block is entered (or at once with
``model.run(...)``), with the interventions given up front.  Inside the block (and after
it) ``.output.save()`` on a module proxy returns the captured value and records it in
``trace.saved_values``; ``trace.activations`` holds every captured module output and stays
readable after the block.  After the trace, hooked or not, raised or not, the model is
exactly as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import mlx.core as mx

from . import interventions as iv
from .errors import InputError, InterventionError, ModuleNameError, NotCapturedError, TraceError
from .heads import with_head_sites
from .hooks import Site, primary_array
from .inputs import PreparedInput, shown
from .interventions import InterventionFn
from .names import MODEL_OUTPUT, ModuleIndex

if TYPE_CHECKING:
    from .model import InterpretableModel

CaptureSpec = str | list[str] | tuple[str, ...] | None
"""What a trace keeps: one name or glob pattern, several, or None for every module."""

T = TypeVar("T")


class ActivationMap(Mapping[str, mx.array]):
    """Captured activations keyed by canonical module name, reachable by every alias."""

    def __init__(self, index: ModuleIndex, values: dict[str, mx.array]):
        self._index = index
        self._values = values

    def __getitem__(self, name: str) -> mx.array:
        canonical = self._index.resolve(name)
        if canonical not in self._values:
            raise NotCapturedError(
                f"{name!r} ({canonical}) was not captured in this trace; "
                "capture it with capture=[...] or leave capture= out to capture everything"
            )
        return self._values[canonical]

    @overload
    def get(self, name: str) -> mx.array | None: ...
    @overload
    def get(self, name: str, default: mx.array) -> mx.array: ...
    @overload
    def get(self, name: str, default: T) -> mx.array | T: ...
    def get(self, name: str, default: object = None) -> object:
        """The activation, ``default`` if the module was not captured; a typo raises KeyError."""
        return self._values.get(self._index.resolve(name), default)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            return self._index.resolve(name) in self._values
        except ModuleNameError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ActivationMap({len(self)} activations)"


class _Recorder:
    """The site of every hooked module during one forward pass."""

    def __init__(
        self,
        capture: set[str],
        interventions: dict[str, InterventionFn],
        lengths: list[int] | None,
    ):
        self.capture = capture
        self.interventions = interventions
        self.lengths = lengths
        self.values: dict[str, mx.array] = {}
        self.call_counts: dict[str, int] = {}
        self.intervened: list[tuple[str, mx.array]] = []

    def visit(self, name: str, array: mx.array) -> mx.array:
        """Count, intervene on and capture one value of ``name``; what the model sees."""
        count = self.call_counts.get(name, 0)
        self.call_counts[name] = count + 1
        fn = self.interventions.get(name)
        if fn is not None:
            ctx = iv.SiteContext(name=name, lengths=self.lengths)
            array = iv.apply(fn, array, ctx)
            self.intervened.append((name, array))
        if name in self.capture and count == 0:
            self.values[name] = array
        return array

    def site(self, name: str) -> Site:
        def on_output(out: Any) -> Any:
            found = primary_array(out)
            if found is None:
                return out
            array, rebuild = found
            new = self.visit(name, array)
            return out if new is array else rebuild(new)

        return on_output


def resolve_capture(index: ModuleIndex, capture: CaptureSpec) -> list[str]:
    """Canonical names for ``capture`` (None: every module). Unknown names raise."""
    if capture is None:
        return list(index.modules)
    patterns = [capture] if isinstance(capture, str) else capture
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise InputError(
            "capture= takes a module name or glob pattern, a list of them, or None for "
            f"every module; got {shown(capture)}"
        )
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
    """One traced forward pass (see module docstring): a context manager, or finished at
    once by ``model.run``.

    Attributes once run: ``output`` (final logits, float32), ``activations``,
    ``saved_values``, ``inputs`` (token ids per row), ``lengths`` (real tokens per row).
    """

    def __init__(
        self,
        model: InterpretableModel,
        inputs: Any,
        interventions: Mapping[str, InterventionFn] | None = None,
        capture: CaptureSpec = None,
    ):
        self.model = model
        index = model.module_index
        self._prepared: PreparedInput = model.prepare(inputs)
        self.interventions: dict[str, InterventionFn] = {}
        for name, fn in iv.check_mapping(interventions).items():
            canonical = index.resolve(name)
            if canonical == MODEL_OUTPUT:
                raise InterventionError("intervene on a module, not on the model output")
            if canonical in self.interventions:
                raise InterventionError(
                    f"two interventions name the same module {canonical!r}; compose them"
                )
            self.interventions[canonical] = fn
        self._capture = resolve_capture(index, capture)
        self.saved_values: dict[str, mx.array] = {}
        self._saved_canonical: dict[str, str] = {}
        self.activations: ActivationMap = ActivationMap(index, {})
        self.call_counts: dict[str, int] = {}
        self._output: mx.array | None = None
        self._ran = False

    # ------------------------------------------------------------------ running
    def __enter__(self) -> Trace:
        self.execute()
        _active_traces().append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        stack = _active_traces()
        if self in stack:
            stack.remove(self)

    def execute(self, *, output: bool = True) -> Trace:
        """Run the forward pass: capture, intervene, evaluate everything at once; ``self``.

        ``output=False`` evaluates only the captured values: MLX computes nothing the
        captures do not depend on, so the layers after the last captured module and the
        unembedding are skipped, and ``self.output`` raises.
        """
        model = self.model
        index = model.module_index
        capture = set(self._capture)
        recorder = _Recorder(capture, self.interventions, self._prepared.lengths)
        hooked_names = [n for n in index.modules if n in capture or n in self.interventions]
        sites = {n: recorder.site(n) for n in hooked_names}
        with model.hooked(
            with_head_sites(index, sites, capture, self.interventions, recorder.visit)
        ):
            logits = model.forward(self._prepared)
        values = dict(recorder.values)
        checked = list(values.values())
        if output:
            dtype = mx.float32 if logits.dtype in (mx.float16, mx.bfloat16) else logits.dtype
            values[MODEL_OUTPUT] = self._output = logits.astype(dtype)
            checked = [self._output]
        to_eval = list(values.values())
        finite = None
        if recorder.intervened and checked:
            finite = mx.stack([mx.isfinite(value).all() for value in checked]).all()
            to_eval.append(finite)
        mx.eval(to_eval)
        if finite is not None and not finite.item():
            raise InterventionError(_nonfinite_message(recorder))
        self._ran = True
        self.activations = ActivationMap(index, values)
        self.call_counts = dict(recorder.call_counts)
        return self

    # ------------------------------------------------------------------ reading
    @property
    def output(self) -> mx.array:
        """The model's final output, float32 (``TraceError`` before the trace has run)."""
        if self._output is None:
            if self._ran:
                raise TraceError("this trace ran with output=False: only its captures exist")
            raise TraceError("this trace has not run yet: enter `with model.trace(...)` first")
        return self._output

    @property
    def inputs(self) -> list[list[int]] | None:
        """Token ids of each row, without padding (None for non-token inputs)."""
        return self._prepared.tokens

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

    def get(self, name: str) -> mx.array | None:
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
            canonical = self.model.resolve(module)
        for key, saved_canonical in self._saved_canonical.items():
            if saved_canonical == canonical:
                return self.saved_values[key]
        return None

    def save_output(self, key: str, canonical: str) -> mx.array:
        """Record the captured output of module ``canonical`` as ``saved_values[key]`` and
        return it (what ``proxy.output.save()`` does)."""
        value = self.activations.get(canonical)
        if value is None:
            reason = (
                "it was not called in this forward pass"
                if canonical in self._capture
                else "it was not captured: add it to capture=[...]"
            )
            raise NotCapturedError(f"no output for {key!r} ({canonical}): {reason}")
        self.saved_values[key] = value
        self._saved_canonical[key] = canonical
        return value

    def __repr__(self) -> str:
        shape = tuple(self._output.shape) if self._output is not None else None
        return f"Trace(output={shape}, {len(self.activations)} activations)"


_ACTIVE = threading.local()


def _active_traces() -> list[Trace]:
    """This thread's open ``with model.trace(...)`` blocks, innermost last."""
    stack: list[Trace] | None = getattr(_ACTIVE, "stack", None)
    if stack is None:
        stack = _ACTIVE.stack = []
    return stack


def current_trace(model: InterpretableModel, what: str) -> Trace:
    """The innermost open trace of ``model`` in this thread (``what`` names the caller in
    the error when there is none)."""
    for trace in reversed(_active_traces()):
        if trace.model is model:
            return trace
    raise TraceError(
        f"{what}.save() needs an active trace: call it inside "
        "`with model.trace(...):`, or read trace.activations afterwards"
    )


def _nonfinite_message(recorder: _Recorder) -> str:
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
