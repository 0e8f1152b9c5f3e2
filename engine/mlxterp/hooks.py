"""Reversible hooks on MLX modules.

MLX looks ``__call__`` up on the class, so a hook cannot be set on an instance.  For the
duration of a forward pass each hooked module's class is swapped for a cached subclass
whose ``__call__`` runs the original and hands the output to a *site* (capture,
intervention); an :class:`InputSite` is handed the call's positional arguments as well
(per-head outputs are computed from an output projection's input).  Restoring the class
afterwards returns the model to exactly what it was: the parameter tree is never touched,
no wrapper module is inserted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .errors import TraceError

# Output handler of one hooked module: receives the module's output (an array, a tuple, or
# whatever the module returns), returns what the model should see instead.
Site = Callable[[Any], Any]
# Puts a new array where a module's output held its primary one.
Rebuild = Callable[[mx.array], Any]


class InputSite:
    """A site that also sees what the module was called with: ``fn(output, args)``."""

    def __init__(self, fn: Callable[[Any, tuple[Any, ...]], Any]):
        self.fn = fn

    def __call__(self, out: Any, args: tuple[Any, ...] = ()) -> Any:
        return self.fn(out, args)


_SITES: dict[int, Site] = {}
_HOOKED_CLASSES: dict[type, type] = {}
_LOCK = threading.Lock()


def _hooked_class(cls: type) -> type:
    hooked = _HOOKED_CLASSES.get(cls)
    if hooked is not None:
        return hooked
    original_call = cls.__call__

    def __call__(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        out = original_call(self, *args, **kwargs)
        site = _SITES.get(id(self))
        if site is None:
            return out
        return site(out, args) if isinstance(site, InputSite) else site(out)

    hooked = type(cls.__name__, (cls,), {"__call__": __call__, "_mlxterp_original": cls})
    hooked.__qualname__ = cls.__qualname__
    hooked.__module__ = cls.__module__
    _HOOKED_CLASSES[cls] = hooked
    return hooked


def primary_array(out: Any) -> tuple[mx.array, Rebuild] | None:
    """The array a module returns (the first one of a tuple) and how to put a new one back.

    None for outputs that hold no array.
    """
    if isinstance(out, mx.array):
        return out, lambda a: a
    if isinstance(out, tuple) and out and isinstance(out[0], mx.array):
        return out[0], lambda a: (a, *tuple(out[1:]))
    return None


@contextmanager
def hooked(sites: list[tuple[nn.Module, Site]]) -> Iterator[None]:
    """Hook each module with its site for the duration of the block, then restore it.

    (MLX modules are dicts, hence unhashable: sites come as pairs.)  Restoration happens
    whatever the block raised.
    """
    items = list(sites)
    installed: list[tuple[nn.Module, type]] = []
    try:
        with _LOCK:
            for module, site in items:
                cls = type(module)
                if id(module) in _SITES or hasattr(cls, "_mlxterp_original"):
                    raise TraceError(
                        f"module {cls.__name__} is already hooked by another trace; "
                        "traces of one model cannot overlap"
                    )
                _SITES[id(module)] = site
                module.__class__ = _hooked_class(cls)
                installed.append((module, cls))
        yield
    finally:
        with _LOCK:
            for module, cls in installed:
                module.__class__ = cls
                _SITES.pop(id(module), None)
