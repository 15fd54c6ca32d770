"""The HTML report: one self-contained page on runs and artifacts (`leanvision report`).

Importing this package is light (the report's modules load on first use) because the top-level
package imports it: that plugs the quick report of a tracked run into tracking.py, which sits
below every stage that tracks and so may not import this package itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import tracking

__all__ = ["report"]


def __getattr__(name: str) -> Any:
    if name != "report":
        raise AttributeError(f"module 'leanvision.reports' has no attribute '{name}'")
    from .api import report

    return report


def _tracking_report(folder: Path, target: Path) -> None:
    """A quick report of a tracked artifact: no timing runs, no explanation gallery."""
    from rich.console import Console

    from .api import report

    report([folder], target, measure=False, explain_images=0,
           console=Console(stderr=True, quiet=True))


tracking.set_report_writer(_tracking_report)
