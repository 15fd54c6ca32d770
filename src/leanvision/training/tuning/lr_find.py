"""The learning-rate range test (Smith 2015, as popularised by fastai): from a fresh model, one
mini-batch per step while the rate grows exponentially, until the loss blows up. The rate where
the smoothed loss falls fastest is a good rate to train with."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ...data import BatchAugment, DataSource, decoding_for, load_data, normalize
from ...data.partition import Partition, partition
from ...errors import ConfigError, DatasetError
from ...hardware import choose_hardware, describe_machine
from ...io import write_atomic, write_json
from ...models import create_model, model_preprocessing
from ...models.finetune import plan_finetune
from ...setting import setting
from ..api import balance_weights, decode_partition, default_run_dir
from ..config import TrainConfig
from ..loop import DATA_INIT_IMAGES, epoch_order, optimizer_step
from ..optim import build_optimizer
from ..param_setup import finetune_groups
from ..recipe import data_stats, resolve_recipe
from ..report import print_outputs

SMOOTHING = 0.98  # fastai's beta: averages over roughly the last 50 batches
BLOW_UP = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
MIN_STEPS = 5


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed, bias-corrected
    raw_losses: list[float]
    stopped: str | None  # why the sweep ended before `steps`, if it did
    seconds: float


@dataclass
class LrFindOptions:
    """lr_find's own settings with their help (`leanvision lr-find` reads them)."""

    start_lr: float = setting(1e-7, "Rate of the first step.")
    end_lr: float = setting(10.0, "Rate of the last step.")
    steps: int = setting(100, "Mini-batches in the sweep (it stops early on blow-up).")


@decoding_for("find a learning rate")
def lr_find(data: str | Path, out: str | Path | None = None, *, model: str | None = None,
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            batch_size: int | None = None, optimizer: str | None = None,
            console: Console | None = None, **settings: Any) -> dict[str, Any]:
    """Sweep the learning rate on DATA and suggest one; writes lr_find.json and lr_find.png.

    `settings` are TrainConfig fields; unset ones come from the same recipe as training, so the
    suggestion holds for `leanvision train` with the same settings. No weights are kept."""
    console = console or Console(stderr=True)
    cfg = TrainConfig.from_dict({"data": str(data), "model": model, "batch_size": batch_size,
                                 "optimizer": optimizer, **settings})
    source = load_data(cfg.data)
    parts = partition(source, cfg.val_fraction, cfg.seed)
    return lr_find_on(source, parts, cfg, out, start_lr=start_lr, end_lr=end_lr, steps=steps,
                      console=console)


def lr_find_on(source: DataSource, parts: Partition, cfg: TrainConfig,
               out: str | Path | None = None, *, start_lr: float = 1e-7, end_lr: float = 10.0,
               steps: int = 100, console: Console) -> dict[str, Any]:
    """lr_find on data already loaded and partitioned (compare reuses one load for all runs)."""
    _check_range(start_lr, end_lr, steps)
    num_classes = len(source.classes)
    cfg, _notes = resolve_recipe(cfg, data_stats(parts.train, num_classes))
    out_dir = Path(out) if out is not None else Path("runs") / "lr-find" / default_run_dir(
        cfg).name
    hw = choose_hardware(cfg.device, cfg.precision, cfg.channels_last)
    torch.manual_seed(cfg.seed)
    net = create_model(cfg.model, num_classes, pretrained=cfg.pretrained, drop_rate=cfg.dropout,
                       img_size=cfg.img_size)
    pre = model_preprocessing(net)
    input_size = (cfg.img_size, cfg.img_size) if cfg.img_size else tuple(pre["input_size"])
    # The same decode as training (train+val in one scan), so a following train hits the cache.
    train_imgs, _ = decode_partition(parts, input_size, cfg)
    console.print(f"[bold]leanvision lr-find[/bold] {cfg.data}: {cfg.model} at "
                  f"{input_size[0]}x{input_size[1]}, {cfg.optimizer}, batch {cfg.batch_size}, "
                  f"lr {start_lr:g} → {end_lr:g} over {steps} steps; {hw.device} {hw.precision}")

    test = _sweep(net, train_imgs, pre, cfg, hw, num_classes, parts, start_lr, end_lr, steps,
                  console)
    suggestion = suggest_lr(test.lrs, test.losses, skip_start=max(1, steps // 10))
    if suggestion is None:
        raise DatasetError(
            f"the loss was not finite even at lr {start_lr:g} ({test.stopped}); check the "
            "images and labels, or pass a smaller --start-lr")
    result: dict[str, Any] = {
        **suggestion,
        "optimizer": cfg.optimizer,
        "model": cfg.model,
        "batch_size": cfg.batch_size,
        "steps_run": len(test.lrs),
        "stopped": test.stopped,
        "seconds": round(test.seconds, 2),
        "out": str(out_dir),
        "json": str(out_dir / "lr_find.json"),
        "plot": str(out_dir / "lr_find.png"),
    }
    write_json(out_dir / "lr_find.json", {
        **{k: v for k, v in result.items() if k not in ("json", "plot", "out")},
        "lrs": test.lrs, "losses": test.losses, "raw_losses": test.raw_losses,
        "config": {**cfg.to_dict(), "start_lr": start_lr, "end_lr": end_lr, "steps": steps},
        "machine": describe_machine(),
    })
    write_atomic(out_dir / "lr_find.png",
                 lambda p: _plot(p, test, suggestion, f"{cfg.model}, {cfg.optimizer}"))
    console.print(f"suggested lr [bold]{result['suggested_lr']:.3g}[/bold] (steepest descent); "
                  f"min-loss lr / 10 = {result['min_loss_lr']:.3g}"
                  + (f"; stopped: {test.stopped}" if test.stopped else ""))
    print_outputs(console, out_dir, ["lr_find.json", "lr_find.png"])
    return result


def suggest_lr(lrs: list[float], losses: list[float], skip_start: int = 1) -> dict | None:
    """Steepest descent of loss over log(lr), searched between the first `skip_start` points
    and the minimum (past the minimum the loss only rises). The first points are skipped for
    the minimum too: the smoothed loss there is one or two noisy batches. None without finite
    points."""
    lr_arr, loss_arr = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    finite = np.isfinite(loss_arr)
    if not finite.any():
        return None
    lr_arr, loss_arr = lr_arr[finite], loss_arr[finite]
    start = max(0, min(skip_start, len(loss_arr) - 3))
    best = start + int(np.argmin(loss_arr[start:]))
    lr_at_min = float(lr_arr[best])
    if best - start >= 2:
        slopes = np.diff(loss_arr[start:best + 1]) / np.diff(np.log(lr_arr[start:best + 1]))
        steep = start + int(np.argmin(slopes))
        suggested, how = float(lr_arr[steep]), "steepest descent"
    else:  # the loss never fell: the safest guess is well below where it was lowest
        suggested, how = lr_at_min / 10, "min-loss lr / 10 (no descent to measure)"
    return {"suggested_lr": suggested, "min_loss_lr": lr_at_min / 10, "lr_at_min_loss": lr_at_min,
            "min_loss": float(loss_arr[best]), "suggestion_method": how}


def _sweep(net: torch.nn.Module, train_imgs, pre: dict, cfg: TrainConfig, hw, num_classes: int,
           parts: Partition, start_lr: float, end_lr: float, steps: int,
           console: Console) -> RangeTest:
    strategy = plan_finetune(cfg.finetune, pretrained=bool(cfg.pretrained),
                             images_per_class=len(parts.train) / num_classes, epochs=cfg.epochs,
                             freeze_stages=cfg.freeze_stages)
    groups, on_epoch_start = finetune_groups(net, strategy, cfg)
    net = net.to(hw.device)
    if hw.channels_last:
        net = net.to(memory_format=torch.channels_last)
    images, labels = train_imgs.images, train_imgs.labels
    # The same model hooks as fit(): data-dependent init (AirNet's whitening) and epoch start.
    if hasattr(net, "init_from_data"):
        # fit()'s seeded sample: decoded sets are ordered by class.
        pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed))
        sample = images[pick[:DATA_INIT_IMAGES]].to(hw.device)
        net.init_from_data(normalize(sample, pre["mean"], pre["std"]))
    net.train()
    if hasattr(net, "epoch_start"):
        net.epoch_start(0)
    on_epoch_start(0)
    opt = build_optimizer(cfg.optimizer, groups, lr=start_lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    # Groups keep their ratio to the base rate (a fine-tuned backbone runs at a fraction of it).
    ratios = [g["lr"] / cfg.lr for g in groups]
    scaler = torch.amp.GradScaler(hw.device.type, enabled=hw.needs_grad_scaler())
    augment = BatchAugment(cfg.augment, mixup=cfg.mixup, cutmix=cfg.cutmix,
                           num_classes=num_classes, translate=cfg.translate)
    class_w, sample_w = balance_weights(cfg.balance, train_imgs.labels, num_classes)
    class_w = class_w.to(hw.device) if class_w is not None else None
    n = len(labels)
    batch = min(cfg.batch_size, n)
    per_epoch = max(1, n // batch)
    growth = (end_lr / start_lr) ** (1 / (steps - 1))

    lrs: list[float] = []
    losses: list[float] = []
    raw: list[float] = []
    avg, best, stopped = 0.0, math.inf, None
    started = time.perf_counter()
    progress = Progress(TextColumn("[bold]lr-find"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        console=console, disable=not cfg.progress)
    with progress:
        task = progress.add_task("lr-find", total=steps, status="")
        order = epoch_order(n, cfg.seed, 0, sample_w)
        for step in range(steps):
            epoch, k = divmod(step, per_epoch)
            if k == 0 and epoch:
                order = epoch_order(n, cfg.seed, epoch, sample_w)
            lr = start_lr * growth ** step
            for g, ratio in zip(opt.param_groups, ratios, strict=True):
                g["lr"] = lr * ratio
            idx = order[k * batch:(k + 1) * batch]
            x, y = augment(images[idx], labels[idx])
            x = normalize(x.to(hw.device), pre["mean"], pre["std"])
            if hw.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with hw.autocast():
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y.to(hw.device), weight=class_w,
                                   label_smoothing=cfg.label_smoothing)
            value = loss.item()
            if not math.isfinite(value):
                stopped = f"loss became {value} at lr {lr:.3g}"
                break
            avg = SMOOTHING * avg + (1 - SMOOTHING) * value
            smoothed = avg / (1 - SMOOTHING ** (step + 1))
            if step > 0 and smoothed > BLOW_UP * best:
                stopped = f"smoothed loss {smoothed:.3g} exceeded {BLOW_UP:g}x its minimum " \
                          f"{best:.3g} at lr {lr:.3g}"
                break
            best = min(best, smoothed)
            lrs.append(lr)
            losses.append(smoothed)
            raw.append(value)
            optimizer_step(net, opt, scaler, loss, cfg.grad_clip)
            progress.update(task, advance=1, status=f"lr {lr:.2g} loss {smoothed:.3f}")
    return RangeTest(lrs, losses, raw, stopped, time.perf_counter() - started)


def _plot(path: Path, test: RangeTest, suggestion: dict, title: str) -> None:
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(test.lrs, test.losses, color="tab:blue", label="smoothed loss")
    lr = suggestion["suggested_lr"]
    at = float(np.interp(np.log(lr), np.log(test.lrs), test.losses))
    ax.plot([lr], [at], "o", color="tab:red", label=f"suggested {lr:.2g}")
    ax.axvline(suggestion["min_loss_lr"], color="tab:gray", linestyle="--",
               label=f"min-loss lr / 10 = {suggestion['min_loss_lr']:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"learning-rate range test: {title}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")


def _check_range(start_lr: float, end_lr: float, steps: int) -> None:
    if not start_lr > 0:
        raise ConfigError(f"--start-lr {start_lr} must be > 0; pass e.g. 1e-7")
    if not end_lr > start_lr:
        raise ConfigError(f"--end-lr {end_lr} must be above --start-lr {start_lr}; pass e.g. 10")
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps {steps} is too few to find a slope; pass at least "
                          f"{MIN_STEPS} (100 is usual)")
