"""mlxterp: mechanistic interpretability for MLX language models.

``InterpretableModel`` wraps a model for tracing, activation reading and interventions;
``mlxterp.interventions`` holds the built-in interventions.
"""

from . import blas

blas.preload()  # before mlx.core is first imported (see mlxterp.blas)
blas.warn_if_slow()

from . import interventions, sae  # noqa: E402
from .activations import (  # noqa: E402
    ActivationCache,
    batch_get_activations,
    collect_activations,
    get_activations,
)
from .attribution import attribution_patching  # noqa: E402
from .dla import LogitAttribution, direct_logit_attribution  # noqa: E402
from .errors import (  # noqa: E402
    ConfigWarning,
    InputError,
    InterventionError,
    LayerIndexError,
    MlxterpError,
    ModelAttributeError,
    ModelLoadError,
    ModelTypeError,
    ModuleNameError,
    NotCapturedError,
    NotSerializableError,
    SessionError,
    TraceError,
    UnembedError,
    UnknownArchitectureError,
    UnsupportedAttentionError,
)
from .lens import logit_lens  # noqa: E402
from .model import InterpretableModel  # noqa: E402
from .names import MODEL_OUTPUT  # noqa: E402
from .patching import activation_patching, patching_sweep  # noqa: E402
from .proxies import LayerListProxy, ModuleProxy, OutputProxy  # noqa: E402
from .steering import generate, steer, steering_vector  # noqa: E402
from .tracing import ActivationMap, Trace  # noqa: E402


def demo_model() -> InterpretableModel:
    """The embedded demo model (a small trained llama), loaded offline."""
    return InterpretableModel("demo")


__version__ = "0.1.0"

__all__ = [
    "MODEL_OUTPUT",
    "ActivationCache",
    "ActivationMap",
    "ConfigWarning",
    "InputError",
    "InterpretableModel",
    "InterventionError",
    "LayerIndexError",
    "LayerListProxy",
    "LogitAttribution",
    "MlxterpError",
    "ModelAttributeError",
    "ModelLoadError",
    "ModelTypeError",
    "ModuleNameError",
    "ModuleProxy",
    "NotCapturedError",
    "NotSerializableError",
    "OutputProxy",
    "SessionError",
    "Trace",
    "TraceError",
    "UnembedError",
    "UnknownArchitectureError",
    "UnsupportedAttentionError",
    "activation_patching",
    "attribution_patching",
    "batch_get_activations",
    "collect_activations",
    "demo_model",
    "direct_logit_attribution",
    "generate",
    "get_activations",
    "interventions",
    "logit_lens",
    "patching_sweep",
    "sae",
    "steer",
    "steering_vector",
]
