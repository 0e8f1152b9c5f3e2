"""Exceptions raised by mlxterp, each saying what went wrong and the way out.

Every exception the library raises on purpose derives from ``MlxterpError`` and also from
the builtin a caller would expect there (``KeyError`` for names, ``ValueError`` for bad
values), so ``except MlxterpError`` catches everything mlxterp means to say and
``except ValueError`` keeps working.  ``ConfigWarning`` is the one warning category: a
model loads, but its config says something the loader does not read.
"""

from __future__ import annotations


class MlxterpError(Exception):
    """Base of every error mlxterp raises on purpose."""


class _KeyMessageError(MlxterpError, KeyError):
    """A ``KeyError`` whose text is its message as given (``KeyError`` would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModuleNameError(_KeyMessageError):
    """A module name that does not exist (with the closest real names) or is ambiguous."""

    def __init__(self, message: str, candidates: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.candidates = list(candidates or [])


class NotCapturedError(_KeyMessageError):
    """A real module whose output a trace or cache did not keep (see ``capture=``)."""


class ModelAttributeError(MlxterpError, AttributeError):
    """An attribute, submodule or layer list the model does not have, or a read-only one."""


class LayerIndexError(MlxterpError, IndexError):
    """A layer or list entry outside the model's range."""


class TraceError(MlxterpError, RuntimeError):
    """A trace used out of order: ``.save()`` outside a trace, overlapping traces."""


class ModelTypeError(MlxterpError, TypeError):
    """Something that is neither an ``mlx.nn.Module`` nor a model name or folder."""


class UnknownArchitectureError(_KeyMessageError):
    """An architecture ``mlxterp.checkpoints`` cannot build."""


class InterventionError(MlxterpError, ValueError):
    """An intervention that cannot be applied: wrong shape, non-finite result, bad parameter."""


class InputError(MlxterpError, ValueError):
    """Inputs a trace cannot run on: empty or over-long prompts, text without a tokenizer."""


class ModelLoadError(MlxterpError, ValueError):
    """A model that cannot be found or loaded."""


class NotSerializableError(MlxterpError, ValueError):
    """Something (usually a custom callable) that cannot be written into a session file."""


class UnembedError(MlxterpError, AttributeError):
    """The model has no read-out mlxterp can recognise."""


class UnsupportedAttentionError(MlxterpError, ValueError):
    """The model computes attention in a way whose weights cannot be read."""


class SessionError(MlxterpError, ValueError):
    """A session that cannot be read, saved, run or replayed, with the reason."""


class ConfigWarning(UserWarning):
    """A model config holds a key that changes what the model computes in transformers but
    that the mlx-lm architecture does not read (``mlxterp.model_config``)."""
