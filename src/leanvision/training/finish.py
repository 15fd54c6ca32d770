"""What a finished fit leaves behind: the artifact, its card's metrics (through the same
evaluate path as `leanvision eval`) and its training record."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console

from ..artifact import Artifact, make_card, save_artifact
from ..data import DataSource
from ..data.partition import Partition
from ..evaluate import evaluate_records, model_cost
from ..hardware import Hardware
from . import distributed
from .config import TrainConfig
from .loop import FitResult
from .report import diagnose_fit, print_summary

if TYPE_CHECKING:
    from .api import StartModel

# Clean (un-augmented) accuracy on a sample of training images measures the train/val gap; the
# sample shrinks with the input size so that scoring photos costs about what 2,000 thumbnails do.
TRAIN_PROBE_PIXELS = 2000 * 64 * 64
TRAIN_PROBE_MIN = 200


def write_artifact(out_dir: Path, model: torch.nn.Module, result: FitResult, start: StartModel,
                   pre: dict[str, Any], source: DataSource, parts: Partition, train_imgs,
                   cfg: TrainConfig, hw: Hardware, console: Console, *, started: float,
                   stage: str, parent: str | None, strategy: str, skipped: list,
                   extra_card: dict | None, extra_training: dict[str, Any]) -> dict[str, Any]:
    """Load the chosen weights, save the artifact, score it, and return the run's summary."""
    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    model.load_state_dict(result.best_state)
    for note in result.notes:
        console.print(f"  {note}", style="dim")
    input_size = tuple(start.input_size)
    card = make_card(arch=start.arch, arch_kwargs=start.arch_kwargs, classes=source.classes,
                     input_size=input_size, mean=pre["mean"], std=pre["std"], stage=stage,
                     parent=parent, config=cfg.to_dict(), interpolation=pre["interpolation"],
                     tta=cfg.tta, transforms=start.transforms)
    card.update(extra_card or {})
    save_artifact(out_dir, model, {**card, "metrics": {}})
    art = Artifact(path=out_dir, card=card, model=model)
    metrics = _final_metrics(art, parts, train_imgs, source, cfg, console)
    card["metrics"] = {**metrics, **model_cost(model, input_size, out_dir)}
    card["training"] = {**training_record(result, strategy, skipped, hw, started, parts),
                        **extra_training}
    chosen, note = chosen_on(result, hw, metrics)
    if chosen is not None:
        card["training"]["chosen_on"] = chosen
    if note is not None:
        card["training"]["selection"] = [*card["training"]["selection"], note]
        console.print(f"  {note}", style="dim")
    save_artifact(out_dir, model, card)
    summary = {"artifact": str(out_dir), "model": start.arch, "stage": stage,
               "classes": len(source.classes), "metrics": card["metrics"],
               "training": card["training"]}
    print_summary(console, summary, out_dir)
    return summary


def _final_metrics(art: Artifact, parts: Partition, train_imgs, source: DataSource,
                   cfg: TrainConfig, console: Console) -> dict[str, Any]:
    """Measured through the same evaluate path as `leanvision eval`, in fp32."""
    metrics: dict[str, Any] = {}
    rng = np.random.default_rng(cfg.seed)
    side = art.input_size[0] * art.input_size[1]
    n_probe = min(len(parts.train), max(TRAIN_PROBE_MIN, TRAIN_PROBE_PIXELS // side))
    probe = parts.train.subset(np.sort(rng.choice(len(parts.train), n_probe, replace=False)))
    evaluations = [("train", probe), ("val", parts.val), ("test", parts.test)]
    for split, records in evaluations:
        if records is None or not len(records):
            continue
        result = evaluate_records(art, records, split, cfg.data,
                                  skip_bad_images=cfg.skip_bad_images, device=cfg.device)
        keep = ("n", "top1", "top5", "loss", "macro_f1", "ece")
        metrics[split] = {k: v for k, v in result["metrics"].items() if k in keep or
                          k.startswith("top")}
        if split != "train":
            metrics[split]["per_class"] = result["metrics"]["per_class"]
            metrics[split]["confusion"] = result["metrics"]["confusion"]
    metrics["fit"] = diagnose_fit(metrics)
    return metrics


def chosen_on(result: FitResult, hw, metrics: dict[str, Any]) -> tuple[dict | None, str | None]:
    """The epoch score the kept weights were chosen on, with the precision it was measured in,
    and a note when it differs from the card's fp32 figure for the same weights by an image or
    more: one number per weight set, and the reader told which is which."""
    if result.best_val_top1 is None or "val" not in metrics:
        return None, None
    chosen = {"epoch": result.best_epoch, "weights": result.best_source,
              "val_top1": result.best_val_top1, "precision": hw.precision}
    final, n = metrics["val"]["top1"], max(1, metrics["val"]["n"])
    if abs(final - result.best_val_top1) < 0.5 / n:
        return chosen, None
    return chosen, (f"the kept weights ({result.best_source}, epoch {result.best_epoch}) scored "
                    f"{result.best_val_top1:.2%} val in {hw.precision} while training and "
                    f"{final:.2%} in fp32 on the saved artifact; the card's metrics are fp32")


def training_record(result: FitResult, strategy: str, skipped: list, hw, started: float,
                    parts: Partition) -> dict[str, Any]:
    """The card's "training" block: how the fit went, on what, and how fast."""
    last = result.history[-1] if result.history else {}
    waits = [h["data_wait_fraction"] for h in result.history]
    speeds = [h["images_per_second"] for h in result.history]
    return {
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "weights": result.best_source,
        "stopped": result.stopped,
        "selection": result.notes,
        "finetune": strategy,
        "device": str(hw.device),
        "precision": hw.precision,
        "channels_last": hw.channels_last,
        "val_origin": parts.val_origin,
        "skipped_images": [f"{item}: {reason}" for item, reason in skipped],
        "images_per_second": float(np.median(speeds)) if speeds else None,
        "data_wait_fraction": float(np.mean(waits)) if waits else None,
        "final_lr": last.get("lr"),
        "seconds": round(time.perf_counter() - started, 2),
        "processes": distributed.world().size,
    }
