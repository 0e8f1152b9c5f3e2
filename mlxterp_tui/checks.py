"""What a typed value must be before it reaches the session: numbers that are finite and in
range, intervention parameters, positions, and answers that are one token each.

Each check returns the value or raises ``InputError`` whose text is shown beside the field.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from mlxterp.session import INTERVENTION_KINDS, InputError, token_from_display


class Tokenizes(Protocol):
    """What the checks need of a model: its one-token reading of a string."""

    def token_id(self, token: int | str) -> int: ...


def number(
    text: str,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
) -> float:
    """``text`` as a finite number within ``[low, high]`` (a whole one if ``integer``)."""
    raw = text.strip()
    if not raw:
        raise InputError(f"{name}: type a number")
    try:
        value = float(int(raw)) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise InputError(f"{name}: {raw!r} is not {kind}") from None
    if not math.isfinite(value):
        raise InputError(f"{name}: {raw} is not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"from {low:g} to {high:g}" if low is not None and high is not None else ""
        if not span:
            span = f"at least {low:g}" if low is not None else f"at most {high:g}"
        raise InputError(f"{name}: {raw} is out of range ({span})")
    return value


def whole(text: str, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``text`` as an integer within ``[low, high]``."""
    return int(number(text, name, low=low, high=high, integer=True))


def single_token(model: Tokenizes, text: str, name: str) -> str:
    """``text``, written as tokens are shown (``␣`` a space, ``↵`` a newline, ``⇥`` a tab:
    ``token_from_display``), if the model reads it as exactly one token."""
    token = token_from_display(text)
    try:
        model.token_id(token)
    except InputError as err:
        raise InputError(f"{name}: {err}") from None
    return token


def answer_pair(model: Tokenizes, text: str) -> tuple[str, str]:
    """``"␣Paris,␣London"`` as the right and wrong answer, one token each."""
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise InputError("answers: give two tokens, right then wrong: ␣Paris,␣London")
    right = single_token(model, parts[0], "answers")
    wrong = single_token(model, parts[1], "answers")
    return right, wrong


# The numbers the intervention form parses: parameter -> (low, high) bounds (None for
# none) and an example for the hint.  The form offers every kind of the engine's
# (mlxterp.session.INTERVENTION_KINDS) whose parameters are all such numbers.
NUMBER_PARAMS: dict[str, tuple[float | None, float | None]] = {
    "factor": (None, None),
    "min_val": (None, None),
    "max_val": (None, None),
    "std": (0.0, None),
    "seed": (0, 2**32 - 1),
}
EXAMPLES = {"factor": "0.5", "min_val": "-1", "max_val": "1", "std": "0.1", "seed": "0"}
WHOLE_PARAMS = {"seed"}
INTERVENTION_PARAMS: dict[str, dict[str, tuple[float | None, float | None]]] = {
    name: {p: NUMBER_PARAMS[p] for p in kind.params}
    for name, kind in INTERVENTION_KINDS.items()
    if all(p in NUMBER_PARAMS for p in kind.params)
}
INTERVENTION_HINTS = {
    name: ", ".join(f"{p}={EXAMPLES[p]}" for p in takes)
    for name, takes in INTERVENTION_PARAMS.items()
}


def intervention_params(kind: str, text: str) -> dict[str, Any]:
    """``"factor=0.5"`` → ``{"factor": 0.5}``: names the kind takes, finite numbers in range."""
    if kind not in INTERVENTION_PARAMS:
        raise InputError(
            f"unknown intervention kind {kind!r}; choose one of {list(INTERVENTION_PARAMS)}"
        )
    takes = INTERVENTION_PARAMS[kind]
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key:
            raise InputError(f"parameter {part!r} is not name=value (e.g. factor=0.5)")
        if key not in takes:
            hint = INTERVENTION_HINTS[kind] or "no parameters"
            raise InputError(f"{kind} takes no parameter {key!r} (it takes {hint})")
        if key in params:
            raise InputError(f"parameter {key} is given twice")
        low, high = takes[key]
        found = number(value, key, low=low, high=high, integer=key in WHOLE_PARAMS)
        params[key] = int(found) if key in WHOLE_PARAMS else found
    missing = [k for k in INTERVENTION_KINDS[kind].required if k not in params]
    if missing:
        raise InputError(f"{kind} needs {', '.join(missing)} (e.g. {INTERVENTION_HINTS[kind]})")
    if kind == "clamp":
        if not params:
            raise InputError("clamp needs min_val, max_val or both")
        if params.get("min_val", -math.inf) > params.get("max_val", math.inf):
            raise InputError(
                f"clamp min_val {params['min_val']} is above max_val {params['max_val']}"
            )
    return params


CONTRAST_HINT = "I love this song | I hate this song | 4"


def contrast(text: str) -> tuple[str, str, float]:
    """``"positive | negative | factor"`` (factor optional, 1) → the two prompts and the
    factor of an ``add_vector`` from their difference."""
    parts = [p.strip() for p in text.split("|")]
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InputError(f"add_vector: write two prompts and a factor, split by |: {CONTRAST_HINT}")
    factor = number(parts[2], "factor") if len(parts) == 3 else 1.0
    return parts[0], parts[1], factor


OTHER_PROMPT_HINT = "The capital of Germany is"


def other_prompt(text: str) -> tuple[str]:
    """The prompt whose activation a ``replace_with`` puts in (the whole text)."""
    if not text.strip():
        raise InputError(
            f"replace_with: write the prompt to take the activation from: {OTHER_PROMPT_HINT}"
        )
    return (text,)


def positions(text: str) -> list[int] | None:
    """``"-1"`` or ``"0, 2"`` → token positions; empty → every position."""
    if not text.strip():
        return None
    found = [whole(p, "positions", low=-(10**6), high=10**6) for p in text.split(",") if p.strip()]
    if len(set(found)) != len(found):
        raise InputError("positions: a position is listed twice")
    return found


def intervention_description(kind: str, params_text: str, positions_text: str) -> dict[str, Any]:
    """The session's description of a form's intervention (``{"kind", "params", ...}``)."""
    desc: dict[str, Any] = {"kind": kind, "params": intervention_params(kind, params_text)}
    where = positions(positions_text)
    if where is not None:
        desc["positions"] = where
    return desc


def composed(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """The description of ``first`` followed by ``then`` on the same module."""
    steps = list(first["params"]["steps"]) if first.get("kind") == "compose" else [first]
    return {"kind": "compose", "params": {"steps": [*steps, then]}}
