"""Exceptions raised by mlxterp, each saying what went wrong and the way out."""

from __future__ import annotations


class ModuleNameError(KeyError):
    """A module name that does not exist (with the closest real names) or is ambiguous."""

    def __init__(self, message: str, candidates: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.candidates = list(candidates or [])

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class InterventionError(ValueError):
    """An intervention that cannot be applied: wrong shape, non-finite result, bad parameter."""


class InputError(ValueError):
    """Inputs a trace cannot run on: empty or over-long prompts, text without a tokenizer."""


class ModelLoadError(ValueError):
    """A model that cannot be found or loaded."""


class NotSerializableError(ValueError):
    """Something (usually a custom callable) that cannot be written into a session file."""
