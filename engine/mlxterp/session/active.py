"""The session's intervention list: ordered entries, each enabled or disabled.

An ``interventions`` step changes the list with one action: ``set`` (add, or replace the
one on that module), ``remove``, ``clear``, ``enable`` or ``disable``.  Entries keep their
description (what a session file stores) beside the live callable rebuilt from it; the
enabled ones are what traces run under.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import interventions as iv
from ..errors import InterventionError, SessionError

ACTIONS = ("set", "remove", "clear", "enable", "disable")

InterventionFn = Callable[[Any], Any]


@dataclass(frozen=True)
class InterventionEntry:
    """One intervention of a session: the module it acts on, its description, and whether
    it is enabled (a disabled one stays listed but does not act)."""

    module: str
    description: dict[str, Any]
    enabled: bool = True


@dataclass(frozen=True)
class InterventionKind:
    """A built-in intervention kind: its parameters (in order) and which of them are
    required; a description is ``{"kind": name, "params": {...}, "positions": [...]}``."""

    name: str
    params: tuple[str, ...]
    required: tuple[str, ...]
    doc: str


def _kind(name: str) -> InterventionKind:
    made = getattr(iv, name)
    if isinstance(made, iv.Intervention):  # zero_out is an instance, not a constructor
        return InterventionKind(name, (), (), "Set the activation to zero.")
    taken = [p for p in inspect.signature(made).parameters.values() if p.name != "positions"]
    return InterventionKind(
        name,
        tuple(p.name for p in taken),
        tuple(p.name for p in taken if p.default is inspect.Parameter.empty),
        (inspect.getdoc(made) or "").splitlines()[0],
    )


INTERVENTION_KINDS: dict[str, InterventionKind] = {
    k.name: k
    for k in map(_kind, ("zero_out", "scale", "add_vector", "replace_with", "clamp", "noise"))
}
INTERVENTION_KINDS["compose"] = InterventionKind(
    "compose", ("steps",), ("steps",), "Apply each description of steps in turn."
)


def intervention_from_description(description: dict[str, Any]) -> InterventionFn:
    """The intervention a description names (``{"kind": "scale", "params": {"factor":
    0.5}}``), checked; ``InterventionError`` saying what is wrong otherwise."""
    try:
        return iv.from_description(description)
    except InterventionError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        raise InterventionError(f"not a valid intervention description: {err}") from None


class InterventionList:
    """Ordered module -> (entry, callable); changed only through :meth:`apply`."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[InterventionEntry, InterventionFn]] = {}

    def copy(self) -> InterventionList:
        twin = InterventionList()
        twin._items = dict(self._items)
        return twin

    def entries(self) -> list[InterventionEntry]:
        return [entry for entry, _ in self._items.values()]

    def enabled(self) -> dict[str, InterventionFn]:
        """What traces run under: module -> callable, the enabled entries only."""
        return {name: fn for name, (entry, fn) in self._items.items() if entry.enabled}

    def summary(self) -> dict[str, str]:
        """The enabled interventions as text (what a step's summary records)."""
        return {name: repr(fn) for name, fn in self.enabled().items()}

    def canonicalize(self, resolve: Callable[[str], str]) -> None:
        """Key every entry by ``resolve(module)`` (a file may name a module by an alias),
        in the same order; an entry whose name does not resolve keeps it."""
        items: dict[str, tuple[InterventionEntry, InterventionFn]] = {}
        for name, (entry, fn) in self._items.items():
            try:
                canonical = resolve(name)
            except KeyError:
                canonical = name
            items[canonical] = (
                InterventionEntry(canonical, entry.description, entry.enabled),
                fn,
            )
        self._items = items

    def apply(self, action: str, module: str | None, description: Any = None) -> None:
        """One ``interventions`` step's change; ``SessionError`` when it cannot apply."""
        if action == "clear":
            self._items.clear()
            return
        if action not in ACTIONS:
            raise SessionError(f"unknown interventions action {action!r}; known: {ACTIONS}")
        if module is None:
            raise SessionError(f"interventions action {action!r} needs module=")
        if action == "set":
            if not isinstance(description, dict):
                raise SessionError("interventions action 'set' needs intervention=")
            try:
                fn = intervention_from_description(description)
            except InterventionError as err:
                raise SessionError(f"the intervention on {module!r} is not valid: {err}") from None
            self._items[module] = (InterventionEntry(module, description), fn)
            return
        if module not in self._items:
            listed = ", ".join(self._items) or "none"
            raise SessionError(
                f"cannot {action} the intervention on {module!r}: there is none "
                f"(interventions: {listed})"
            )
        if action == "remove":
            del self._items[module]
        else:
            entry, fn = self._items[module]
            self._items[module] = (
                InterventionEntry(entry.module, entry.description, action == "enable"),
                fn,
            )
