"""Test-time augmentation: average the logits of a few cheap views of each image.

"flip" averages the image and its mirror; "flip-translate" (airbench's level 2) also averages
the mirrored pair at 1-pixel shifts up-left and down-right, weighted half and half;
"multi-crop" averages five crops (center and the four corners) of the image reflect-padded by
1/16 of its side, i.e. the image and four diagonal shifts, as the crop-and-pad augmentation of
training shows them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ConfigError

TTA_MODES = ("none", "flip", "flip-translate", "multi-crop")
# Shift of the corner crops as a fraction of the side: training's random crops shift by up to
# 1/8, so 1/16 stays well inside what the model has seen.
MULTI_CROP_SHIFT = 1 / 16


def check_tta(mode: str | None, flag: str = "--tta") -> str | None:
    """`mode` if it is a TTA mode (or None: the card's own); else a ConfigError naming the flag."""
    if mode is not None and mode not in TTA_MODES:
        raise ConfigError(f"{flag} {mode!r} is not a test-time augmentation; choose one of "
                          f"{', '.join(TTA_MODES)}")
    return mode


def _mirror(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * model(x).float() + 0.5 * model(x.flip(-1)).float()


def multi_crop_views(x: torch.Tensor) -> list[torch.Tensor]:
    """Five views [B, 3, H, W] of x [B, 3, H, W]: center (x itself) then the four corners of x
    reflect-padded by max(1, side / 16) pixels."""
    h, w = x.shape[-2:]
    pad = max(1, round(min(h, w) * MULTI_CROP_SHIFT))
    # reflect needs pad < side; images of a pixel or two get the replicated edge instead.
    mode = "reflect" if pad < min(h, w) else "replicate"
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    corners = [padded[..., top:top + h, left:left + w]
               for top in (0, 2 * pad) for left in (0, 2 * pad)]
    return [x, *corners]


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
    if mode == "multi-crop":
        views = multi_crop_views(x)
        return sum(model(v).float() for v in views) / len(views)
    raise ValueError(f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")
