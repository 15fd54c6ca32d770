"""`leanvision.info`: what an artifact is, where it came from and what it measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifact import read_card


def info(artifact: str | Path) -> dict[str, Any]:
    """The card plus the files of the artifact folder and their sizes; loads no weights."""
    folder, card = read_card(artifact)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(".")}
    return {"path": str(folder), "files": files, **card}
