"""leanvision: train, compress, measure, explain and ship image classifiers.

The public Python API; every CLI verb is a thin skin over one of these functions."""

from ._version import __version__
from .artifact import Artifact, load
from .compress import distill, prune, quantize
from .cv import cross_validate
from .errors import ArtifactError, ConfigError, DatasetError, LeanvisionError, ModelError
from .evaluate import evaluate
from .info import info
from .models import create_model, list_models
from .predict import predict
from .training import TrainConfig, train
from .training.compare import compare
from .training.lr_find import lr_find

__all__ = [
    "Artifact",
    "ArtifactError",
    "ConfigError",
    "DatasetError",
    "LeanvisionError",
    "ModelError",
    "TrainConfig",
    "__version__",
    "compare",
    "create_model",
    "cross_validate",
    "distill",
    "evaluate",
    "info",
    "list_models",
    "load",
    "lr_find",
    "predict",
    "prune",
    "quantize",
    "train",
]
