"""Model configs as transformers writes them, put in the form mlx-lm's models read.

mlx-lm builds a model through its architecture's ``ModelArgs.from_dict``, which keeps the
config keys that are fields of that dataclass and drops every other key without a word.
transformers (version 5 above all) writes some values where those fields do not look:

* the RoPE base inside ``rope_parameters`` (``{"rope_theta": 100000, "rope_type":
  "default"}``) instead of a top-level ``rope_theta``: mlx-lm builds RoPE with its default
  base (10,000) and the logits move while the top-1 token still looks right;
* RoPE scaling (llama3, yarn, linear, dynamic, longrope) inside ``rope_parameters`` instead
  of ``rope_scaling``, or per layer type (``{"full_attention": {...},
  "sliding_attention": {...}}``, Gemma 3);
* ``head_dim`` missing or ``null`` where the architecture needs a number;
* ``tie_word_embeddings`` inside ``text_config``, or absent although the weights hold an
  ``lm_head`` (mlx-lm's default would tie and drop it);
* any of the text model's keys inside ``text_config`` when the architecture reads them at
  the top level.

``normalize(config, weight_names)`` returns the values to pass to mlx-lm
(``mlx_lm.load(..., model_config=overrides)`` updates the config it read, so the files on
disk are never touched), a line for each change, and the numerics-changing keys that the
architecture would still ignore; ``warn_ignored`` says those once per load as a
``ConfigWarning``.  Whether a key is read is decided by the ``ModelArgs`` fields of the
architecture mlx-lm resolves for the config, never by a list per architecture.
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigWarning

# Keys that change what a model computes when transformers reads them.  Each is checked
# against the architecture's ModelArgs fields: present, set to something other than "off",
# and not a field means transformers and mlx-lm compute different things, silently.
# Left out on purpose: sizes, head_dim, attention/MLP biases and tied embeddings (a
# mismatch there leaves a weight without a place or a place without a weight, which the
# strict weight load refuses, so it is never silent), and the activation (``hidden_act``):
# architectures hard-code theirs, so it is unread on nearly every model and a warning would
# say nothing.
NUMERIC_KEYS: dict[str, str] = {
    "rope_theta": "RoPE base",
    "rotary_emb_base": "RoPE base",
    "rope_local_base_freq": "RoPE base of sliding-window layers",
    "rope_scaling": "RoPE scaling",
    "rope_parameters": "RoPE base and scaling",
    "partial_rotary_factor": "share of each head that is rotated",
    "rotary_pct": "share of each head that is rotated",
    "attn_logit_softcapping": "attention logit softcapping",
    "final_logit_softcapping": "final logit softcapping",
    "sliding_window": "sliding-window attention",
    "use_sliding_window": "sliding-window attention",
    "sliding_window_pattern": "which layers use a sliding window",
    "layer_types": "which layers use a sliding window",
    "rms_norm_eps": "norm epsilon",
    "layer_norm_eps": "norm epsilon",
    "layer_norm_epsilon": "norm epsilon",
    "norm_eps": "norm epsilon",
    "norm_epsilon": "norm epsilon",
    "qk_layernorm": "query/key norm",
    "use_qk_norm": "query/key norm",
    "query_pre_attn_scalar": "query scaling",
    "attention_multiplier": "query scaling",
    "embedding_multiplier": "embedding scaling",
    "residual_multiplier": "residual scaling",
    "logits_scaling": "logit scaling",
    "logit_scale": "logit scaling",
}

# The ModelArgs fields that hold the RoPE base and the rotated share, first match wins.
_THETA_FIELDS = ("rope_theta", "rotary_emb_base")
_PARTIAL_FIELDS = ("partial_rotary_factor", "rotary_pct")
# Per-layer-type RoPE (transformers 5's nested ``rope_parameters``): where each type's base goes.
_LAYER_TYPE_THETA = {"full_attention": "rope_theta", "sliding_attention": "rope_local_base_freq"}
# Scaled RoPE types whose pre-training length transformers fills in from the config.
_NEEDS_ORIGINAL_LENGTH = ("llama3", "yarn", "longrope")
# rope_parameters entries that are not part of the scaling (they have fields of their own)
_NOT_SCALING = ("rope_theta", "partial_rotary_factor")


@dataclass(frozen=True)
class IgnoredKey:
    """A numerics-changing config key the architecture's ``ModelArgs`` does not read."""

    key: str  # dotted for nested keys: "rope_parameters.rope_type", "text_config.sliding_window"
    value: Any
    meaning: str  # what it changes, from NUMERIC_KEYS

    def __str__(self) -> str:
        return f"{self.key}={self.value!r} ({self.meaning})"


@dataclass(frozen=True)
class Normalization:
    """What ``normalize`` made of a config.

    ``config`` is the config the model is built from (the file's, with ``overrides``
    applied); ``overrides`` the top-level keys to hand mlx-lm; ``changes`` one line per
    change; ``ignored`` the numerics-changing keys the architecture still does not read.
    ``model_type`` is the mlx-lm module that builds it (``None`` when mlx-lm has none).
    """

    config: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    changes: tuple[str, ...] = ()
    ignored: tuple[IgnoredKey, ...] = ()
    model_type: str | None = None


def model_classes(config: dict[str, Any]) -> tuple[type[Any], type[Any]]:
    """``(Model, ModelArgs)`` for ``config``, picked exactly as ``mlx_lm.load`` picks them.

    ``ValueError`` when mlx-lm has no such architecture.
    """
    try:
        from mlx_lm.utils import _get_classes
    except ImportError:  # pragma: no cover - an mlx-lm without the private helper
        from mlx_lm.utils import MODEL_REMAPPING

        model_type = MODEL_REMAPPING.get(config["model_type"], config["model_type"])
        try:
            module = importlib.import_module(f"mlx_lm.models.{model_type}")
        except ImportError as err:
            raise ValueError(f"Model type {model_type} not supported.") from err
        return module.Model, module.ModelArgs
    classes: tuple[type[Any], type[Any]] = _get_classes(config)
    return classes


def args_fields(args_class: type[Any]) -> dict[str, inspect.Parameter]:
    """The keys ``ModelArgs.from_dict`` keeps (its constructor's parameters), by name."""
    return dict(inspect.signature(args_class).parameters)


def normalize(config: dict[str, Any], weight_names: Iterable[str] = ()) -> Normalization:
    """Normalize ``config`` (a model's ``config.json``) for the mlx-lm model it names.

    ``weight_names`` are the tensor names in the weight files (``lm_head.weight`` or not
    decides ``tie_word_embeddings`` when the config does not).  ``config`` is not changed.
    A config mlx-lm cannot build is returned as it is (loading then says why).
    """
    args_class = _args_class(config)
    if args_class is None:
        return Normalization(config=dict(config))
    model_type = args_class.__module__.rsplit(".", 1)[-1]
    names = frozenset(weight_names)
    fields = args_fields(args_class)
    text = config.get("text_config")
    overrides: dict[str, Any] = {}
    changes: list[str] = []
    ignored: list[IgnoredKey] = []
    if "text_config" in fields:  # a wrapper: the text model reads its own table
        inner = _args_class(text) if isinstance(text, dict) else None
        if isinstance(text, dict) and inner is not None:
            table = _Table(text, args_fields(inner), names, prefix="text_config.")
            table.normalize()
            if table.updates:
                overrides["text_config"] = {**text, **table.updates}
            changes, ignored = table.changes, table.ignored
    else:
        lifted = _lift_text_config(config, fields)
        read = dict(lifted)
        if isinstance(text, dict) and "rope_parameters" in text and "rope_parameters" not in config:
            read.setdefault("rope_parameters", text["rope_parameters"])  # moved, not lifted
        table = _Table({**config, **read}, fields, names, original=config)
        for key, value in lifted.items():
            table.set(key, value, "read from text_config")
        table.normalize()
        if isinstance(text, dict):
            table.ignore_unread(text, "text_config.")
        overrides, changes, ignored = table.updates, table.changes, table.ignored
    return Normalization(
        config={**config, **overrides},
        overrides=overrides,
        changes=tuple(changes),
        ignored=tuple(ignored),
        model_type=model_type,
    )


def warn_ignored(normalization: Normalization, where: str) -> None:
    """One ``ConfigWarning`` naming every ignored numerics-changing key, if there are any."""
    if not normalization.ignored:
        return
    keys = "; ".join(str(k) for k in normalization.ignored)
    warnings.warn(
        f"{where}: mlx-lm's {normalization.model_type} model does not read {keys}; "
        "transformers does, so this model may compute something other than the original",
        ConfigWarning,
        stacklevel=3,
    )


def _args_class(config: Any) -> type[Any] | None:
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        return None
    try:
        return model_classes(config)[1]
    except (ValueError, ImportError, AttributeError):  # no such model (``base``: no Model)
        return None


def _lift_text_config(config: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The ``text_config`` keys the architecture reads at the top level and that are not there."""
    text = config.get("text_config")
    if not isinstance(text, dict):
        return {}
    return {k: v for k, v in text.items() if k in fields and k not in config and k != "model_type"}


class _Table:
    """One config table (the top level, or a wrapper's ``text_config``) being normalized."""

    def __init__(
        self,
        values: dict[str, Any],
        fields: dict[str, inspect.Parameter],
        weight_names: frozenset[str],
        prefix: str = "",
        original: dict[str, Any] | None = None,
    ):
        # ``values`` is what is read (a wrapper's text_config, or the top level with the
        # text_config keys it takes); ``original`` the file's table, the "before" of changes
        self.values = values
        self.original = values if original is None else original
        self.fields = fields
        self.weight_names = weight_names
        self.prefix = prefix
        self.updates: dict[str, Any] = {}
        self._reasons: dict[str, list[str]] = {}
        self.ignored: list[IgnoredKey] = []

    def get(self, key: str) -> Any:
        return self.updates.get(key, self.values.get(key))

    @property
    def changes(self) -> list[str]:
        """One line per changed key: its value before, after, and why."""
        return [
            f"{self.prefix}{key}: {self._before(key)} → {self.updates[key]!r} ({', '.join(why)})"
            for key, why in self._reasons.items()
        ]

    def _before(self, key: str) -> str:
        return repr(self.original[key]) if key in self.original else "absent"

    def set(self, key: str, value: Any, why: str) -> None:
        self.updates[key] = value
        self._reasons.setdefault(key, []).append(why)

    def ignore(self, key: str, value: Any, meaning: str) -> None:
        self.ignored.append(IgnoredKey(f"{self.prefix}{key}", value, meaning))

    def normalize(self) -> None:
        rope = self.values.get("rope_parameters")
        if isinstance(rope, dict) and rope and "rope_parameters" not in self.fields:
            self._rope_parameters(rope)
        self._rope_scaling()
        self._head_dim()
        self._tied_embeddings()
        self._ignored_keys()

    # -------------------------------------------------------------- rope
    def _rope_parameters(self, rope: dict[str, Any]) -> None:
        """Move transformers 5's ``rope_parameters`` where the architecture reads them (its
        values win over top-level ones, as in transformers)."""
        if not all(isinstance(v, dict) or v is None for v in rope.values()):
            self._rope_group(rope, "rope_parameters", self._field(_THETA_FIELDS), scaling=True)
            return
        # per layer type: full attention first, so the others compare with its base
        for layer_type in sorted(rope, key=lambda t: t != "full_attention"):
            params = rope[layer_type]
            if not isinstance(params, dict):
                continue
            where = f"rope_parameters.{layer_type}"
            if layer_type == "full_attention":
                self._rope_group(params, where, self._field(_THETA_FIELDS), scaling=True)
            else:
                target = _LAYER_TYPE_THETA.get(layer_type)
                self._rope_group(params, where, target if target in self.fields else None)

    def _rope_group(
        self, params: dict[str, Any], where: str, theta_field: str | None, scaling: bool = False
    ) -> None:
        """Place one group's base, rotated share and (if ``scaling``) scaling; name the rest."""
        theta = params.get("rope_theta")
        if theta is not None and theta_field is not None:
            if self.get(theta_field) != theta:
                self.set(theta_field, theta, f"from {where}")
        elif theta is not None and not self._same_theta(theta):
            self.ignore(f"{where}.rope_theta", theta, NUMERIC_KEYS["rope_theta"])
        partial = params.get("partial_rotary_factor")
        partial_field = self._field(_PARTIAL_FIELDS)
        if partial is not None and partial_field is not None:
            if self.get(partial_field) != partial:
                self.set(partial_field, partial, f"from {where}")
        elif partial is not None and _active("partial_rotary_factor", partial, self.get):
            self.ignore(
                f"{where}.partial_rotary_factor", partial, NUMERIC_KEYS["partial_rotary_factor"]
            )
        kind = params.get("rope_type", params.get("type", "default"))
        if kind == "default":
            return
        if scaling and "rope_scaling" in self.fields:
            if self.get("rope_scaling") is None:  # transformers, too, prefers rope_scaling
                spec = {k: v for k, v in params.items() if k not in _NOT_SCALING}
                self.set("rope_scaling", spec, f"from {where}")
        else:
            self.ignore(f"{where}.rope_type", kind, NUMERIC_KEYS["rope_scaling"])

    def _same_theta(self, theta: Any) -> bool:
        """Whether a per-layer-type base equals the one the architecture already uses."""
        target = self._field(_THETA_FIELDS)
        return target is not None and self.get(target) == theta

    def _rope_scaling(self) -> None:
        """Settle ``rope_scaling`` as transformers reads it: ``rope_type`` wins over ``type``
        (mlx-lm reads ``type`` first), and scaled types get the pre-training length."""
        spec = self.get("rope_scaling")
        if "rope_scaling" not in self.fields or not isinstance(spec, dict):
            return
        fixed = dict(spec)
        kind = fixed.get("rope_type", fixed.get("type"))
        if "type" in fixed and "rope_type" in fixed and fixed["type"] != kind:
            fixed["type"] = kind
        if kind in _NEEDS_ORIGINAL_LENGTH:
            # a top-level original_max_position_embeddings wins (Phi-3 keeps it there), else
            # the scaling's own, else max_position_embeddings
            length = self.get("original_max_position_embeddings")
            if not isinstance(length, int):
                length = fixed.get("original_max_position_embeddings")
            if not isinstance(length, int):
                length = self.get("max_position_embeddings")
            if isinstance(length, int):
                fixed["original_max_position_embeddings"] = length
        if fixed != spec:
            self.set("rope_scaling", fixed, "as transformers reads it")

    # -------------------------------------------------------------- shapes and tying
    def _head_dim(self) -> None:
        """A missing or null ``head_dim`` the architecture cannot derive: hidden / heads."""
        param = self.fields.get("head_dim")
        if param is None or self.get("head_dim") is not None:
            return
        required = param.default is inspect.Parameter.empty
        if not required and ("head_dim" not in self.values or param.default is None):
            return  # absent with a default the architecture keeps, or derives itself
        hidden, heads = self.get("hidden_size"), self.get("num_attention_heads")
        if type(hidden) is int and type(heads) is int and heads > 0 and hidden % heads == 0:
            self.set("head_dim", hidden // heads, "hidden_size / num_attention_heads")

    def _tied_embeddings(self) -> None:
        """An absent ``tie_word_embeddings`` follows the weights: tied without an lm_head."""
        param = self.fields.get("tie_word_embeddings")
        if param is None or "tie_word_embeddings" in self.values or not self.weight_names:
            return
        tied = not any(
            n == "lm_head.weight" or n.endswith(".lm_head.weight") for n in self.weight_names
        )
        if param.default is inspect.Parameter.empty or param.default != tied:
            why = "no lm_head weight" if tied else "the weights hold an lm_head"
            self.set("tie_word_embeddings", tied, why)

    # -------------------------------------------------------------- what stays unread
    def _ignored_keys(self) -> None:
        for key, meaning in NUMERIC_KEYS.items():
            if key in self.fields or key not in self.values or key == "rope_parameters":
                continue  # rope_parameters was moved above, naming what found no place
            value = self.get(key)
            if _active(key, value, self.get):
                self.ignore(key, value, meaning)

    def ignore_unread(self, nested: dict[str, Any], prefix: str) -> None:
        """Name the active numerics-changing keys of a nested table (``text_config``) that
        the architecture reads from neither level."""
        for key, meaning in NUMERIC_KEYS.items():
            unread = key in nested and key not in self.fields and key not in self.values
            if unread and _active(key, nested[key], nested.get):
                self.ignored.append(IgnoredKey(f"{prefix}{key}", nested[key], meaning))

    def _field(self, candidates: tuple[str, ...]) -> str | None:
        return next((f for f in candidates if f in self.fields), None)


def _active(key: str, value: Any, get: Callable[[str], Any]) -> bool:
    """Whether ``value`` turns on what ``key`` controls (``None``/``False`` never do)."""
    if value is None or value is False:
        return False
    if key in ("sliding_window", "sliding_window_pattern"):
        types = get("layer_types")
        if get("use_sliding_window") is False:
            return False
        return not (isinstance(types, list) and "sliding_attention" not in types)
    if key == "layer_types":
        return isinstance(value, list) and any(t != "full_attention" for t in value)
    if key == "rope_scaling":
        return not (
            isinstance(value, dict) and value.get("rope_type", value.get("type")) == "default"
        )
    if key in ("partial_rotary_factor", "rotary_pct"):
        return not (isinstance(value, (int, float)) and math.isclose(value, 1.0))
    return True
