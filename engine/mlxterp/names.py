"""The module-name contract: canonical names, the aliases that reach them, helpful errors.

Every module has one canonical name: its path as ``named_modules()`` of the wrapped model
gives it (mlx-lm llama: ``model.layers.3.self_attn``).  These also resolve to it:

* the seeds' prefixed form, ``model.`` + canonical (``model.model.layers.3.self_attn``);
* the short form from the layer list (``layers.3.self_attn``, also ``h.3`` on GPT-2);
* role aliases: ``attn`` for a layer's attention module whatever the architecture calls it,
  ``mlp`` for its feed-forward block (and each real name works where another is used);
* a unique dotted suffix of a canonical name (``self_attn.q_proj`` is ambiguous, but
  ``3.self_attn.q_proj`` is not).

Segments may be shell-style globs (``layers.*.mlp``) where several matches are wanted.

Attention modules with a per-head layout (``mlxterp.heads``) also have virtual names that
reach no module but a computed value: ``<attn>.heads`` (all heads) and ``<attn>.heads.<h>``
(``layers.5.attn.heads.2``), canonical as ``model.layers.5.self_attn.heads.2``.  They are
not in ``modules``; ``head_sites`` maps each to its layout and head.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable

import mlx.nn as nn

from .errors import LayerIndexError, ModelAttributeError, ModuleNameError
from .heads import HEADS, HeadLayout, find_layouts

MODEL_OUTPUT = "__model_output__"

# Role alias groups: any member reaches whichever member a layer actually has.
ROLE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("self_attn", "attn", "attention", "self_attention", "mixer"),
    ("mlp", "feed_forward", "ffn", "mlp_block", "block_sparse_moe"),
)
_ROLE_OF = {name: group for group in ROLE_GROUPS for name in group}
_PREFERRED_LAYER_LISTS = ("layers", "h", "blocks", "layer", "decoder_layers")


def _is_glob(segment: str) -> bool:
    return any(ch in segment for ch in "*?[")


class ModuleIndex:
    """Canonical names of a model's modules and the resolution of every alias to them."""

    def __init__(self, root: nn.Module, layer_attr: str | None = None):
        found = {name: module for name, module in root.named_modules() if name}
        self.modules: dict[str, nn.Module] = {
            name: found[name] for name in sorted(found, key=_natural_key)
        }
        self._children: dict[str, list[str]] = {}
        for name in self.modules:
            parts = name.split(".")
            for depth in range(len(parts)):
                parent = ".".join(parts[:depth])
                child = parts[depth]
                kids = self._children.setdefault(parent, [])
                if child not in kids:
                    kids.append(child)
        self.layer_path = self._find_layer_list(layer_attr)
        self.num_layers = len(self._layer_children()) if self.layer_path else 0
        self._cache: dict[str, str] = {}
        self._order = {name: i for i, name in enumerate(self.modules)}
        self.heads: dict[str, HeadLayout] = find_layouts(self._attention_modules())
        """Per-head layout of each attention module that has one, by canonical name."""
        self.head_sites: dict[str, tuple[HeadLayout, int | None]] = {
            name: (layout, None if n == 0 else n - 1)
            for layout in self.heads.values()
            for n, name in enumerate(layout.names)
        }
        """Every head name (canonical) -> its layout and head (None: all heads)."""

    def _attention_modules(self) -> dict[str, nn.Module]:
        """Each layer's attention module (by role alias), canonical name -> module."""
        found: dict[str, nn.Module] = {}
        for i in range(self.num_layers):
            for path in self.step(self.layer_name(i), "attn"):
                if path in self.modules:
                    found[path] = self.modules[path]
        return found

    # ----------------------------------------------------------------- layer list
    def _list_paths(self) -> list[str]:
        """Paths whose children are all integer indices: lists of modules."""
        return [
            path
            for path, kids in self._children.items()
            if path and kids and all(k.isdigit() for k in kids)
        ]

    def _layer_children(self) -> list[str]:
        if not self.layer_path:
            return []
        return sorted(self._children.get(self.layer_path, []), key=int)

    def _find_layer_list(self, layer_attr: str | None) -> str | None:
        lists = self._list_paths()
        if layer_attr is not None:
            exact = [p for p in lists if p == layer_attr]
            ending = [p for p in lists if p.endswith("." + layer_attr)]
            found = exact or sorted(ending, key=lambda p: p.count("."))
            if not found:
                hint = ", ".join(repr(p) for p in lists) or "none"
                raise ModelAttributeError(
                    f"layer_attr={layer_attr!r}: the model has no list of modules there. "
                    f"Lists of modules it has: {hint}. Leave layer_attr out to detect it."
                )
            return found[0]
        if not lists:
            return None

        def rank(path: str) -> tuple[bool, int, int]:
            last = path.rsplit(".", 1)[-1]
            preferred = last in _PREFERRED_LAYER_LISTS
            return (not preferred, -len(self._children[path]), path.count("."))

        return sorted(lists, key=rank)[0]

    def layer_name(self, index: int) -> str:
        """Canonical name of layer ``index`` (negative indices count from the end)."""
        if not self.layer_path:
            raise ModelAttributeError(
                "this model has no detected layer list; pass layer_attr= to name it"
            )
        n = self.num_layers
        if not -n <= index < n:
            raise LayerIndexError(f"layer {index} out of range: the model has {n} layers")
        return f"{self.layer_path}.{index % n}"

    def layer_index_of(self, canonical: str) -> int | None:
        """The layer a canonical name sits in, or None outside the layer list."""
        if not self.layer_path or not canonical.startswith(self.layer_path + "."):
            return None
        return int(canonical[len(self.layer_path) + 1 :].split(".")[0])

    def short_name(self, canonical: str) -> str:
        """``layers.3.self_attn`` for ``model.layers.3.self_attn``; the canonical name elsewhere."""
        if self.layer_path and canonical.startswith(self.layer_path + "."):
            return "layers" + canonical[len(self.layer_path) :]
        return canonical

    def children(self, path: str) -> list[str]:
        """Names of the direct children of ``path`` ("" is the root)."""
        return list(self._children.get(path, []))

    # ----------------------------------------------------------------- resolution
    def step(self, path: str, segment: str) -> list[str]:
        """Canonical paths one name segment (alias or glob) reaches below ``path``."""
        kids = self._children.get(path, [])
        if _is_glob(segment):
            return [_join(path, k) for k in kids if fnmatch.fnmatchcase(k, segment)]
        if segment in kids:
            return [_join(path, segment)]
        for alias in _ROLE_OF.get(segment, ()):
            if alias in kids:
                return [_join(path, alias)]
        return []

    def _walk(self, start: str, segments: list[str]) -> list[str]:
        frontier = [start]
        for segment in segments:
            frontier = [nxt for path in frontier for nxt in self.step(path, segment)]
            if not frontier:
                return []
        return [p for p in frontier if p in self.modules]

    def _interpretations(self, name: str) -> Iterable[tuple[str, list[str]]]:
        segments = name.split(".")
        yield "", segments
        if segments[0] == "model" and len(segments) > 1:
            yield "", segments[1:]
        if self.layer_path and len(segments) > 1:
            list_attr = self.layer_path.rsplit(".", 1)[-1]
            if segments[0] in ("layers", list_attr):
                yield self.layer_path, segments[1:]

    def match(self, pattern: str) -> list[str]:
        """Every canonical name a name or glob pattern reaches, in model order."""
        if pattern == MODEL_OUTPUT:
            return [MODEL_OUTPUT]
        if pattern in self.head_sites:
            return [pattern]
        found: set[str] = set()
        for start, segments in self._interpretations(pattern):
            found.update(self._walk(start, segments))
        if not found and not _is_glob(pattern):
            found.update(n for n in self.modules if n.endswith("." + pattern))
        if not found and _is_glob(pattern):
            found.update(n for n in self.modules if fnmatch.fnmatchcase(n, "*" + pattern))
        if not found and HEADS in pattern.split("."):
            return self._match_heads(pattern)
        return sorted(found, key=self._order.__getitem__)

    def _match_heads(self, pattern: str) -> list[str]:
        """Head names a pattern such as ``layers.*.attn.heads.*`` reaches (module order)."""
        owner, tail = _split_heads(pattern)
        if owner is None:
            return []
        found: list[str] = []
        for attn in self.match(owner):
            layout = self.heads.get(attn)
            if layout is None:
                continue
            if tail is None:
                found.append(layout.name)
            else:
                found.extend(
                    layout.head_name(h)
                    for h in range(layout.n_heads)
                    if fnmatch.fnmatchcase(str(h), tail)
                )
        return found

    def resolve(self, name: str) -> str:
        """The canonical name of one module; ``ModuleNameError`` (a KeyError) otherwise."""
        if name in self._cache:
            return self._cache[name]
        if not isinstance(name, str) or not name:
            raise ModuleNameError(f"module name must be a non-empty string, got {name!r}")
        if name == MODEL_OUTPUT or name in self.modules or name in self.head_sites:
            self._cache[name] = name
            return name
        if _is_glob(name):
            raise ModuleNameError(
                f"{name!r} is a pattern; one module is wanted here (use capture= for patterns)"
            )
        exact: set[str] = set()
        for start, segments in self._interpretations(name):
            exact.update(self._walk(start, segments))
        if len(exact) == 1:
            found = exact.pop()
        else:
            candidates = sorted(exact) or [n for n in self.modules if n.endswith("." + name)]
            if len(candidates) == 1:
                found = candidates[0]
            elif candidates:
                shown = ", ".join(candidates[:8]) + (" ..." if len(candidates) > 8 else "")
                raise ModuleNameError(
                    f"module name {name!r} is ambiguous; it could be: {shown}", candidates
                )
            elif HEADS in name.split("."):
                found = self._resolve_head(name)
            else:
                raise self.unknown(name)
        self._cache[name] = found
        return found

    def _resolve_head(self, name: str) -> str:
        """The canonical head name for ``<attention module>.heads[.<h>]``, or the error
        saying which part is wrong."""
        owner, tail = _split_heads(name)
        if owner is None:
            raise self.unknown(name)
        attn = self.resolve(owner)
        layout = self.heads.get(attn)
        if layout is None:
            examples = ", ".join(f"{self.short_name(a)}.{HEADS}.0" for a in list(self.heads)[:2])
            where = (
                f"; heads are named on attention modules, e.g. {examples}"
                if examples
                else (
                    "; this model has no attention module whose output projection splits into heads"
                )
            )
            raise ModuleNameError(f"{name!r}: {attn} has no per-head outputs{where}")
        if tail is None:
            return layout.name
        last = layout.n_heads - 1
        valid = [layout.head_name(h) for h in range(layout.n_heads)]
        if not tail.isdigit() or int(tail) > last:
            raise ModuleNameError(
                f"{name!r}: head {tail!r} does not exist; {self.short_name(attn)} has "
                f"{layout.n_heads} heads, numbered 0..{last}",
                valid,
            )
        return layout.head_name(int(tail))

    def unknown(self, name: str) -> ModuleNameError:
        """The error for a name that reaches no module, listing the closest real names."""
        pool = list(self.modules) + [self.short_name(n) for n in self.modules]
        close = difflib.get_close_matches(name, pool, n=5, cutoff=0.5)
        if not close:
            tail = name.rsplit(".", 1)[-1]
            close = [n for n in pool if n.endswith("." + tail)][:5]
        hint = f" Did you mean: {', '.join(dict.fromkeys(close))}?" if close else ""
        examples = ", ".join(list(self.modules)[:3])
        return ModuleNameError(
            f"unknown module name {name!r}.{hint} (model.named_modules() lists every name, "
            f"e.g. {examples})",
            list(dict.fromkeys(close)),
        )


def _split_heads(name: str) -> tuple[str | None, str | None]:
    """``("layers.5.attn", "2")`` for ``layers.5.attn.heads.2``; ``(owner, None)`` for
    ``owner.heads``; ``(None, None)`` when the name is not of that form."""
    parts = name.split(".")
    at = len(parts) - 1 - parts[::-1].index(HEADS)
    if at == 0 or len(parts) - at > 2:
        return None, None
    return ".".join(parts[:at]), (parts[at + 1] if at + 1 < len(parts) else None)


def _natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def _join(path: str, child: str) -> str:
    return f"{path}.{child}" if path else child
