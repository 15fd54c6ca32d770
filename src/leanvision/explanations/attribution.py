"""LIME and KernelSHAP through captum, over a fixed grid of square cells ("superpixels").

A grid rather than SLIC: scikit-image is not a dependency, and on the small inputs these models
take (32-64 px) a grid is as good a partition as any. A removed cell takes the value 0 in
normalised space, i.e. the mean colour, the same fill the faithfulness curves use."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .cam import frozen

ATTRIBUTION_METHODS = ("lime", "shap")
DEFAULT_SAMPLES = 200
DEFAULT_GRID = 8  # cells per side
PERTURBATIONS_PER_EVAL = 32


def grid_feature_mask(size: tuple[int, int], cells: int = DEFAULT_GRID) -> torch.Tensor:
    """int64 [1, 1, H, W]: the index of each pixel's cell in a cells x cells grid."""
    h, w = size
    rows = torch.div(torch.arange(h) * min(cells, h), h, rounding_mode="floor")
    cols = torch.div(torch.arange(w) * min(cells, w), w, rounding_mode="floor")
    return (rows[:, None] * min(cells, w) + cols[None, :])[None, None]


def attribution_maps(model: nn.Module, x: torch.Tensor, classes: list[int], method: str, *,
                     samples: int = DEFAULT_SAMPLES, cells: int = DEFAULT_GRID,
                     seed: int = 0) -> np.ndarray:
    """float32 [N, H, W] in [0, 1] for normalised images x [N, 3, H, W], one class per image.

    The signed per-cell weights are min-max scaled, so 1 marks the cell that most supports the
    class and 0 the one that most opposes it; scaling keeps the full ranking that the
    faithfulness curves and drift measures use (clipping negatives would tie them at 0)."""
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import KernelShap, Lime

    def probabilities(batch: torch.Tensor) -> torch.Tensor:
        return model(batch).softmax(1)

    # Ridge, not captum's default Lasso (alpha 0.01): with few samples and a confident model the
    # Lasso zeroes every cell and the map is blank.
    explainer = (Lime(probabilities, interpretable_model=SkLearnRidge(alpha=1.0))
                 if method == "lime" else KernelShap(probabilities))
    mask = grid_feature_mask(tuple(x.shape[-2:]), cells).to(x.device)
    maps = []
    with frozen(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        # fork_rng: every explanation draws the same seeded perturbations (so a model and its
        # parent are probed alike) without touching the caller's generator.
        for i, cls in enumerate(classes):
            torch.manual_seed(seed)
            attr = explainer.attribute(x[i:i + 1], baselines=0.0, target=int(cls),
                                       feature_mask=mask, n_samples=samples,
                                       perturbations_per_eval=PERTURBATIONS_PER_EVAL)
            maps.append(_unit_range(attr[0].sum(0).detach().float().cpu().numpy()))
    return np.stack(maps).astype(np.float32)


def _unit_range(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values)
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)
