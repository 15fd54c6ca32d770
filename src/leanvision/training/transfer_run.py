"""`fit_transfer`: the probe and LP-FT strategies end to end (cache, probe head, top fine-tuning),
sized to a time budget; returns what `fit` returns so `train_on` saves it the same way."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..data import DecodedImages
from ..hardware import Hardware
from ..models.split import can_split
from .config import TrainConfig
from .epoch_scoring import cpu_state
from .loop import FitInputs, FitResult
from .recipe import SMALL_IMAGE_SIDE
from .report import epoch_status
from .throughput import PassWatch, Rate, budget_refusal, measure_rate
from .transfer import (
    FEATURE_BATCH,
    Cached,
    cache_lower,
    check_budget,
    fit_probe_head,
    pooled_features,
    split_for,
    top_accuracy,
    train_top,
)

# Share of the budget kept for what follows training: the final evaluation passes and saving.
FINAL_SHARE = 0.15


def frozen_pass_rate(model: torch.nn.Module, strategy: str, input_size: tuple[int, int],
                     hw: Hardware, mean: list[float], std: list[float],
                     top_stages: int | None = None) -> Rate:
    """The frozen pass's cost per image on its real path (batch, dtype, layout), timed in
    rounds until two agree (throughput.measure_rate)."""
    split = split_for(model, strategy, top_stages)
    split.lower.to(hw.device).eval()
    n = 2 * FEATURE_BATCH
    # A generator of its own: timing must not move the seeded stream training draws from.
    fake = torch.randint(0, 256, (n, 3, *input_size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))
    sample = DecodedImages(fake, torch.zeros(n, dtype=torch.long), torch.arange(n))

    def one_round() -> int:
        cache_lower(split, sample, mean, std, hw, mirrored=False, progress=lambda k: None)
        return n

    return measure_rate(one_round)


def precheck_budget(cfg: TrainConfig, model: torch.nn.Module, strategy: str,
                    input_size: tuple[int, int], hw: Hardware, mean: list[float],
                    std: list[float], n_images: int,
                    top_stages: int | None = None) -> Rate | None:
    """Refuse, before decoding, a budget that cannot hold the frozen pass even at the fastest
    rate measured; the pass itself is watched again while it runs (`fit_transfer`)."""
    if cfg.time_budget is None:
        return None
    rate = frozen_pass_rate(model, strategy, input_size, hw, mean, std, top_stages)
    views = 2 if strategy == "lp-ft" else 1
    check_budget(cfg.time_budget, rate.fastest * views, n_images)
    return rate


def fit_transfer(inputs: FitInputs, cfg: TrainConfig, hw: Hardware, out: Path, strategy: str,
                 console: Console, started: float,
                 top_stages: int | None = None) -> tuple[FitResult, dict[str, Any]]:
    model = inputs.model.to(hw.device).eval()
    if hw.channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    split = split_for(model, strategy, top_stages)
    mirrored = strategy == "lp-ft"
    n_train, n_val = len(inputs.train), len(inputs.val) if inputs.val is not None else 0
    total = n_train * (2 if mirrored else 1) + n_val
    watch = PassWatch(total, _deadline(cfg, started))
    with _bar(console, cfg, "frozen pass", total) as advance:
        t0 = time.perf_counter()
        watched = partial(_watched, advance, watch, cfg, total)
        train = cache_lower(split, inputs.train, inputs.mean, inputs.std, hw,
                            mirrored=mirrored, progress=watched)
        val = (cache_lower(split, inputs.val, inputs.mean, inputs.std, hw, mirrored=False,
                           progress=watched) if inputs.val is not None else None)
        cache_seconds = time.perf_counter() - t0
    record: dict[str, Any] = {"strategy": strategy, "cut": split.where, **watch.record(),
                              "frozen_pass_seconds": round(cache_seconds, 1),
                              "frozen_pass_images_per_second": round(total / cache_seconds, 2),
                              "cache_mb": round(sum(v.nbytes for v in train.views) / 2**20, 1)}

    if inputs.init_from_data:
        t0 = time.perf_counter()
        feats = pooled_features(split, train.views[0], hw)
        fit_probe_head(split, feats, train.labels.numpy(), inputs.num_classes,
                       "balanced" if cfg.balance != "none" else None)
        record["probe_seconds"] = round(time.perf_counter() - t0, 1)
        if val is not None:
            record["probe_val_top1"] = top_accuracy(split, val.views[0], val.labels, hw)[1]
            console.print(f"  linear probe: {record['probe_val_top1']:.2%} val "
                          f"({record['probe_seconds']} s)")
    elif val is not None:
        # Continuing a trained network (at another input size): its head is already fitted,
        # and its own weights are the candidate the fine-tuned top has to beat.
        record["start_val_top1"] = top_accuracy(split, val.views[0], val.labels, hw)[1]
        console.print(f"  the given weights: {record['start_val_top1']:.2%} val")

    if strategy == "probe":
        return _probe_result(model, record), record
    for p in split.top.parameters():
        p.requires_grad_(True)
    class_weights = inputs.class_weights
    if cfg.balance == "sampler":
        # cached activations are drawn by a plain shuffle; the same balance comes from the loss
        counts = torch.bincount(train.labels, minlength=inputs.num_classes).float().clamp(min=1)
        class_weights = counts.sum() / (inputs.num_classes * counts)
        record["balance_note"] = "--balance sampler applied as class weights in the loss"
        console.print(f"  {record['balance_note']}")
    budget_s = _remaining(cfg, started)
    cfg = _fit_epochs(cfg, split, train, hw, budget_s, record, console)
    if cfg is None:
        return _probe_result(model, record), record
    steps = cfg.epochs * max(1, n_train // min(cfg.batch_size, n_train))
    plain_log = not (cfg.progress and console.is_terminal)  # as fit(): a line per epoch

    def step_or_epoch(k: int, info: dict) -> None:
        advance(k)
        if k == 0 and plain_log:  # k == 0: an epoch ended, `info` is its record
            console.print(f"epoch {info['epoch']}/{cfg.epochs} {epoch_status(info)} "
                          f"{info['epoch_seconds']:.1f} s", highlight=False)

    with _bar(console, cfg, "fine-tuning the top", steps) as advance:
        result, plan = train_top(split, train, val, cfg, hw, out,
                                 class_weights=class_weights,
                                 progress=step_or_epoch,
                                 probe_val_top1=record.get("probe_val_top1",
                                                           record.get("start_val_top1")),
                                 budget_s=_remaining(cfg, started))
    record.update(plan)
    record["epochs"] = cfg.epochs
    result.best_state = cpu_state(model)
    return result, record


def _fit_epochs(cfg: TrainConfig, split, train: Cached, hw: Hardware, budget_s: float | None,
                record: dict[str, Any], console: Console) -> TrainConfig | None:
    """Fewer epochs when the measured step time says the recipe's would overrun the budget."""
    if budget_s is None:
        return cfg
    batch = min(cfg.batch_size, len(train.labels))
    per_step = _seconds_per_step(split, train, batch, hw)
    steps_per_epoch = max(1, len(train.labels) // batch)
    fits = int(budget_s // (per_step * steps_per_epoch))
    record["measured_seconds_per_step"] = round(per_step, 4)
    if fits < 1:
        record["budget_note"] = "no fine-tuning epoch fits the time budget: the probe is kept"
        console.print(f"  {record['budget_note']}")
        return None
    if fits < cfg.epochs:
        record["budget_note"] = (f"{fits} of the recipe's {cfg.epochs} epochs fit the time "
                                 f"budget ({per_step:.3f} s/step measured)")
        console.print(f"  {record['budget_note']}")
        return replace(cfg, epochs=fits)
    return cfg


def _seconds_per_step(split, train: Cached, batch: int, hw: Hardware) -> float:
    # Dropout draws from the seeded stream: restore it, so that a budget never changes the run.
    cuda = [hw.device] if hw.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        return _timed_top_steps(split, train, batch, hw)


def _timed_top_steps(split, train: Cached, batch: int, hw: Hardware) -> float:
    top = copy.deepcopy(split.top).to(hw.device).train()
    opt = torch.optim.AdamW([p for p in top.parameters() if p.requires_grad], lr=0.0)
    x = train.views[0][:batch].float().to(hw.device)
    y = train.labels[:batch].to(hw.device)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with hw.autocast():
            loss = torch.nn.functional.cross_entropy(top(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def _deadline(cfg: TrainConfig, started: float) -> float | None:
    """When the frozen pass must have ended (a perf_counter value): the budget less the share
    kept for the final scoring."""
    if cfg.time_budget is None:
        return None
    return started + cfg.time_budget * 60 * (1 - FINAL_SHARE)


def _watched(advance: Callable[[int], None], watch: PassWatch, cfg: TrainConfig, total: int,
             k: int) -> None:
    """The frozen pass's progress: the bar moves, and the measured rate is checked against the
    budget; refused only when the pass, at the faster of its whole and latest rates, overruns."""
    advance(k)
    watch.advance(k)
    left = watch.cannot_finish()
    if left is not None:
        rate = 1 / max(min(watch.rates()), 1e-9)
        elapsed = watch.marks[-1][0] - watch.started
        raise budget_refusal(cfg.time_budget, "the frozen feature pass", elapsed + left,
                             f"{total} images at {rate:.1f} images/s measured on the first "
                             f"{watch.done} need {(elapsed + left) / 60:.1f} minutes for it")


def _remaining(cfg: TrainConfig, started: float) -> float | None:
    if cfg.time_budget is None:
        return None
    return cfg.time_budget * 60 * (1 - FINAL_SHARE) - (time.perf_counter() - started)


def _probe_result(model: torch.nn.Module, record: dict[str, Any]) -> FitResult:
    top1 = record.get("probe_val_top1")
    return FitResult(best_state=cpu_state(model), best_epoch=0, best_source="model",
                     best_val_top1=top1, history=[], notes=["weights: the linear probe"])


class _bar:  # noqa: N801 - used like a function in a with statement
    def __init__(self, console: Console, cfg: TrainConfig, what: str, total: int) -> None:
        self.progress = Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console,
                                 disable=not (cfg.progress and console.is_terminal))
        self.total = total

    def __enter__(self):
        self.progress.start()
        task = self.progress.add_task("work", total=self.total)
        return lambda k: self.progress.advance(task, k)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


CACHED_STRATEGIES = ("probe", "lp-ft")


def transfer_ready(model: torch.nn.Module, median_side: int) -> bool:
    """Photos (not thumbnails) and a network that can be cut: LP-FT is the automatic choice."""
    return median_side > SMALL_IMAGE_SIDE and can_split(model)
