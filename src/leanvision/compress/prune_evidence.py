"""Pruning's decisions through the paired comparison (leanvision.paired): the choice between
global and per-layer scope, and each step's account of what it cost against the parent, image
by image on the parent's validation images.

Every figure compares predictions on the same images (the parent's hold-out, unreadable images
left out the same way for both), so the comparison counts the images that changed answer
rather than subtracting two accuracies that each carry the split's sampling noise."""

from __future__ import annotations

from typing import Any

from .evidence import Predictions, comparison_record, comparisons


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
    return comparisons({"pruned_vs_parent": (parent, pruned),
                        "finetuned_vs_parent": (parent, finetuned)})
