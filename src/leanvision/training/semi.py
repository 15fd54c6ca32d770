"""Semi-supervised training, FixMatch style (Sohn et al., 2020), for data where most images have
no label: `train DATA --unlabeled DIR`.

Each step the fit loop forwards a labelled batch of B images as usual; this criterion adds mu*B
unlabelled images, each seen twice: weakly augmented (shift and flip) and strongly augmented
(the "strong" preset: shift, flip, TrivialAugmentWide and random erasing, in place of the paper's
RandAugment + Cutout). The model's prediction on the weak view becomes a hard pseudo-label where
its confidence reaches `threshold` (0.95); the strong view is trained towards it:

    loss = CE(labelled) + lambda_u * mean_over_unlabelled(mask * CE(strong, pseudo-label))

The weak and strong views go through the network in one batch; the labelled batch, forwarded by
the loop, has its own batch-norm statistics (the paper interleaves all three)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import BatchAugment, normalize
from ..data.augment import random_shift_flip
from ..hardware import Hardware

# A folder with fewer unlabelled images than this adds nothing a labelled batch does not.
MIN_UNLABELED_IMAGES = 16


class FixMatchCriterion:
    """criterion(logits, targets, inputs, indices) for the fit loop; see the module docstring.
    Which unlabelled images a step draws is a pure function of (seed, epoch, step), and the
    augmentations draw from torch's global generator, so a resumed run replays them."""

    def __init__(self, model: nn.Module, unlabeled: torch.Tensor, *, num_classes: int,
                 mean: list[float], std: list[float], hw: Hardware, mu: int, threshold: float,
                 lambda_u: float, seed: int = 0, label_smoothing: float = 0.0,
                 class_weights: torch.Tensor | None = None) -> None:
        self.model, self.hw, self.mean, self.std = model, hw, mean, std
        self.unlabeled = unlabeled.to(hw.device) if hw.device.type == "cuda" else unlabeled
        self.mu, self.threshold, self.lambda_u, self.seed = mu, threshold, lambda_u, seed
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights.to(hw.device) if class_weights is not None else None
        self.strong = BatchAugment("strong", num_classes=max(2, num_classes))
        self.epoch, self.step = 0, 0
        self.mask_rates: list[float] = []
        self.unlabeled_losses: list[float] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor,
                 indices: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 100_003
                                          + self.step)
        self.step += 1
        pick = torch.randint(len(self.unlabeled), (self.mu * len(inputs),), generator=g)
        raw = self.unlabeled[pick.to(self.unlabeled.device)].to(self.hw.device)
        weak = random_shift_flip(raw)
        strong, _ = self.strong(raw, torch.zeros(len(raw), dtype=torch.long, device=raw.device))
        x = normalize(torch.cat([weak, strong]), self.mean, self.std)
        if self.hw.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.hw.autocast():
            out = self.model(x).float()
        weak_logits, strong_logits = out.chunk(2)
        confidence, pseudo = weak_logits.detach().softmax(1).max(1)
        mask = (confidence >= self.threshold).float()
        unlabeled_loss = (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()
        labelled_loss = F.cross_entropy(logits, targets, weight=self.class_weights,
                                        label_smoothing=self.label_smoothing)
        self.mask_rates.append(float(mask.mean()))
        self.unlabeled_losses.append(float(unlabeled_loss.detach()))
        return labelled_loss + self.lambda_u * unlabeled_loss

    def record(self) -> dict[str, Any]:
        """What the card keeps: the share of unlabelled images that passed the threshold (it
        rises as the model grows confident) at the start and end of training."""
        tenth = max(1, len(self.mask_rates) // 10)
        return {"steps": len(self.mask_rates),
                "mask_rate_first10pct": _mean(self.mask_rates[:tenth]),
                "mask_rate_last10pct": _mean(self.mask_rates[-tenth:]),
                "unlabeled_loss_last10pct": _mean(self.unlabeled_losses[-tenth:])}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
