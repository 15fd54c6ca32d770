"""Pruning's scope choice and step records through the paired comparison, on constructed
predictions with known answers."""

from __future__ import annotations

import numpy as np

from leanvision.compress.evidence import Predictions
from leanvision.compress.prune_evidence import choose_scope, step_record


def _net(labels: np.ndarray, wrong: list[int]) -> Predictions:
    predicted = labels.copy()
    predicted[wrong] = (predicted[wrong] + 1) % 3
    return Predictions(predicted, labels)


LABELS = np.arange(300) % 3


def test_a_scope_that_is_surely_better_is_kept_and_said_so():
    parent = _net(LABELS, [])
    scored = {"global": _net(LABELS, list(range(40))), "layer": _net(LABELS, list(range(5)))}
    chosen, record, note = choose_scope(scored, parent)
    assert chosen == "layer"
    between = record["scope_comparison"]
    # global, against layer: 35 images lost, none gained, 300 images.
    assert (between["kept"], between["other"]) == ("layer", "global")
    assert (between["lost"], between["gained"], between["images"]) == (35, 0, 300)
    assert between["interval95_points"][0] > 0
    assert "layer is surely better" in note and "35 images lost, 0 gained" in note
    assert record["scope_vs_parent"]["layer"]["lost"] == 5
    assert record["scope_val_top1"]["global"] == (300 - 40) / 300


def test_scopes_the_split_cannot_tell_apart_are_said_to_be_a_guess():
    parent = _net(LABELS, [])
    # layer: wrong on 0-9; global: wrong on 0-7 and 100-102 (3 lost, 2 gained against layer).
    scored = {"global": _net(LABELS, [*range(8), 100, 101, 102]),
              "layer": _net(LABELS, list(range(10)))}
    chosen, record, note = choose_scope(scored, parent)
    assert chosen == "layer"
    assert (record["scope_comparison"]["lost"], record["scope_comparison"]["gained"]) == (3, 2)
    assert "cannot tell them apart" in note
    assert record["scope_note"] == note


def test_a_tie_keeps_the_first_scope():
    parent = _net(LABELS, [])
    scored = {"global": _net(LABELS, [1, 2]), "layer": _net(LABELS, [3, 4])}
    chosen, _, note = choose_scope(scored, parent)
    assert chosen == "global" and "cannot tell them apart" in note


def test_no_validation_images_still_chooses():
    chosen, record, note = choose_scope({"global": None, "layer": None}, None)
    assert chosen == "global" and note is None and "scope_comparison" not in record


def test_step_record_quotes_the_drop_against_the_parent():
    parent = _net(LABELS, [0, 1])
    finetuned = _net(LABELS, [0, 5, 6, 7])  # loses 5, 6, 7 and gains 1
    record = step_record(parent, None, finetuned)
    got = record["finetuned_vs_parent"]
    assert (got["lost"], got["gained"]) == (3, 1)
    assert abs(got["drop_points"] - 2 / 3) < 1e-3
    assert abs(got["agreement"] - (300 - 4) / 300) < 1e-6
    assert "3 images lost, 1 gained" in record["finetuned_vs_parent_text"]
    assert "pruned_vs_parent" not in record
    assert step_record(None, parent, finetuned) == {}
