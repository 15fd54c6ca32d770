"""Per-image evidence every compression stage compares with (leanvision.paired): a network's
predictions on the validation images, and the card's account of a comparison without a
budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifact import Artifact
from ..data.partition import Partition
from ..evaluate import evaluate_records
from ..paired import PairedComparison, compare


@dataclass(frozen=True)
class Predictions:
    """Predicted classes and labels of one network on the validation images."""

    predicted: np.ndarray
    labels: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    @property
    def top1(self) -> float:
        return float(np.mean(self.correct))

    def against(self, parent: Predictions) -> PairedComparison | None:
        """This network's drop against `parent` (None: not the same images)."""
        if not np.array_equal(self.labels, parent.labels):
            return None
        return compare(parent.correct, self.correct, parent.predicted, self.predicted)


def val_predictions(art: Artifact, parts: Partition) -> Predictions | None:
    """`art`'s predictions on the validation images (None without any), through evaluate."""
    if parts.val is None or not len(parts.val):
        return None
    result = evaluate_records(art, parts.val, "val", "", skip_bad_images=True,
                              keep_predictions=True)
    predicted, labels = result["predictions"]
    return Predictions(np.asarray(predicted), np.asarray(labels))


def comparison_record(comparison: PairedComparison | None) -> dict[str, Any] | None:
    """The card's account of a comparison without a budget: the drop, its intervals, the
    images that changed answer, the agreement and the McNemar p-value."""
    if comparison is None:
        return None
    record = comparison.record(0.0, "point")
    return {k: v for k, v in record.items() if k not in ("rule", "budget_points", "accepted")}


def comparisons(pairs: dict[str, tuple[Predictions | None, Predictions | None]]
                ) -> dict[str, Any]:
    """{key: record, key_text: the sentence} for each (reference, variant) pair scored on the
    same images; pairs with a side missing (no validation images) are left out."""
    record: dict[str, Any] = {}
    for key, (reference, variant) in pairs.items():
        if reference is None or variant is None:
            continue
        comparison = variant.against(reference)
        if comparison is not None:
            record[key] = comparison_record(comparison)
            record[f"{key}_text"] = comparison.describe()
    return record
