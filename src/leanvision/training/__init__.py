"""The fit loop, its configuration and the default recipe."""

from .api import train, train_on
from .config import TrainConfig

__all__ = ["TrainConfig", "train", "train_on"]
