"""Optimizer study: `leanvision.compare` on a CIFAR-10 subset. Each optimizer gets its own
learning rate from a range test, then the same model, data, epochs and schedule; ranked by
validation top-1 on a hold-out of further training images (the test split is left alone).
Writes bench/results/optimizer_study.json and optimizer_study.png."""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import datetime
from pathlib import Path

import torch
from common import (
    CACHE,
    RESULTS,
    CpuShare,
    begin,
    cifar10,
    console,
    print_table,
    result_record,
    subset,
    write_result,
)

import leanvision
from leanvision.io import write_atomic
from leanvision.training.tuning.compare import DEFAULT_OPTIMIZERS

NUM_CLASSES = 10


def main() -> None:
    args = parse_args()
    run = begin()
    train_per_class = max(1, args.images // NUM_CLASSES)
    val_per_class = max(1, args.val_images // NUM_CLASSES)
    data = subset(cifar10(), train_per_class, val_per_class)
    out = CACHE / "runs" / f"optimizer-study-{datetime.now():%Y%m%d-%H%M%S}"
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with CpuShare() as share:
        result = leanvision.compare(
            str(data), args.optimizers.split(","), out, epochs=args.epochs, model=args.model,
            batch_size=args.batch_size, find_steps=args.find_steps, progress=False,
            console=console)
    seconds = time.perf_counter() - started

    runs = result["runs"]
    figures = {
        "ranking": result["ranking"],
        "best": result["best"],
        "seconds": round(seconds, 1),
        "other_processes_cpu_share": share.others,
        "per_optimizer": {name: {
            "lr": run["lr"],
            "lr_find": run["lr_find"],
            "best_val_top1": run["best_val_top1"],
            "final_val_top1": run["final_val_top1"],
            "artifact_val_top1": run["artifact_val_top1"],
            "seconds": run["seconds"],
            "error": run.get("error"),
            "val_top1_per_epoch": [h.get("val_top1") for h in run["history"]],
            "ema_val_top1_per_epoch": [h.get("ema_val_top1") for h in run["history"]],
            "train_loss_per_epoch": [h.get("train_loss") for h in run["history"]],
        } for name, run in runs.items()},
    }
    config = {"train_images": train_per_class * NUM_CLASSES,
              "val_images": val_per_class * NUM_CLASSES,
              "val": "held out from CIFAR-10 train (the images after each class's train ones)",
              "epochs": args.epochs, "model": args.model, "batch_size": args.batch_size,
              "find_steps": args.find_steps, "optimizers": args.optimizers.split(","),
              "torch_threads": torch.get_num_threads(), "compare_config": result["config"]}
    write_result("optimizer_study", result_record("optimizer_study", figures, config, run))
    plot = write_atomic(RESULTS / "optimizer_study.png",
                        lambda tmp: shutil.copyfile(result["plot"], tmp))
    console.print(f"wrote {plot}")
    print_table(f"optimizer study: {args.model}, {train_per_class * NUM_CLASSES} train / "
                f"{val_per_class * NUM_CLASSES} val images, {args.epochs} epochs, "
                f"{seconds / 60:.1f} min",
                ["optimizer", "lr (lr-find)", "best val top-1", "final val top-1", "seconds"],
                [[name, runs[name]["lr"], runs[name]["best_val_top1"],
                  runs[name]["final_val_top1"], runs[name]["seconds"]]
                 for name in result["ranking"]])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000, help="training images (10 classes)")
    p.add_argument("--val-images", type=int, default=5_000, help="held-out validation images")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--find-steps", type=int, default=100, help="steps of each lr range test")
    p.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS))
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice); 1 leaves a shared machine a "
                        "core and avoids OpenMP stalls")
    return p.parse_args()


if __name__ == "__main__":
    Path(RESULTS).mkdir(parents=True, exist_ok=True)
    main()
