"""The command line: one thin command per API function (a table in each verb module). It parses
flags, calls the function, prints a summary and, with --json, one JSON object as the last line
of stdout. command.py holds the machinery; the verb modules register on its `app` when imported."""

from __future__ import annotations

import importlib
import sys

from . import command
from .command import app

# Each module registers its verbs on `app` when imported; `--help` lists them in this order.
for _module in ("train", "multimodal", "models", "stages", "runtime"):
    importlib.import_module(f"{__name__}.{_module}")


def main() -> None:
    command.RUNNING = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    app()


__all__ = ["app", "main"]
