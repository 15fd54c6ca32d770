"""Readable variant names: what made a model ("resnet8 ← KD · INT8"), read from the cards of
its lineage, instead of its folder's name, which for a stage optimize built ends in a cache key
(student-resnet8-ptq-3af4e76cca2a). The page keeps the folder in each name's tooltip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact import read_card
from ..errors import LeanvisionError
from ..formatting import pipeline_name
from .collect import Variant, parent_folder

MAX_DEPTH = 16  # a lineage longer than any chain of stages; a loop in the cards ends here


def lineage(variant: Variant) -> list[dict[str, Any]]:
    """The cards from the first ancestor on disk down to `variant`'s own."""
    chain, current, seen = [], variant, set()
    while current is not None and current.card is not None and len(chain) < MAX_DEPTH:
        chain.append(current.card)
        seen.add(current.path.resolve())
        parent = parent_folder(current)
        if parent is None or parent.resolve() in seen:
            break
        try:
            current = Variant(path=Path(parent), card=read_card(parent)[1], history=[],
                              given=False)
        except (LeanvisionError, OSError, ValueError):
            break
    return chain[::-1]


def describe(chain: list[dict[str, Any]]) -> str:
    """The pipeline of a lineage, root first: its network, then each stage's change."""
    root = chain[0]
    network, arch = str(root.get("arch", "?")), str(root.get("arch", "?"))
    distilled, side, prune, kd, quant = False, 0, 0.0, False, "none"
    for card in chain:
        stage, now = card.get("stage"), str(card.get("arch", arch))
        if stage == "resize":
            side = min(card["input"]["size"])
        elif stage == "distill" and (now != arch or card is root):
            network, distilled, prune, kd = now, True, 0.0, False  # a student
        elif stage == "distill":
            kd, distilled = bool(prune), distilled or not prune
        elif stage == "prune":
            prune = _pruned_share(card)
        elif stage == "quantize":
            quant = str((card.get("quantization") or {}).get("method") or "ptq")
        arch = now
    return pipeline_name(network, distilled=distilled, side=side, prune=prune, kd=kd,
                         quant=quant)


def _pruned_share(card: dict[str, Any]) -> float:
    pruning = card.get("pruning") or {}
    ratio = (pruning.get("config") or {}).get("ratio")
    if ratio is None and pruning.get("flops_fraction") is not None:
        ratio = 1 - float(pruning["flops_fraction"])
    return float(ratio or 0.0)


def readable_names(variants: list[Variant]) -> dict[Path, str]:
    """Each variant's pipeline name by its folder; a run without an artifact keeps its folder's
    name, and two variants of one pipeline are told apart by their folders."""
    names = {v.path: describe(lineage(v)) if v.card is not None else v.name for v in variants}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {v.path: names[v.path] if counts[names[v.path]] == 1 or v.card is None
            else f"{names[v.path]} ({v.name})" for v in variants}
