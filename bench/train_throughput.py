"""Training throughput: `leanvision.train` against a plain PyTorch loop, side by side, on the same
CIFAR-10 subset, model, batch size, epochs and augmentation (random crop with 4 px padding and a
horizontal flip).

The baseline is the textbook loop: torchvision ImageFolder + PIL transforms + DataLoader, fp32,
SGD with momentum. leanvision runs with its defaults for the rest (precision, memory layout,
EMA, ...), since that is what a user gets. Writes bench/results/train_throughput.json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    CACHE,
    CpuShare,
    begin,
    cifar10,
    console,
    print_table,
    result_record,
    subset,
    write_result,
)
from protocol import interleave, ratio, spread
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

import leanvision
from leanvision.models import create_model, model_preprocessing

NUM_CLASSES = 10
WARMUP_BATCHES = 5  # per epoch: excludes worker start-up and first-call kernel selection


def main() -> None:
    args = parse_args()
    run = begin([f"{args.images} CIFAR-10 training images, {args.epochs} epochs per repeat",
                 "leanvision with its defaults (bf16 where the CPU has it), the loop in fp32"])
    per_class = max(1, args.images // NUM_CLASSES)
    data = subset(cifar10(), per_class)
    n_images = per_class * NUM_CLASSES
    warm_page_cache(data)
    workers = os.cpu_count() or 2
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "leanvision": []}

    def measured(name: str, fn) -> float:
        with CpuShare() as share:
            result = fn()
        result["other_processes_cpu_share"] = share.others
        runs[name].append(result)
        console.print(f"{name}: {result['images_per_second']:.0f} images/s, "
                      f"{result['wall_seconds']:.1f} s end to end")
        return result["images_per_second"]

    speeds = interleave({
        "baseline": lambda: measured("baseline", lambda: baseline(
            data, args.model, args.batch_size, args.epochs, workers)),
        "leanvision": lambda: measured("leanvision", lambda: leanvision_run(
            data, args.model, args.batch_size, args.epochs))}, args.repeats)
    walls = {name: spread([r["wall_seconds"] for r in rs]) for name, rs in runs.items()}
    others = max(r["other_processes_cpu_share"] for rs in runs.values() for r in rs)
    figures = {
        "images_per_second": speeds,
        "wall_seconds": walls,
        "speedup_images_per_second": ratio(speeds["leanvision"], speeds["baseline"]),
        "speedup_end_to_end": ratio(_inverse(walls["leanvision"]), _inverse(walls["baseline"])),
        "max_other_processes_cpu_share": others,
        "precision": runs["leanvision"][-1]["precision"],
        "runs": runs,
    }
    config = {"images": n_images, "epochs": args.epochs, "batch_size": args.batch_size,
              "model": args.model, "augment": "random crop 32 pad 4 + horizontal flip",
              "baseline_workers": workers, "warmup_batches_per_epoch": WARMUP_BATCHES,
              "torch_threads": torch.get_num_threads(), "repeats": args.repeats}
    # One file per model, so the resnet20 and airnet_s comparisons sit side by side.
    name = f"train_throughput-{args.model}"
    write_result(name, result_record(name, figures, config, run))
    rows = [[label, _range(speeds[key]), _range(walls[key])]
            for label, key in (("plain PyTorch (fp32)", "baseline"),
                               (f"leanvision ({figures['precision']})", "leanvision"))]
    rows.append(["speed-up", _range(figures["speedup_images_per_second"]),
                 _range(figures["speedup_end_to_end"])])
    print_table(f"training throughput: {args.model}, {n_images} CIFAR-10 images, batch "
                f"{args.batch_size}, {args.epochs} epochs, {args.repeats} interleaved repeats",
                ["", "images/s (steady), median (min-max)", "end-to-end s"], rows, run)
    if others > 0.05:
        console.print(f"[yellow]other processes used up to {others:.0%} of the CPU during a "
                      "repeat: the comparison is not clean; run again on a quiet machine[/yellow]")


def _inverse(entry: dict[str, Any]) -> dict[str, Any]:
    """Seconds as a rate (1/s), so ratio() of two walls reads as a speed-up."""
    return {"median": 1 / entry["median"], "repeats": [1 / v for v in entry["repeats"]]}


def _range(entry: dict[str, Any]) -> str:
    return f"{entry['median']:.4g} ({entry['min']:.4g}-{entry['max']:.4g})"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000, help="training images (10 classes)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved repeats of each side (the protocol's minimum is 5)")
    return p.parse_args()


def warm_page_cache(folder: Path) -> None:
    """Both sides then read the JPEGs from memory, so neither pays for the disk on its own."""
    for path in folder.rglob("*.jpg"):
        path.read_bytes()


def baseline(data: Path, model: str, batch: int, epochs: int, workers: int) -> dict[str, Any]:
    torch.manual_seed(0)
    started = time.perf_counter()
    net = create_model(model, NUM_CLASSES)
    pre = model_preprocessing(net)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(pre["mean"], pre["std"])])
    loader = DataLoader(datasets.ImageFolder(str(data / "train"), tf), batch_size=batch,
                        shuffle=True, num_workers=workers, drop_last=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    net.train()
    timed_images, timed_seconds, per_epoch = 0, 0.0, []
    for _ in range(epochs):
        t_epoch, loss_sum, seen = time.perf_counter(), 0.0, 0
        t_steady = None
        for i, (x, y) in enumerate(loader):
            if i == WARMUP_BATCHES:
                t_steady, steady_seen = time.perf_counter(), 0
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
            if t_steady is not None:
                steady_seen += len(y)
        now = time.perf_counter()
        if t_steady is not None:
            timed_images += steady_seen
            timed_seconds += now - t_steady
        per_epoch.append({"seconds": now - t_epoch, "images_per_second": seen / (now - t_epoch),
                          "train_loss": loss_sum / max(1, seen)})
    wall = time.perf_counter() - started
    steady = timed_images / timed_seconds if timed_seconds else per_epoch[-1]["images_per_second"]
    return {"images_per_second": steady, "wall_seconds": wall, "epochs": per_epoch,
            "last_epoch_train_loss": per_epoch[-1]["train_loss"]}


def leanvision_run(data: Path, model: str, batch: int, epochs: int) -> dict[str, Any]:
    CACHE.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="throughput-", dir=CACHE))
    try:
        started = time.perf_counter()
        # No val split: throughput is about training; the run still ends with its usual
        # clean-train evaluation and artifact save, which the wall time includes.
        summary = leanvision.train(str(data), out / "run", model=model, batch_size=batch,
                                   epochs=epochs, augment="light", val_fraction=0.0,
                                   progress=False, console=console)
        wall = time.perf_counter() - started
        history = [json.loads(line) for line in
                   (out / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
        card = json.loads((out / "run" / "model.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    training = summary["training"]
    return {"images_per_second": training["images_per_second"], "wall_seconds": wall,
            "train_seconds_reported": training["seconds"], "precision": training["precision"],
            "channels_last": training["channels_last"],
            "data_wait_fraction": training["data_wait_fraction"],
            "epochs": [{k: h.get(k) for k in ("epoch_seconds", "images_per_second",
                                              "train_loss")} for h in history],
            "last_epoch_train_loss": history[-1]["train_loss"] if history else None,
            "resolved_config": card.get("config")}


if __name__ == "__main__":
    main()
