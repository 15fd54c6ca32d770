"""leanvision: train, compress, measure, explain and ship image classifiers.

The public Python API; every CLI verb is a thin skin over one of these functions. Each name is
imported on first use, so loading or evaluating an artifact does not pay for the training,
compression and ONNX stacks, nor `leanvision --help` for torch."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ArtifactError, ConfigError, DatasetError, LeanvisionError, ModelError

# Nothing heavier is imported here: `leanvision --help` and `import leanvision` stay quick (torch
# and torchmetrics load with the first function that needs them), and packages above the core
# plug in when first asked (kinds.PLUGINS, tracking.REPORT_PLUGIN).

# public name -> the module that defines it
_LAZY = {
    "Artifact": "artifact",
    "load": "artifact",
    "evaluate": "evaluate",
    "info": "info",
    "predict": "predict",
    "distill": "compress",
    "prune": "compress",
    "quantize": "compress",
    "resize": "compress",
    "cross_validate": "cv",
    "export": "runtime.stage",
    "explain": "explanations",
    "report": "reports",
    "serve": "serving",
    "bench": "runtime.bench",
    "Predictor": "runtime.predictor",
    "create_model": "models",
    "list_models": "models",
    "TrainConfig": "training",
    "train": "training",
    "compare": "training.tuning.compare",
    "lr_find": "training.tuning.lr_find",
    "optimize": "search",
    "robustness": "shift",
    "adapt": "shift",
    "compare_fusions": "multimodal",
}

__all__ = [
    "Artifact", "ArtifactError", "ConfigError", "DatasetError", "LeanvisionError", "ModelError",
    "Predictor", "TrainConfig", "__version__", "adapt", "bench", "compare", "compare_fusions",
    "create_model",
    "cross_validate", "distill", "evaluate", "explain", "export", "info", "list_models", "load",
    "lr_find", "optimize", "predict", "prune", "quantize", "report", "resize", "robustness",
    "serve", "train",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'leanvision' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Importing leanvision.evaluate (or .info, .predict) would bind the package attribute to
    the module, hiding the function of the same name; the function keeps its name here (the
    module stays in sys.modules)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not (isinstance(value, types.ModuleType) and _LAZY.get(name) == name):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .artifact import Artifact, load
    from .compress import distill, prune, quantize, resize
    from .cv import cross_validate
    from .evaluate import evaluate
    from .info import info
    from .models import create_model, list_models
    from .multimodal import compare_fusions
    from .predict import predict
    from .runtime.bench import bench
    from .runtime.predictor import Predictor
    from .runtime.stage import export
    from .search import optimize
    from .serving import serve
    from .shift import adapt, robustness
    from .training import TrainConfig, train
    from .training.tuning.compare import compare
    from .training.tuning.lr_find import lr_find
