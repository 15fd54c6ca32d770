"""The HTML report: one self-contained page on runs and artifacts (`leanvision report`)."""

from .api import report

__all__ = ["report"]
