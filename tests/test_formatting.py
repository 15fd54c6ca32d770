"""The one percentage formatter: every table and message shows a fraction the same way."""

from __future__ import annotations

from leanvision.formatting import percent


def test_percent_reads_as_every_table_showed_it():
    assert percent(0.91234) == "91.23%"
    assert percent(None) == "—"
    assert percent(0.5, sign="") == "50.00"
    assert percent(None, missing="-") == "-"
