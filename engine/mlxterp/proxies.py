"""Attribute-style access to modules and their outputs: ``model.layers[3].attn.output.save()``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .names import MODEL_OUTPUT

if TYPE_CHECKING:
    from .model import InterpretableModel


class OutputProxy:
    """The output of one module in the current trace; ``.save()`` returns and records it."""

    def __init__(self, model: InterpretableModel, canonical: str, key: str):
        self._model = model
        self._canonical = canonical
        self._key = key

    def save(self) -> Any:
        """Record the value in ``trace.saved_values[key]`` and return it (an ``mx.array``)."""
        return self._model._current_trace(self._key)._save(self._key, self._canonical)

    @property
    def value(self) -> Any:
        """The value without recording it."""
        trace = self._model._current_trace(self._key)
        value = trace.activations._values.get(self._canonical)
        if value is None:
            trace._save(self._key, self._canonical)  # raises the explanation
        return value

    def __repr__(self) -> str:
        return f"OutputProxy({self._key})"


class ModuleProxy:
    """A module of the wrapped model, by canonical name; children by attribute or alias.

    Attributes that are not child modules come from the module itself.
    """

    def __init__(self, model: InterpretableModel, canonical: str, display: str):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_canonical", canonical)
        object.__setattr__(self, "_display", display)

    @property
    def module(self):
        """The underlying ``mlx.nn.Module``."""
        return self._model._index.modules[self._canonical]

    @property
    def name(self) -> str:
        """Canonical name."""
        return self._canonical

    @property
    def output(self) -> OutputProxy:
        return OutputProxy(self._model, self._canonical, f"{self._display}.output")

    def _child(self, attr: str):
        index = self._model._index
        path = f"{self._canonical}.{attr}"
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
            kids = ", ".join(self._model._index.children(self._canonical)) or "none"
            raise AttributeError(
                f"{self._display} ({type(module).__name__}) has no attribute or submodule "
                f"{attr!r}; its submodules: {kids}"
            ) from None

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError("module proxies are read-only; use interventions to change outputs")

    def __dir__(self):
        return sorted(
            set(self._model._index.children(self._canonical)) | {"output", "module", "name"}
        )

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ModuleProxy({self._canonical}: {type(self.module).__name__})"


class ModuleListProxy:
    """A list of modules (``model.layers``): indexable, iterable, sized."""

    def __init__(self, model: InterpretableModel, path: str, display: str):
        self._model = model
        self._path = path
        self._display = display
        self._items = sorted(model._index.children(path), key=int)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(len(self)))]
        n = len(self)
        if not isinstance(idx, int) or not -n <= idx < n:
            raise IndexError(f"{self._display}[{idx!r}]: there are {n} entries (0..{n - 1})")
        i = idx % n
        return ModuleProxy(self._model, f"{self._path}.{self._items[i]}", f"{self._display}.{i}")

    def __iter__(self) -> Iterator[ModuleProxy]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path}, {len(self)} entries)"


class LayerListProxy(ModuleListProxy):
    """The model's transformer layers, as detected (or named by ``layer_attr``)."""

    def __init__(self, model: InterpretableModel):
        super().__init__(model, model._index.layer_path, "layers")


def model_output_proxy(model: InterpretableModel) -> OutputProxy:
    return OutputProxy(model, MODEL_OUTPUT, "output")
