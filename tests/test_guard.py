"""The quantize accuracy guard's judgement on constructed FP32 / INT8 predictions."""

from __future__ import annotations

import numpy as np
import pytest

from leanvision.compress.guard import Scores, guard_record, judge
from leanvision.compress.ptq import PTQConfig


def _scores(predictions: np.ndarray, labels: np.ndarray) -> Scores:
    scores = Scores(n=len(labels), top1=float(np.mean(predictions == labels)))
    scores.predictions = predictions
    return scores


def _models(n: int, lost: int, gained: int) -> tuple[Scores, Scores, np.ndarray]:
    """FP32 right on all but the last 10% of `n` images; INT8 loses `lost` of the first images
    (to class 1) and gains `gained` of the wrong ones."""
    labels = np.zeros(n, int)
    fp32 = labels.copy()
    wrong = n - n // 10
    fp32[wrong:] = 2
    int8 = fp32.copy()
    int8[:lost] = 1
    int8[wrong:wrong + gained] = 0
    return _scores(fp32, labels), _scores(int8, labels), labels


def test_a_tight_split_judges_by_the_rule_and_says_it_like_the_issue() -> None:
    fp32, int8, labels = _models(2000, 12, 0)  # drop 0.6 points on 2,000 images
    likely = judge(fp32, int8, labels, 1.0, "likely", ["cat", "dog", "eel"])
    assert likely.met and likely.rule == "likely" and likely.note is None
    statement = likely.statement(1.0)
    assert statement.startswith("drop 0.6 points (95% interval 0.")
    assert "12 images lost, 0 gained; agreement 99.4%) — within 1 point: likely (80%" in statement
    sure = judge(fp32, int8, labels, 1.0, "sure")
    assert not sure.met and "within 1 point: not shown (95% upper bound 1." in sure.statement(1)
    assert judge(fp32, int8, labels, 1.0, "point").met
    assert likely.worst_class == {"class": "cat", "drop_points": pytest.approx(0.6),
                                  "images": 2000}


def test_a_split_too_small_for_the_rule_is_said_and_judged_on_the_estimate() -> None:
    fp32, int8, labels = _models(180, 1, 0)
    verdict = judge(fp32, int8, labels, 0.5, "likely")
    assert verdict.rule == "point" and not verdict.met  # 0.56 > 0.5
    unchanged = judge(*_models(180, 0, 0), 0.5, "likely")
    assert unchanged.met and unchanged.rule == "point"  # its 80% bound, 0.9, would fail
    assert verdict.note == ("the 180 validation images cannot resolve 0.5 points at --accept "
                            "likely (327 would); judged on the point estimate")
    record = guard_record(PTQConfig(max_drop=0.5), "val", verdict, [], [{"round": 0}], None)
    assert record["status"].startswith("NOT met after 1 round(s): drop 0.6 points (95% interval")
    assert record["status"].endswith("(327 would); judged on the point estimate)")
    assert record["accept"] == "likely" and record["rule_applied"] == "point"
    comparison = record["comparison"]
    assert (comparison["images"], comparison["lost"], comparison["gained"]) == (180, 1, 0)
    assert comparison["agreement"] == pytest.approx(179 / 180, abs=1e-6)
    assert comparison["rule"] == "point" and comparison["accepted"] is False


def test_scores_without_predictions_fall_back_to_the_two_accuracies() -> None:
    verdict = judge({"n": 9, "top1": 0.9}, {"n": 9, "top1": 0.85}, None, 5.0, "sure")
    assert verdict.met and verdict.comparison is None and verdict.rule == "point"
    record = guard_record(PTQConfig(max_drop=5.0), "val", verdict, [], [], None)
    assert record["status"] == "met" and record["comparison"] is None


def test_an_unknown_rule_is_refused_by_flag() -> None:
    with pytest.raises(Exception, match="--accept 'maybe' is not one of point, likely, sure"):
        PTQConfig(accept="maybe")
