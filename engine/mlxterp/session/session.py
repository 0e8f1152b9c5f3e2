"""Sessions: a model reference, an ordered history of steps, and the active interventions."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlx.core as mx

from .. import __version__
from ..errors import ModelLoadError, NotSerializableError
from ..interventions import describe
from ..loading import resolve_reference
from ..model import InterpretableModel
from . import storage
from .steps import describe_params, kind, restore
from .storage import SessionError


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class SessionManager:
    """Loads each model once and keeps it while sessions come and go."""

    def __init__(self) -> None:
        self._models: dict[str, InterpretableModel] = {}
        self._lock = threading.Lock()  # workers may ask for the same model at once

    def model(self, ref: str) -> InterpretableModel:
        """The model for ``ref`` ("demo", a folder, a hub id), loaded on first use."""
        with self._lock:
            if ref not in self._models:
                try:
                    self._models[ref] = InterpretableModel(ref)
                except ModelLoadError as err:
                    raise SessionError(f"the session's model cannot be loaded: {err}") from err
            return self._models[ref]

    def add(self, ref: str, model: InterpretableModel) -> None:
        """Register an already-loaded model under ``ref``."""
        self._models[ref] = model


def fingerprint(ref: str) -> str | None:
    """sha256 of the model folder's config.json (None for hub ids not on disk)."""
    where = resolve_reference(ref)
    config = Path(where) / "config.json" if isinstance(where, Path) else None
    if config is None or not config.is_file():
        return None
    return hashlib.sha256(config.read_bytes()).hexdigest()[:16]


def parameter_count(model: InterpretableModel) -> int:
    """How many numbers the model's weights hold (the second half of the fingerprint)."""
    return sum(v.size for v in model.parameters().values())


@dataclass
class Step:
    """One recorded action: its inputs, a summary of its result, and the live result."""

    index: int
    kind: str
    params: dict[str, Any]
    summary: dict[str, Any]
    created: str = field(default_factory=_now)
    result: Any = None  # live only; not saved

    def title(self) -> str:
        """A one-line description for lists."""
        p = self.params
        main = (
            p.get("text")
            or p.get("prompt")
            or p.get("clean")
            or p.get("module")
            or p.get("action", "")
        )
        return f"{self.index:>2} {self.kind}: {str(main)[:48]}"


class Session:
    """A model reference, an ordered list of steps and the interventions now active."""

    def __init__(
        self,
        model_ref: str,
        path: str | Path | None = None,
        manager: SessionManager | None = None,
    ):
        self.model_ref = model_ref
        self.path = Path(path) if path is not None else None
        self.manager = manager
        self.steps: list[Step] = []
        self.interventions: dict[str, Callable] = {}
        self.created = _now()
        self.fingerprint = fingerprint(model_ref)
        self.parameters: int | None = None

    @classmethod
    def new(
        cls,
        model_ref: str,
        path: str | Path | None = None,
        manager: SessionManager | None = None,
    ) -> Session:
        """An empty session on ``model_ref``; autosaves to ``path`` after each step if given."""
        return cls(model_ref, path, manager)

    # ------------------------------------------------------------------ running
    def run(self, manager: SessionManager, kind_name: str, **params: Any) -> Step:
        """Run a step on the session's model, record it, autosave; returns the step."""
        self.manager = manager
        step_kind = kind(kind_name)
        full = step_kind.complete(params)
        if kind_name == "interventions" and callable(full.get("intervention")):
            full["intervention"] = self._describe(full["intervention"], full.get("module"))
        model = manager.model(self.model_ref)
        if self.parameters is None:
            self.parameters = parameter_count(model)
        result, summary = step_kind.execute(model, full, self.interventions)
        step = Step(len(self.steps), kind_name, describe_params(full), summary, result=result)
        self.steps.append(step)
        if self.path is not None:
            self.save()
        return step

    def _describe(self, fn: Callable, module: str | None) -> dict:
        try:
            return describe(fn)
        except NotSerializableError as err:
            raise NotSerializableError(
                f"step {len(self.steps)} (interventions on {module!r}) cannot be recorded: {err}"
            ) from None

    def set_intervention(self, module: str, fn: Callable) -> Step:
        """Make ``fn`` active on ``module`` for the following trace, lens and generate steps."""
        return self.run(
            self._manager(), "interventions", action="set", module=module, intervention=fn
        )

    def remove_intervention(self, module: str) -> Step:
        return self.run(self._manager(), "interventions", action="remove", module=module)

    def clear_interventions(self) -> Step:
        return self.run(self._manager(), "interventions", action="clear")

    def _manager(self) -> SessionManager:
        if self.manager is None:
            self.manager = SessionManager()
        return self.manager

    # ------------------------------------------------------------------ files
    def to_document(self) -> tuple[dict[str, Any], dict[str, mx.array]]:
        """The TOML-ready document and the arrays for its sidecar."""
        arrays: dict[str, mx.array] = {}
        steps = []
        for step in self.steps:
            prefix = f"steps.{step.index}"
            steps.append(
                {
                    "kind": step.kind,
                    "created": step.created,
                    "params": storage.encode_arrays(step.params, f"{prefix}.params", arrays),
                    "summary": storage.encode_arrays(step.summary, f"{prefix}.summary", arrays),
                }
            )
        model = {"ref": self.model_ref}
        if self.fingerprint:
            model["fingerprint"] = self.fingerprint
        if self.parameters is not None:
            model["parameters"] = self.parameters
        document = {
            "format": storage.FORMAT,
            "model": model,
            "meta": {"created": self.created, "updated": _now(), "mlxterp": __version__},
            "steps": steps,
        }
        return document, arrays

    def save(self, path: str | Path | None = None) -> Path:
        """Write the session (atomically) to ``path`` or its own path; returns the path."""
        if path is not None:
            self.path = Path(path)
        if self.path is None:
            raise SessionError("this session has no file yet: save(path)")
        document, arrays = self.to_document()
        storage.write(self.path, document, arrays)
        return self.path

    @classmethod
    def load(cls, path: str | Path, manager: SessionManager | None = None) -> Session:
        """Read and check a session file (data only: nothing in it is executed); the
        interventions its steps left active are active again."""
        document, arrays = storage.read(Path(path))
        session = cls(document["model"]["ref"], path, manager)
        session.fingerprint = document["model"].get("fingerprint")
        session.parameters = document["model"].get("parameters")
        session.created = document.get("meta", {}).get("created", session.created)
        for i, raw in enumerate(document.get("steps", [])):
            try:
                step = Step(
                    i,
                    raw["kind"],
                    storage.decode_arrays(raw.get("params", {}), arrays),
                    storage.decode_arrays(raw.get("summary", {}), arrays),
                    raw.get("created", ""),
                )
                kind(step.kind).complete(step.params)  # unknown kind, names or types raise
                if step.kind == "interventions":
                    restore(session.interventions, step.params, step.summary)
            except SessionError as err:
                raise SessionError(f"{Path(path).name}, step {i}: {err}") from None
            session.steps.append(step)
        return session

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"Session({self.model_ref}, {len(self.steps)} steps{where})"


def summary_text(step: Step) -> str:
    """The step's summary as indented JSON (arrays shown by shape)."""

    def plain(v):
        if isinstance(v, mx.array):
            return f"<array {tuple(v.shape)}>"
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    return json.dumps(plain(step.summary), indent=1, ensure_ascii=False)
