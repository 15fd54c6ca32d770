"""`setting`: a config dataclass field with its one-line help, so the option the CLI builds from
it (cli/app.py) is written once, beside the setting."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})
