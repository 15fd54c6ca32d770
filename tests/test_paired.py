"""The paired comparison on constructed predictions whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from leanvision.paired import (
    class_drops,
    compare,
    images_to_resolve,
    mcnemar_exact_p,
    score_interval,
    worst_class_drop,
)


def _pair(both: int, lost: int, gained: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Parent and variant correctness with the given counts of each kind of image."""
    parent = np.array([True] * both + [True] * lost + [False] * gained + [False] * neither)
    variant = np.array([True] * both + [False] * lost + [True] * gained + [False] * neither)
    return parent, variant


@pytest.mark.parametrize(("n", "p_lost", "p_gained"), [(1000, 0.02, 0.01), (341, 0.015, 0.005)])
def test_95_interval_covers_a_true_1_point_drop_95_percent_of_the_time(n, p_lost,
                                                                       p_gained) -> None:
    # 2,000 seeded validation splits of a variant whose true drop is exactly 1 point.
    draws = np.random.default_rng(25).random((2000, n))
    lost = (draws < p_lost).sum(axis=1)
    gained = ((draws >= p_lost) & (draws < p_lost + p_gained)).sum(axis=1)
    low, high = score_interval(lost, gained, n, 0.95)
    coverage = np.mean((low <= 0.01) & (high >= 0.01))
    assert abs(coverage - 0.95) <= 0.02, coverage
    # The 80% interval is nested inside and covers about 80%.
    low80, high80 = score_interval(lost, gained, n, 0.80)
    assert np.all((low <= low80 + 1e-12) & (high80 <= high + 1e-12))
    assert abs(np.mean((low80 <= 0.01) & (high80 >= 0.01)) - 0.80) <= 0.03


@pytest.mark.parametrize(("lost", "gained"), [(0, 0), (1, 0), (0, 3), (2, 5), (7, 1),
                                              (12, 12), (30, 9), (0, 40)])
def test_mcnemar_p_value_is_scipys_exact_binomial_test(lost, gained) -> None:
    expected = 1.0 if lost + gained == 0 else binomtest(lost, lost + gained, 0.5).pvalue
    assert mcnemar_exact_p(lost, gained) == pytest.approx(expected, rel=1e-12)
    parent, variant = _pair(100, lost, gained, 5)
    assert compare(parent, variant).p_value == pytest.approx(expected, rel=1e-12)


def test_counts_drop_agreement_and_description() -> None:
    parent, variant = _pair(160, 2, 0, 18)  # 180 images, 2 lost, none gained
    parent_pred = np.zeros(180, int)
    variant_pred = parent_pred.copy()
    variant_pred[160:162] = 1  # the two lost images change class ...
    # ... and so does one image both got wrong: agreement counts classes, not correctness.
    variant_pred[170] = 2
    result = compare(parent, variant, parent_pred, variant_pred)
    assert (result.images, result.lost, result.gained) == (180, 2, 0)
    assert result.drop_points == pytest.approx(200 / 180)
    assert result.agreement == pytest.approx(177 / 180)
    low, high = result.interval95
    assert low < result.drop_points < high and low < 0 < high  # 2 images: cannot tell
    assert result.describe() == (f"drop 1.1 points (95% interval {low:.1f} to {high:.1f}; "
                                 "2 images lost, 0 gained; agreement 98.3%)")
    assert "1 image lost" in compare(*_pair(10, 1, 0, 0)).describe()
    assert "agreement" not in compare(*_pair(10, 1, 0, 0)).describe()


def test_no_discordant_image_bound_is_z_squared_over_n_plus_z_squared() -> None:
    low, high = score_interval(0, 0, 180, 0.95)
    z2 = 1.959963984540054 ** 2
    assert float(high) == pytest.approx(z2 / (180 + z2), rel=1e-9)
    assert float(low) == pytest.approx(-float(high))


def test_rules_accept_on_the_estimate_the_80_and_the_95_upper_bound() -> None:
    # 2,000 images, 10 lost, 4 gained: drop 0.3 points, 80% bound ~0.5, 95% bound ~0.7.
    result = compare(*_pair(1800, 10, 4, 186))
    assert result.drop_points == pytest.approx(0.3)
    assert result.drop_points < result.interval80[1] < result.interval95[1]
    budget_between = (result.interval80[1] + result.interval95[1]) / 2
    assert result.accepts(budget_between, "point") and result.accepts(budget_between, "likely")
    assert not result.accepts(budget_between, "sure")
    below_80 = (result.drop_points + result.interval80[1]) / 2
    assert result.accepts(below_80, "point") and not result.accepts(below_80, "likely")
    assert result.accepts(result.interval95[1] + 0.01, "sure")
    assert not result.accepts(0.29, "point")
    with pytest.raises(ValueError, match="not one of point, likely, sure"):
        result.accepts(1.0, "maybe")


def test_a_split_too_small_for_the_budget_says_how_many_images_would_do() -> None:
    assert images_to_resolve(1.0, 0.95) == 381  # 1.96^2 * 99 = 380.3
    assert images_to_resolve(0.5, 0.80) == 327
    assert images_to_resolve(0.0) is None and images_to_resolve(-1.0) is None
    small, large = compare(*_pair(170, 0, 0, 10)), compare(*_pair(370, 0, 0, 11))
    assert not small.resolvable(1.0) and large.resolvable(1.0)
    # Resolvable means a variant that changed nothing is accepted under that rule.
    assert large.accepts(1.0, "sure") and not small.accepts(1.0, "sure")
    assert small.resolvable(1.0, "point") and small.resolvable(1.5, "likely")


def test_worst_class_drop_finds_the_class_the_variant_hurts() -> None:
    labels = np.array([0] * 50 + [1] * 10 + [2] * 40)
    parent = np.ones(100, bool)
    variant = parent.copy()
    variant[[0, 50, 51, 52]] = False  # class 0 loses 1 of 50, rare class 1 loses 3 of 10
    variant[60] = False
    parent[61] = False  # class 2: one lost, one gained
    variant[61] = True
    drops = class_drops(labels, parent, variant)
    assert drops[0] == (pytest.approx(2.0), 50) and drops[1] == (pytest.approx(30.0), 10)
    assert drops[2] == (pytest.approx(0.0), 40)
    assert worst_class_drop(labels, parent, variant) == (1, pytest.approx(30.0), 10)
    assert compare(parent, variant).drop_points == pytest.approx(4.0)  # the mean hides it


def test_mismatched_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="equal, non-empty"):
        compare(np.ones(3, bool), np.ones(4, bool))
