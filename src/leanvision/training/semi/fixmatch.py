"""Semi-supervised training, FixMatch style (Sohn et al., 2020), for data where most images have
no label: `train DATA --unlabeled DIR`.

Each step the fit loop forwards a labelled batch of B images as usual; this criterion adds mu*B
unlabelled images, each seen twice: weakly augmented (shift and flip) and strongly augmented
(the "strong" preset: shift, flip, TrivialAugmentWide and random erasing, in place of the paper's
RandAugment + Cutout). The model's prediction on the weak view becomes a hard pseudo-label where
its confidence reaches `threshold` (0.95); the strong view is trained towards it:

    loss = CE(labelled) + lambda_u * mean_over_unlabelled(mask * CE(strong, pseudo-label))

The weak and strong views go through the network in one batch; the labelled batch, forwarded by
the loop, has its own batch-norm statistics (the paper interleaves all three).

That is `pseudo_labels="step"`. The cheaper mode, `"epoch"`, computes the same loss for a fraction
of the work: at the start of each epoch the model (in eval mode, clean images) labels the images
FixMatch would draw in that epoch (mu per labelled image: a window that moves through the folder
epoch by epoch, so every image is labelled in turn), and the confident ones form the epoch's pool;
each step then draws as many images from the pool as FixMatch's mask would have let through on
average (mu * B * pool share) and trains only their strong views. A step no longer forwards the
weak views (labelling in eval mode without gradients costs about a third of a training pass) nor
the strong views the mask would have zeroed: early in training, when few images pass the threshold,
a step costs little more than a supervised one. The pseudo-labels are up to one epoch old
(self-training's refresh rate); on a CPU budget that buys many more steps, which is what decides
accuracy at a fixed time budget (bench/few_labels.py)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...data import BatchAugment, normalize
from ...data.augment import random_shift_flip
from ...hardware import Hardware
from ...tta import tta_logits

# A folder with fewer unlabelled images than this adds nothing a labelled batch does not.
MIN_UNLABELED_IMAGES = 16
# Fewer pool images than this in a step are skipped: a train-mode batch norm over one or two
# images normalises them to nothing useful.
MIN_POOL_DRAW = 2
LABEL_BATCH = 512
FLEX_FLOOR = 0.5


class FixMatchCriterion:
    """criterion(logits, targets, inputs, indices) for the fit loop; see the module docstring.
    Which unlabelled images a step draws is a pure function of (seed, epoch, step), and the
    augmentations draw from torch's global generator, so a resumed run replays them."""

    def __init__(self, model: nn.Module, unlabeled: torch.Tensor, *, num_classes: int,
                 mean: list[float], std: list[float], hw: Hardware, mu: int, threshold: float,
                 lambda_u: float, seed: int = 0, label_smoothing: float = 0.0,
                 class_weights: torch.Tensor | None = None,
                 pseudo_labels: str = "epoch", labelled_per_epoch: int | None = None,
                 thresholds: str = "fixed") -> None:
        self.model, self.hw, self.mean, self.std = model, hw, mean, std
        self.unlabeled = unlabeled.to(hw.device) if hw.device.type == "cuda" else unlabeled
        self.mu, self.threshold, self.lambda_u, self.seed = mu, threshold, lambda_u, seed
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights.to(hw.device) if class_weights is not None else None
        self.strong = BatchAugment("strong", num_classes=max(2, num_classes))
        self.pseudo_labels = pseudo_labels
        self.num_classes = num_classes
        # "flex": FlexMatch's class-wise thresholds ("epoch" mode); "fixed": `threshold` for all
        self.thresholds = thresholds
        self.threshold_history: list[list[float]] = []
        # "epoch" labels this many images per epoch: what FixMatch's weak views would cover
        self.window = min(len(unlabeled), mu * (labelled_per_epoch or len(unlabeled)))
        self.epoch, self.step = 0, 0
        self.mask_rates: list[float] = []
        self.unlabeled_losses: list[float] = []
        self.pool_shares: list[float] = []  # per epoch, "epoch" mode
        self.pool = torch.empty(0, dtype=torch.long)
        self.teacher: nn.Module | None = None  # the EMA weights, when the recipe keeps them
        self.pool_labels = torch.empty(0, dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0
        if self.pseudo_labels == "epoch":
            # The first epoch is supervised only: an untrained model can still be "confident"
            # (a random network put 0.95 on some images here), and its labels are noise.
            self.pool, self.pool_labels = self.confident_pool() if epoch > 0 else \
                (torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
            self.pool_shares.append(round(len(self.pool) / self.window, 4))

    def use_teacher(self, module: nn.Module) -> None:
        """Label with `module` (the loop's EMA copy of the model): averaged weights are the
        steadier teacher (Mean Teacher; they also score higher on validation here)."""
        self.teacher = module

    @torch.no_grad()
    def confident_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices and pseudo-labels of this epoch's window of unlabelled images that the model
        (eval mode, clean image) labels with at least `threshold` confidence. The window is a
        function of the epoch and nothing random is drawn, so a resumed run rebuilds the same
        pool from the same weights."""
        total = len(self.unlabeled)
        first = (self.epoch * self.window) % total
        window = torch.arange(first, first + self.window) % total
        net = self.teacher if self.teacher is not None else self.model
        confidence, label = predict_confidence(net, self.unlabeled[window.to(
            self.unlabeled.device)], self.mean, self.std, self.hw)
        needed = self.class_thresholds(confidence, label) if self.thresholds == "flex" \
            else torch.full((self.num_classes,), self.threshold)
        self.threshold_history.append([round(float(t), 3) for t in needed])
        keep = (confidence >= needed[label]).nonzero().flatten()
        return window[keep], label[keep]

    def class_thresholds(self, confidence: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """FlexMatch's curriculum thresholds (Zhang et al., 2021), one per class: a class
        whose images rarely reach `threshold` yet is "learnt" less and gets a lower bar,
        threshold * b / (2 - b) with b its count of confident images over the largest class
        count (or over the unconfident count, while that is larger: the warm-up). Every bar
        rises to `threshold` as the model learns. Floor FLEX_FLOOR: a pseudo-label must be
        the model's majority belief; no bar at all while nothing reaches `threshold`."""
        confident = confidence >= self.threshold
        learnt = torch.bincount(label[confident], minlength=self.num_classes).float()
        if learnt.sum() == 0:
            return torch.full((self.num_classes,), self.threshold)
        unused = float((~confident).sum())
        beta = learnt / max(float(learnt.max()), unused)
        return (self.threshold * beta / (2 - beta)).clamp(min=FLEX_FLOOR)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor,
                 indices: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 100_003
                                          + self.step)
        self.step += 1
        labelled_loss = F.cross_entropy(logits, targets, weight=self.class_weights,
                                        label_smoothing=self.label_smoothing)
        if self.pseudo_labels == "epoch":
            return labelled_loss + self.lambda_u * self._pool_loss(len(inputs), g)
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
        self.mask_rates.append(float(mask.mean()))
        self.unlabeled_losses.append(float(unlabeled_loss.detach()))
        return labelled_loss + self.lambda_u * unlabeled_loss

    def _pool_loss(self, batch: int, g: torch.Generator) -> torch.Tensor:
        """FixMatch's unlabelled term over mu * batch draws, of which only the pool's share
        (the images the mask would pass) is forwarded; the sum is still divided by all draws."""
        draws = self.mu * batch
        share = len(self.pool) / self.window
        count = round(draws * share)
        self.mask_rates.append(share)
        if count < MIN_POOL_DRAW:
            self.unlabeled_losses.append(0.0)
            return torch.zeros((), device=self.hw.device)
        drawn = torch.randint(len(self.pool), (count,), generator=g)
        pick = self.pool[drawn]
        raw = self.unlabeled[pick.to(self.unlabeled.device)].to(self.hw.device)
        strong, _ = self.strong(raw, torch.zeros(count, dtype=torch.long, device=raw.device))
        x = normalize(strong, self.mean, self.std)
        if self.hw.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.hw.autocast():
            strong_logits = self.model(x).float()
        pseudo = self.pool_labels[drawn].to(self.hw.device)
        loss = F.cross_entropy(strong_logits, pseudo, reduction="sum") / draws
        self.unlabeled_losses.append(float(loss.detach()))
        return loss

    def record(self) -> dict[str, Any]:
        """What the card keeps: the share of unlabelled images that passed the threshold (it
        rises as the model grows confident) at the start and end of training."""
        tenth = max(1, len(self.mask_rates) // 10)
        extra = {"pool_share_by_epoch": self.pool_shares,
                 "labelled_by": "ema" if self.teacher is not None else "model",
                 "thresholds": self.thresholds,
                 "class_thresholds_last_epoch": self.threshold_history[-1:]} \
            if self.pseudo_labels == "epoch" else {}
        return {"steps": len(self.mask_rates), "pseudo_labels": self.pseudo_labels, **extra,
                "mask_rate_first10pct": _mean(self.mask_rates[:tenth]),
                "mask_rate_last10pct": _mean(self.mask_rates[-tenth:]),
                "unlabeled_loss_last10pct": _mean(self.unlabeled_losses[-tenth:])}


@torch.no_grad()
def predict_confidence(net: nn.Module, images: torch.Tensor, mean: list[float], std: list[float],
                       hw: Hardware, tta: str | None = None,
                       batch_size: int = LABEL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, label) on CPU for uint8 images, predicted in eval mode on the clean images
    (with `tta` views if given) in the run's precision; the network's mode is restored."""
    was_training = net.training
    net.eval()
    confidences, labels = [], []
    try:
        for start in range(0, len(images), batch_size):
            x = normalize(images[start:start + batch_size].to(hw.device), mean, std)
            if hw.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with hw.autocast():
                probs = tta_logits(net, x, tta).float().softmax(1)
            confidence, label = probs.max(1)
            confidences.append(confidence.cpu())
            labels.append(label.cpu())
    finally:
        net.train(was_training)
    return torch.cat(confidences), torch.cat(labels)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
