"""Which images the post-training accuracy guard decides on: never the test split.

The guard's decisions (which nodes return to FP32, whether the budget is met) are made on the
validation split the parent trained with. Without one, a stratified, seeded slice of train is held
out for the check and left out of calibration; with too few training images for that, the guard
says it has nothing to check on and is skipped. The test split is scored only for the report,
after every decision (DESIGN.md: the test split is sealed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rich.console import Console

from ..data import ImageRecords, stratified_holdout
from ..data.partition import Partition
from ..errors import DatasetError

HOLDOUT_SPLIT = "train_holdout"  # the name the card's metrics and guard give the slice
HOLDOUT_FRACTION = 0.1  # of train, as the default validation hold-out of `train`
# At least this many images: with fewer, one flipped image is over 5 points and the check says
# next to nothing (even 20 are judged on the point estimate; the card says so).
HOLDOUT_MIN = 20
# At most this many: the check is repeated every guard round, and a few thousand images already
# resolve a fraction of a point.
HOLDOUT_MAX = 2000

Scoring = TypeVar("Scoring")  # a backend's decoded split (ptq.ScoringSet); it has a .name


@dataclass
class GuardSplit:
    check: ImageRecords | None  # the images the guard judges on; None: the guard is skipped
    name: str | None  # "val" or HOLDOUT_SPLIT; None when skipped
    calibration_pool: ImageRecords  # the training images calibration may draw from
    record: dict[str, Any]  # the card's guard["images"]: split, count, where they come from

    @property
    def skipped(self) -> str | None:
        """Why the guard has nothing to check on, or None."""
        return self.record["origin"] if self.check is None else None


def guard_split(parts: Partition, seed: int) -> GuardSplit:
    """The guard's images for the parent's partition `parts` (cut with its `seed`)."""
    if parts.val is not None and len(parts.val):
        return GuardSplit(parts.val, "val", parts.train,
                          {"split": "val", "images": len(parts.val), "origin": parts.val_origin})
    train = parts.train
    wanted = min(max(round(len(train) * HOLDOUT_FRACTION), HOLDOUT_MIN), HOLDOUT_MAX)
    if len(train) < 2 * HOLDOUT_MIN:
        return _skipped(train, f"the data has no validation split and its {len(train)} training "
                        f"images are too few to hold out {HOLDOUT_MIN} for the check (it needs "
                        f"{2 * HOLDOUT_MIN}); INT8 accuracy is unchecked")
    try:
        rest, held = stratified_holdout(train, wanted / len(train), seed)
    except DatasetError:
        held = train.subset([])
    if not len(held):
        return _skipped(train, "the data has no validation split and no class has two training "
                        "images to hold one out; INT8 accuracy is unchecked")
    origin = (f"the data has no validation split: {len(held)} of {len(train)} training images "
              f"held out, stratified (seed {seed}), and left out of calibration; the parent "
              "trained on them, so the drop may read smaller than on unseen images")
    return GuardSplit(held, HOLDOUT_SPLIT, rest,
                      {"split": HOLDOUT_SPLIT, "images": len(held), "origin": origin})


def _skipped(train: ImageRecords, why: str) -> GuardSplit:
    # The test split is not a fallback: it would decide, then report its own decision.
    return GuardSplit(None, None, train, {"split": None, "images": 0, "origin": why})


def guard_images(parts: Partition, seed: int, splits: dict[str, Scoring],
                 to_set: Callable[[ImageRecords, str], Scoring],
                 console: Console) -> tuple[GuardSplit, Scoring | None]:
    """(where the guard's images come from, their decoded set or None when it is skipped);
    `splits` are the decoded val / test of `parts`, `to_set` decodes a held-out slice."""
    checked = guard_split(parts, seed)
    if checked.check is None:
        console.print(f"[yellow]accuracy guard skipped: {checked.skipped}[/yellow]")
        return checked, None
    if checked.name in splits:
        return checked, splits[checked.name]
    console.print(f"accuracy guard: {checked.record['origin']}")
    return checked, to_set(checked.check, checked.name)


def with_guard_images(guard: dict[str, Any], checked: GuardSplit) -> dict[str, Any]:
    """The guard's record, saying which images it judged on (or why it judged on none)."""
    guard = {**guard, "images": checked.record}
    if checked.skipped:
        guard["status"] = f"skipped: {checked.skipped}"
    return guard


def reported(splits: dict[str, Scoring], guard_set: Scoring | None) -> dict[str, Scoring]:
    """The splits the card reports: val and test, and the guard's held-out slice of train."""
    if guard_set is None:
        return dict(splits)
    return {**splits, guard_set.name: guard_set}
