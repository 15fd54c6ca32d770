"""What a training run prints: the resolved config at the start, a summary table at the end, and
a plain-words diagnosis of over- or under-fitting from the train/val gap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..artifact import CARD_FILE
from ..data import DecodedImages
from ..data.partition import Partition
from ..hardware import Hardware
from .config import TrainConfig

# A clean-train vs val top-1 gap above this means the model memorises rather than generalises.
OVERFIT_GAP = 0.10
# Below this clean train accuracy the model has not even fit its own training data.
UNDERFIT_TRAIN_TOP1 = 0.80


def diagnose_fit(metrics: dict[str, Any]) -> dict[str, Any]:
    train = metrics.get("train", {}).get("top1")
    val = metrics.get("val", {}).get("top1")
    if train is None or val is None:
        return {"verdict": "unknown", "advice": "no validation data to compare with"}
    gap = train - val
    if gap > OVERFIT_GAP:
        verdict = "overfitting"
        advice = ("train accuracy is well above validation: use --augment strong, --mixup 0.2, "
                  "more --weight-decay or --dropout, or more data")
    elif train < UNDERFIT_TRAIN_TOP1:
        verdict = "underfitting"
        advice = ("the model does not fit its training data: train longer (--epochs), use a "
                  "larger --model, or check --lr with a learning-rate finder")
    else:
        verdict = "good fit"
        advice = "train and validation accuracy are close"
    return {"verdict": verdict, "train_top1": train, "val_top1": val, "gap": gap,
            "advice": advice}


def print_config(console: Console, cfg: TrainConfig, notes: list[str], hw: Hardware,
                 input_size: tuple[int, int], out_dir: Path, stage: str = "train") -> None:
    console.print(f"[bold]leanvision {stage}[/bold] {cfg.data} → {out_dir}")
    console.print(f"model {cfg.model} at {input_size[0]}x{input_size[1]}, "
                  f"{cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g}, "
                  f"{cfg.schedule} schedule, augment {cfg.augment}; "
                  f"{hw.device} {hw.precision}{' channels_last' if hw.channels_last else ''}")
    for note in notes:
        console.print(f"  recipe: {note}", style="dim")


def print_counts(console: Console, cfg: TrainConfig, classes: list[str], train: DecodedImages,
                 val: DecodedImages | None, parts: Partition) -> None:
    """The images training uses, counted after decoding: files left out as unreadable are not
    in them (the decode names those)."""
    counts = torch.bincount(train.labels, minlength=len(classes)).tolist()
    n_test = len(parts.test) if parts.test is not None else 0
    left_out = f"; {len(train.bad)} unreadable left out" if train.bad else ""
    console.print(f"images: {len(train)} train, {len(val) if val is not None else 0} val "
                  f"({parts.val_origin}), {n_test} test{left_out}")
    shown = ", ".join(f"{c} {n}" for c, n in list(zip(classes, counts, strict=True))[:20])
    more = f" … ({len(classes)} classes)" if len(classes) > 20 else ""
    console.print(f"per class: {shown}{more}", style="dim")
    if counts and max(counts) > 3 * max(1, min(counts)) and cfg.balance == "none":
        console.print("  the classes are imbalanced (largest > 3x smallest): consider "
                      "--balance loss or --balance sampler", style="yellow")


def epoch_status(record: dict[str, Any]) -> str:
    parts = [f"loss {record['train_loss']:.3f}"]
    if "val_top1" in record:
        parts.append(f"val {record['val_top1']:.3f}")
    if "ema_val_top1" in record:
        parts.append(f"ema {record['ema_val_top1']:.3f}")
    return " ".join(parts)


def print_summary(console: Console, summary: dict[str, Any], out_dir: Path) -> None:
    metrics, training = summary["metrics"], summary["training"]
    table = Table(title="training summary", show_header=True)
    table.add_column("split")
    table.add_column("top-1", justify="right")
    topk = next((k for k in metrics.get("val", metrics.get("train", {}))
                 if k.startswith("top") and k != "top1"), "top5")
    table.add_column(topk, justify="right")
    table.add_column("loss", justify="right")
    table.add_column("ECE", justify="right")
    for split in ("train", "val", "test"):
        m = metrics.get(split)
        if m:
            table.add_row(split, f"{m['top1']:.4f}", f"{m.get(topk, float('nan')):.4f}",
                          f"{m['loss']:.4f}", f"{m['ece']:.4f}")
    console.print(table)
    fit = metrics.get("fit", {})
    console.print(f"fit: [bold]{fit.get('verdict')}[/bold] — {fit.get('advice')}")
    if training.get("stopped"):
        console.print(f"stopped early: {training['stopped']}", style="yellow")
    if training.get("skipped_images"):
        console.print(f"skipped {len(training['skipped_images'])} unreadable images "
                      "(listed in model.json)", style="yellow")
    console.print(f"{training['epochs_run']} epochs in {training['seconds']:.1f} s, "
                  f"{training['images_per_second'] or 0:.0f} img/s, waiting on data "
                  f"{100 * (training['data_wait_fraction'] or 0):.1f}% of step time; "
                  f"{metrics['params']:,} params, {metrics['flops'] / 1e6:.1f} MFLOPs")
    print_outputs(console, out_dir, ["model.safetensors", CARD_FILE, "metrics.jsonl",
                                     "checkpoint.pt", "config.json"])


def print_outputs(console: Console, folder: Path, names: list[str]) -> None:
    table = Table(title="written", show_header=True)
    table.add_column("file")
    table.add_column("size", justify="right")
    for name in names:
        path = folder / name
        if path.exists():
            table.add_row(str(path), _size(path.stat().st_size))
    console.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def print_ranking(console: Console, result: dict[str, Any]) -> None:
    """The one line `compare` and `compare-fusions` end with: the best and the order."""
    console.print(f"best: {result['best']} ({' > '.join(result['ranking'])}); "
                  f"{result['json']}", highlight=False)
