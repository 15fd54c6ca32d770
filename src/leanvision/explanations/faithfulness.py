"""How far to trust a map: deletion and insertion curves (Petsiuk et al. 2018, RISE).

Deletion removes pixels from the most to the least important by the map, insertion adds them
back to an empty image in the same order; each curve is the target class's probability after
each of STEPS equal steps, and its area (trapezoid over [0, 1]) is the figure. A faithful map
makes the probability fall fast on deletion (low AUC) and rise fast on insertion (high AUC);
`score` = insertion - deletion, in [-1, 1], higher is better.

A removed pixel takes the value 0 in normalised space, the dataset's mean colour (the same fill
LIME and SHAP use). The curves involve no randomness; ties in the map are broken by pixel
order, so the same map always gives the same numbers."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .cam import frozen

STEPS = 16


def deletion_insertion(model: nn.Module, x: torch.Tensor, saliency: np.ndarray, target: int,
                       steps: int = STEPS) -> dict[str, float]:
    """{"deletion", "insertion", "score"} for one normalised image x [3, H, W] and its map
    saliency [H, W] (same size) explaining class `target`."""
    h, w = x.shape[-2:]
    if saliency.shape != (h, w):
        raise ValueError(f"map {saliency.shape} does not match the image ({h}, {w})")
    order = torch.from_numpy(np.argsort(-saliency.ravel(), kind="stable").copy())
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    # rank[p] = position of pixel p in the importance order; step k keeps ranks < counts[k].
    rank = torch.empty(h * w, dtype=torch.long)
    rank[order] = torch.arange(h * w)
    chosen = torch.stack([rank < n for n in counts]).view(steps + 1, 1, h, w).to(x.device)
    deleted = torch.where(chosen, torch.zeros_like(x), x)   # [steps+1, 3, H, W]
    inserted = torch.where(chosen, x, torch.zeros_like(x))
    with frozen(model), torch.no_grad():
        probs = model(torch.cat([deleted, inserted])).float().softmax(1)[:, target].cpu()
    deletion = _area(probs[:steps + 1].numpy())
    insertion = _area(probs[steps + 1:].numpy())
    return {"deletion": round(deletion, 6), "insertion": round(insertion, 6),
            "score": round(insertion - deletion, 6)}


def _area(curve: np.ndarray) -> float:
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def summarise(rows: list[dict[str, float]]) -> dict[str, float] | None:
    """The mean of each figure over a list of per-explanation results."""
    if not rows:
        return None
    return {k: round(float(np.mean([r[k] for r in rows])), 6) for k in rows[0]}
