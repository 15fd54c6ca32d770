"""AdaBN (Li et al., 2016): the target domain's batch-norm statistics in place of the source's.

Every batch-norm layer forgets its running mean and variance and re-estimates them as the
cumulative average over shuffled target batches (momentum None); weights, biases and every other
layer stay as trained. Nothing is learned, so it needs no labels and takes one pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data import normalize

BATCH_NORM = nn.modules.batchnorm._BatchNorm


def batch_norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Batch-norm layers that keep running statistics (the ones AdaBN can re-estimate)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, BATCH_NORM) and m.track_running_stats
            and m.running_mean is not None]


@torch.no_grad()
def adabn(model: nn.Module, images: torch.Tensor, mean: list[float], std: list[float], *,
          device: torch.device | str = "cpu", batch_size: int = 256,
          seed: int = 0) -> dict[str, Any]:
    """Re-estimate the running statistics of `model`'s batch-norm layers on uint8 target images
    [N, 3, H, W]; the model is left in eval mode, on the CPU. Returns what was done."""
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError("the model has no batch-norm layers with running statistics")
    device = torch.device(device)
    model.eval().to(device)
    momenta = []
    for _, layer in layers:
        momenta.append(layer.momentum)
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average: every batch counts the same
        layer.train()
    # Shuffled (folders are often sorted by class: one-class batches understate the variance)
    # and split evenly, so no ragged last batch gets a full batch's weight.
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    batches = max(1, -(-len(images) // batch_size))
    try:
        for idx in torch.tensor_split(order, batches):
            model(normalize(images[idx].to(device), mean, std))
    finally:
        for (_, layer), momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.eval().to("cpu")
    return {"layers": len(layers), "images": int(len(images)), "batches": int(batches)}
