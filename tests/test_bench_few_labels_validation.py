"""bench/few_labels_validation.py's decisions, written before its runs: the library's share
changes only for a candidate surely better on judge, and the final-epoch rule falls only when
best-by-validation beats the final weights on judge in most runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import few_labels_validation as flv  # noqa: E402

LABELS = np.zeros(2000, dtype=np.int64)


def _preds(correct: int, start: int = 0) -> np.ndarray:
    """Predictions over LABELS with `correct` images right, from image `start` on."""
    preds = np.ones(len(LABELS), dtype=np.int64)
    preds[start:start + correct] = 0
    return preds


def _run(epochs_correct: list[int], best_val_epoch: int, start: int = 0) -> dict:
    preds = [_preds(c, start) for c in epochs_correct]
    return {"preds": preds, "record": {"best_val_epoch": best_val_epoch,
                                       "kept_epoch": len(preds),
                                       "judge_top1": [float(np.mean(p == LABELS))
                                                      for p in preds]}}


def test_the_share_changes_only_for_a_candidate_surely_better_on_judge() -> None:
    # 100 images lost and 110 gained: better, but within the noise of 2,000 images
    close = flv.share_decision({"default": _run([1500], 1), "share0.6": _run([1510], 1, 100)},
                               LABELS)
    assert close["best_on_judge"] == "share0.6"
    assert close["vs_default"]["share0.6"]["surely_better"] is False
    assert close["default_changes_to"] is None
    far = flv.share_decision({"default": _run([1500], 1), "share0.6": _run([1600], 1)}, LABELS)
    gain = far["vs_default"]["share0.6"]
    assert gain["surely_better"] is True and gain["gain_points"] == 5.0
    assert gain["gain_interval95"][0] > 0
    assert far["default_changes_to"] == "share0.6"
    worse = flv.share_decision({"default": _run([1600], 1), "share0.6": _run([1500], 1)}, LABELS)
    assert worse["vs_default"]["share0.6"]["gain_points"] == -5.0
    assert worse["default_changes_to"] is None


def test_the_final_epoch_rule_falls_when_best_by_validation_wins_in_most_runs() -> None:
    # run a: validation picked epoch 2, which beats the final epoch on judge; run b: it
    # picked the final epoch itself
    runs = {"a": _run([1400, 1550, 1500], 2), "b": _run([1400, 1450, 1500], 3)}
    rule = flv.rule_decision(runs, LABELS)
    assert rule["runs"]["a"]["judge_best_val"] > rule["runs"]["a"]["judge_final"]
    assert rule["runs"]["a"]["final_drop_points"] == 2.5
    assert rule["runs"]["b"]["best_judge_epoch"] == 3
    assert rule["best_val_wins_on_judge"] == 1 and rule["rule_stands"] is True
    runs["b"] = _run([1400, 1550, 1500], 2)
    rule = flv.rule_decision(runs, LABELS)
    assert rule["best_val_wins_on_judge"] == 2 and rule["rule_stands"] is False


def test_a_costlier_configuration_is_chosen_only_when_surely_better_on_judge() -> None:
    # 36 epochs (default) 0.5 points over 24 epochs: within the noise, so the cheaper 24 wins;
    # a second round 5 points over the first: surely better, so two rounds are chosen
    runs = {"epochs24": _run([1490], 1, 100), "default": _run([1500], 1),
            "rounds2": _run([1600], 1)}
    choices = flv.cost_decisions(runs, LABELS)
    epochs = choices["student_epochs"]
    assert (epochs["cheaper"], epochs["costlier"]) == ("epochs24", "default")
    assert epochs["costlier_gain"]["gain_points"] == 0.5
    assert epochs["chosen"] == "epochs24"
    assert choices["rounds"]["costlier_gain"]["surely_better"] is True
    assert choices["rounds"]["chosen"] == "rounds2"
    runs["epochs24"] = _run([1400], 1)
    assert flv.cost_decisions(runs, LABELS)["student_epochs"]["chosen"] == "default"
    # a pair that did not run is not decided
    assert set(flv.cost_decisions({"default": _run([1500], 1)}, LABELS)) == set()


def test_the_share_decision_weighs_only_share_candidates() -> None:
    # a second round, or fewer epochs, far ahead of the default says nothing about the share
    runs = {"default": _run([1500], 1), "share0.6": _run([1510], 1, 100),
            "rounds2": _run([1700], 1), "epochs24": _run([1800], 1)}
    share = flv.share_decision(runs, LABELS)
    assert set(share["vs_default"]) == {"share0.6"}
    assert share["best_on_judge"] == "share0.6" and share["default_changes_to"] is None


def test_reused_runs_do_not_vote_on_the_final_epoch_rule() -> None:
    # a reused run has only its final student's judge predictions: no best-by-validation epoch
    reused = _run([1500], 1)
    reused["record"].update(reused="/earlier/default", best_val_epoch=None)
    runs = {"default": reused, "epochs24": _run([1400, 1550, 1500], 2)}
    rule = flv.rule_decision(runs, LABELS)
    assert set(rule["runs"]) == {"epochs24"}
    assert rule["best_val_wins_on_judge"] == 1 and rule["rule_stands"] is False
