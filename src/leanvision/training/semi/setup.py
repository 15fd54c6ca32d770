"""train_on's side of `--unlabeled`: decode the folder (refusing an empty or tiny one before
anything is written) and build the FixMatch criterion with its per-epoch hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console

from ...data.unlabeled import load_unlabeled
from ...errors import ConfigError
from ...hardware import choose_hardware
from ..config import TrainConfig
from .fixmatch import MIN_UNLABELED_IMAGES, FixMatchCriterion


@dataclass
class SemiSupervised:
    criterion: FixMatchCriterion
    block: dict[str, Any]  # the card's "semi_supervised" record


def fixmatch_criterion(cfg: TrainConfig, model: torch.nn.Module, input_size: tuple[int, int],
                       num_classes: int, pre: dict[str, Any], class_weights, criterion,
                       on_epoch_start: Callable[[int], None], console: Console,
                       labelled_per_epoch: int):
    if criterion is not None:
        raise ConfigError("--unlabeled trains with its own loss (FixMatch) and cannot be "
                          "combined with this stage's; train with --unlabeled first, then run "
                          "the stage on the result")
    _check_threshold_reachable(cfg, num_classes)
    unlabeled = load_unlabeled(cfg.unlabeled, input_size, min_images=MIN_UNLABELED_IMAGES,
                               role="--unlabeled", need="for semi-supervised training",
                               skip_bad_images=cfg.skip_bad_images, progress=cfg.progress)
    for note in unlabeled.notes:
        console.print(f"  unlabeled: {note}", style="dim")
    console.print(f"semi-supervised (FixMatch): {len(unlabeled)} unlabelled images, mu "
                  f"{cfg.mu}, threshold {cfg.threshold}, lambda_u {cfg.lambda_u}, pseudo-labels "
                  f"per {cfg.pseudo_labels}")
    hw = choose_hardware(cfg.device, cfg.precision, cfg.channels_last)
    fixmatch = FixMatchCriterion(model, unlabeled.images, num_classes=num_classes,
                                 mean=pre["mean"], std=pre["std"], hw=hw, mu=cfg.mu,
                                 threshold=cfg.threshold, lambda_u=cfg.lambda_u, seed=cfg.seed,
                                 label_smoothing=cfg.label_smoothing or 0.0,
                                 class_weights=class_weights,
                                 pseudo_labels=cfg.pseudo_labels,
                                 labelled_per_epoch=labelled_per_epoch,
                                 thresholds=cfg.thresholds if cfg.pseudo_labels == "epoch"
                                 else "fixed")

    def epoch_start(epoch: int) -> None:
        on_epoch_start(epoch)
        fixmatch.set_epoch(epoch)

    block = {"method": "fixmatch", "unlabeled": str(unlabeled.folder.resolve()),
             "images": len(unlabeled), "mu": cfg.mu, "threshold": cfg.threshold,
             "lambda_u": cfg.lambda_u, "pseudo_labels": cfg.pseudo_labels, "notes": unlabeled.notes,
             "skipped_images": [f"{item}: {reason}" for item, reason in unlabeled.skipped]}
    return SemiSupervised(fixmatch, block), fixmatch, epoch_start


def _check_threshold_reachable(cfg: TrainConfig, num_classes: int) -> None:
    """Label smoothing e trains the model towards 1 - e + e/K for the true class: a threshold
    at or above that is (almost) never met, and the unlabelled images would be ignored."""
    smoothing = cfg.label_smoothing or 0.0
    cap = 1.0 - smoothing + smoothing / max(num_classes, 1)
    if smoothing > 0 and cfg.threshold >= cap:
        raise ConfigError(f"--threshold {cfg.threshold:g} is out of reach: --label-smoothing "
                          f"{smoothing:g} trains the model towards {cap:.3f} confidence at most "
                          f"({num_classes} classes), so almost no pseudo-label would count; "
                          f"lower --threshold under {cap:.3f} or set --label-smoothing 0")
