"""Sessions: a model reference, an ordered history of steps, and the intervention list.

A step is computed (``Session.compute``: runs on the model, touches no session state, safe
from a worker thread) and then recorded (``Session.record``: appended, its change to the
interventions applied, autosaved); ``Session.run`` does both.  Steps run one at a time in a
process, whichever session or thread asks (see :mod:`.locking`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlx.core as mx

from .. import __version__, gguf
from ..errors import InputError, ModelLoadError, NotSerializableError, SessionError
from ..inputs import is_chat
from ..interventions import describe
from ..loading import locate_model
from ..model import InterpretableModel
from ..sae.train import ProgressListener
from ..steering import TokenListener
from ..token_display import display_token
from . import storage
from .active import InterventionEntry, InterventionFn, InterventionList
from .locking import evaluate, on_mlx_thread
from .steps import KINDS, describe_params, kind, restore


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class SessionManager:
    """Loads each model once and keeps it while sessions come and go; with ``dequantize``,
    quantized ones as plain layers (see ``InterpretableModel``: far faster on a CPU, the
    same numbers to float rounding)."""

    def __init__(self, dequantize: bool = False) -> None:
        self.dequantize = dequantize
        self._models: dict[str, InterpretableModel] = {}
        self._lock = threading.Lock()  # workers may ask for the same model at once

    def model(self, ref: str) -> InterpretableModel:
        """The model for ``ref`` ("demo", a folder, a hub id), loaded on first use (a model
        already loaded is returned at once, even while another one loads)."""
        loaded = self._models.get(ref)
        if loaded is not None:
            return loaded
        with self._lock:
            if ref not in self._models:
                try:
                    self._models[ref] = on_mlx_thread(
                        lambda: InterpretableModel(ref, dequantize=self.dequantize)
                    )
                except ModelLoadError as err:
                    raise SessionError(f"the model {ref!r} cannot be loaded: {err}") from err
            return self._models[ref]

    def add(self, ref: str, model: InterpretableModel) -> None:
        """Register an already-loaded model under ``ref``."""
        evaluate(model.parameters())  # steps use it on the MLX thread
        with self._lock:
            self._models[ref] = model


def fingerprint(ref: str) -> str | None:
    """What identifies the model ``ref`` names, found as loading finds it (a path, the
    Hugging Face cache, LM Studio, Ollama): 16 hex digits of the sha256 of a folder's
    config.json, or ``gguf.fingerprint`` of a GGUF file; None for a hub id not on disk (or
    a reference that names no one model)."""
    try:
        where, _ = locate_model(ref)
    except ModelLoadError:  # say, a folder of several GGUF files: loading will say so
        return None
    if not isinstance(where, Path):
        return None
    if where.is_file():
        return gguf.fingerprint(where) if gguf.is_gguf(where) else None
    config = where / "config.json"
    if not config.is_file():
        return None
    return hashlib.sha256(config.read_bytes()).hexdigest()[:16]


def parameter_count(model: InterpretableModel) -> int:
    """How many numbers the model's weights hold (the second half of the fingerprint)."""
    return sum(v.size for v in model.parameters().values())


@dataclass
class Step:
    """One action: its inputs, a summary of its result, and the live result.  ``index``
    is -1 until the step is recorded in a session."""

    index: int
    kind: str
    params: dict[str, Any]
    summary: dict[str, Any]
    created: str = field(default_factory=_now)
    result: Any = None  # live only; not saved
    # live only: the intervention list version it ran under, the list it leaves, and the
    # parameter count and reference of the model it ran on
    basis: int | None = field(default=None, repr=False, compare=False)
    after: InterventionList | None = field(default=None, repr=False, compare=False)
    parameters: int | None = field(default=None, repr=False, compare=False)
    model_ref: str | None = field(default=None, repr=False, compare=False)

    def title(self) -> str:
        """A one-line description for lists."""
        p = self.params
        main = next(
            (p[k] for k in ("text", "messages", "prompt", "clean", "module") if p.get(k)),
            p.get("action", ""),
        )
        if is_chat(main):  # a chat reads as what its last message says
            main = f"[{main[-1]['role']}] {main[-1]['content']}"
        shown = display_token(str(main), 48, keep_spaces=True) if main else ""
        return f"{self.index:>2} {self.kind}: {shown}"  # a newline in a prompt shows as ↵


class Session:
    """A model reference, an ordered list of steps and the session's interventions.

    ``dirty`` is True once a step is recorded after the last load or save.  ``record``
    autosaves to ``autosave_path`` (by default the session's own ``path``; None: never).
    """

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
        self.created = _now()
        self.fingerprint = fingerprint(model_ref)
        self.parameters: int | None = None
        self.dirty = False
        self._state = InterventionList()
        self._version = 0  # bumped by every change of the intervention list
        self._autosave: Path | None = None
        self._autosave_follows = True  # until set, autosave_path is path
        self._lock = threading.RLock()

    @classmethod
    def new(
        cls,
        model_ref: str,
        path: str | Path | None = None,
        manager: SessionManager | None = None,
    ) -> Session:
        """An empty session on ``model_ref``; autosaves to ``path`` after each step if given."""
        return cls(model_ref, path, manager)

    # ------------------------------------------------------------------ state
    @property
    def interventions(self) -> dict[str, InterventionFn]:
        """The enabled interventions, module -> callable: what traces run under."""
        with self._lock:
            return self._state.enabled()

    def intervention_entries(self) -> list[InterventionEntry]:
        """Every intervention of the session, in order, enabled or not."""
        with self._lock:
            return self._state.entries()

    @property
    def autosave_path(self) -> Path | None:
        """Where :meth:`record` autosaves: ``path`` unless set (None: no autosave)."""
        return self.path if self._autosave_follows else self._autosave

    @autosave_path.setter
    def autosave_path(self, where: str | Path | None) -> None:
        self._autosave = Path(where) if where is not None else None
        self._autosave_follows = False

    # ------------------------------------------------------------------ running
    def compute(
        self,
        manager: SessionManager,
        kind_name: str,
        *,
        on_token: TokenListener | None = None,
        on_progress: ProgressListener | None = None,
        **params: Any,
    ) -> Step:
        """Run a step on the session's model and return it, unrecorded: nothing in the
        session changes (safe from a worker thread; steps run one at a time).  Its params
        keep canonical module names, and its arrays come back evaluated.  ``on_token``
        (kinds that stream: ``generate``) streams each new token id; ``on_progress`` (kinds
        that train: ``train_sae``) hears each optimizer step.  A ``False`` from either stops
        the run early, and a step stopped so should not be recorded: it would not replay."""
        step_kind = kind(kind_name)
        given = {"on_token": on_token, "on_progress": on_progress}
        supplied = {name: heard for name, heard in given.items() if heard is not None}
        for name in supplied:
            if not step_kind.listens(name):
                taking = " and ".join(n for n, k in KINDS.items() if k.listens(name))
                raise SessionError(f"only {taking} steps take {name}, not {kind_name!r}")
        full = step_kind.complete(params)
        ref = self.model_ref
        model = manager.model(ref)
        if kind_name == "interventions":
            if callable(full.get("intervention")):
                full["intervention"] = self._describe(full["intervention"], full.get("module"))
            if "module" in full and full["action"] != "clear":
                full["module"] = model.resolve(full["module"])  # files keep canonical names
        with self._lock:
            state, basis = self._state.copy(), self._version
        evaluate(full)  # a caller's arrays, on the caller's thread, before they cross

        def run() -> Step:
            result, summary = step_kind.execute(model, full, state, **supplied)
            step = Step(-1, kind_name, describe_params(full), summary, result=result)
            evaluate((step.params, step.summary, step.result))  # a save then needs no MLX work
            return step

        step = on_mlx_thread(run)
        step.parameters, step.model_ref = parameter_count(model), ref
        if kind_name == "interventions" or step_kind.uses_interventions:
            step.basis = basis
        if kind_name == "interventions":
            step.after = state
        return step

    def record(self, step: Step) -> Step:
        """Append a computed step (its index assigned), apply its change to the
        interventions, autosave; refused if the interventions or the session's model
        changed since it ran."""
        with self._lock:
            if step.index >= 0:
                raise SessionError(f"step {step.index} ({step.kind}) is already recorded")
            if step.model_ref is not None and step.model_ref != self.model_ref:
                raise SessionError(
                    f"this {step.kind} step ran on model {step.model_ref!r}; the session is "
                    f"now on {self.model_ref!r}: run it again"
                )
            if step.basis is not None and step.basis != self._version:
                raise SessionError(
                    f"the interventions changed while this {step.kind} step ran; run it again"
                )
            if step.after is not None:
                self._state, step.after = step.after, None
                self._version += 1
            if self.parameters is None:
                self.parameters = step.parameters
            step.index = len(self.steps)
            self.steps.append(step)
            self.dirty = True
            where = self.autosave_path
            if where is not None:
                try:
                    self._write(where)
                except SessionError as err:
                    raise SessionError(
                        f"step {step.index} is recorded, but the autosave failed: {err}"
                    ) from None
            return step

    def run(self, manager: SessionManager, kind_name: str, **params: Any) -> Step:
        """Compute a step and record it (autosaving); returns the recorded step."""
        self.manager = manager
        return self.record(self.compute(manager, kind_name, **params))

    def model_mismatch(self, ref: str, manager: SessionManager) -> str | None:
        """Why this session's steps cannot go on with the model ``ref`` (loaded through
        ``manager`` if it is not yet), or None when they can: the session has no steps yet,
        ``ref`` is its model, or ``ref`` is the model its steps ran on found elsewhere (the
        same fingerprint, e.g. the folder copied or moved, and the same parameter count).
        Safe from a worker thread."""
        model = manager.model(ref)
        with self._lock:
            if not self.steps or ref == self.model_ref:
                return None
            recorded, count = self.fingerprint, self.parameters
            steps = f"{len(self.steps)} step" + ("s" if len(self.steps) != 1 else "")
        current = fingerprint(ref)
        if recorded is None or current is None:
            return (
                f"the session's {steps} ran on {self.model_ref!r}, and whether {ref!r} "
                "is that model cannot be told (a fingerprint is missing)"
            )
        if current != recorded:
            return (
                f"the session's {steps} ran on {self.model_ref!r}; {ref!r} is another "
                "model (its fingerprint differs)"
            )
        if count is not None and parameter_count(model) != count:
            return (
                f"the session's {steps} ran on {self.model_ref!r} ({count} parameters); "
                f"{ref!r} has {parameter_count(model)}"
            )
        return None

    def switch_model(self, ref: str, manager: SessionManager) -> None:
        """Go on with this session on the model ``ref`` (loaded through ``manager``): its
        steps that follow run there and its file names it.  Refused with ``SessionError``
        when ``model_mismatch`` says why (the steps of two models never mix in one
        session): start ``Session.new(ref)`` for that model instead."""
        why = self.model_mismatch(ref, manager)
        if why is not None:
            raise SessionError(f"{why}: start a new session on it (Session.new)")
        with self._lock:
            self.manager = manager
            if ref == self.model_ref:
                return
            if self.steps:
                self.dirty = True  # the file is to name the model where it is now
            else:
                self.parameters = None
            self.model_ref, self.fingerprint = ref, fingerprint(ref)

    def _describe(self, fn: Callable[..., Any], module: str | None) -> dict[str, Any]:
        try:
            return describe(fn)
        except NotSerializableError as err:
            raise NotSerializableError(
                f"step {len(self.steps)} (interventions on {module!r}) cannot be recorded: {err}"
            ) from None

    def set_intervention(self, module: str, fn: Callable[..., Any]) -> Step:
        """Make ``fn`` active on ``module`` (replacing one already there) for the
        following trace, lens and generate steps."""
        return self.run(
            self._manager(), "interventions", action="set", module=module, intervention=fn
        )

    def remove_intervention(self, module: str) -> Step:
        """Remove the intervention on ``module``."""
        return self.run(self._manager(), "interventions", action="remove", module=module)

    def clear_interventions(self) -> Step:
        """Remove every intervention."""
        return self.run(self._manager(), "interventions", action="clear")

    def contrast_vector(
        self,
        manager: SessionManager,
        module: str,
        positive: str,
        negative: str,
        factor: float = 1.0,
    ) -> dict[str, Any]:
        """The description of an ``add_vector`` intervention on ``module`` adding ``factor``
        x (the module's output at the last token of ``positive`` minus that at the last
        token of ``negative``), read on this session's model: a steering vector from a
        difference of two prompts.  Its ``source`` records the prompts and the factor (what
        a reader of the file sees; the vector is what replays).  ``InputError`` for an empty
        prompt, a module that does not output (batch, seq, hidden) or a non-finite factor."""
        if (
            not isinstance(factor, (int, float))
            or isinstance(factor, bool)
            or not (abs(factor) < float("inf"))
        ):
            raise InputError(f"factor must be a finite number; got {factor!r}")

        def vector(act: mx.array, lengths: list[int]) -> mx.array:
            last = act[mx.arange(2), mx.array([n - 1 for n in lengths])]
            return (last[0] - last[1]) * factor

        return {
            "kind": "add_vector",
            "params": {"vector": self._read(manager, module, [positive, negative], vector)},
            "source": {"positive": positive, "negative": negative, "factor": float(factor)},
        }

    def activation_of(self, manager: SessionManager, module: str, prompt: str) -> dict[str, Any]:
        """The description of a ``replace_with`` intervention on ``module`` putting in its
        output on ``prompt`` (read on this session's model), the shared last tokens aligned
        (``align="right"``): activation patching from another prompt, by hand.  Its
        ``source`` records the prompt; the activation (in the sidecar) is what replays."""

        def whole(act: mx.array, lengths: list[int]) -> mx.array:
            return act[:, : lengths[0]]

        value = self._read(manager, module, [prompt], whole)
        return {
            "kind": "replace_with",
            "params": {"value": value, "align": "right"},
            "source": {"prompt": prompt},
        }

    def _read(
        self,
        manager: SessionManager,
        module: str,
        prompts: list[str],
        make: Callable[[mx.array, list[int]], mx.array],
    ) -> mx.array:
        """``make(output of module on prompts as float32, their lengths)`` on the MLX
        thread, evaluated; ``InputError`` for an empty prompt or an output that is not
        ``(batch, seq, hidden)``."""
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InputError("reading an activation needs non-empty prompts")
        model = manager.model(self.model_ref)

        def read() -> mx.array:
            name = model.resolve(module)
            trace = model.run(prompts, capture=[name], output=False)
            act = trace.activations[name]
            if act.ndim != 3:
                raise InputError(
                    f"{name} outputs shape {tuple(act.shape)}; an activation to add or put "
                    "in needs (batch, seq, hidden)"
                )
            lengths = trace.lengths or [act.shape[1]] * act.shape[0]
            made = make(act.astype(mx.float32), lengths)
            mx.eval(made)  # it crosses to the caller's thread evaluated
            return made

        return on_mlx_thread(read)

    def _manager(self) -> SessionManager:
        if self.manager is None:
            self.manager = SessionManager()
        return self.manager

    # ------------------------------------------------------------------ files
    def to_document(self) -> tuple[dict[str, Any], dict[str, mx.array]]:
        """The TOML-ready document and the arrays for its sidecar."""
        arrays: dict[str, mx.array] = {}
        stored: dict[tuple[str, tuple[int, ...], bytes], str] = {}  # each array once
        steps = []
        for step in self.steps:
            prefix = f"steps.{step.index}"
            steps.append(
                {
                    "kind": step.kind,
                    "created": step.created,
                    "params": storage.encode_arrays(
                        step.params, f"{prefix}.params", arrays, stored
                    ),
                    "summary": storage.encode_arrays(
                        step.summary, f"{prefix}.summary", arrays, stored
                    ),
                }
            )
        model: dict[str, str | int] = {"ref": self.model_ref}
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

    def _write(self, path: Path) -> None:
        document, arrays = self.to_document()
        storage.write(path, document, arrays)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the session to ``path`` (or its own path) and make that its path; see
        docs/sessions.md for what a save promises.  A folder that does not exist, or a file
        name the loader would refuse, is a ``SessionError`` before anything is written."""
        with self._lock:
            target = Path(path) if path is not None else self.path
            if target is None:
                raise SessionError("this session has no file yet: save(path)")
            self._write(target)
            self.path = target
            self.dirty = False
            return target

    @classmethod
    def load(cls, path: str | Path, manager: SessionManager | None = None) -> Session:
        """Read and check a session file (data only: nothing in it is executed); the
        interventions its steps left are there again, enabled or not."""
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
                    restore(session._state, step.params, step.summary)
            except SessionError as err:
                raise SessionError(f"{Path(path).name}, step {i}: {err}") from None
            session.steps.append(step)
        return session

    @staticmethod
    def discard(path: str | Path) -> None:
        """Delete a session file and its sidecar (kept if another file in the folder names
        it), e.g. a recovery file no longer needed."""
        storage.remove(Path(path))

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"Session({self.model_ref}, {len(self.steps)} steps{where})"
