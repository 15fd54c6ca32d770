"""A promise that survives the choice: the validation images are cut in two, stratified and
seeded. The choice among candidates (the fastest that meets every constraint) is made on the
search part only; the chosen candidate's --max-drop is then judged once more, under --accept,
on the confirmation part, which chose nothing.

Why: dozens of candidates scored on the same images and the fastest that passes kept is the
best of many noisy draws (the winner's curse): its validation drop is biased low, and a paired
interval describes one comparison, not a choice among many. On images that played no part in
the choice the chosen candidate's comparison is again an honest single comparison.

One confirmation, no second try: a candidate the confirmation refuses is replaced by the fastest
candidate that runs the base's own network in FP32 (its drop is zero by construction; ONNX FP32
is parity-checked against PyTorch), never by another candidate picked on the confirmation
images, which would make them a selection set again.

A confirmation part too small to resolve --max-drop under --accept (paired.images_to_resolve)
could refuse nothing honestly; then the choice stays on all validation images and the record
says the promise rests on the search's own figures. Only validation images are used: the test
split never reaches this module."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..paired import RULE_LEVELS, compare, images_to_resolve
from .constraints import Candidate, Choice, Constraints, choose, paired_record

# Share of the validation images held out of the choice to confirm it.
CONFIRM_SHARE = 0.5
# Fewer images than this in either part make no comparison worth the name, whatever the rule.
MIN_PART_IMAGES = 30


def confirmation_mask(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A stratified, seeded boolean mask over the validation images: True = confirmation part.
    Each class gives round(share * its images), so both parts keep the class balance."""
    rng = np.random.default_rng(seed + 7919)  # not the stream of any split made before
    mask = np.zeros(len(labels), bool)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        mask[rng.choice(idx, int(round(share * len(idx))), replace=False)] = True
    return mask


def can_confirm(images: int, cons: Constraints) -> bool:
    """Whether `images` can resolve --max-drop under --accept (a point rule always can)."""
    level = RULE_LEVELS[cons.accept]
    if level is None:
        return images > 0
    needed = images_to_resolve(cons.max_drop, level)
    return needed is not None and images >= needed


def on_images(c: Candidate, base_pred: np.ndarray, labels: np.ndarray, keep: np.ndarray,
              classes: list[str] | None) -> Candidate:
    """`c` as scored on the images `keep` selects: its top-1 and its paired comparisons with
    the base there (a candidate without per-image predictions keeps None)."""
    if c.val_predicted is None:
        return replace(c, comparison=None, class_comparisons=None)
    y, predicted, base = labels[keep], c.val_predicted[keep], base_pred[keep]
    before, correct = base == y, predicted == y
    per_class = {classes[k] if classes else str(k): compare(before[y == k], correct[y == k])
                 for k in np.unique(y).tolist()}
    return replace(c, val_top1=float(correct.mean()),
                   comparison=compare(before, correct, base, predicted),
                   class_comparisons=per_class)


def base_identical(candidates: list[Candidate]) -> Candidate | None:
    """The fastest candidate running the base's own network in FP32 (drop zero by
    construction), or None."""
    same = [c for c in candidates
            if c.pipeline.get("source", "base") == "base" and not c.pipeline.get("prune_ratio")
            and c.pipeline.get("quant", "none") == "none" and not c.pipeline.get("resolution")]
    return min(same, key=lambda c: (c.latency_ms, c.size_mb)) if same else None


def choose_and_confirm(candidates: list[Candidate], base_val: float, cons: Constraints,
                       base_pred: np.ndarray | None, labels: np.ndarray | None, seed: int,
                       classes: list[str] | None = None,
                       share: float = CONFIRM_SHARE) -> tuple[Choice, dict[str, Any]]:
    """The choice and pareto.json's "confirmation" record. Without per-image predictions of
    the base, or with too few validation images, the plain choice on all of them."""
    n = 0 if labels is None else len(labels)
    held = int(round(share * n))
    if (base_pred is None or labels is None or min(held, n - held) < MIN_PART_IMAGES
            or not can_confirm(held, cons)):
        level = RULE_LEVELS[cons.accept]
        needed = images_to_resolve(cons.max_drop, level) if level is not None else 1
        return choose(candidates, base_val, cons), {
            "applied": False, "validation_images": n,
            "note": (f"not confirmed: {held} held-out images of {n} cannot resolve "
                     f"{cons.max_drop:g} points at --accept {cons.accept} (needs {needed}); the "
                     "promise rests on the figures the choice was made on")}
    mask = confirmation_mask(labels, share, seed)
    search = [on_images(c, base_pred, labels, ~mask, classes) for c in candidates]
    search_base = float(np.mean(base_pred[~mask] == labels[~mask]))
    picked = choose(search, search_base, cons)
    record: dict[str, Any] = {"applied": True, "share": share, "seed": seed,
                              "search_images": int((~mask).sum()),
                              "confirmation_images": int(mask.sum())}
    if picked.chosen is None or not picked.met:
        record["note"] = "the search part met no candidate: nothing to confirm"
        return _original(picked, candidates), record
    original = next(c for c in candidates if c.trial == picked.chosen.trial)
    confirmed = on_images(original, base_pred, labels, mask, classes)
    verdict = paired_record(confirmed, cons)
    record.update({"candidate": original.label, "trial": original.trial,
                   "search": paired_record(picked.chosen, cons), "confirmation": verdict})
    accepted = verdict is None or (verdict["accepted"] and (
        "class_judged" not in verdict or verdict["class_judged"]["accepted"]))
    record["accepted"] = accepted
    figures = _figures(verdict, cons)
    if accepted:
        picked.chosen = original
        picked.statement += (f". Confirmed on {record['confirmation_images']} validation "
                             f"images that played no part in the choice: {figures}")
        return picked, record
    fallback = base_identical(candidates)
    refused = (f"{original.label}, the fastest to meet every constraint on the search's "
               f"{record['search_images']} validation images, was refused on the "
               f"{record['confirmation_images']} held out of the choice ({figures})")
    record["fallback"] = fallback.label if fallback is not None else None
    if fallback is None:
        return Choice(original, False, refused + "; no candidate runs the base's own network "
                      "to fall back on"), record
    return Choice(fallback, True, refused + f"; chosen instead: {fallback.label}, the base's "
                  "own network in FP32 (no accuracy change by construction)"), record


def _original(choice: Choice, candidates: list[Candidate]) -> Choice:
    if choice.chosen is not None:
        choice.chosen = next(c for c in candidates if c.trial == choice.chosen.trial)
    return choice


def _figures(verdict: dict[str, Any] | None, cons: Constraints) -> str:
    if verdict is None:
        return "no per-image predictions: judged on its point estimate"
    bound = {"likely": "interval80_points", "sure": "interval95_points"}.get(verdict["rule"])
    upper = f", upper bound {verdict[bound][1]:.2f}" if bound else ""
    return (f"drop {verdict['drop_points']:.2f} points{upper} ({verdict['lost']} lost, "
            f"{verdict['gained']} gained) against --max-drop {cons.max_drop:g} under the "
            f"{verdict['rule']} rule")
