"""Model summary and module tree; each node shows the shape of its last captured activation."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static, Tree
from textual.widgets.tree import TreeNode

from mlxterp.session import Step, display_token

from ..state import ModelView, WorkbenchState
from . import Pane

NodeData = tuple[str, str]  # (canonical name, module type)


SLOW_QUANTIZED = "quantized on a CPU, slow: start with --dequantize"


def model_summary(model: ModelView, name: str) -> str:
    """One line: name, layers, hidden size, vocabulary; and a hint where quantized layers
    run on CPU kernels."""
    summary = (
        f"{name}: {model.num_layers} layers, hidden {model.hidden_size}, vocab {model.vocab_size}"
    )
    return f"{summary}; {SLOW_QUANTIZED}" if model.quantized_on_cpu else summary


def trace_shapes(step: Step) -> dict[str, tuple[int, ...]]:
    """``{canonical_name: shape}`` of a live trace step (a reopened one has no activations)."""
    activations = getattr(step.result, "activations", None) or {}
    return {name: tuple(value.shape) for name, value in activations.items()}


class ModelPane(Pane):
    """Summary line, module tree, and the selected node's details."""

    KINDS = ("trace",)
    HOME = "#module-tree"
    HELP = (
        "The model: a summary line and its module tree, one node per module under its "
        "canonical name. ctrl+t traces the prompt: each node then shows the shape of its "
        "activation and the line below the tree the most likely next tokens. Enter on a node "
        "shows its details; i adds an intervention on it. ctrl+l loads another model: a "
        "session that has steps goes on only on the same model, else it asks first."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tree_nodes: dict[str, TreeNode[NodeData]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def compose(self) -> ComposeResult:
        yield Static("loading model…", id="model-info")
        tree: Tree[NodeData] = Tree("model", id="module-tree")
        yield tree
        yield Static("Select a module (Enter); i adds an intervention on it.", id="module-detail")

    def show_model(self, model: ModelView, name: str) -> None:
        """Fill the tree from ``model.named_modules()`` (canonical names)."""
        self.query_one("#model-info", Static).update(Text(model_summary(model, name)))
        tree: Tree[NodeData] = self.query_one("#module-tree", Tree)
        tree.clear()
        tree.root.set_label(Text(name))
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

    def show_failure(self, text: str) -> None:
        self.query_one("#model-info", Static).update(Text(f"no model: {text}"))

    def _node(self, tree: Tree[NodeData], full: str, kinds: dict[str, str]) -> TreeNode[NodeData]:
        """The node of ``full``, creating its parents (such as the plain list ``model.layers``)."""
        if full not in self._tree_nodes:
            parent_name, _, leaf = full.rpartition(".")
            parent = self._node(tree, parent_name, kinds) if parent_name else tree.root
            self._tree_nodes[full] = parent.add(Text(leaf), data=(full, kinds.get(full, "list")))
        return self._tree_nodes[full]

    def show_step(self, step: Step, state: WorkbenchState) -> None:
        self._shapes = trace_shapes(step)
        self._refresh_labels()
        summary = step.summary
        tokens = ", ".join(
            f"{display_token(t)} {p:.3f}"
            for t, p in zip(summary["top_tokens"], summary["top_probs"], strict=True)
        )
        self.query_one("#module-detail", Static).update(Text(f"next tokens: {tokens}"))

    def _refresh_labels(self) -> None:
        for name, node in self._tree_nodes.items():
            leaf = name.rpartition(".")[2]
            shape = self._shapes.get(name)
            node.set_label(Text(f"{leaf}  {tuple(shape)}" if shape is not None else leaf))

    def selected_module(self) -> str | None:
        """Canonical name of the node under the cursor, if any."""
        tree: Tree[NodeData] = self.query_one("#module-tree", Tree)
        node = tree.cursor_node
        return node.data[0] if node is not None and node.data else None

    def on_tree_node_selected(self, event: Tree.NodeSelected[NodeData]) -> None:
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
