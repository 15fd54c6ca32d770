"""The command line: one thin command per API function, registered on command.py's `app` by a
table in each verb module; prints a summary, or with --json one JSON object as stdout's end."""

from __future__ import annotations

import importlib
import json
import sys

from typer._click.exceptions import ClickException  # typer >= 0.29 ships its own click

from . import command
from .command import app

# Each module registers its verbs on `app` when imported; `--help` lists them in this order.
for _module in ("train", "models", "stages"):
    importlib.import_module(f"{__name__}.{_module}")


def main() -> None:
    command.RUNNING = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "")
    if "--json" not in sys.argv[1:]:
        app()
        return
    # With --json, a flag that does not parse also ends with a JSON line, as any failure does.
    try:
        code = app(standalone_mode=False)
    except ClickException as exc:
        exc.show()
        print(json.dumps({"ok": False, "error": exc.format_message(), "kind": "UsageError"}))
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
