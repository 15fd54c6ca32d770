"""The fit loop: batches of decoded uint8 tensors in, augmented and normalised on the device,
mixed precision, EMA, per-epoch validation, checkpoints and exact resume."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from timm.utils import ModelEmaV3

from .. import tracking
from ..artifact import save_weights
from ..data import BatchAugment, DecodedImages, normalize
from ..hardware import Hardware
from ..io import append_jsonl
from . import distributed
from .checkpoint import rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .epoch_scoring import cpu_state, final_or_best, quick_validate, val_predictions, val_prefix
from .lookahead import Lookahead
from .optim import LRController, build_optimizer
from .report import epoch_status
from .throughput import next_epoch_overruns

METRICS_FILE = "metrics.jsonl"
BEST_WEIGHTS = "best.safetensors"
DATA_INIT_IMAGES = 5000


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_source: str  # "model" or "ema"
    best_val_top1: float | None
    history: list[dict[str, Any]]
    stopped: str | None = None  # why training ended early, if it did
    notes: list[str] = field(default_factory=list)


@dataclass
class FitInputs:
    """Everything fit() needs besides the config; built by train()."""

    model: torch.nn.Module
    num_classes: int
    param_groups: list[dict]
    train: DecodedImages
    val: DecodedImages | None
    mean: list[float]
    std: list[float]
    class_weights: torch.Tensor | None = None
    sample_weights: torch.Tensor | None = None
    # called at the start of every epoch (fine-tuning phases: probe, then unfreeze)
    on_epoch_start: Callable[[int], None] | None = None
    # called after every epoch with (epoch, model); what it returns is logged, never decides
    on_epoch_end: Callable[[int, torch.nn.Module], dict | None] | None = None
    # criterion(logits, targets, inputs, indices) -> loss replaces the cross-entropy (distill:
    # inputs are the augmented, normalised batch; indices into `train` find cached logits)
    criterion: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                        torch.Tensor] | None = None
    # called once with the EMA copy when the recipe keeps one (semi-supervised labelling)
    on_ema: Callable[[torch.nn.Module], None] | None = None
    # False when the model arrives trained (a stage fine-tuning its parent): a data-dependent
    # initialisation would overwrite learned weights
    init_from_data: bool = True
    # A second per-image input, row i belonging to image i (multimodal: text token ids); the
    # model is then called as model(images, extra[rows]). None: model(images).
    train_extra: torch.Tensor | None = None
    val_extra: torch.Tensor | None = None
    deadline: float | None = None  # a perf_counter value from --time-budget (throughput.py)


def epoch_order(n: int, seed: int, epoch: int, sample_weights: torch.Tensor | None) -> torch.Tensor:
    """The data order of one epoch, a pure function of (seed, epoch) so resume needs no state."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if sample_weights is not None:
        return torch.multinomial(sample_weights, n, replacement=True, generator=g)
    return torch.randperm(n, generator=g)


@dataclass
class _Run:
    """What one fit advances epoch by epoch, and what its checkpoint holds."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_ctl: LRController
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    lookahead: Lookahead | None
    replica: distributed.Replica
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"top1": -1.0, "epoch": -1, "source": "model"})
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0

    def candidates(self) -> dict[str, torch.nn.Module]:
        """The nets scored each epoch."""
        return {"model": self.model, **({"ema": self.ema.module} if self.ema else {})}

    def checkpoint(self, epoch: int, cfg: TrainConfig) -> dict[str, Any]:
        return {"epoch": epoch, "global_step": self.global_step, "config": cfg.to_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr": self.lr_ctl.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "lookahead": self.lookahead.state_dict() if self.lookahead else None,
                "rng": rng_state(), "history": self.history, "best": self.best,
                "best_state": self.best_state, "bad_epochs": self.bad_epochs}

    def restore(self, saved: dict[str, Any]) -> int:
        """Continue from a checkpoint; returns the epoch to start at."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.lr_ctl.load_state_dict(saved["lr"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and saved.get("ema") is not None:
            self.ema.module.load_state_dict(saved["ema"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(saved["lookahead"])
        self.global_step = saved["global_step"]
        self.history, self.best = saved["history"], saved["best"]
        self.bad_epochs, self.best_state = saved["bad_epochs"], saved.get("best_state")
        set_rng_state(saved["rng"])
        return saved["epoch"] + 1


@dataclass
class _Batches:
    """The training set where the steps read it, and how each step slices it."""

    images: torch.Tensor
    labels: torch.Tensor
    extra: torch.Tensor | None
    augment: BatchAugment
    batch: int  # images per step in this process
    lo: int  # this process's slice [lo, hi) of every global batch
    hi: int
    steps_per_epoch: int


def fit(inputs: FitInputs, cfg: TrainConfig, hw: Hardware, out: Path,
        resume: dict[str, Any] | None = None, console: Console | None = None) -> FitResult:
    console = console or Console(stderr=True)
    w = distributed.world()
    model = inputs.model.to(hw.device)
    if hw.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = _batches(inputs, cfg, hw, w)
    if resume is None and inputs.init_from_data and hasattr(model, "init_from_data"):
        _init_from_data(model, inputs, data.images, cfg, hw)
    run = _new_run(model, inputs, cfg, hw, data.steps_per_epoch, w)
    start_epoch = run.restore(resume) if resume is not None else 0
    step = _step_function(run, inputs, cfg, hw)
    stopped: str | None = None
    scored = False  # whether this call scored an epoch (a finished run resumed scores none)
    # Without a terminal a bar would show only its last state: a plain line per epoch instead.
    plain_log = w.main and not (cfg.progress and console.is_terminal)
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} steps"),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console,
                        disable=plain_log or not w.main, transient=False)
    with progress:
        task = progress.add_task("train", total=(cfg.epochs - start_epoch) * data.steps_per_epoch,
                                 epoch=f"{start_epoch + 1}/{cfg.epochs}", status="")
        for epoch in range(start_epoch, cfg.epochs):
            record, stopped = _train_epoch(run, data, step, inputs, cfg, hw, w, epoch,
                                           lambda status: progress.update(task, advance=1,
                                                                          status=status))
            if stopped:
                break
            _score_epoch(run, record, inputs, cfg, hw, w, epoch, out)
            scored = True
            progress.update(task, epoch=f"{min(epoch + 2, cfg.epochs)}/{cfg.epochs}",
                            status=epoch_status(record))
            if plain_log:
                console.print(f"epoch {epoch + 1}/{cfg.epochs} {epoch_status(record)} "
                              f"{record['epoch_seconds']:.1f} s", highlight=False)
            if w.main:  # one process writes; the others hold the same state
                append_jsonl(out / METRICS_FILE, record)
                tracking.log_epoch(record)
                save_checkpoint(out, run.checkpoint(epoch, cfg))
            stopped = next_epoch_overruns(inputs.deadline, run.history, epoch + 1, cfg.epochs)
            if cfg.early_stop and inputs.val is not None and run.bad_epochs >= cfg.early_stop:
                stopped = (f"early stop: validation top-1 did not improve for {cfg.early_stop} "
                           f"epochs (best {run.best['top1']:.4f} at epoch {run.best['epoch']})")
            if stopped:
                break
    return _result(run, stopped, inputs, cfg, hw, run.candidates() if scored else {})


def _batches(inputs: FitInputs, cfg: TrainConfig, hw: Hardware,
             w: distributed.World) -> _Batches:
    images, labels, extra = inputs.train.images, inputs.train.labels, inputs.train_extra
    if hw.device.type == "cuda":  # keep the whole decoded set on the GPU: no loader at all
        images, labels = images.to(hw.device), labels.to(hw.device)
        extra = extra.to(hw.device) if extra is not None else None
    n = len(labels)
    # One process: w is World() and [lo, hi) the whole batch. Several: --batch-size is global
    # and each process takes its slice of every batch (see distributed.py).
    batch, lo, hi = distributed.shard(cfg.batch_size, min(cfg.batch_size, n), w)
    # Drop the ragged last batch: a batch of 1-3 images gives batch norm useless statistics.
    augment = BatchAugment(cfg.augment, mixup=cfg.mixup, cutmix=cfg.cutmix,
                           num_classes=inputs.num_classes, translate=cfg.translate)
    return _Batches(images, labels, extra, augment, batch, lo, hi, max(1, n // batch))


def _init_from_data(model: torch.nn.Module, inputs: FitInputs, images: torch.Tensor,
                    cfg: TrainConfig, hw: Hardware) -> None:
    """Data-dependent initialisation (e.g. AirNet's whitening layer), before the first step
    and before the EMA copies the weights. A seeded random sample: decoded sets are ordered by
    class, so the first images would describe one class only."""
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
    sample = images[pick[:DATA_INIT_IMAGES].to(images.device)].to(hw.device)
    model.init_from_data(normalize(sample, inputs.mean, inputs.std))


def _new_run(model: torch.nn.Module, inputs: FitInputs, cfg: TrainConfig, hw: Hardware,
             steps_per_epoch: int, w: distributed.World) -> _Run:
    optimizer = build_optimizer(cfg.optimizer, inputs.param_groups, lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    lr_ctl = LRController(optimizer, cfg.schedule, epochs=cfg.epochs,
                          steps_per_epoch=steps_per_epoch, warmup_epochs=cfg.warmup_epochs,
                          step_size=cfg.step_size, gamma=cfg.gamma)
    scaler = torch.amp.GradScaler(hw.device.type, enabled=hw.needs_grad_scaler())
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None
    if ema is not None and inputs.on_ema is not None:
        inputs.on_ema(ema.module)
    lookahead = Lookahead(cfg.epochs * steps_per_epoch) if cfg.lookahead else None
    return _Run(model, optimizer, lr_ctl, scaler, ema, lookahead, distributed.Replica(model, w))


def _step_function(run: _Run, inputs: FitInputs, cfg: TrainConfig,
                   hw: Hardware) -> Callable[..., torch.Tensor]:
    """loss(net, x, y, idx, extra): the criterion of this fit on one augmented batch."""
    class_weights = (inputs.class_weights.to(hw.device)
                     if inputs.class_weights is not None else None)
    l1_params = [p for p in run.model.parameters() if p.ndim > 1] if cfg.l1 else []

    def loss_of(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                idx: torch.Tensor) -> torch.Tensor:
        if inputs.criterion is not None:
            loss = inputs.criterion(logits.float(), y, x, idx)
        else:
            loss = F.cross_entropy(logits.float(), y, weight=class_weights,
                                   label_smoothing=cfg.label_smoothing)
        if l1_params:
            loss = loss + cfg.l1 * sum(p.abs().sum() for p in l1_params)
        return loss
    return loss_of


def _train_epoch(run: _Run, data: _Batches, loss_of: Callable[..., torch.Tensor],
                 inputs: FitInputs, cfg: TrainConfig, hw: Hardware, w: distributed.World,
                 epoch: int, advance: Callable[[str], None]
                 ) -> tuple[dict[str, Any], str | None]:
    """One pass over the training set; returns the epoch's record and why it stopped, if it
    did (a loss that is not finite)."""
    model = run.model
    model.train()
    if hasattr(model, "epoch_start"):
        model.epoch_start(epoch)
    if inputs.on_epoch_start is not None:
        inputs.on_epoch_start(epoch)
    distributed.seed_epoch(cfg.seed, epoch, w)
    train_net = run.replica.for_epoch()
    order = epoch_order(len(data.labels), cfg.seed, epoch, inputs.sample_weights)
    t_epoch, data_time = time.perf_counter(), 0.0
    loss_sum, correct, seen = 0.0, 0, 0
    for step in range(data.steps_per_epoch):
        t0 = time.perf_counter()
        idx = order[step * data.batch + data.lo:step * data.batch + data.hi].to(
            data.images.device)
        x, y = data.augment(data.images[idx].to(hw.device, non_blocking=True),
                       data.labels[idx].to(hw.device, non_blocking=True))
        x = normalize(x, inputs.mean, inputs.std)
        if hw.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        data_time += time.perf_counter() - t0
        with hw.autocast():
            logits = (train_net(x) if data.extra is None
                      else train_net(x, data.extra[idx].to(hw.device)))
        loss = loss_of(logits, y, x, idx)
        if not distributed.all_finite(loss, w):
            return {}, (f"loss became {loss.item()} at epoch {epoch + 1} step {step + 1}; "
                        f"kept the last good weights. Lower --lr (now {cfg.lr:g}) or set "
                        "--grad-clip")
        _update(run, loss, cfg, epoch)
        hard = y if y.ndim == 1 else y.argmax(1)
        loss_sum += loss.item() * len(hard)
        correct += (logits.argmax(1) == hard).sum().item()
        seen += len(hard)
        advance(f"loss {loss_sum / seen:.3f}")
    if run.lookahead is not None:
        run.lookahead.sync(model)
    loss_sum, correct, seen = distributed.agreed_sums([loss_sum, correct, seen], w, hw.device)
    distributed.sync_buffers(model, run.ema.module if run.ema is not None else None)
    elapsed = time.perf_counter() - t_epoch
    return {"epoch": epoch + 1, "lr": _base_lr(run.optimizer),
            "train_loss": loss_sum / max(1, seen), "train_top1": correct / max(1, seen),
            "epoch_seconds": elapsed, "images_per_second": seen / max(elapsed, 1e-9),
            "data_wait_fraction": data_time / max(elapsed, 1e-9)}, None


def _update(run: _Run, loss: torch.Tensor, cfg: TrainConfig, epoch: int) -> None:
    """One optimizer step and everything that follows each step."""
    optimizer_step(run.model, run.optimizer, run.scaler, loss, cfg.grad_clip)
    run.lr_ctl.step_batch()
    run.global_step += 1
    if run.ema is not None:
        run.ema.update(run.model, step=run.global_step)
    if run.lookahead is not None:
        run.lookahead.step(run.model, epoch, run.global_step)


def _score_epoch(run: _Run, record: dict[str, Any], inputs: FitInputs, cfg: TrainConfig,
                 hw: Hardware, w: distributed.World, epoch: int, out: Path) -> None:
    """Validate the candidates, keep the best, run the epoch hooks, step the schedule."""
    candidates = run.candidates()
    if inputs.val is not None:
        record["val_precision"] = hw.precision  # the card's final figures are fp32 (finish.py)
        for name, net in candidates.items():
            vloss, vtop1 = distributed.validate(
                quick_validate, net, inputs.val, w, hw.device, inputs.mean, inputs.std,
                hw, tta=cfg.tta, extra=inputs.val_extra)
            prefix = val_prefix(name)
            record[f"{prefix}_loss"], record[f"{prefix}_top1"] = vloss, vtop1
            if not math.isfinite(vloss):
                continue
            if vtop1 > run.best["top1"]:
                run.best = {"top1": vtop1, "epoch": epoch + 1, "source": name}
                run.best_state = cpu_state(net)
                if w.main:
                    save_weights(net, out / BEST_WEIGHTS)
        run.bad_epochs = 0 if run.best["epoch"] == epoch + 1 else run.bad_epochs + 1
    else:  # no validation data: the latest (EMA) weights are the result
        source = "ema" if run.ema is not None else "model"
        run.best = {"top1": -1.0, "epoch": epoch + 1, "source": source}
        run.best_state = cpu_state(candidates[source])
    if inputs.on_epoch_end is not None and w.main:
        record.update(inputs.on_epoch_end(epoch, run.model) or {})
        run.model.train()
    run.lr_ctl.step_epoch(record.get("val_top1"))
    run.history.append(record)


def _result(run: _Run, stopped: str | None, inputs: FitInputs, cfg: TrainConfig,
            hw: Hardware, candidates: dict[str, torch.nn.Module]) -> FitResult:
    if run.best_state is None:
        raise_diverged(stopped, cfg)
    best, best_state, notes = run.best, run.best_state, []
    if inputs.val is not None and run.history and stopped is None:
        def predict(net: torch.nn.Module):
            return val_predictions(net, inputs.val, inputs.mean, inputs.std, hw, tta=cfg.tta,
                                   extra=inputs.val_extra)

        best, best_state, note = final_or_best(best, best_state, run.history[-1], candidates,
                                               predict, inputs.val.labels.cpu().numpy())
        notes += [note] if note else []
    return FitResult(best_state=best_state, best_epoch=best["epoch"], best_source=best["source"],
                     best_val_top1=best["top1"] if best["top1"] >= 0 else None,
                     history=run.history, stopped=stopped, notes=notes)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, loss: torch.Tensor,
                   grad_clip: float | None) -> None:
    """Backward and one update, with loss scaling (fp16) and optional gradient-norm clipping."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


def raise_diverged(stopped: str | None, cfg: TrainConfig) -> None:
    from ..errors import LeanvisionError

    raise LeanvisionError(
        f"training produced no usable weights: {stopped or 'no epoch completed'}. "
        f"Lower --lr (now {cfg.lr:g}) or set --grad-clip 1.0")


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The rate of the largest parameter group (not a bias group with its own multiplier)."""
    group = max(optimizer.param_groups, key=lambda g: sum(p.numel() for p in g["params"]))
    return group["lr"]
