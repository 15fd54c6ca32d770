"""User-facing errors: each says what is wrong and how to fix it.

The CLI prints these as one line and exits non-zero; any other exception is a bug.
"""


class LeanvisionError(Exception):
    """Base class of every error a user can cause and fix."""

    exit_code = 2


class DatasetError(LeanvisionError):
    """The data cannot be used as given (missing, empty, unreadable images, ...)."""


class ConfigError(LeanvisionError):
    """A flag or config value is out of range or unknown."""


class BudgetError(ConfigError):
    """A --time-budget too small for the work asked (a search treats it as "not reached")."""


class ModelError(LeanvisionError):
    """A model name, weight file or checkpoint does not fit."""


class ArtifactError(LeanvisionError):
    """A model artifact folder is missing, incomplete or from an incompatible version."""


class DistributedError(LeanvisionError):
    """Multi-process training could not start (a port in use) or lost one of its processes."""


class TrackingError(LeanvisionError):
    """Experiment tracking was asked for but cannot work (MLflow missing, server unreachable)."""
