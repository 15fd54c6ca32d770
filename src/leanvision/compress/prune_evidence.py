"""Pruning's decisions through the paired comparison (leanvision.paired): the choice between
global and per-layer scope, and each step's account of what it cost against the parent, image
by image on the parent's validation images.

Every figure compares predictions on the same images (the parent's hold-out, unreadable images
left out the same way for both), so the comparison counts the images that changed answer
rather than subtracting two accuracies that each carry the split's sampling noise."""

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


def choose_scope(scored: dict[str, Predictions | None], parent: Predictions | None
                 ) -> tuple[str, dict[str, Any], str | None]:
    """(the scope kept, its record, the sentence that says why) among pruned candidates scored
    on validation before fine-tuning. The one that loses less is kept (on a tie, the first);
    the sentence quotes the paired comparison of the two, and says when the split cannot tell
    them apart (their 95% interval spans zero), so the choice is then a best guess."""
    names = list(scored)
    top1 = {name: None if p is None else p.top1 for name, p in scored.items()}
    chosen = max(names, key=lambda s: -1.0 if top1[s] is None else top1[s])
    record: dict[str, Any] = {"scope": chosen, "scope_val_top1": top1}
    if parent is not None:
        record["scope_vs_parent"] = {
            name: comparison_record(p.against(parent)) if p is not None else None
            for name, p in scored.items()}
    other = next((s for s in names if s != chosen and scored[s] is not None), None)
    if scored[chosen] is None or other is None:
        return chosen, record, None
    # The discarded scope against the kept one: a positive drop is what the choice saved.
    between = scored[other].against(scored[chosen])
    if between is None:
        return chosen, record, None
    record["scope_comparison"] = {"kept": chosen, "other": other,
                                  **comparison_record(between)}
    low, high = between.interval95
    if low <= 0 <= high:
        verdict = "the validation split cannot tell them apart; kept the better estimate"
    else:
        verdict = f"{chosen} is surely better"
    note = f"scope {chosen} over {other}: {other}'s {between.describe()} — {verdict}"
    record["scope_note"] = note
    return chosen, record, note


def step_record(parent: Predictions | None, pruned: Predictions | None,
                finetuned: Predictions | None) -> dict[str, Any]:
    """A step's comparisons with the parent artifact: straight after pruning and after the
    fine-tuning (the step's result)."""
    record: dict[str, Any] = {}
    if parent is None:
        return record
    for key, net in (("pruned_vs_parent", pruned), ("finetuned_vs_parent", finetuned)):
        if net is not None and (comparison := net.against(parent)) is not None:
            record[key] = comparison_record(comparison)
            record[f"{key}_text"] = comparison.describe()
    return record
