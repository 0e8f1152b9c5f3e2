"""mlxterp: mechanistic interpretability for MLX language models.

``InterpretableModel`` wraps a model for tracing, activation reading and interventions;
``mlxterp.interventions`` holds the built-in interventions.

The functions ``head_patching``, ``path_patching`` and ``tuned_lens`` are not exported here:
their names are also their modules' (``mlxterp.head_patching`` ...), which a package
attribute of the same name would shadow for ``from mlxterp import head_patching``.  Call
them as model methods (``model.head_patching(...)``) or import them from their modules.
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
from .causal_tracing import CausalTrace, FactTracing, causal_trace, trace_facts  # noqa: E402
from .detectors import HeadDetection, detect_heads  # noqa: E402
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
from .head_patching import (  # noqa: E402
    HeadAttributionResult,
    HeadPatchingResult,
    head_attribution,
)
from .lens import logit_lens  # noqa: E402
from .model import InterpretableModel  # noqa: E402
from .names import MODEL_OUTPUT  # noqa: E402
from .patching import activation_patching, patching_sweep  # noqa: E402
from .path_patching import PathPatchingResult, PathPatchingSweep, path_patching_sweep  # noqa: E402
from .proxies import LayerListProxy, ModuleProxy, OutputProxy  # noqa: E402
from .sharding import load_sharded  # noqa: E402
from .steering import generate, steer, steering_vector  # noqa: E402
from .tracing import ActivationMap, Trace  # noqa: E402
from .tuned_lens import (  # noqa: E402
    LensKL,
    TunedLens,
    lens_kl,
    load_tuned_lens,
    save_tuned_lens,
    train_tuned_lens,
)


def demo_model() -> InterpretableModel:
    """The embedded demo model (a small trained llama), loaded offline."""
    return InterpretableModel("demo")


__version__ = "0.1.0"

__all__ = [
    "MODEL_OUTPUT",
    "ActivationCache",
    "ActivationMap",
    "CausalTrace",
    "ConfigWarning",
    "FactTracing",
    "HeadAttributionResult",
    "HeadDetection",
    "HeadPatchingResult",
    "InputError",
    "InterpretableModel",
    "InterventionError",
    "LayerIndexError",
    "LayerListProxy",
    "LensKL",
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
    "PathPatchingResult",
    "PathPatchingSweep",
    "SessionError",
    "Trace",
    "TraceError",
    "TunedLens",
    "UnembedError",
    "UnknownArchitectureError",
    "UnsupportedAttentionError",
    "activation_patching",
    "attribution_patching",
    "batch_get_activations",
    "causal_trace",
    "collect_activations",
    "demo_model",
    "detect_heads",
    "direct_logit_attribution",
    "generate",
    "get_activations",
    "head_attribution",
    "interventions",
    "lens_kl",
    "load_sharded",
    "load_tuned_lens",
    "logit_lens",
    "patching_sweep",
    "path_patching_sweep",
    "sae",
    "save_tuned_lens",
    "steer",
    "steering_vector",
    "trace_facts",
    "train_tuned_lens",
]
