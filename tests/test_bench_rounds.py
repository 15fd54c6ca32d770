"""bench/protocol.py's one speed-up statistic: the median of the per-round paired ratios with
their range, under keys that cannot be mistaken for the ratio of the medians, written by ratio()
and added to records written before it existed, without changing a measured value (issue 37)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import protocol  # noqa: E402

SLOW = [10.0, 20.0, 12.0, 11.0, 10.0]
FAST = [5.0, 5.0, 4.0, 5.5, 4.0]  # per round: 2.0, 4.0, 3.0, 2.0, 2.5


def test_ratio_quotes_the_median_of_the_per_round_ratios() -> None:
    got = protocol.ratio(protocol.spread(SLOW), protocol.spread(FAST))
    assert got[protocol.SPEEDUP] == 2.5  # median of 2, 4, 3, 2, 2.5
    assert got[protocol.SPEEDUP_RANGE] == [2.0, 4.0]
    assert got["ratio_of_medians"] == round(11.0 / 5.0, 4) == got["median"]  # the old key
    assert got["repeats"] == [2.0, 4.0, 3.0, 2.0, 2.5]


def test_an_old_ratio_entry_gets_the_statistic_and_keeps_its_values() -> None:
    old = {"figures": {"speedup_b1": {"median": 2.2, "min": 2.0, "max": 4.0,
                                      "repeats": [2.0, 4.0, 3.0, 2.0, 2.5]},
                       "timing": {"base": {"median": 11.0, "min": 10.0, "max": 20.0,
                                           "repeats": SLOW}}}}
    new = protocol.with_round_statistics(old)
    entry = new["figures"]["speedup_b1"]
    assert entry[protocol.SPEEDUP] == 2.5 and entry[protocol.SPEEDUP_RANGE] == [2.0, 4.0]
    assert entry["ratio_of_medians"] == 2.2 and entry["median"] == 2.2
    assert new["figures"]["timing"] == old["figures"]["timing"]  # a timing, not a ratio
    assert "ratio_of_medians" not in old["figures"]["speedup_b1"]  # the input is not touched
    assert protocol.with_round_statistics(new) == new


def test_runtime_tables_and_photo_timings_get_paired_ratios() -> None:
    latency = {"torch": {"batch_1": {"rounds_ms": SLOW}}, "ort": {"batch_1": {"rounds_ms": FAST}}}
    new = protocol.with_round_statistics({"figures": {"latency": latency}})
    assert new["figures"]["latency"]["ort"]["batch_1"]["speedup_over"]["torch"] == {
        protocol.SPEEDUP: 2.5, protocol.SPEEDUP_RANGE: [2.0, 4.0]}
    photos = {"timing": {"base (torch fp32 eager)": {"latency_ms_rounds": SLOW},
                         "base ptq": {"latency_ms_rounds": SLOW},
                         "chosen: small": {"latency_ms_rounds": FAST}},
              "chosen": {"label": "small"}, "best_base_int8": "base ptq",
              "speedup_vs_base_torch": 2.2, "speedup_vs_best_base_int8": 2.2}
    figures = protocol.with_round_statistics({"figures": photos})["figures"]
    for key in ("speedup_vs_base_torch", "speedup_vs_best_base_int8"):
        assert figures[key] == 2.2
        assert figures[f"{key}_rounds"][protocol.SPEEDUP] == 2.5


def test_derive_file_keeps_the_layout_and_rewrites_only_when_needed(tmp_path: Path) -> None:
    record = {"figures": {"speedup_x": {"median": 2.2, "repeats": [2.0, 4.0, 3.0]}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record, indent=1))  # no final newline, indent 1
    assert protocol.derive_file(path)
    text = path.read_text()
    assert text.startswith('{\n "figures"') and not text.endswith("\n")
    assert json.loads(text)["figures"]["speedup_x"][protocol.SPEEDUP] == 3.0
    assert not protocol.derive_file(path) and path.read_text() == text


def test_write_result_adds_the_statistic(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "REPO", tmp_path)
    record = {"figures": {"vs_base": {"median": 2.2, "repeats": [2.0, 4.0, 3.0, 2.0, 2.5]}}}
    written = json.loads(common.write_result("x", record).read_text())
    assert written["figures"]["vs_base"][protocol.SPEEDUP] == 2.5


def test_shapes_it_does_not_know_are_left_alone() -> None:
    """write_result runs it on every record: an odd shape must not cost a finished run."""
    odd = {"figures": {"speedup": {"median": 1.0, "repeats": []},
                       "vs_base": {"median": 1.0, "repeats": [1.0, None]},
                       "latency": {"a": {"b1": {"rounds_ms": [1.0, 2.0]}},
                                   "b": {"b1": {"rounds_ms": [1.0]}}, "note": "x"},
                       "timing": {"chosen: m": {"latency_ms_rounds": [1.0]}},
                       "chosen": {"label": "m"}, "speedup_vs_base_torch": 2.0}}
    assert protocol.with_round_statistics(odd) == odd
