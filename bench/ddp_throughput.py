"""Data-parallel training throughput: `leanvision.train` with 1 process against N processes
(`nproc=N`, gloo on CPU), on the same data, model, global batch and epochs; and, when CUDA GPUs
are present, 1 GPU against every power of two up to all of them (NCCL).

On a CPU, N processes split the same cores that one process's threads would use (each process
gets cores / N threads), so the honest expectation is little or no gain: data parallelism buys
throughput from more devices, not from the same cores. The figures say how much the gradient
all-reduce and the process start cost. Throughput is the median over epochs of
(global images / epoch seconds) as the run itself records it; wall time includes process start,
decoding and the final evaluation. Writes bench/results/ddp_throughput.json.

    python bench/ddp_throughput.py                       # CIFAR-10, 10,000 images, resnet20
    python bench/ddp_throughput.py --data builtin:digits --images 0 --epochs 2   # smoke test"""

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

import leanvision
from leanvision.training.distributed import usable_cpus

NUM_CLASSES = 10


def main() -> None:
    args = parse_args()
    run = begin()
    data = args.data or str(subset(cifar10(), max(1, args.images // NUM_CLASSES)))
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        console.print(f"[yellow]load average is {load_before:.2f}: other processes share the "
                      "CPU, so these timings understate every row[/yellow]")
    rows: list[dict[str, Any]] = []
    cpu_counts = [n for n in (1, 2, 4, 8, 16) if n <= min(args.max_cpu_procs, usable_cpus())]
    for nproc in cpu_counts:
        console.rule(f"CPU, {nproc} process{'es' if nproc > 1 else ''}")
        rows.append(run(data, args, nproc, "cpu"))
    gpus = torch.cuda.device_count()
    for nproc in [n for n in (1, 2, 4, 8, 16) if n <= gpus]:
        console.rule(f"CUDA, {nproc} GPU{'s' if nproc > 1 else ''}")
        rows.append(run(data, args, nproc, "cuda"))

    for row in rows:
        base = next(r for r in rows if r["device"] == row["device"] and r["processes"] == 1)
        row["speedup"] = row["images_per_second"] / base["images_per_second"]
        row["scaling_efficiency"] = row["speedup"] / row["processes"]
    figures = {"runs": rows, "cpu_cores": usable_cpus(), "gpus": gpus,
               "load_average_before": load_before, "load_average_after": os.getloadavg()[0]}
    config = {"data": data, "images": args.images, "epochs": args.epochs,
              "batch_size_global": args.batch_size, "model": args.model,
              "augment": "light", "precision": "auto"}
    write_result("ddp_throughput", result_record("ddp_throughput", figures, config, run))
    print_table(f"data-parallel training: {args.model}, global batch {args.batch_size}, "
                f"{args.epochs} epochs",
                ["device", "processes", "images/s", "speedup", "efficiency", "end-to-end s",
                 "last train loss", "other CPU use"],
                [[r["device"], r["processes"], r["images_per_second"], r["speedup"],
                  r["scaling_efficiency"], r["wall_seconds"], r["last_train_loss"],
                  f"{r['other_processes_cpu_share']:.0%}"] for r in rows])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="data spec (default: a CIFAR-10 subset)")
    p.add_argument("--images", type=int, default=10_000, help="CIFAR-10 training images")
    p.add_argument("--epochs", type=int, default=3,
                   help="the median over epochs skips the first epoch's warm-up from 3 on")
    p.add_argument("--batch-size", type=int, default=128, help="global batch")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--max-cpu-procs", type=int, default=2)
    return p.parse_args()


def run(data: str, args: argparse.Namespace, nproc: int, device: str) -> dict[str, Any]:
    CACHE.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="ddp-", dir=CACHE))
    try:
        started = time.perf_counter()
        with CpuShare() as share:
            summary = leanvision.train(data, out / "run", model=args.model,
                                       batch_size=args.batch_size, epochs=args.epochs,
                                       augment="light", val_fraction=0.0, progress=False,
                                       device=device, nproc=nproc, console=console)
        wall = time.perf_counter() - started
        history = [json.loads(line) for line in
                   (out / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    training = summary["training"]
    row = {"device": device, "processes": nproc,
           "images_per_second": training["images_per_second"], "wall_seconds": wall,
           "train_seconds_reported": training["seconds"], "precision": training["precision"],
           "epochs": [{k: h.get(k) for k in ("epoch_seconds", "images_per_second",
                                             "train_loss")} for h in history],
           "last_train_loss": history[-1]["train_loss"] if history else None,
           "other_processes_cpu_share": share.others}
    console.print({k: v for k, v in row.items() if k != "epochs"})
    return row


if __name__ == "__main__":  # the worker processes import this file again: keep main() here
    main()
