"""Which parameters train, at which rate, and what runs at each epoch's start: the fine-tuning
strategy turned into optimizer groups for the fit loop."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..models.finetune import freeze_norm_stats, param_groups, unfreeze_epoch
from .config import TrainConfig


def finetune_groups(model: torch.nn.Module, strategy: str, cfg: TrainConfig):
    """Param groups for the strategy and the per-epoch hook that keeps frozen parts frozen.

    For probe-then-lower-lr the optimizer holds every parameter from the start (so its state
    survives the switch); during the probe phase the backbone simply has requires_grad off."""
    # Parameters the architecture itself holds fixed stay fixed under every strategy.
    built_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    common = {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
              "freeze_stages": cfg.freeze_stages, "keep_frozen": built_frozen}
    switch = unfreeze_epoch(strategy, cfg.epochs)
    phase_two = "lower-lr" if switch is not None else strategy
    groups = scale_norm_lr(model, param_groups(model, phase_two, **common), cfg.norm_lr_scale)

    def on_epoch_start(epoch: int) -> None:
        if switch is not None:
            param_groups(model, "probe" if epoch < switch else phase_two, **common)
        # Frozen layers keep their pretrained batch-norm statistics too.
        freeze_norm_stats(model)

    return groups, on_epoch_start


def _chain_epoch_start(first: Callable[[int], None], hook: Callable, model: torch.nn.Module):
    def on_epoch_start(epoch: int) -> None:
        first(epoch)
        hook(epoch, model)

    return on_epoch_start


def scale_norm_lr(model: torch.nn.Module, groups: list[dict], scale: float) -> list[dict]:
    """Give normalisation layers' parameters their own group at `scale` x the rate (airbench
    trains batch-norm shifts 64x faster); every other parameter keeps its group."""
    if scale == 1.0:
        return groups
    norm_types = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, norm_types)
                for p in m.parameters(recurse=False)}
    scaled = []
    for group in groups:
        norm = [p for p in group["params"] if id(p) in norm_ids]
        rest = [p for p in group["params"] if id(p) not in norm_ids]
        if rest:
            scaled.append({**group, "params": rest})
        if norm:
            scaled.append({**group, "params": norm, "name": group["name"] + "_norm",
                           "lr": group["lr"] * scale})
    return scaled
