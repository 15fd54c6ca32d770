"""The post-training accuracy guard's judgement: INT8 against FP32 on the same validation images,
through the paired comparison (leanvision.paired), under the acceptance rule of `--accept`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..paired import RULE_LEVELS, PairedComparison, applied_rule, compare, worst_class_drop


class Scores(dict):
    """{"n", "top1"} as the card stores it, carrying the per-image predicted classes the guard
    compares as an attribute, so that the card never writes thousands of them."""

    predictions: np.ndarray | None = None


@dataclass(frozen=True)
class Verdict:
    drop_points: float
    met: bool
    rule: str  # the rule applied: --accept's, or "point" where it cannot be applied
    comparison: PairedComparison | None  # None: the scores came without per-image predictions
    note: str | None = None  # why the rule applied is not --accept's
    worst_class: dict[str, Any] | None = None

    def statement(self, budget: float) -> str:
        if self.comparison is None:
            return f"drop {self.drop_points:.2f} points (budget {budget})"
        c, within = self.comparison, f"within {budget:g} point{'' if budget == 1 else 's'}"
        if self.rule == "point":
            return f"{c.describe()} — {within}: {'yes' if self.met else 'no'} (point estimate)"
        bound = f"{RULE_LEVELS[self.rule]:.0%} upper bound {c.upper(self.rule):.1f}"
        verdict = ("likely" if self.rule == "likely" else "shown") if self.met else "not shown"
        return f"{c.describe()} — {within}: {verdict} ({bound})"


def judge(fp32: dict[str, Any], int8: dict[str, Any], labels: Any, budget: float, accept: str,
          classes: list[str] | None = None) -> Verdict:
    """Is INT8 within `budget` top-1 points of FP32 under rule `accept`? Where the split is too
    small for the rule to accept even a model that changed no answer, the point estimate
    decides and the verdict says so (every model would fail otherwise, and the guard would
    return nodes to FP32 for no measurable reason)."""
    drop = round((fp32["top1"] - int8["top1"]) * 100, 4)
    before, after = getattr(fp32, "predictions", None), getattr(int8, "predictions", None)
    if before is None or after is None:
        return Verdict(drop, drop <= budget, "point", None)
    truth = np.asarray(labels)
    comparison = compare(before == truth, after == truth, before, after)
    rule, note = applied_rule(comparison.images, budget, accept)
    label, class_drop, images = worst_class_drop(truth, before == truth, after == truth)
    worst = {"class": classes[label] if classes else label,
             "drop_points": round(class_drop, 4), "images": images}
    return Verdict(drop, comparison.accepts(budget, rule), rule, comparison, note, worst)


def guard_record(pcfg: Any, split: str | None, verdict: Verdict | None,
                 kept_fp32: list[dict[str, Any]], rounds: list[dict[str, Any]],
                 scored: dict[str, Any] | None) -> dict[str, Any]:
    """The card's "guard": the budget, the rule, the comparison behind the decision, the
    rounds and the nodes that stayed FP32."""
    budget, met = pcfg.max_drop, verdict is not None and verdict.met
    if verdict is None:
        status = "skipped: the data has no validation or test images to measure the drop on"
    elif met:
        status = "met" if verdict.comparison is None else f"met: {verdict.statement(budget)}"
    elif verdict.comparison is None:
        status = (f"NOT met: the best model loses {verdict.drop_points:.2f} points (budget "
                  f"{budget}) after {len(rounds)} round(s); consider --method qat")
    else:
        status = (f"NOT met after {len(rounds)} round(s): {verdict.statement(budget)}; "
                  "consider --method qat")
    if verdict is not None and verdict.note:
        status += f" ({verdict.note})"
    comparison = verdict.comparison if verdict is not None else None
    return {"max_drop_points": budget, "accept": pcfg.accept, "split": split,
            "drop_points": None if verdict is None else verdict.drop_points,
            "met": met, "status": status,
            "rule_applied": None if verdict is None else verdict.rule,
            "comparison": (None if comparison is None
                           else comparison.record(budget, verdict.rule)),
            "worst_class": None if verdict is None else verdict.worst_class,
            "rounds": rounds, "int8_top1": scored,
            "fp32_nodes": [{"name": e["name"], "op_type": e["op_type"],
                            "sqnr_loss_db": e["sqnr_loss_db"]} for e in kept_fp32]}
