"""Transfer learning sized for a CPU: the frozen lower network runs once, the rest trains on what
it cached.

probe   pooled features of the frozen network -> logistic regression (seconds)
lp-ft   the probe's head, then the top stages fine-tuned on cached activations of the frozen
        lower part (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): an epoch
        costs a fraction of a forward pass of the whole net, and starting from a trained head
        keeps the first gradients from distorting the pretrained features.

Augmentation on cached activations: each training image is cached as itself and mirrored, an
epoch draws one of the two, and the activation map is shifted by up to one cell. Batch norm in
the trained top keeps its pretrained statistics (eval mode): batches of one small data set would
otherwise pull them away from what the frozen lower part produces.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DecodedImages, normalize
from ..hardware import Hardware
from ..io import append_jsonl
from ..models.split import SplitNet, probe_split, split_model
from .config import TrainConfig
from .epoch_scoring import cpu_state, prefer_final
from .loop import METRICS_FILE, FitResult
from .throughput import budget_refusal

# Logistic regression's inverse regularisation on standardised features, chosen on the clothing
# set's validation split, where the probe barely moved between 0.01 and 0.1.
PROBE_C = 0.03
TOP_STAGES = 2
SPREAD_FLOOR = 0.1  # of the median feature's standard deviation
FEATURE_BATCH = 8  # small batches stay in cache; larger ones were slower here
SHIFT = 1  # activation cells a cached map may move by: a crude, cheap translation


@dataclass
class Cached:
    """Activations of the frozen lower part: [N, ...] for each view."""

    views: list[torch.Tensor]  # views[0] the image, views[1] mirrored (training only)
    labels: torch.Tensor


def split_for(model: torch.nn.Module, strategy: str, top_stages: int | None = None) -> SplitNet:
    """`top_stages`: how many of the last stages train (default TOP_STAGES)."""
    if strategy == "probe":
        return probe_split(model)
    return split_model(model, top_stages or TOP_STAGES)


@torch.no_grad()
def cache_lower(split: SplitNet, data: DecodedImages, mean: list[float], std: list[float],
                hw: Hardware, *, mirrored: bool, progress: Callable[[int], None]) -> Cached:
    """One pass of the frozen lower part over the images (and their mirror images)."""
    split.lower.eval()
    views: list[list[torch.Tensor]] = [[] for _ in range(2 if mirrored else 1)]
    for start in range(0, len(data), FEATURE_BATCH):
        x = normalize(data.images[start:start + FEATURE_BATCH].to(hw.device), mean, std)
        if hw.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for v, flip in enumerate([False, True][:len(views)]):
            with hw.autocast():
                out = split.lower(x.flip(3) if flip else x)
            # half precision halves the cache; the top computes in fp32 (or autocast) anyway
            views[v].append(out.to(torch.float16).contiguous())
        progress(min(FEATURE_BATCH, len(data) - start) * len(views))
    return Cached([torch.cat(v) for v in views], data.labels)


@torch.no_grad()
def pooled_features(split: SplitNet, cached: torch.Tensor, hw: Hardware) -> np.ndarray:
    split.top.eval()
    out = []
    for start in range(0, len(cached), 256):
        with hw.autocast():
            out.append(split.top.features(cached[start:start + 256].to(hw.device).float()))
    return torch.cat(out).float().cpu().numpy()


def fit_probe_head(split: SplitNet, train: np.ndarray, labels: np.ndarray,
                   num_classes: int, class_weight: str | None = None) -> None:
    """Logistic regression on standardised features, folded back into the linear classifier."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(labels)
    # A floor under each feature's spread: a nearly constant feature would otherwise get a huge
    # weight whose offset only the bias cancels, and any later change (dropout, fine-tuning)
    # to that feature would swing the logits.
    spread = train.std(0)
    mu, sd = train.mean(0), np.maximum(spread, SPREAD_FLOOR * float(np.median(spread)) + 1e-6)
    clf = LogisticRegression(C=PROBE_C, max_iter=1000, class_weight=class_weight)
    clf.fit((train - mu) / sd, labels)
    coef = np.zeros((num_classes, train.shape[1]))
    bias = np.full(num_classes, -1e4)  # a class absent from training is never predicted
    if len(present) == 2:  # sklearn returns one row for two classes
        coef[present[1]], bias[present[1]] = clf.coef_[0], clf.intercept_[0]
        coef[present[0]], bias[present[0]] = 0.0, 0.0
    else:
        coef[present], bias[present] = clf.coef_, clf.intercept_
    head = split.top.classifier
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(coef / sd, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias - (coef * (mu / sd)).sum(1), dtype=head.bias.dtype))


@torch.no_grad()
def top_accuracy(split: SplitNet, cached: torch.Tensor, labels: torch.Tensor,
                 hw: Hardware) -> tuple[float, float]:
    """(loss, top-1) of the top on cached activations."""
    split.top.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(labels), 256):
        with hw.autocast():
            logits = split.top(cached[start:start + 256].to(hw.device).float()).float()
        y = labels[start:start + 256].to(hw.device)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    n = max(1, len(labels))
    return loss / n, correct / n


@torch.no_grad()
def top_predictions(top: torch.nn.Module, cached: torch.Tensor, hw: Hardware):
    """The top's predicted class for each cached activation (prefer_final's comparison)."""
    top.eval()
    predicted = []
    for start in range(0, len(cached), 256):
        with hw.autocast():
            predicted.append(top(cached[start:start + 256].to(hw.device).float()).argmax(1))
    return torch.cat(predicted).cpu().numpy()


def train_top(split: SplitNet, train: Cached, val: Cached | None, cfg: TrainConfig,
              hw: Hardware, out: Path, *, class_weights: torch.Tensor | None,
              progress: Callable[[int, dict], None], probe_val_top1: float | None = None,
              budget_s: float | None = None) -> tuple[FitResult, dict[str, Any]]:
    """Fine-tune the top on cached activations (views drawn at random, maps shifted).

    The probe is epoch 0: when fine-tuning ends surely below it on validation (the paired
    comparison of `prefer_final`), the probe's weights are kept."""
    top = split.top.to(hw.device)
    n = len(train.labels)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    epochs = cfg.epochs
    optimizer = _adamw(top, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, total=epochs * steps_per_epoch))
    g = torch.Generator().manual_seed(cfg.seed)
    weights = class_weights.to(hw.device) if class_weights is not None else None
    history: list[dict[str, Any]] = []
    best = {"top1": -1.0, "epoch": -1, "source": "model"}
    best_state: dict[str, torch.Tensor] | None = None
    if probe_val_top1 is not None:
        best = {"top1": probe_val_top1, "epoch": 0, "source": "model"}
        best_state = cpu_state(top)
    started, stopped = time.perf_counter(), None
    for epoch in range(epochs):
        record = _top_epoch(top, train, optimizer, schedule, g, cfg, hw, batch, weights,
                            progress)
        record = {"epoch": epoch + 1, **record}
        if val is not None:
            record["val_loss"], record["val_top1"] = top_accuracy(split, val.views[0],
                                                                  val.labels, hw)
            record["val_precision"] = hw.precision  # under autocast; the card's are fp32
            if record["val_top1"] > best["top1"]:
                best = {"top1": record["val_top1"], "epoch": epoch + 1, "source": "model"}
                best_state = cpu_state(top)
        else:
            best = {"top1": -1.0, "epoch": epoch + 1, "source": "model"}
            best_state = cpu_state(top)
        history.append(record)
        append_jsonl(out / METRICS_FILE, record)
        progress(0, record)
        spent = time.perf_counter() - started
        if budget_s is not None and epoch + 1 < epochs and spent / (epoch + 1) > budget_s - spent:
            stopped = (f"time budget: stopped after epoch {epoch + 1} of {epochs} "
                       f"({spent:.0f} s spent, one more epoch would not fit)")
            break
    notes: list[str] = []
    if val is not None and history and stopped is None:
        best, best_state, note = prefer_final(
            best, best_state, history[-1], {"model": top},
            lambda net: top_predictions(net, val.views[0], hw), val.labels.cpu().numpy())
        if note and best["epoch"] == 0:  # epoch 0 is the probe
            note = note.replace("kept epoch 0's weights", "kept the linear probe's weights")
        notes += [note] if note else []
    top.load_state_dict(best_state)
    result = FitResult(best_state={}, best_epoch=best["epoch"], best_source="model",
                       best_val_top1=best["top1"] if best["top1"] >= 0 else None,
                       history=history, stopped=stopped, notes=notes)
    return result, {"steps_per_epoch": steps_per_epoch, "batch": batch}


def _adamw(top: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable top; no decay on biases and norm scales."""
    params = [p for p in top.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def _top_epoch(top: torch.nn.Module, train: Cached, optimizer: torch.optim.Optimizer,
               schedule: torch.optim.lr_scheduler.LRScheduler, g: torch.Generator,
               cfg: TrainConfig, hw: Hardware, batch: int, weights: torch.Tensor | None,
               progress: Callable[[int, dict], None]) -> dict[str, Any]:
    """One epoch of the top over the cached training views; the epoch's record."""
    top.train()
    for m in top.modules():  # pretrained statistics stay (see the module docstring)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    n = len(train.labels)
    steps_per_epoch = max(1, n // batch)
    order = torch.randperm(n, generator=g)
    t0, loss_sum, correct = time.perf_counter(), 0.0, 0
    for step in range(steps_per_epoch):
        idx = order[step * batch:(step + 1) * batch]
        x = _augmented(train, idx, g).to(hw.device)
        y = train.labels[idx].to(hw.device)
        with hw.autocast():
            logits = top(x)
        loss = F.cross_entropy(logits.float(), y, weight=weights,
                               label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        progress(1, {"loss": loss_sum / ((step + 1) * batch)})
    seconds = time.perf_counter() - t0
    return {"lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / (steps_per_epoch * batch),
            "train_top1": correct / (steps_per_epoch * batch), "epoch_seconds": seconds,
            "images_per_second": steps_per_epoch * batch / seconds, "data_wait_fraction": 0.0}


def warmup_cosine(step: int, total: int, warmup_share: float = 0.1) -> float:
    """The rate's multiplier at `step`: linear warmup over a tenth of the steps (at least one),
    then cosine decay to zero at `total`; defined for any total, even 1."""
    warmup = max(1, round(total * warmup_share))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup + 1) / max(1, total - warmup))))


def _augmented(cached: Cached, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    if len(cached.views) > 1:
        mirror = torch.rand(len(idx), generator=g) < 0.5
        x = torch.where(mirror.view(-1, *[1] * (cached.views[0].dim() - 1)),
                        cached.views[1][idx], cached.views[0][idx])
    else:
        x = cached.views[0][idx]
    x = x.float()
    if x.dim() == 4 and SHIFT:
        dy, dx = torch.randint(-SHIFT, SHIFT + 1, (2,), generator=g).tolist()
        x = torch.roll(x, (dy, dx), (2, 3))
    return x


def check_budget(minutes: float | None, seconds_per_image: float, images: int) -> None:
    """Refuse a budget that cannot even hold the frozen pass over the images at the rate
    given (the fastest the machine has shown: a refusal must be proven, not guessed)."""
    if minutes is None:
        return
    need = seconds_per_image * images
    if need > minutes * 60:
        raise budget_refusal(minutes, "even the frozen feature pass", need,
                             f"{images} images at {1 / max(seconds_per_image, 1e-9):.1f} "
                             f"images/s measured here need {need / 60:.1f} minutes for it alone")
