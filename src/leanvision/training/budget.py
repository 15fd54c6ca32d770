"""`--time-budget` for whole-network training (fine-tuning a pruned net, distillation, a base
trained from scratch): the epochs are sized before the schedule is built, from one measured
training step, so that the run ends inside its budget with a complete schedule.

The cached transfer path (probe, LP-FT) sizes itself in transfer_run.py; this is the same rule
for every other run."""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch
from rich.console import Console

from ..hardware import Hardware
from .config import TrainConfig
from .throughput import Rate, budget_refusal, measure_rate
from .transfer_run import FINAL_SHARE

# A custom criterion (distillation runs a teacher on every batch) and the per-epoch augmentation
# and validation pass cost more than the bare step that is timed; these margins cover them.
CRITERION_MARGIN = 1.6
EPOCH_MARGIN = 1.15
VAL_SHARE_OF_STEP = 1 / 3  # a forward pass is about a third of forward + backward


def seconds_per_train_image(model: torch.nn.Module, input_size: tuple[int, int], batch: int,
                            hw: Hardware, num_classes: int) -> Rate:
    """Optimizer steps on random images timed until two agree (throughput.measure_rate), per
    image, on a copy of the model so that neither its weights nor its norm statistics move,
    and with the random state restored after it (dropout draws from it): a budget never
    changes the run."""
    cuda = [hw.device] if hw.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        return _timed_step(model, input_size, batch, hw, num_classes)


def _timed_step(model: torch.nn.Module, input_size: tuple[int, int], batch: int,
                hw: Hardware, num_classes: int) -> Rate:
    net = copy.deepcopy(model).to(hw.device).train()
    if hw.channels_last:
        net = net.to(memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0) if params else None
    batch = max(2, batch)  # batch norm needs two images
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *input_size, generator=rng).to(hw.device)
    if hw.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, max(1, num_classes), (batch,), generator=rng).to(hw.device)

    def one_step() -> int:
        with hw.autocast():
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
        return batch

    return measure_rate(one_step)


def budget_epochs(cfg: TrainConfig, model: torch.nn.Module, input_size: tuple[int, int],
                  hw: Hardware, n_train: int, n_val: int, num_classes: int, started: float,
                  console: Console, custom_criterion: bool = False) -> tuple[TrainConfig, dict]:
    """`cfg` with as many of its epochs as fit the time left of `cfg.time_budget` minutes (less
    the share kept for the final scoring); refuses a budget that cannot hold one epoch."""
    if cfg.time_budget is None:
        return cfg, {}
    batch = min(cfg.batch_size or 32, max(1, n_train))
    rate = seconds_per_train_image(model, input_size, batch, hw, num_classes)
    margin = EPOCH_MARGIN * (CRITERION_MARGIN if custom_criterion else 1.0)
    images = n_train + VAL_SHARE_OF_STEP * n_val
    per_image, epoch_s = rate.planning * margin, rate.planning * margin * images
    left = cfg.time_budget * 60 * (1 - FINAL_SHARE) - (time.perf_counter() - started)
    fits = int(left // epoch_s) if epoch_s > 0 else cfg.epochs
    record = {"measured_seconds_per_image": round(per_image, 5),
              "estimated_epoch_s": round(epoch_s, 1), "step_timing": rate.record()}
    # Refused only when even the fastest step the machine showed cannot fit one epoch.
    if int(left // (rate.fastest * margin * images)) < 1:
        fastest_epoch = rate.fastest * margin * images
        need = fastest_epoch / (1 - FINAL_SHARE) + time.perf_counter() - started
        raise budget_refusal(cfg.time_budget, "one training epoch", need,
                             f"one takes at least {fastest_epoch:.0f} s here ({n_train} images "
                             f"at {1 / max(rate.fastest * margin, 1e-9):.1f} images/s)")
    fits = max(1, fits)
    if fits < cfg.epochs:
        record["budget_note"] = (f"{fits} of the recipe's {cfg.epochs} epochs fit the time "
                                 f"budget (about {epoch_s:.0f} s per epoch measured)")
        console.print(f"  {record['budget_note']}")
        cfg = replace(cfg, epochs=fits, warmup_epochs=min(cfg.warmup_epochs or 0.0, fits / 4))
    return cfg, record
