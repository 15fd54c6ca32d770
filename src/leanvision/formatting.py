"""How figures read in tables and messages, written once so that every table agrees."""

from __future__ import annotations


def percent(value: float | None, *, sign: str = "%", missing: str = "—") -> str:
    """A fraction as a percentage with two decimals: 0.9123 -> "91.23%". `sign`: "" where the
    column header already says %; `missing`: what an unmeasured figure (None) shows."""
    return missing if value is None else f"{100 * value:.2f}{sign}"
