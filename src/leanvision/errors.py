"""User-facing errors: each says what is wrong and how to fix it.

The CLI prints these as one line and exits non-zero; any other exception is a bug. A message
names what to change in the words of the Python API (`skip_bad_images=True`,
`leanvision.list_models()`); the CLI prints it through `as_flags`, in the words of the command
line (`--skip-bad-images`, `leanvision models`), so one message serves both.
"""

import re
from collections.abc import Callable

# name=value naming a Python argument: not inside a word, a flag, a path or a URL's query.
_ARGUMENT = re.compile(r"(?<![\w./?&-])([a-z][a-z0-9_]*)=(True|False|[^\s,;)`'\"]*[^\s,;:)`'\".])")
_FUNCTION = re.compile(r"\bleanvision\.(?:[a-z_]+\.)*([a-z_]+)\(\)")


class LeanvisionError(Exception):
    """Base class of every error a user can cause and fix. `details`: what a program reading
    the error needs beyond the message (the CLI adds them to its --json line)."""

    exit_code = 2

    def __init__(self, message: str = "", details: dict | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


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


def as_flags(message: str, verb_of: Callable[[str], str | None]) -> str:
    """`message` in the words of the command line: `name=True` -> `--name`, `name=False` ->
    `--no-name`, `name=VALUE` -> `--name VALUE`, `leanvision.function()` -> `leanvision VERB`
    where `verb_of(function)` names its verb (else left as it is). Code in backticks other
    than such a function call is left as written."""

    def flag(match: re.Match) -> str:
        name, value = match.group(1).replace("_", "-"), match.group(2)
        if value in ("True", "False"):
            return f"--{'' if value == 'True' else 'no-'}{name}"
        return f"--{name} {value}"

    def verb(match: re.Match) -> str:
        name = verb_of(match.group(1))
        return f"leanvision {name}" if name else match.group(0)

    parts = message.split("`")  # the odd parts are code
    return _FUNCTION.sub(verb, "`".join(p if i % 2 else _ARGUMENT.sub(flag, p)
                                        for i, p in enumerate(parts)))
