"""Interventions: functions that change a module's output during a forward pass.

Built-ins (``zero_out``, ``scale``, ``add_vector``, ``replace_with``, ``clamp``, ``noise``,
``compose``) are :class:`Intervention` objects: callable on an array like any function, and
carrying a description (kind + parameters) that sessions save and replay.  Any callable
``(mx.array) -> mx.array`` is accepted as well; it works in traces but cannot be saved.

Restrict any intervention to token positions with ``positions=`` on the built-ins or
``at_positions(fn, positions)`` for any callable.  Negative positions count from the end of
each row's real tokens when the trace knows them (padded batches), else from the end.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from .errors import InterventionError, NotSerializableError
from .inputs import check_seed, finite_number, is_int, shown

Positions = int | Sequence[int] | None
"""Token positions: one index or several (negative counts from each row's end), or None."""

InterventionFn = Callable[[mx.array], mx.array]
"""An intervention: a module's output in, what the model sees instead out."""


@dataclass
class SiteContext:
    """What an intervention may know about the run it is applied in."""

    name: str  # canonical module name
    lengths: list[int] | None = None  # real tokens per row (None: all positions real)


def _positions_tuple(positions: Positions) -> tuple[int, ...] | None:
    if positions is None:
        return None
    listed: list[object] = (
        list(positions) if isinstance(positions, (list, tuple, range)) else [positions]
    )
    out: list[int] = []
    for p in listed:
        if not is_int(p):
            raise InterventionError(
                "positions must be a token index (an int; negative counts from the end) or a "
                f"list of them; got {shown(positions)}"
            )
        out.append(int(p))
    if not out:
        raise InterventionError("positions= must name at least one position")
    return tuple(out)


def _position_mask(
    shape: tuple[int, ...], positions: tuple[int, ...], ctx: SiteContext
) -> mx.array:
    """Boolean mask of shape (batch, seq, 1, ...) selecting ``positions`` in every row."""
    if len(shape) < 2:
        raise InterventionError(
            f"positions= needs an activation with a sequence axis (batch, seq, ...); "
            f"{ctx.name!r} produced shape {tuple(shape)}"
        )
    batch, seq = shape[0], shape[1]
    rows = []
    for b in range(batch):
        length = ctx.lengths[b] if ctx.lengths is not None and b < len(ctx.lengths) else seq
        row = [False] * seq
        for p in positions:
            q = p + length if p < 0 else p
            if not 0 <= q < seq:
                raise InterventionError(
                    f"position {p} is outside the {length} tokens of row {b} at {ctx.name!r}"
                )
            row[q] = True
        rows.append(row)
    mask = mx.array(rows)
    return mask.reshape(mask.shape + (1,) * (len(shape) - 2))


class Intervention:
    """A built-in intervention: callable on an array, describable, restrictable to positions."""

    def __init__(
        self, kind: str, params: dict[str, Any] | None = None, positions: Positions = None
    ):
        if kind not in _KINDS:
            raise InterventionError(f"unknown intervention kind {kind!r}; known: {sorted(_KINDS)}")
        self.kind = kind
        self.params = dict(params or {})
        self.positions = _positions_tuple(positions)
        _KINDS[kind].check(self.params)

    # The plain-function face: ``iv.zero_out(x)``, ``iv.scale(2.0)(x)``.
    def __call__(self, x: mx.array) -> mx.array:
        return self.apply(x, SiteContext(name="<direct call>"))

    def apply(self, x: mx.array, ctx: SiteContext) -> mx.array:
        """Apply to the output ``x`` of the module ``ctx.name``."""
        new = _KINDS[self.kind].apply(x, ctx, **self.params)
        if self.positions is None:
            return new
        mask = _position_mask(x.shape, self.positions, ctx)
        return mx.where(mask, new.astype(x.dtype), x)

    def at(self, positions: Positions) -> Intervention:
        """The same intervention restricted to ``positions`` (e.g. ``-1``: last token)."""
        return Intervention(self.kind, self.params, positions)

    def describe(self) -> dict[str, Any]:
        """``{"kind": ..., "params": {...}, "positions": [...]}``; arrays stay arrays.

        Raises ``NotSerializableError`` where a custom callable is part of it.
        """
        if self.kind == "custom":
            fn = self.params["fn"]
            name = getattr(fn, "__name__", type(fn).__name__)
            raise NotSerializableError(
                f"custom callable {name!r} cannot be saved: only the built-in interventions "
                "of mlxterp.interventions carry a description a session can replay"
            )
        params = {
            k: ([s.describe() for s in v] if k == "steps" else v) for k, v in self.params.items()
        }
        out: dict[str, Any] = {"kind": self.kind, "params": params}
        if self.positions is not None:
            out["positions"] = list(self.positions)
        return out

    def __repr__(self) -> str:
        shown = []
        for k, v in self.params.items():
            if isinstance(v, mx.array):
                shown.append(f"{k}=array{tuple(v.shape)}")
            elif k == "steps":
                shown.append(", ".join(repr(s) for s in v))
            else:
                shown.append(f"{k}={v!r}")
        where = f" at {list(self.positions)}" if self.positions is not None else ""
        return f"{self.kind}({', '.join(shown)}){where}"


def from_description(desc: dict[str, Any]) -> Intervention:
    """Rebuild an :class:`Intervention` from :meth:`Intervention.describe` output."""
    if not isinstance(desc, dict) or not isinstance(desc.get("kind"), str):
        raise InterventionError(f"not an intervention description: {desc!r}")
    if desc["kind"] == "custom":
        raise InterventionError("a custom callable cannot be rebuilt from a description")
    if desc["kind"] not in _KINDS:
        raise InterventionError(
            f"unknown intervention kind {desc['kind']!r}; known: {sorted(_KINDS)}"
        )
    params, positions = desc.get("params", {}), desc.get("positions")
    if not isinstance(params, dict):
        raise InterventionError(f"{desc['kind']} params must be a table of values, got {params!r}")
    takes = set(inspect.signature(_KINDS[desc["kind"]].apply).parameters) - {"x", "ctx"}
    if set(params) - takes:
        raise InterventionError(
            f"{desc['kind']} takes no parameter {sorted(set(params) - takes)}; "
            f"it takes {sorted(takes)}"
        )
    listed = positions if isinstance(positions, list) else [positions]
    if positions is not None and not all(type(p) is int for p in listed):
        raise InterventionError(f"positions must be token indices, got {positions!r}")
    params = dict(params)
    if desc["kind"] == "compose":
        params["steps"] = [from_description(s) for s in params.get("steps", [])]
    return Intervention(desc["kind"], params, desc.get("positions"))


def describe(fn: InterventionFn) -> dict[str, Any]:
    """Description of a built-in; ``NotSerializableError`` for a custom callable."""
    wrapped = fn if isinstance(fn, Intervention) else Intervention("custom", {"fn": fn})
    return wrapped.describe()


class _Running(threading.local):
    """The intervention this thread is running, if any (to refuse re-entry)."""

    site: str | None = None


_running = _Running()


class ReentryError(InterventionError):
    """An intervention that ran a forward pass (e.g. called the model) while it was applied."""


def check_mapping(interventions: object) -> dict[str, InterventionFn]:
    """``interventions=`` as a dict of module name -> callable, or a one-line error."""
    if interventions is None:
        return {}
    if not isinstance(interventions, Mapping):
        raise InterventionError(
            "interventions= takes a dict of module name -> intervention, e.g. "
            f"{{'layers.3.mlp': iv.zero_out}}; got a {type(interventions).__name__}"
        )
    for name, fn in interventions.items():
        if not isinstance(name, str):
            raise InterventionError(f"interventions= keys are module names; got {shown(name)}")
        if not callable(fn):
            raise InterventionError(f"intervention for {name!r} is not callable: {shown(fn)}")
    return dict(interventions)


def apply(fn: InterventionFn, x: mx.array, ctx: SiteContext) -> mx.array:
    """Run an intervention (built-in or custom) on ``x`` and check what comes back.

    An intervention computes from its input only: one that runs a forward pass through
    hooked modules (calling the model it is applied to) raises ``ReentryError``.
    """
    if _running.site is not None:
        reached = "" if ctx.name == _running.site else f" (it reached {ctx.name!r})"
        raise ReentryError(
            f"the intervention on {_running.site!r} ran the model while it was being "
            f"applied{reached}; an intervention must compute its result from the array it "
            "is given, without calling the model"
        )
    _running.site = ctx.name
    try:
        return _run(fn, x, ctx)
    finally:
        _running.site = None


def _run(fn: InterventionFn, x: mx.array, ctx: SiteContext) -> mx.array:
    try:
        new: object = fn.apply(x, ctx) if isinstance(fn, Intervention) else fn(x)
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            new = mx.full(x.shape, finite_number("its value", new, InterventionError), x.dtype)
    except ReentryError:
        raise
    except InterventionError as err:
        raise InterventionError(f"intervention on {ctx.name!r}: {err}") from None
    if not isinstance(new, mx.array):
        raise InterventionError(
            f"intervention on {ctx.name!r} returned {type(new).__name__}, not an mx.array"
        )
    if new.shape != x.shape:
        try:
            new = mx.broadcast_to(new, x.shape)
        except ValueError:
            raise InterventionError(
                f"intervention on {ctx.name!r} returned shape {tuple(new.shape)} but the "
                f"module's output has shape {tuple(x.shape)}; return an array of the same "
                "shape (or one that broadcasts to it)"
            ) from None
    return new.astype(x.dtype) if new.dtype != x.dtype else new


def at_positions(fn: InterventionFn, positions: Positions) -> Intervention:
    """Restrict any intervention, built-in or custom, to token ``positions``."""
    if isinstance(fn, Intervention):
        return fn.at(positions)
    return Intervention("custom", {"fn": fn}, positions)


# --------------------------------------------------------------------------- kinds
@dataclass
class _Kind:
    apply: Callable[..., mx.array]
    check: Callable[[dict[str, Any]], None] = field(default=lambda params: None)


def _check_number(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    finite_number(name, value, InterventionError)


def _apply_replace(
    x: mx.array, ctx: SiteContext, value: mx.array | float, align: str | None = None
) -> mx.array:
    if not isinstance(value, mx.array):
        return mx.full(x.shape, float(value), dtype=x.dtype)
    if value.shape == x.shape:
        return value
    same_rank_seq = value.ndim == x.ndim >= 2 and value.shape[2:] == x.shape[2:]
    if same_rank_seq and value.shape[1] != x.shape[1] and value.shape[0] in (1, x.shape[0]):
        if align not in ("left", "right"):
            raise InterventionError(
                f"replace_with: the replacement has shape {tuple(value.shape)} but "
                f"{ctx.name!r} produced {tuple(x.shape)}: the two runs differ in length "
                f"({value.shape[1]} vs {x.shape[1]} tokens). Use replace_with(value, "
                "align='right') to patch the shared last tokens or align='left' for the "
                "first ones, restrict it to one position with positions=, or use "
                "model.activation_patching, which aligns prompts for you"
            )
        n = min(value.shape[1], x.shape[1])
        value = mx.broadcast_to(value, (x.shape[0], *value.shape[1:])).astype(x.dtype)
        if align == "right":
            return mx.concatenate([x[:, : x.shape[1] - n], value[:, value.shape[1] - n :]], axis=1)
        return mx.concatenate([value[:, :n], x[:, n:]], axis=1)
    try:
        return mx.broadcast_to(value, x.shape)
    except ValueError:
        raise InterventionError(
            f"replace_with: the replacement has shape {tuple(value.shape)}, which does not "
            f"fit {ctx.name!r}'s output of shape {tuple(x.shape)}"
        ) from None


def _check_replace(params: dict[str, Any]) -> None:
    value = params.get("value")
    if not isinstance(value, mx.array):
        _check_number("replace_with value", value)
    if params.get("align") not in (None, "left", "right"):
        raise InterventionError("replace_with align= must be None, 'left' or 'right'")


def _apply_add(x: mx.array, ctx: SiteContext, vector: mx.array) -> mx.array:
    if vector.ndim >= 1 and x.ndim >= 1 and vector.shape[-1] != x.shape[-1]:
        raise InterventionError(
            f"add_vector: the vector has {vector.shape[-1]} dimensions but {ctx.name!r} "
            f"produces {x.shape[-1]} (output shape {tuple(x.shape)})"
        )
    try:
        return x + mx.broadcast_to(vector.astype(x.dtype), x.shape)
    except ValueError:
        raise InterventionError(
            f"add_vector: a vector of shape {tuple(vector.shape)} does not broadcast to "
            f"{ctx.name!r}'s output of shape {tuple(x.shape)}; use a ({x.shape[-1]},) vector"
        ) from None


def _check_add(params: dict[str, Any]) -> None:
    if not isinstance(params.get("vector"), mx.array):
        raise InterventionError("add_vector needs an mx.array vector")


def _apply_clamp(
    x: mx.array, ctx: SiteContext, min_val: float | None = None, max_val: float | None = None
) -> mx.array:
    lo = -float("inf") if min_val is None else float(min_val)
    hi = float("inf") if max_val is None else float(max_val)
    return mx.clip(x, lo, hi)


def _check_clamp(params: dict[str, Any]) -> None:
    lo, hi = params.get("min_val"), params.get("max_val")
    _check_number("clamp min_val", lo, allow_none=True)
    _check_number("clamp max_val", hi, allow_none=True)
    if lo is None and hi is None:
        raise InterventionError("clamp needs min_val, max_val or both")
    if lo is not None and hi is not None and lo > hi:
        raise InterventionError(f"clamp min_val {lo} is above max_val {hi}")


def _apply_noise(
    x: mx.array, ctx: SiteContext, std: float = 0.1, seed: int | None = None
) -> mx.array:
    key = mx.random.key(seed) if seed is not None else None
    return x + (float(std) * mx.random.normal(x.shape, key=key)).astype(x.dtype)


def _check_noise(params: dict[str, Any]) -> None:
    _check_number("noise std", params.get("std"))
    if params["std"] < 0:
        raise InterventionError(f"noise std must be >= 0, got {params['std']}")
    check_seed("noise seed", params.get("seed"), InterventionError)


def _apply_compose(x: mx.array, ctx: SiteContext, steps: list[Intervention]) -> mx.array:
    for step in steps:
        x = _run(step, x, ctx)
    return x


def _apply_custom(x: mx.array, ctx: SiteContext, fn: InterventionFn) -> mx.array:
    return fn(x)


_KINDS: dict[str, _Kind] = {
    "zero_out": _Kind(lambda x, ctx: mx.zeros_like(x)),
    "scale": _Kind(
        lambda x, ctx, factor: x * float(factor),
        lambda p: _check_number("scale factor", p.get("factor")),
    ),
    "add_vector": _Kind(_apply_add, _check_add),
    "replace_with": _Kind(_apply_replace, _check_replace),
    "clamp": _Kind(_apply_clamp, _check_clamp),
    "noise": _Kind(_apply_noise, _check_noise),
    "compose": _Kind(_apply_compose),
    "custom": _Kind(_apply_custom),
}


# --------------------------------------------------------------------------- public API
zero_out = Intervention("zero_out")
"""Set the activation to zero (use as ``iv.zero_out``, or ``iv.zero_out.at(-1)``)."""


def scale(factor: float, positions: Positions = None) -> Intervention:
    """Multiply the activation by ``factor``."""
    return Intervention("scale", {"factor": factor}, positions)


def add_vector(vector: mx.array, positions: Positions = None) -> Intervention:
    """Add ``vector`` (broadcast over batch and positions): a steering vector."""
    return Intervention("add_vector", {"vector": vector}, positions)


def replace_with(
    value: mx.array | float, positions: Positions = None, align: str | None = None
) -> Intervention:
    """Replace the activation with ``value`` (array or scalar).

    An array from a run of another length raises a ``ValueError`` naming both shapes unless
    ``align='right'`` (patch the shared last tokens) or ``align='left'`` is given.
    """
    return Intervention("replace_with", {"value": value, "align": align}, positions)


def clamp(
    min_val: float | None = None, max_val: float | None = None, positions: Positions = None
) -> Intervention:
    """Clip the activation to ``[min_val, max_val]`` (either bound may be omitted)."""
    return Intervention("clamp", {"min_val": min_val, "max_val": max_val}, positions)


def noise(std: float = 0.1, seed: int | None = None, positions: Positions = None) -> Intervention:
    """Add Gaussian noise of standard deviation ``std`` (``seed`` makes it reproducible)."""
    return Intervention("noise", {"std": std, "seed": seed}, positions)


class InterventionComposer:
    """Chain interventions: ``compose().add(a).add(b).build()`` applies a, then b."""

    def __init__(self) -> None:
        self._steps: list[Intervention] = []

    def add(self, fn: InterventionFn) -> InterventionComposer:
        if not callable(fn):
            raise InterventionError(f"compose().add() needs a callable, got {fn!r}")
        self._steps.append(
            fn if isinstance(fn, Intervention) else Intervention("custom", {"fn": fn})
        )
        return self

    def build(self) -> Intervention:
        if not self._steps:
            raise InterventionError("compose() needs at least one .add(...) before .build()")
        return Intervention("compose", {"steps": list(self._steps)})


def compose() -> InterventionComposer:
    """Start a chain of interventions."""
    return InterventionComposer()


def is_serializable(fn: InterventionFn) -> bool:
    """Whether a session can save this intervention."""
    try:
        describe(fn)
    except NotSerializableError:
        return False
    return True


__all__ = [
    "Intervention",
    "InterventionComposer",
    "InterventionFn",
    "ReentryError",
    "SiteContext",
    "add_vector",
    "apply",
    "at_positions",
    "check_mapping",
    "clamp",
    "compose",
    "describe",
    "from_description",
    "is_serializable",
    "noise",
    "replace_with",
    "scale",
    "zero_out",
]
