"""optimize's --max-drop judged on the paired comparison with the base (search/constraints.py,
search/evidence.py), on constructed predictions whose answers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leanvision.errors import ConfigError
from leanvision.paired import compare
from leanvision.search import Candidate, Constraints, choose, evidence
from leanvision.search.constraints import (
    decision_record,
    judged_drop,
    misses,
    paired_record,
    undecided,
)
from leanvision.search.evidence import ValSplit, attach_comparisons

BASE_VAL = 0.9


def _predictions(n: int, lost: int, gained: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, base's classes, variant's classes) on n images: the base is right on the first
    90%; the variant loses `lost` of those and gains `gained` of the rest."""
    labels = np.arange(n) % 3
    right = int(n * BASE_VAL)
    base = labels.copy()
    base[right:] = (labels[right:] + 1) % 3
    variant = base.copy()
    variant[:lost] = (labels[:lost] + 1) % 3
    variant[right:right + gained] = labels[right:right + gained]
    return labels, base, variant


def _candidate(trial: int, n: int, lost: int, gained: int, ms: float = 1.0) -> Candidate:
    labels, base, variant = _predictions(n, lost, gained)
    c = Candidate(trial=trial, label=f"c{trial}", artifact=f"a{trial}", runtime="onnx-int8",
                  val_top1=BASE_VAL - (lost - gained) / n, latency_ms=ms, size_mb=1.0)
    c.comparison = compare(base == labels, variant == labels, base, variant)
    return c


def test_a_drop_within_budget_on_the_estimate_but_not_likely_is_refused_under_likely() -> None:
    c = _candidate(0, 400, lost=4, gained=1)  # drop 0.75 points on 400 images
    assert c.comparison.drop_points <= 1.0 < c.comparison.interval80[1]
    assert "max_drop" in misses(c, BASE_VAL, Constraints(max_drop=1.0, accept="likely"))
    assert not misses(c, BASE_VAL, Constraints(max_drop=1.0, accept="point"))
    figure, rule = judged_drop(c, BASE_VAL, Constraints(max_drop=1.0))
    assert rule == "likely" and figure == pytest.approx(c.comparison.interval80[1], abs=1e-4)
    # A candidate that changed no answer is accepted: 400 images resolve 1 point at 80%.
    clean = _candidate(1, 400, lost=0, gained=0, ms=2.0)
    choice = choose([c, clean], BASE_VAL, Constraints(max_drop=1.0))
    assert choice.met and choice.chosen is clean
    assert ("drop 0.0 points (95% interval " in choice.statement
            and "0 images lost, 0 gained; agreement 100.0%), 80% upper bound 0.4"
            in choice.statement and "at --accept likely" in choice.statement)
    # Under --accept point the faster one, within budget on its estimate, is chosen.
    assert choose([c, clean], BASE_VAL, Constraints(max_drop=1.0, accept="point")).chosen is c


def test_nothing_within_the_bound_names_the_nearest_bound() -> None:
    pool = [_candidate(0, 400, lost=6, gained=0), _candidate(1, 400, lost=5, gained=1)]
    choice = choose(pool, BASE_VAL, Constraints(max_drop=1.0, accept="sure"))
    assert not choice.met and choice.chosen.trial == 1
    bound = pool[1].comparison.interval95[1]
    assert (f"--max-drop 1 cannot be met: the nearest candidate's 95% upper bound is "
            f"{bound:.2f} points (c1)") in choice.statement


def test_a_split_too_small_for_the_rule_says_so_once_with_the_images_that_would_do() -> None:
    pool = [_candidate(0, 100, lost=1, gained=0), _candidate(1, 100, lost=0, gained=0, ms=2)]
    choice = choose(pool, BASE_VAL, Constraints(max_drop=1.0))
    # 100 images cannot accept even an unchanged model under likely: the estimate decides.
    assert choice.met and choice.chosen.trial == 0
    note = ("Too little data to decide: the 100 validation images cannot resolve 1 point at "
            "--accept likely (163 would); judged on the point estimate. Hold out more "
            "validation images (train the base with a larger --val-fraction)")
    assert choice.statement.count(note) == 1
    assert "pass --confirm-folds 5 to re-run the shortlisted pipelines" in choice.statement
    decision = decision_record(pool, Constraints(max_drop=1.0))
    assert (decision["rule_applied"], decision["validation_images"],
            decision["images_to_resolve"], decision["compared"]) == ("point", 100, 163, 2)
    assert decision_record(pool, Constraints(accept="point"))["notes"] == []
    sure = choose(pool, BASE_VAL, Constraints(max_drop=1.0, accept="sure")).statement
    assert "(381 would)" in sure
    assert "Too little data" not in choose(pool, BASE_VAL, Constraints(accept="point")).statement
    record = paired_record(pool[0], Constraints(max_drop=1.0))
    assert record["rule"] == "point" and record["accept"] == "likely"
    assert record["accepted"] and (record["lost"], record["gained"]) == (1, 0)
    assert record["images"] == 100 and record["note"].startswith("the 100 validation images")


def test_an_unknown_rule_is_a_config_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="--accept 'maybe' is not a rule: pass point"):
        Constraints(accept="maybe")
    with pytest.raises(ConfigError, match="--max-class-drop 0 is a budget of zero"):
        Constraints(max_class_drop=0)


def _with_classes(c: Candidate, lost_in_rare: int, n: int = 400, rare: int = 40) -> Candidate:
    """`c`, whose images split into a common class and a rare one (the last `rare` images of
    those the base gets right), the rare class losing `lost_in_rare` of them."""
    labels, base, variant = _predictions(n, lost=0, gained=0)
    right = int(n * BASE_VAL)
    is_rare = np.zeros(n, bool)
    is_rare[right - rare:right] = True
    before, after = base == labels, variant == labels
    after[right - rare:right - rare + lost_in_rare] = False
    c.class_comparisons = {"common": compare(before[~is_rare], after[~is_rare]),
                           "rare": compare(before[is_rare], after[is_rare])}
    return c


def test_the_worst_class_is_reported_and_max_class_drop_judges_every_class() -> None:
    # The mean hides it: 3 of 400 images lost, all 3 in a class of 40 (7.5 points).
    hurt = _with_classes(_candidate(0, 400, lost=3, gained=0), lost_in_rare=3)
    kept = _with_classes(_candidate(1, 400, lost=0, gained=0, ms=2.0), lost_in_rare=0)
    point = Constraints(max_drop=1.0, accept="point")
    assert choose([hurt, kept], BASE_VAL, point).chosen is hurt  # no class budget: not asked
    statement = choose([hurt, kept], BASE_VAL, point).statement
    assert "worst class rare: drop 7.5 points on its 40 images" in statement
    record = paired_record(hurt, point)
    assert record["worst_class"]["class"] == "rare" and record["worst_class"]["lost"] == 3
    assert "class_judged" not in record
    strict = Constraints(max_drop=1.0, accept="point", max_class_drop=5.0)
    assert misses(hurt, BASE_VAL, strict) == {"max_class_drop": pytest.approx(2.5)}
    choice = choose([hurt, kept], BASE_VAL, strict)
    assert choice.chosen is kept and "any class's drop <= 5 points" in choice.statement
    assert paired_record(hurt, strict)["class_judged"] == {
        "class": "rare", "figure_points": 7.5, "rule": "point", "accepted": False}
    alone = choose([hurt], BASE_VAL, strict)
    assert not alone.met and ("--max-class-drop 5 cannot be met: in the nearest candidate (c0) "
                              "class rare loses 7.50 points") in alone.statement
    # Under likely, a class of 40 images cannot resolve 2 points (the class of 320 can): its
    # estimate decides, and the statement says so once.
    likely = choose([hurt, kept], BASE_VAL, Constraints(max_drop=1.0, max_class_drop=2.0))
    assert likely.chosen is kept and likely.statement.count(
        "the smallest class's 40 images cannot resolve --max-class-drop 2 at --accept likely "
        "(81 would)") == 1
    judged = paired_record(kept, Constraints(max_class_drop=2.0))["class_judged"]
    assert (judged["class"], judged["rule"], judged["accepted"]) == ("common", "likely", True)


def test_comparisons_use_each_candidates_cached_predictions(tmp_path: Path,
                                                            monkeypatch) -> None:
    labels, base, variant = _predictions(200, lost=3, gained=1)
    split = ValSplit("data", 0.2, 0)
    scored = {("base", "torch"): (base, labels), ("int8", "onnx-int8"): (variant, labels),
              ("int8", "onnx-fp32"): (base, labels), ("other", "onnx-fp32"): (base, labels[::-1])}
    calls = []

    def score(folder, runtime, records, skip_bad, threads):
        calls.append((folder.name, runtime))
        return scored[(folder.name, runtime)]

    monkeypatch.setattr(evidence, "_records", lambda *args: None)
    monkeypatch.setattr(evidence, "predict_records", score)

    def made(folder: str, runtime: str, top1: float) -> Candidate:
        (tmp_path / folder).mkdir(exist_ok=True)
        return Candidate(trial=0, label=folder, artifact=str(tmp_path / folder),
                         runtime=runtime, val_top1=top1, latency_ms=1.0, size_mb=1.0)

    pool = [made("int8", "onnx-int8", BASE_VAL - 0.01), made("int8", "onnx-fp32", BASE_VAL),
            made("other", "onnx-fp32", BASE_VAL), made("int8", "onnx-int8", 0.5)]
    assert attach_comparisons(pool, tmp_path / "base", BASE_VAL, split) == 2
    int8, fp32, other, stale = pool
    assert (int8.comparison.lost, int8.comparison.gained) == (3, 1)
    assert int8.comparison.agreement == pytest.approx(196 / 200)
    assert (fp32.comparison.lost, fp32.comparison.gained) == (0, 0)
    assert sorted(int8.class_comparisons) == ["0", "1", "2"]
    assert sum(x.lost for x in int8.class_comparisons.values()) == 3
    # Other images, or a file that does not give the card's accuracy: the point estimate.
    assert other.comparison is None and stale.comparison is None
    # Scored once per folder and runtime, then read back from the stage folder.
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 4
    assert attach_comparisons([made("int8", "onnx-int8", BASE_VAL - 0.01)], tmp_path / "base",
                              BASE_VAL, split) == 1 and len(calls) == 4
    cached = sorted(p.name for p in (tmp_path / "int8").iterdir())
    assert cached == [f"measure-onnx-fp32-val-{split.key()}.npz",
                      f"measure-onnx-int8-val-{split.key()}.npz"]
    # A base whose predictions do not give its card's accuracy: nothing is compared.
    assert attach_comparisons(pool, tmp_path / "base", 0.5, split) == 0


def test_a_faster_candidate_the_split_cannot_rule_out_is_said_to_be_undecided() -> None:
    # Like make demo: 180 validation images, a 1-point budget. The chosen one changed no
    # answer; a faster one lost 2 images (drop 1.1 points, whose 95% interval reaches well
    # below 1); a fastest one lost 12 (surely over the budget: the split can tell).
    chosen = _candidate(0, 180, lost=0, gained=0, ms=3.0)
    close = _candidate(1, 180, lost=2, gained=0, ms=2.0)
    far = _candidate(2, 180, lost=12, gained=0, ms=1.0)
    cons = Constraints(max_drop=1.0)
    choice = choose([chosen, close, far], BASE_VAL, cons)
    assert choice.met and choice.chosen is chosen
    assert undecided([chosen, close, far], chosen, BASE_VAL, cons) == [close]
    assert ("The split cannot tell the candidates apart: 1 faster candidate missed the "
            "accuracy budget by less than its noise (fastest: c1, drop 1.1 points") in (
        choice.statement)
    assert "--confirm-folds decides on more images" in choice.statement
    # Nothing faster that the split cannot rule out: nothing said.
    alone = choose([chosen, far], BASE_VAL, cons).statement
    assert "cannot tell" not in alone
