"""Optimizers and learning-rate schedules (torch's own), behind one small controller that is
stepped per batch and per epoch and checkpoints with the run."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import lr_scheduler

# A good starting learning rate per optimizer, for batch 128; SGD-family rates scale linearly
# with the batch size (Goyal et al. 2017), adaptive methods are left as they are.
BASE_LR = {
    "sgd": 0.1, "momentum": 0.1, "nesterov": 0.1,
    "adagrad": 0.01, "rmsprop": 0.001, "adadelta": 1.0, "adam": 0.001, "adamw": 0.001,
}
SGD_FAMILY = ("sgd", "momentum", "nesterov")


def default_lr(optimizer: str, batch_size: int) -> float:
    base = BASE_LR[optimizer]
    return base * batch_size / 128 if optimizer in SGD_FAMILY else base


def default_weight_decay(optimizer: str) -> float:
    if optimizer in SGD_FAMILY:
        return 5e-4
    return 0.05 if optimizer == "adamw" else 0.0


def build_optimizer(name: str, param_groups: list[dict], *, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    # The groups carry their own lr/weight_decay (head vs backbone, no decay on norms).
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=0.0, weight_decay=weight_decay)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum,
                               nesterov=name == "nesterov", weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(param_groups, lr=lr, alpha=0.9, momentum=momentum,
                                   eps=1e-3, weight_decay=weight_decay)
    if name == "adadelta":
        return torch.optim.Adadelta(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name}")


class LRController:
    """Per-step warmup + decay; `plateau` decays on the validation metric at epoch ends."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: str, *, epochs: int,
                 steps_per_epoch: int, warmup_epochs: float, step_size: int | None = None,
                 gamma: float = 0.1) -> None:
        self.schedule = schedule
        total = max(1, epochs * steps_per_epoch)
        warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)
        self.warmup_steps = warmup
        self.steps = 0
        self.plateau: lr_scheduler.ReduceLROnPlateau | None = None
        self.per_step: lr_scheduler.LRScheduler | None = None
        if schedule == "triangle":
            # airbench's schedule: linear from 0.2x up to the peak at 23%, then down to 0.07x.
            self.per_step = lr_scheduler.OneCycleLR(
                optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
                pct_start=0.23, anneal_strategy="linear", div_factor=5.0,
                final_div_factor=0.2 / 0.07, cycle_momentum=False)
            return
        if schedule == "onecycle":
            max_lrs = [g["lr"] for g in optimizer.param_groups]
            cycle = "momentum" in optimizer.defaults or "betas" in optimizer.defaults
            if "momentum" in optimizer.defaults and not optimizer.defaults["momentum"]:
                cycle = False
            pct = max(warmup / total, 0.05) if warmup else 0.25
            self.per_step = lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total,
                                                    pct_start=min(pct, 0.9),
                                                    cycle_momentum=cycle)
            return
        main_steps = total - warmup
        if schedule == "cosine":
            main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, main_steps))
        elif schedule == "step":
            every = (step_size or max(1, epochs // 3)) * steps_per_epoch
            main = lr_scheduler.StepLR(optimizer, step_size=every, gamma=gamma)
        else:  # constant and plateau hold the rate between (optional) decays
            main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        if warmup:
            warm = lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
            self.per_step = lr_scheduler.SequentialLR(optimizer, [warm, main],
                                                      milestones=[warmup])
        else:
            self.per_step = main
        if schedule == "plateau":
            self.plateau = lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=gamma,
                                                          patience=max(2, epochs // 10))

    def step_batch(self) -> None:
        self.steps += 1
        if self.plateau is not None and self.steps > self.warmup_steps:
            return  # after warmup, plateau owns the rate
        self.per_step.step()

    def step_epoch(self, val_metric: float | None) -> None:
        if self.plateau is not None and val_metric is not None and math.isfinite(val_metric):
            self.plateau.step(val_metric)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "per_step": self.per_step.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])
