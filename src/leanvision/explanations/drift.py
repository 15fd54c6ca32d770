"""Explanation drift: do two models (a compressed artifact and its parent) look at the same
places? Per pair of maps: IoU of their top regions and Spearman's rank correlation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from ..errors import ConfigError


def explanation_drift(maps_a: Sequence[np.ndarray] | np.ndarray,
                      maps_b: Sequence[np.ndarray] | np.ndarray,
                      top_fraction: float = 0.2) -> dict:
    """Agreement of paired maps [H, W] (sizes may differ: each pair is resized to the larger).

    Returns {"per_image": [{"iou", "rank_correlation"}], "mean": {...}, "top_fraction"}.
    iou: intersection over union of the `top_fraction` most important pixels of each map
    (1 = the same region). rank_correlation: Spearman's rho over all pixels (1 = same order);
    None where a map is constant (no order to compare), and left out of the mean."""
    if not 0 < top_fraction <= 1:
        raise ConfigError(f"top_fraction {top_fraction} must be in (0, 1]; 0.2 compares the top "
                          "fifth of each map")
    if len(maps_a) != len(maps_b):
        raise ConfigError(f"{len(maps_a)} maps cannot be paired with {len(maps_b)}; pass one map "
                          "per image from each model")
    rows = [_pair_drift(np.asarray(a), np.asarray(b), top_fraction)
            for a, b in zip(maps_a, maps_b, strict=True)]
    return {"per_image": rows, "mean": mean_drift(rows), "top_fraction": top_fraction}


def _pair_drift(a: np.ndarray, b: np.ndarray, top_fraction: float) -> dict:
    size = (max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1]))
    a, b = _resized(a, size).ravel(), _resized(b, size).ravel()
    k = max(1, math.ceil(top_fraction * a.size))
    # A stable sort breaks ties by pixel order, so identical maps select identical regions.
    top_a = np.zeros(a.size, bool)
    top_a[np.argsort(-a, kind="stable")[:k]] = True
    top_b = np.zeros(b.size, bool)
    top_b[np.argsort(-b, kind="stable")[:k]] = True
    iou = float((top_a & top_b).sum() / (top_a | top_b).sum())
    return {"iou": round(iou, 6), "rank_correlation": _spearman(a, b)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    rho = np.corrcoef(rankdata(a), rankdata(b))[0, 1]
    return round(float(rho), 6)


def _resized(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if m.ndim != 2:
        raise ConfigError(f"an explanation map must be 2-D [H, W], got shape {m.shape}")
    if m.shape == size:
        return m.astype(np.float64)
    t = torch.from_numpy(m.astype(np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].double().numpy()


def mean_drift(rows: list[dict]) -> dict:
    """Mean IoU and rank correlation over per-pair rows (None values left out)."""
    def avg(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return round(float(np.mean(values)), 6) if values else None

    return {"iou": avg("iou"), "rank_correlation": avg("rank_correlation")}
