"""Model summary and module tree; each node shows the shape of its last captured activation."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static, Tree
from textual.widgets.tree import TreeNode


def model_summary(model: Any, name: str) -> str:
    """One line: name, layers, hidden size, vocabulary."""
    return (
        f"{name}: {model.num_layers} layers, hidden {model.hidden_size}, vocab {model.vocab_size}"
    )


class ModelPane(Vertical):
    """Summary line, module tree, and the selected node's details."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._tree_nodes: dict[str, TreeNode] = {}
        self._shapes: dict[str, tuple] = {}

    def compose(self) -> ComposeResult:
        yield Static("loading model…", id="model-info")
        yield Tree("model", id="module-tree")
        yield Static("Select a module (Enter); i adds an intervention on it.", id="module-detail")

    def show_model(self, model: Any, name: str) -> None:
        """Fill the tree from ``model.named_modules()`` (canonical names)."""
        self.query_one("#model-info", Static).update(model_summary(model, name))
        tree = self.query_one("#module-tree", Tree)
        tree.clear()
        tree.root.set_label(name)
        tree.root.data = None
        self._tree_nodes = {}
        kinds = {full: type(module).__name__ for full, module in model.named_modules() if full}
        for full in kinds:
            self._node(tree, full, kinds)
        for node in self._tree_nodes.values():
            node.allow_expand = bool(node.children)
        tree.root.expand()
        for full, node in self._tree_nodes.items():
            if full.count(".") <= 1 and not full.rpartition(".")[2].isdigit():
                node.expand()
        self._refresh_labels()

    def _node(self, tree: Tree, full: str, kinds: dict[str, str]) -> TreeNode:
        """The node of ``full``, creating its parents (such as the plain list ``model.layers``)."""
        if full not in self._tree_nodes:
            parent_name, _, leaf = full.rpartition(".")
            parent = self._node(tree, parent_name, kinds) if parent_name else tree.root
            self._tree_nodes[full] = parent.add(leaf, data=(full, kinds.get(full, "list")))
        return self._tree_nodes[full]

    def show_shapes(self, shapes: dict[str, tuple]) -> None:
        """Label nodes with ``{canonical_name: shape}`` of the last trace."""
        self._shapes = dict(shapes)
        self._refresh_labels()

    def _refresh_labels(self) -> None:
        for name, node in self._tree_nodes.items():
            leaf = name.rpartition(".")[2]
            shape = self._shapes.get(name)
            node.set_label(f"{leaf}  {tuple(shape)}" if shape is not None else leaf)

    def selected_module(self) -> str | None:
        """Canonical name of the node under the cursor, if any."""
        node = self.query_one("#module-tree", Tree).cursor_node
        return node.data[0] if node is not None and node.data else None

    def on_tree_node_selected(self, event: Tree.NodeSelected) -> None:
        if not event.node.data:
            return
        name, kind = event.node.data
        shape = self._shapes.get(name)
        shown = (
            f"shape {tuple(shape)}" if shape is not None else "no activation yet (ctrl+t traces)"
        )
        self.query_one("#module-detail", Static).update(
            Text(f"{name} ({kind}) — {shown} — i: intervene here")
        )
