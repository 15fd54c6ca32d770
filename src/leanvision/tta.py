"""Test-time augmentation: average the logits of a few cheap views of each image.

"flip" averages the image and its mirror; "flip-translate" (airbench's level 2) also averages
the mirrored pair at 1-pixel shifts up-left and down-right, weighted half and half."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TTA_MODES = ("none", "flip", "flip-translate")


def _mirror(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * model(x).float() + 0.5 * model(x.flip(-1)).float()


def tta_logits(model: torch.nn.Module, x: torch.Tensor, mode: str | None) -> torch.Tensor:
    """fp32 logits [B, C] for normalised images x [B, 3, H, W] under the TTA `mode`."""
    if mode in (None, "none"):
        return model(x).float()
    if mode == "flip":
        return _mirror(model, x)
    if mode == "flip-translate":
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = (_mirror(model, padded[..., :h, :w]) + _mirror(model, padded[..., 2:, 2:])) / 2
        return 0.5 * _mirror(model, x) + 0.5 * shifted
    raise ValueError(f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")
