"""Augmentation of uint8 image batches, on whatever device the batch lives on.

Every random number is drawn from torch's global CPU generator (torchvision.transforms.v2 does
the same), so restoring torch.get_rng_state() replays the augmentation exactly: that is what
makes a resumed run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from ..errors import ConfigError

AUGMENT_PRESETS = ("none", "light", "strong")


class BatchAugment:
    def __init__(self, preset: str = "light", *, mixup: float = 0.0, cutmix: float = 0.0,
                 num_classes: int, translate: int | None = None) -> None:
        if preset not in AUGMENT_PRESETS:
            raise ConfigError(f"--augment {preset!r} is not a preset; choose one of "
                              f"{', '.join(AUGMENT_PRESETS)}")
        if mixup < 0 or cutmix < 0:
            raise ConfigError("--mixup and --cutmix are Beta alphas and must be >= 0 (0 = off)")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
        if translate is not None and translate < 0:
            raise ConfigError(f"--translate {translate} must be >= 0 pixels")
        self.preset, self.num_classes, self.translate = preset, num_classes, translate
        self.mixup, self.cutmix = float(mixup), float(cutmix)
        self._trivial = v2.TrivialAugmentWide() if preset == "strong" else None
        self._erase = v2.RandomErasing(p=0.25) if preset == "strong" else None
        mixers = []
        if self.cutmix > 0:
            mixers.append(v2.CutMix(alpha=self.cutmix, num_classes=num_classes))
        if self.mixup > 0:
            mixers.append(v2.MixUp(alpha=self.mixup, num_classes=num_classes))
        self._mix = None if not mixers else mixers[0] if len(mixers) == 1 else v2.RandomChoice(
            mixers)

    @property
    def soft_targets(self) -> bool:
        """True when __call__ returns float [B, num_classes] targets instead of int64 [B]."""
        return self._mix is not None

    def __call__(self, images: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 [B, 3, H, W] images, got {images.dtype} "
                             f"{tuple(images.shape)}")
        if self.preset != "none":
            images = random_shift_flip(images, self.translate)
        if self.preset == "strong":
            images = torch.stack([self._erase(self._trivial(img)) for img in images])
        if self._mix is not None:
            # MixUp blends pixel values, which uint8 arithmetic would wrap; blend in float and
            # round back so the batch stays uint8 like every other path.
            mixed, labels = self._mix(images.float(), labels)
            images = mixed.round_().clamp_(0, 255).to(torch.uint8)
        return images, labels


def random_shift_flip(images: torch.Tensor, translate: int | None = None) -> torch.Tensor:
    """Per sample: translate by up to `translate` pixels (default 1/8 of the side) with
    reflected borders (the same as reflect-pad then random crop) and flip horizontally half
    the time, as one gather."""
    b, _, h, w = images.shape
    pad_h, pad_w = (h // 8, w // 8) if translate is None else (translate, translate)
    # Drawn on the CPU generator whatever the device, so the CPU RNG state alone replays them.
    dy = torch.randint(-pad_h, pad_h + 1, (b,))
    dx = torch.randint(-pad_w, pad_w + 1, (b,))
    flip = torch.rand(b) < 0.5
    rows = _reflect(dy[:, None] + torch.arange(h), h)  # [B, H]
    cols = _reflect(dx[:, None] + torch.arange(w), w)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    device = images.device
    rows, cols = rows.to(device), cols.to(device)
    batch = torch.arange(b, device=device)[:, None, None]
    out = images[batch, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    # Reflection without repeating the edge pixel, as F.pad(mode="reflect") does.
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def normalize(images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, on the images' device; works on [3,H,W] or [B,3,H,W]."""
    device = images_uint8.device
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
    # Scale and shift in fp32, then cast: bf16 would round x / 255 before the subtraction.
    return ((images_uint8.float() / 255.0 - m) / s).to(dtype)
