"""optimize's choice confirmed on validation images that did not choose (search/holdout.py):
a candidate lucky on the search part is refused on the confirmation part and replaced by the
base's own network; an honest one is kept; a split too small to confirm says so."""

from __future__ import annotations

import numpy as np
import pytest

from leanvision.search import Candidate, Constraints
from leanvision.search.holdout import (
    base_identical,
    can_confirm,
    choose_and_confirm,
    confirmation_mask,
)

N = 600
SEED = 3
LABELS = np.arange(N) % 3
# The base is right on 90% of the images, spread evenly over both parts.
BASE_PRED = np.where(np.arange(N) % 10 == 9, (LABELS + 1) % 3, LABELS)
MASK = confirmation_mask(LABELS, 0.5, SEED)
CONS = Constraints(max_drop=1.0, accept="likely")
PIPE_BASE = {"source": "base", "prune_ratio": 0.0, "quant": "none", "resolution": 0}


def candidate(trial: int, predicted: np.ndarray, ms: float, pipeline: dict) -> Candidate:
    return Candidate(trial=trial, label=f"c{trial}", artifact=f"a{trial}", runtime="onnx-int8",
                     val_top1=float(np.mean(predicted == LABELS)), latency_ms=ms, size_mb=1.0,
                     pipeline=pipeline, val_predicted=predicted)


def flipped(where: np.ndarray, count: int, make_right: bool) -> np.ndarray:
    """The base's predictions with `count` images of `where` changed: right ones made wrong,
    or wrong ones made right."""
    out = BASE_PRED.copy()
    base_right = BASE_PRED == LABELS
    pick = np.flatnonzero(where & (~base_right if make_right else base_right))[:count]
    out[pick] = LABELS[pick] if make_right else (LABELS[pick] + 1) % 3
    return out


def lucky() -> np.ndarray:
    """Gains 4 on the search part (the best of many noisy draws looks good there) and loses
    12 on the confirmation part: 2 points worse on images that did not choose it."""
    out = flipped(~MASK, 4, make_right=True)
    lost = flipped(MASK, 12, make_right=False)
    out[MASK] = lost[MASK]
    return out


def pool(fast: np.ndarray) -> list[Candidate]:
    base = candidate(0, BASE_PRED.copy(), 10.0, {**PIPE_BASE})
    return [base, candidate(1, fast, 2.0, {**PIPE_BASE, "quant": "ptq"})]


def test_the_mask_is_stratified_seeded_and_halves_each_class():
    assert np.array_equal(MASK, confirmation_mask(LABELS, 0.5, SEED))
    assert not np.array_equal(MASK, confirmation_mask(LABELS, 0.5, SEED + 1))
    for k in range(3):
        in_class = np.equal(LABELS, k)
        assert MASK[in_class].sum() == in_class.sum() // 2


def test_a_candidate_lucky_on_the_search_part_is_refused_and_the_base_chosen():
    candidates = pool(lucky())
    base_val = float(np.mean(BASE_PRED == LABELS))
    choice, record = choose_and_confirm(candidates, base_val, CONS, BASE_PRED, LABELS, SEED)
    assert record["applied"] and record["candidate"] == "c1" and not record["accepted"]
    assert record["search"]["drop_points"] < 0 < record["confirmation"]["drop_points"]
    assert record["confirmation"]["images"] == N // 2 == record["search"]["images"]
    assert choice.met and choice.chosen is candidates[0] and record["fallback"] == "c0"
    assert "was refused on the 300 held out of the choice" in choice.statement


def test_a_candidate_that_changes_nothing_is_confirmed_and_kept():
    candidates = pool(BASE_PRED.copy())
    choice, record = choose_and_confirm(candidates, 0.9, CONS, BASE_PRED, LABELS, SEED)
    assert record["accepted"] and choice.chosen is candidates[1]
    assert "Confirmed on 300 validation images that played no part in the choice" in \
        choice.statement


def test_too_few_validation_images_keep_the_plain_choice_and_say_so():
    few = slice(0, 200)  # 100 held out cannot resolve 1 point at 80% (163 needed)
    assert not can_confirm(100, CONS) and can_confirm(163, CONS)
    assert can_confirm(1, Constraints(accept="point"))
    small = [candidate(c.trial, c.val_predicted, c.latency_ms, c.pipeline)
             for c in pool(BASE_PRED.copy())]
    choice, record = choose_and_confirm(small, 0.9, CONS, BASE_PRED[few], LABELS[few], SEED)
    assert not record["applied"] and "cannot resolve 1 points" in record["note"]
    assert choice.chosen is small[1]


def test_without_the_base_network_a_refusal_is_not_met():
    only_fast = pool(lucky())[1:]
    assert base_identical(only_fast) is None
    choice, record = choose_and_confirm(only_fast, 0.9, CONS, BASE_PRED, LABELS, SEED)
    assert not choice.met and record["fallback"] is None


@pytest.mark.parametrize("accept", ["likely", "point"])
def test_the_confirmation_judges_under_the_users_rule(accept):
    cons = Constraints(max_drop=1.0, accept=accept)
    choice, record = choose_and_confirm(pool(lucky()), 0.9, cons, BASE_PRED, LABELS, SEED)
    assert record["confirmation"]["rule"] == accept and not record["accepted"]


def test_a_rule_the_held_out_part_cannot_resolve_is_not_confirmed():
    # 300 held-out images cannot resolve 1 point at 95% (381 needed)
    cons = Constraints(max_drop=1.0, accept="sure")
    choice, record = choose_and_confirm(pool(lucky()), 0.9, cons, BASE_PRED, LABELS, SEED)
    assert not record["applied"] and "needs 381" in record["note"]


def test_a_generous_budget_still_needs_enough_images_in_each_part():
    # 100 points are resolved by any split; 20 images a part are still too few to compare
    cons = Constraints(max_drop=100.0, accept="likely")
    few = slice(0, 40)
    choice, record = choose_and_confirm(pool(BASE_PRED.copy()), 0.9, cons, BASE_PRED[few],
                                        LABELS[few], SEED)
    assert not record["applied"] and choice.met
