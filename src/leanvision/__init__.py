"""leanvision: train, compress, measure, explain and ship image classifiers.

The public Python API; every CLI verb is a thin skin over one of these functions. The training,
compression and ONNX stacks are imported on first use, so loading or evaluating an artifact does
not pay for them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Packages above the core plug into it when imported (multimodal: its model kind in kinds.py;
# reports: a tracked run's report in tracking.py). The API surface, the top layer, imports them
# so that the core never names them.
from . import multimodal, reports  # noqa: F401
from ._version import __version__
from .artifact import Artifact, load
from .errors import ArtifactError, ConfigError, DatasetError, LeanvisionError, ModelError

# Functions named like their own module are bound eagerly: importing a submodule later sets the
# package attribute to the module, which a lazy name would then never replace.
from .evaluate import evaluate
from .info import info
from .predict import predict

# public name -> the module that defines it
_LAZY = {
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
    "compare": "training.compare",
    "lr_find": "training.lr_find",
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


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .compress import distill, prune, quantize, resize
    from .cv import cross_validate
    from .models import create_model, list_models
    from .multimodal import compare_fusions
    from .runtime.bench import bench
    from .runtime.predictor import Predictor
    from .runtime.stage import export
    from .search import optimize
    from .serving import serve
    from .shift import adapt, robustness
    from .training import TrainConfig, train
    from .training.compare import compare
    from .training.lr_find import lr_find
