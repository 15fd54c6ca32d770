"""The one comparison primitive (DESIGN.md): a variant against its parent or base on the same
images, judged on per-image correctness rather than on two accuracies.

Two accuracies on one split each carry a binomial error of 1.5-2.5 points on a few hundred
images; their *difference* for a compressed model is far tighter, because only the images that
changed answer (the discordant pairs) carry information about it. Everything here is built on
those pairs.

The interval is Tango's score interval for a difference of paired proportions (Tango 1998,
Stat Med 17:891): the set of drops that a score test on the discordant pairs does not reject.
Chosen over the alternatives because
  - unlike a bootstrap over images, it is deterministic and does not collapse to a zero-width
    interval when no image changed answer (a bootstrap of 0 discordant pairs says "exactly 0");
  - unlike the exact conditional (Clopper-Pearson on lost / discordant) interval, it accounts
    for the number of discordant pairs being random too, which is what keeps its coverage near
    nominal for the 10-50 discordant images a compressed model has on a small split;
  - with no discordant image its upper bound is z^2 / (n + z^2), which gives a clean answer to
    "how many images does this budget need" (`images_to_resolve`).
tests/test_paired.py measures its coverage on simulated splits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

RULES = ("point", "likely", "sure")
# The interval whose upper bound each rule holds to the budget ("point": the estimate itself).
RULE_LEVELS = {"point": None, "likely": 0.80, "sure": 0.95}
# Every decision's default (quantize's guard, optimize's constraints): the 80% bound. "sure"
# (95%) needs 761 validation images to accept even a perfect INT8 model within quantize's
# 0.5 points, more than most users' splits hold, while "point" accepts a model whose true drop
# is at the budget half the time. One-sided, "likely" is wrong one time in ten.
DEFAULT_ACCEPT = "likely"


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def _score(delta: np.ndarray, lost: np.ndarray, gained: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Tango's score statistic for H0: drop (as a share) == delta; all arrays broadcast."""
    # Restricted maximum likelihood estimate of P(gained) under H0 (a root of a quadratic).
    a = 2 * n
    b = -lost - gained + (2 * n - lost + gained) * delta
    c = -gained * delta * (1 - delta)
    p_gained = (-b + np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))) / (2 * a)
    variance = n * (2 * p_gained + delta * (1 - delta))
    return (lost - gained - n * delta) / np.sqrt(np.maximum(variance, 1e-300))


def score_interval(lost, gained, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Tango's interval for the drop (a share, -1..1), vectorised over arrays of counts so that
    thousands of simulated splits are solved at once (bisection: the statistic falls with
    delta, and the estimate (lost - gained) / n is always inside)."""
    lost, gained, n = (np.asarray(x, dtype=np.float64) for x in (lost, gained, n))
    lost, gained, n = np.broadcast_arrays(lost, gained, n)
    z, edge = _z(level), 1 - 1e-12
    estimate = (lost - gained) / n
    bounds = []
    for far, target in ((-edge, z), (edge, -z)):
        near, outer = estimate.copy(), np.full_like(estimate, far)
        for _ in range(60):  # 2^-60 of the range: far below one image in any split
            mid = (near + outer) / 2
            inside = np.abs(_score(mid, lost, gained, n)) <= abs(target)
            near, outer = np.where(inside, mid, near), np.where(inside, outer, mid)
        # An end the test never rejects (the whole side is plausible) is the end itself.
        open_end = np.abs(_score(np.full_like(estimate, far), lost, gained, n)) <= abs(target)
        bounds.append(np.where(open_end, far, near))
    return bounds[0], bounds[1]


def mcnemar_exact_p(lost: int, gained: int) -> float:
    """Two-sided exact McNemar test: a binomial test of `lost` among the discordant pairs
    against one half (scipy.stats.binomtest's two-sided p-value, which at p = 1/2 is twice
    the smaller tail)."""
    m = lost + gained
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(lost, gained) + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def images_to_resolve(budget_points: float, level: float = 0.95) -> int | None:
    """Validation images for which a variant that changed no answer at all has the `level`
    interval's upper bound within the budget: z^2 / (n + z^2) <= budget. None for a budget
    below zero (no split resolves it)."""
    share = budget_points / 100
    if share <= 0:
        return None
    z2 = _z(level) ** 2
    return math.ceil(z2 * (1 - share) / share - 1e-9)


def applied_rule(images: int, budget_points: float, accept: str) -> tuple[str, str | None]:
    """(the rule a split of `images` can apply, why it is not `accept` or None). Where even a
    variant that changed no answer could not be accepted under `accept`, the point estimate
    decides and the note says so, with the images that would resolve the budget: every
    variant would fail otherwise, for no measurable reason."""
    if accept not in RULES:
        raise ValueError(f"acceptance rule {accept!r} is not one of {', '.join(RULES)}")
    level = RULE_LEVELS[accept]
    if level is None:
        return accept, None
    needed = images_to_resolve(budget_points, level)
    if needed is not None and images >= needed:
        return accept, None
    points = f"{budget_points:g} point" + ("" if budget_points == 1 else "s")
    return "point", (f"the {images} validation images cannot resolve {points} at --accept "
                     f"{accept} ({'no split' if needed is None else needed} would); judged on "
                     "the point estimate")


@dataclass(frozen=True)
class PairedComparison:
    """A variant against its parent on the same `images`; drops are in top-1 points, positive
    when the variant is worse."""

    images: int
    lost: int  # right before, wrong now
    gained: int  # wrong before, right now
    drop_points: float
    interval80: tuple[float, float]
    interval95: tuple[float, float]
    agreement: float | None  # share predicting the same class; None without predictions
    p_value: float  # exact McNemar: could lost vs gained be a coin toss?

    def upper(self, rule: str) -> float:
        if rule not in RULES:
            raise ValueError(f"acceptance rule {rule!r} is not one of {', '.join(RULES)}")
        return {"point": self.drop_points, "likely": self.interval80[1],
                "sure": self.interval95[1]}[rule]

    def accepts(self, budget_points: float, rule: str = "likely") -> bool:
        """point: the estimate is within the budget; likely: the 80% interval's upper bound
        is; sure: the 95% interval's upper bound is."""
        return self.upper(rule) <= budget_points + 1e-9  # n * 1% is not exact in binary

    def resolvable(self, budget_points: float, rule: str = "sure") -> bool:
        """Could any variant be accepted under `rule` on a split of this size: does even one
        that changed no answer have its upper bound within the budget?"""
        self.upper(rule)  # refuses an unknown rule
        return applied_rule(self.images, budget_points, rule)[0] == rule

    def describe(self) -> str:
        low, high = self.interval95
        agreement = ("" if self.agreement is None
                     else f"; agreement {self.agreement * 100:.1f}%")
        return (f"drop {self.drop_points:.1f} points (95% interval {low:.1f} to {high:.1f}; "
                f"{_images(self.lost)} lost, {self.gained} gained{agreement})")

    def record(self, budget_points: float, rule: str) -> dict:
        """The card's account of the decision: the numbers and the rule they were judged by."""
        return {"rule": rule, "budget_points": budget_points, "images": self.images,
                "drop_points": round(self.drop_points, 4), "lost": self.lost,
                "gained": self.gained,
                "interval80_points": [round(x, 4) for x in self.interval80],
                "interval95_points": [round(x, 4) for x in self.interval95],
                "agreement": None if self.agreement is None else round(self.agreement, 6),
                "mcnemar_p": round(self.p_value, 6), "accepted": self.accepts(budget_points,
                                                                               rule)}


def _images(count: int) -> str:
    return f"{count} image" + ("" if count == 1 else "s")


def compare(parent_correct, variant_correct, parent_pred=None,
            variant_pred=None) -> PairedComparison:
    """Compare per-image correctness (bool arrays over the same images, in the same order);
    predicted classes, when given, add the agreement rate."""
    before, after = np.asarray(parent_correct, bool), np.asarray(variant_correct, bool)
    if before.shape != after.shape or before.ndim != 1 or not len(before):
        raise ValueError(f"paired comparison needs two equal, non-empty 1-D correctness "
                         f"arrays (got {before.shape} and {after.shape})")
    lost, gained = int(np.sum(before & ~after)), int(np.sum(~before & after))
    agreement = None
    if parent_pred is not None and variant_pred is not None:
        agreement = float(np.mean(np.asarray(parent_pred) == np.asarray(variant_pred)))
    return from_counts(lost, gained, len(before), agreement)


def from_counts(lost: int, gained: int, images: int,
                agreement: float | None = None) -> PairedComparison:
    """The comparison from its counts alone: the discordant pairs carry everything the
    interval and the test need, so comparisons on disjoint images (folds) pool by adding
    their counts."""
    if images < 1 or lost < 0 or gained < 0 or lost + gained > images:
        raise ValueError(f"paired counts need 0 <= lost + gained <= images and images >= 1 "
                         f"(got lost={lost}, gained={gained}, images={images})")
    intervals = [tuple(float(bound[()]) * 100 for bound in score_interval(lost, gained, images,
                                                                           lv))
                 for lv in (0.80, 0.95)]
    return PairedComparison(images, lost, gained, (lost - gained) / images * 100, intervals[0],
                            intervals[1], agreement, mcnemar_exact_p(lost, gained))


def class_drops(labels, parent_correct, variant_correct) -> dict[int, tuple[float, int]]:
    """{class: (drop in top-1 points within the class, its images)}: a variant that keeps the
    mean can still lose a rare class, the failure users report most."""
    labels = np.asarray(labels)
    before, after = np.asarray(parent_correct, bool), np.asarray(variant_correct, bool)
    drops = {}
    for label in np.unique(labels):
        mine = labels == label
        drops[int(label)] = (float(before[mine].mean() - after[mine].mean()) * 100,
                             int(mine.sum()))
    return drops


def worst_class_drop(labels, parent_correct, variant_correct) -> tuple[int, float, int]:
    """(class, drop in points, its images) of the class the variant hurts most."""
    drops = class_drops(labels, parent_correct, variant_correct)
    label = max(drops, key=lambda k: (drops[k][0], -k))
    return label, *drops[label]
