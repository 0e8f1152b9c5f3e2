"""Attribute-style access to modules and their outputs: ``model.layers[3].attn.output.save()``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, overload

import mlx.core as mx
import mlx.nn as nn

from .errors import LayerIndexError, ModelAttributeError
from .heads import HEADS, HeadLayout
from .tracing import current_trace

if TYPE_CHECKING:
    from .model import InterpretableModel


class OutputProxy:
    """The output of one module in the current trace; ``.save()`` returns and records it."""

    def __init__(self, model: InterpretableModel, canonical: str, key: str):
        self._model = model
        self._canonical = canonical
        self._key = key

    def save(self) -> mx.array:
        """Record the value in ``trace.saved_values[key]`` and return it (an ``mx.array``)."""
        return current_trace(self._model, self._key).save_output(self._key, self._canonical)

    def __repr__(self) -> str:
        return f"OutputProxy({self._key})"


class ModuleProxy:
    """A module of the wrapped model, by canonical name; children by attribute or alias.

    Attributes that are not child modules come from the module itself.
    """

    _model: InterpretableModel
    _canonical: str
    _display: str

    def __init__(self, model: InterpretableModel, canonical: str, display: str):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_canonical", canonical)
        object.__setattr__(self, "_display", display)

    @property
    def module(self) -> nn.Module:
        """The underlying ``mlx.nn.Module``."""
        return self._model.module_index.modules[self._canonical]

    @property
    def name(self) -> str:
        """Canonical name."""
        return self._canonical

    @property
    def output(self) -> OutputProxy:
        return OutputProxy(self._model, self._canonical, f"{self._display}.output")

    def _child(self, attr: str) -> ModuleProxy | ModuleListProxy | HeadsProxy | None:
        index = self._model.module_index
        path = f"{self._canonical}.{attr}"
        layout = index.heads.get(self._canonical)
        if attr == HEADS and layout is not None and path not in index.modules:
            return HeadsProxy(self._model, layout, f"{self._display}.{attr}")
        if path in index.modules:
            return ModuleProxy(self._model, path, f"{self._display}.{attr}")
        kids = index.children(path)
        if kids and all(k.isdigit() for k in kids):
            return ModuleListProxy(self._model, path, f"{self._display}.{attr}")
        found = index.step(self._canonical, attr)  # role aliases (attn <-> self_attn ...)
        if len(found) == 1 and found[0] in index.modules:
            return ModuleProxy(self._model, found[0], f"{self._display}.{attr}")
        return None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        child = self._child(attr)
        if child is not None:
            return child
        module = self.module
        try:
            return getattr(module, attr)
        except AttributeError:
            kids = ", ".join(self._model.module_index.children(self._canonical)) or "none"
            raise ModelAttributeError(
                f"{self._display} ({type(module).__name__}) has no attribute or submodule "
                f"{attr!r}; its submodules: {kids}"
            ) from None

    def __setattr__(self, attr: str, value: Any) -> None:
        raise ModelAttributeError(
            "module proxies are read-only; use interventions to change outputs"
        )

    def __dir__(self) -> list[str]:
        return sorted(
            set(self._model.module_index.children(self._canonical)) | {"output", "module", "name"}
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ModuleProxy({self._canonical}: {type(self.module).__name__})"


class HeadProxy:
    """One attention head (``model.layers[5].attn.heads[2]``): its share of the output."""

    def __init__(self, model: InterpretableModel, canonical: str, display: str):
        self._model = model
        self.name = canonical
        self._display = display

    @property
    def output(self) -> OutputProxy:
        """This head's share of the attention output (capture it: ``capture=[...]``)."""
        return OutputProxy(self._model, self.name, f"{self._display}.output")

    def __repr__(self) -> str:
        return f"HeadProxy({self.name})"


class HeadsProxy:
    """The heads of an attention module (``model.layers[5].attn.heads``): ``.output`` is
    all of them ``(batch, seq, heads, hidden)``, ``[h]`` one head; see ``mlxterp.heads``."""

    def __init__(self, model: InterpretableModel, layout: HeadLayout, display: str):
        self._model = model
        self._layout = layout
        self._display = display
        self.name = layout.name

    @property
    def output(self) -> OutputProxy:
        """All heads' shares of the attention output (capture them: ``capture=[...]``)."""
        return OutputProxy(self._model, self.name, f"{self._display}.output")

    def __len__(self) -> int:
        return self._layout.n_heads

    def __getitem__(self, head: int) -> HeadProxy:
        n = self._layout.n_heads
        if not isinstance(head, int) or not -n <= head < n:
            raise LayerIndexError(f"{self._display}[{head!r}]: there are {n} heads (0..{n - 1})")
        h = head % n
        return HeadProxy(self._model, self._layout.head_name(h), f"{self._display}.{h}")

    def __iter__(self) -> Iterator[HeadProxy]:
        return (self[h] for h in range(len(self)))

    def __repr__(self) -> str:
        return f"HeadsProxy({self.name}, {len(self)} heads)"


class ModuleListProxy:
    """A list of modules (``model.layers``): indexable, iterable, sized."""

    def __init__(self, model: InterpretableModel, path: str, display: str):
        self._model = model
        self._path = path
        self._display = display
        self._items = sorted(model.module_index.children(path), key=int)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, idx: int) -> ModuleProxy: ...
    @overload
    def __getitem__(self, idx: slice) -> list[ModuleProxy]: ...
    def __getitem__(self, idx: int | slice) -> ModuleProxy | list[ModuleProxy]:
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(len(self)))]
        n = len(self)
        if not isinstance(idx, int) or not -n <= idx < n:
            raise LayerIndexError(f"{self._display}[{idx!r}]: there are {n} entries (0..{n - 1})")
        i = idx % n
        return ModuleProxy(self._model, f"{self._path}.{self._items[i]}", f"{self._display}.{i}")

    def __iter__(self) -> Iterator[ModuleProxy]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path}, {len(self)} entries)"


class LayerListProxy(ModuleListProxy):
    """The model's transformer layers, as detected (or named by ``layer_attr``)."""

    def __init__(self, model: InterpretableModel, path: str):
        super().__init__(model, path, "layers")
