"""`leanvision bench ARTIFACT...`: latency, throughput, accuracy, size and cost of every runtime
and precision an artifact folder holds, with the thread count set explicitly and recorded.

Timings are of the network call alone (`Predictor.run_normalised` on random normalised images,
no decoding, no TTA): latency at batch 1 as p50 / p90 / p99 over `iterations` calls after
`warmup` calls, throughput at batch `batch` in images per second. Accuracy, when data is given,
goes through `Predictor.logits` (the card's TTA included), as predictions would."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from .._version import __version__
from ..artifact import git_revision, read_card, same_data
from ..data import ImageChecks, decode_images, load_data
from ..data.partition import select_split
from ..errors import ConfigError
from ..hardware import describe_machine, physical_cores
from ..io import run_folder, write_json
from ..setting import setting
from .openvino_runtime import OPENVINO_RUNTIMES, openvino_available, require_openvino
from .predictor import ONNX_FILES, RUNTIMES, Predictor, available_runtimes

# torch.compile takes tens of seconds per model to compile; it is benchmarked when named.
DEFAULT_RUNTIMES = tuple(r for r in RUNTIMES if r != "torch-compile")
RESULT_FILE = "bench.json"


@dataclass
class BenchOptions:
    """bench's settings with their help (`leanvision bench` draws its options from here)."""

    artifacts: list[Path] = setting((), "Artifact folders to measure.")
    data: str | None = setting(None, "Also measure top-1 on this data (its val split, else test).")
    runtimes: str | None = setting(None, "Comma-separated: torch, torch-compile, onnx-fp32, "
                                   "onnx-int8, openvino-fp32, openvino-int8 (default: all but "
                                   "torch-compile).")
    batch: int = setting(32, "Batch size of the throughput run.")
    threads: int | None = setting(None, "Threads per run (default: physical cores).")
    warmup: int = setting(10, "Untimed runs before timing.")
    iterations: int = setting(100, "Timed runs per measurement.")
    split: str = setting("auto", "auto, val or test (with --data).")
    out: Path | None = setting(None, "Folder for bench.json (default: runs/bench/<time>).")


def bench(artifacts: list[str | Path], data: str | Path | None = None, *,
          runtimes: list[str] | str | None = None, batch: int = 32, threads: int | None = None,
          warmup: int = 10, iterations: int = 100, split: str = "auto",
          out: str | Path | None = None, console: Console | None = None) -> dict[str, Any]:
    """Benchmark each artifact under each runtime it holds (or those in `runtimes`).

    Returns {"results": [one row per artifact x runtime], "settings", "machine", ...} and
    writes it to OUT/bench.json (default runs/bench/<stamp>/). `data` (a dataset spec) adds
    top-1 on its `split` ("auto": test if there is one, else the card's validation hold-out)."""
    if isinstance(runtimes, str):  # "onnx-fp32,onnx-int8", as typed on a command line
        runtimes = [name.strip() for name in runtimes.split(",") if name.strip()]
    if not artifacts:
        raise ConfigError("no artifacts given; pass one or more artifact folders")
    if batch < 1 or warmup < 0 or iterations < 1:
        raise ConfigError(f"--batch {batch} and --iterations {iterations} must be >= 1 and "
                          f"--warmup {warmup} >= 0")
    wanted = list(runtimes) if runtimes else list(DEFAULT_RUNTIMES)
    unknown = [r for r in wanted if r not in RUNTIMES]
    if unknown:
        raise ConfigError(f"--runtime {unknown[0]!r} is not one of {', '.join(RUNTIMES)}")
    if runtimes:  # named: a missing openvino is an error; by default: a skipped row
        for runtime in set(wanted) & set(OPENVINO_RUNTIMES):
            require_openvino(f"--runtime {runtime}")
    threads = threads or physical_cores()
    console = console or Console(stderr=True)
    out_dir = Path(out) if out is not None else run_folder("bench")
    folders = [read_card(a)[0] for a in artifacts]  # fail on a bad folder before any timing
    rows: list[dict[str, Any]] = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # once for the run, so no timed call pays for a switch
    try:
        for folder in folders:
            present = available_runtimes(folder)
            scored = _scoring_images(folder, data, split)
            for runtime in wanted:
                if runtime not in present:
                    rows.append({"artifact": str(folder), "runtime": runtime,
                                 "skipped": "no model file for this runtime"})
                    continue
                if runtime in OPENVINO_RUNTIMES and not openvino_available():
                    rows.append({"artifact": str(folder), "runtime": runtime,
                                 "skipped": "openvino is not installed (pip install "
                                            '"leanvision[openvino]")'})
                    continue
                console.print(f"bench {folder.name} · {runtime} · {threads} threads")
                rows.append(_bench_one(folder, runtime, threads, batch, warmup, iterations,
                                       scored))
    finally:
        torch.set_num_threads(before)
    _add_speedups(rows)
    report = {"results": rows,
              "settings": {"batch": batch, "threads": threads, "warmup": warmup,
                           "iterations": iterations, "data": str(data) if data else None,
                           "split": split, "runtimes": wanted},
              "machine": describe_machine(), "load_average": list(os.getloadavg()),
              "leanvision": __version__, "git": git_revision(),
              "time": datetime.now().isoformat(timespec="seconds")}
    path = write_json(out_dir / RESULT_FILE, report)
    console.print(results_table(rows, batch, threads))
    console.print(f"wrote {path}")
    return {**report, "path": str(path)}


def _scoring_images(folder: Path, data: str | Path | None,
                    split: str) -> dict[str, Any] | None:
    """The decoded images and labels that top-1 is measured on, if data was given."""
    if data is None:
        return None
    from ..evaluate import remap_labels

    _, card = read_card(folder)
    config = card.get("config", {})
    source = load_data(str(data))
    val_fraction = config.get("val_fraction", 0.1) if same_data(data, card) else 0.0
    split_name, records = select_split(source, split, val_fraction, config.get("seed", 0))
    records = remap_labels(records, source.classes, list(card["classes"]))
    decoded = decode_images(records, tuple(card["input"]["size"]), ImageChecks(),
                            skip_bad=True)
    return {"split": split_name, "images": decoded.images, "labels": decoded.labels.numpy(),
            "skipped": len(decoded.bad)}


def _bench_one(folder: Path, runtime: str, threads: int, batch: int, warmup: int,
               iterations: int, scored: dict[str, Any] | None) -> dict[str, Any]:
    started = time.perf_counter()
    predictor = Predictor.from_artifact(folder, runtime=runtime, threads=threads)
    h, w = predictor.input_size
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, h, w), dtype=np.float32)
    many = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
    # The first call of torch.compile compiles; count it as set-up, not as warm-up.
    predictor.run_normalised(one)
    predictor.run_normalised(many)
    setup_s = time.perf_counter() - started
    latency = latency_ms(predictor.run_normalised, one, warmup, iterations)
    row: dict[str, Any] = {
        "artifact": str(folder), "name": folder.name, "runtime": runtime,
        "precision": "int8" if runtime.endswith("-int8") else "fp32", "threads": threads,
        "latency_ms": latency,
        "throughput": {"batch": batch, "images_per_s": throughput(
            predictor.run_normalised, many, max(1, warmup // 5), max(3, iterations // 10))},
        "file": predictor.model_file.name, "size_bytes": predictor.model_file.stat().st_size,
        "setup_s": round(setup_s, 2), "tta": predictor.tta,
    }
    row.update(_cost(folder, predictor.card))
    if scored is not None:
        row["accuracy"] = _top1(predictor, scored, batch)
    return row


def latency_ms(run, x: np.ndarray, warmup: int, iterations: int) -> dict[str, float]:
    """p50 / p90 / p99 / mean of single calls, in milliseconds."""
    for _ in range(warmup):
        run(x)
    times = np.empty(iterations)
    for i in range(iterations):
        t0 = time.perf_counter()
        run(x)
        times[i] = time.perf_counter() - t0
    p50, p90, p99 = np.percentile(times * 1000, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4),
            "p99": round(float(p99), 4), "mean": round(float(times.mean() * 1000), 4),
            "iterations": iterations}


def throughput(run, x: np.ndarray, warmup: int, iterations: int) -> float:
    """Images per second over `iterations` back-to-back calls at batch len(x)."""
    for _ in range(warmup):
        run(x)
    t0 = time.perf_counter()
    for _ in range(iterations):
        run(x)
    return round(len(x) * iterations / (time.perf_counter() - t0), 2)


def _cost(folder: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Parameters and FLOPs from the card; measured on the PyTorch model when it lacks them.
    Quantisation leaves both unchanged (the same multiply-adds, in int8)."""
    metrics = card.get("metrics", {})
    if metrics.get("params") is not None and metrics.get("flops") is not None:
        return {"params": int(metrics["params"]), "flops": int(metrics["flops"])}
    if "torch" not in available_runtimes(folder):
        return {"params": None, "flops": None}
    from ..artifact import load
    from ..evaluate import model_cost

    art = load(folder)
    cost = model_cost(art.model, art.input_size)
    return {"params": cost["params"], "flops": cost["flops"]}


def _top1(predictor: Predictor, scored: dict[str, Any], batch: int) -> dict[str, Any]:
    images, labels = scored["images"], scored["labels"]
    hits = 0
    for i in range(0, len(images), max(batch, 64)):
        logits = predictor.logits(images[i:i + max(batch, 64)])
        hits += int((logits.argmax(1) == labels[i:i + max(batch, 64)]).sum())
    return {"split": scored["split"], "n": int(len(labels)),
            "top1": hits / len(labels) if len(labels) else None,
            "skipped_images": scored["skipped"]}


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """Each runtime against ONNX Runtime FP32 of the same artifact (> 1: faster)."""
    reference = {r["artifact"]: r for r in rows if r.get("runtime") == "onnx-fp32"
                 and "latency_ms" in r}
    for row in rows:
        ref = reference.get(row["artifact"])
        if ref is None or "latency_ms" not in row:
            continue
        row["vs_onnx_fp32"] = {
            "latency_b1": round(ref["latency_ms"]["p50"] / row["latency_ms"]["p50"], 3),
            "throughput": round(row["throughput"]["images_per_s"]
                                / ref["throughput"]["images_per_s"], 3)}


def results_table(rows: list[dict[str, Any]], batch: int, threads: int) -> Table:
    """The figures a reader compares; percentiles beyond p99 and params are in the JSON."""
    skipped = [f"{Path(r['artifact']).name}: {r['runtime']}" for r in rows if "skipped" in r]
    table = Table(title=f"leanvision bench · {threads} threads · latency ms at batch 1, img/s "
                        f"at batch {batch}, speed-up over ORT fp32 (b1/bN)",
                  caption=f"skipped: {', '.join(skipped)}" if skipped else None)
    for i, col in enumerate(("artifact", "runtime", "p50", "p99", "img/s", "x fp32", "top-1",
                             "MB", "MFLOPs")):
        table.add_column(col, justify="left" if i < 2 else "right", no_wrap=i == 1)
    for row in rows:
        if "skipped" in row:
            continue
        lat, speed = row["latency_ms"], row.get("vs_onnx_fp32")
        acc = row.get("accuracy", {}).get("top1")
        table.add_row(
            row["name"], row["runtime"], f"{lat['p50']:.3f}", f"{lat['p99']:.3f}",
            f"{row['throughput']['images_per_s']:,.0f}",
            f"{speed['latency_b1']:.2f}/{speed['throughput']:.2f}" if speed else "-",
            f"{acc:.4f}" if acc is not None else "-", f"{row['size_bytes'] / 1e6:.2f}",
            f"{row['flops'] / 1e6:.1f}" if row.get("flops") else "-")
    return table


__all__ = ["DEFAULT_RUNTIMES", "ONNX_FILES", "bench", "latency_ms", "results_table",
           "throughput"]
