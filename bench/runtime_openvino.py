"""Which CPU runtime to ship a trained classifier with (issue 22): PyTorch eager FP32, ONNX Runtime
FP32 / INT8 and OpenVINO FP32 / INT8, timed side by side in one process on a real artifact
(EfficientNet-Lite0 fine-tuned on the clothing photos by default), with each model's val top-1.

  1. quantize twice with the accuracy guard on (--max-drop points, default calibration):
     `quantize --method ptq` (ONNX Runtime QDQ) and `quantize --backend openvino` (NNCF);
  2. val top-1 of all five through Predictor.logits (the card's preprocessing and TTA), and the
     max abs logit difference of FP32 OpenVINO against PyTorch on real val images;
  3. latency at batch 1 and 32, interleaved: --rounds rounds, each running every runtime once in
     a rotated order (so drift of the machine spreads over all of them); per runtime, the median
     and the min-max of the per-round medians, images/s, speed-ups against torch eager and
     against ORT INT8;
  4. OpenVINO compiled with each performance hint (LATENCY / none / THROUGHPUT) and with static
     batch shapes, interleaved the same way: the figures behind the LATENCY hint and the dynamic
     batch axis of runtime/openvino_runtime.py. "none" compiles exactly as LATENCY in
     OpenVINO 2026.4, so the gap between those two rows measures the noise of the machine.

    python bench/runtime_openvino.py [--model /work/exp/base224] [--data DIR] [--rounds 5]

Writes bench/results/runtime_openvino.json (bench/runtime.py and results/runtime.json are issue
5's ORT-only comparison on CIFAR-10 and are kept as they are)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    CpuShare,
    begin,
    clothing,
    console,
    print_table,
    result_record,
    write_result,
)
from rich.console import Console
from rich.table import Table

from leanvision.artifact import load, read_card
from leanvision.compress.ptq import PTQConfig, runner_top1, scored_splits
from leanvision.compress.quantize import quantize
from leanvision.data import load_data
from leanvision.runtime.openvino_runtime import INT8_XML, model_runner, read_model
from leanvision.runtime.predictor import Predictor

WORK = Path("/tmp/leanvision-bench/runtime_openvino")
# (name in the tables, artifact folder key, Predictor runtime)
RUNTIMES = (("torch eager fp32", "base", "torch"), ("ORT fp32", "ort", "onnx-fp32"),
            ("ORT int8", "ort", "onnx-int8"), ("OpenVINO fp32", "ov", "openvino-fp32"),
            ("OpenVINO int8", "ov", "openvino-int8"))
BATCHES = (1, 32)


def main() -> None:
    args = parse_args()
    run = begin()
    torch.set_num_threads(args.threads)
    base = wait_for(Path(args.model), args.wait_minutes)
    data = Path(args.data) if args.data else clothing()
    work = Path(args.work)
    started = time.perf_counter()
    figures: dict[str, Any] = {"model": str(base), "arch": read_card(base)[1]["arch"],
                               "data": str(data), "threads": args.threads}
    folders = {"base": base}
    figures["quantize"] = {}
    for key, backend in (("ort", "onnxruntime"), ("ov", "openvino")):
        folders[key], figures["quantize"][key] = quantized(base, data, work / key, backend, args)
    predictors = {name: Predictor.from_artifact(folders[key], runtime=runtime,
                                                threads=args.threads)
                  for name, key, runtime in RUNTIMES}
    figures["val"] = val_top1(base, data, predictors)
    figures["parity_real_images"] = parity_on_real(base, data, predictors)
    with CpuShare() as share:
        timed = interleaved({n: p.run_normalised for n, p in predictors.items()},
                            predictors["torch eager fp32"].input_size, args)
    figures["latency"] = summarise(timed)
    figures["cpu_share_of_others_timing"] = round(share.others, 3)
    if args.hint_rounds:
        with CpuShare() as share:
            figures["openvino_hints"] = hint_study(folders["ov"], args)
        figures["cpu_share_of_others_hints"] = round(share.others, 3)
    figures["load_average_end"] = list(os.getloadavg())
    figures["seconds"] = round(time.perf_counter() - started, 1)
    report(figures)
    write_result(args.name, result_record("runtime_openvino", figures, vars(args),
                                          run))


def wait_for(folder: Path, minutes: float) -> Path:
    """The artifact once its card exists (a training run writes it last)."""
    deadline = time.time() + minutes * 60
    while not (folder / "model.json").is_file():
        if time.time() > deadline:
            raise SystemExit(f"{folder}/model.json did not appear within {minutes} minutes")
        console.print(f"waiting for {folder}/model.json ...")
        time.sleep(30)
    return folder


def quantized(base: Path, data: Path, out: Path, backend: str, args) -> tuple[Path, dict]:
    """quantize --method ptq with the guard on (the default calibration) into `out`."""
    if out.exists():  # never reuse: the base or the code may have changed since
        shutil.rmtree(out)
    t0 = time.perf_counter()
    summary = quantize(base, data, out, method="ptq", backend=backend, max_drop=args.max_drop,
                       threads=args.threads, console=console)
    q = summary["quantization"]
    record = {k: q.get(k) for k in ("guard", "fp32_nodes", "nodes", "timings", "calibration",
                                    "parity", "versions", "export")}
    record["recommended_runtime"] = summary["recommended_runtime"]
    record["files"] = {k: v["bytes"] for k, v in q["files"].items()}
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return out, record


def val_top1(base: Path, data: Path, predictors: dict[str, Predictor]) -> dict[str, Any]:
    """Top-1 of each runtime on the validation split the guard scored (the card's TTA), in
    batches of 32: at runner_top1's default 256 the runtimes kept about 8 GB of arenas and
    activation buffers for the timing that follows."""
    art = load(base)
    _, _, splits = scored_splits(art, load_data(str(data)), PTQConfig())
    scored = splits["val"]
    return {name: runner_top1(p.run_normalised, scored, batch_size=32)
            for name, p in predictors.items()}


def parity_on_real(base: Path, data: Path, predictors: dict[str, Predictor],
                   n: int = 16) -> dict[str, float]:
    """Max abs logit difference against PyTorch on the first `n` val images, per runtime."""
    _, _, splits = scored_splits(load(base), load_data(str(data)), PTQConfig())
    images = splits["val"].images[:n]
    reference = predictors["torch eager fp32"].logits(images)
    return {name: round(float(np.abs(p.logits(images) - reference).max()), 6)
            for name, p in predictors.items() if name != "torch eager fp32"}


def interleaved(runs: dict[str, Any], size: tuple[int, int], args) -> dict[str, dict]:
    """{name: {batch: [per-round median ms]}}: each round runs every runtime once, the order
    rotated by one each round; each slot warms up first (a previous runtime's spinning
    threads have gone quiet by the time the timed calls start)."""
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, *size), dtype=np.float32) for b in BATCHES}
    calls = {1: args.calls_b1, 32: args.calls_b32}
    warm = {1: args.warmup_b1, 32: 1}
    names = list(runs)
    for name in names:  # first calls (allocation, kernel selection) are set-up, not timing
        for b in BATCHES:
            runs[name](inputs[b])
    medians: dict[str, dict] = {n: {b: [] for b in BATCHES} for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            for b in BATCHES:
                medians[name][b].append(_median_ms(runs[name], inputs[b], warm[b], calls[b]))
        console.print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {medians[n][1][-1]:.2f}/{medians[n][32][-1]:.0f} ms" for n in names))
    return medians


def _median_ms(run, x: np.ndarray, warmup: int, calls: int) -> float:
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def summarise(medians: dict[str, dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, by_batch in medians.items():
        out[name] = {}
        for b, values in by_batch.items():
            mid = statistics.median(values)
            out[name][f"batch_{b}"] = {"median_ms": round(mid, 3),
                                       "min_ms": round(min(values), 3),
                                       "max_ms": round(max(values), 3),
                                       "rounds_ms": [round(v, 3) for v in values],
                                       "images_per_s": round(b * 1e3 / mid, 1)}
    for entries in out.values():  # speed-ups of the medians (> 1: faster than the reference)
        for b in BATCHES:
            key = f"batch_{b}"
            mine = entries[key]["median_ms"]
            entries[key]["x_torch"] = round(out["torch eager fp32"][key]["median_ms"] / mine, 2)
            entries[key]["x_ort_int8"] = round(out["ORT int8"][key]["median_ms"] / mine, 2)
    return out


def hint_study(ov_folder: Path, args) -> dict[str, Any]:
    """OpenVINO FP32 and INT8 compiled with each performance hint, and with the LATENCY hint
    on a model reshaped to each static batch size (the runtime compiles the ONNX file's dynamic
    batch axis as dynamic), timed interleaved."""
    runs = {}
    size = tuple(read_card(ov_folder)[1]["input"]["size"])
    for precision, file in (("fp32", "model.onnx"), ("int8", INT8_XML)):
        model = read_model(ov_folder / file)
        for hint in ("LATENCY", None, "THROUGHPUT"):
            runs[f"{precision} {hint or 'no hint'}"] = model_runner(
                model, args.threads, {"PERFORMANCE_HINT": hint})
        runs[f"{precision} LATENCY static batch"] = _static_runner(ov_folder / file, size,
                                                                   args.threads)
    sub = argparse.Namespace(**{**vars(args), "rounds": args.hint_rounds})
    return summarise_hints(interleaved(runs, size, sub))


def _static_runner(path: Path, size: tuple[int, int], threads: int):
    """One model compiled per batch size in BATCHES, each with a static input shape."""
    by_batch = {}
    for b in BATCHES:
        model = read_model(path)
        model.reshape([b, 3, *size])
        by_batch[b] = model_runner(model, threads)
    return lambda x: by_batch[len(x)](x)


def summarise_hints(medians: dict[str, dict]) -> dict[str, Any]:
    return {name: {f"batch_{b}": {"median_ms": round(statistics.median(v), 3),
                                  "min_ms": round(min(v), 3), "max_ms": round(max(v), 3)}
                   for b, v in by_batch.items()} for name, by_batch in medians.items()}


def report(figures: dict[str, Any]) -> None:
    rows = []
    for name, _, _ in RUNTIMES:
        lat, val = figures["latency"][name], figures["val"][name]
        b1, b32 = lat["batch_1"], lat["batch_32"]
        rows.append([name, f"{b1['median_ms']:.2f} ({b1['min_ms']:.2f}-{b1['max_ms']:.2f})",
                     f"{b32['median_ms']:.1f} ({b32['min_ms']:.1f}-{b32['max_ms']:.1f})",
                     b32["images_per_s"], f"{b1['x_torch']:.2f}/{b32['x_torch']:.2f}",
                     f"{b1['x_ort_int8']:.2f}/{b32['x_ort_int8']:.2f}",
                     f"{100 * val['top1']:.2f}"])
    table = Table(title=f"{figures['arch']} on {figures['threads']} threads: median ms "
                        "(min-max of the round medians)")
    for i, col in enumerate(("runtime", "batch 1 ms", "batch 32 ms", "img/s b32",
                             "x torch b1/b32", "x ORT int8 b1/b32", "val top-1 %")):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(f"{v:,.1f}" if isinstance(v, float) else str(v) for v in row))
    Console(width=160).print(table)  # seven columns do not fit the default 80
    if "openvino_hints" in figures:
        print_table("OpenVINO performance hint: median ms", ["compiled as", "batch 1", "batch 32"],
                    [[n, v["batch_1"]["median_ms"], v["batch_32"]["median_ms"]]
                     for n, v in figures["openvino_hints"].items()])
    for key in ("ort", "ov"):
        guard = figures["quantize"][key]["guard"]
        console.print(f"{key} guard: {guard['status']} (drop {guard['drop_points']} points, "
                      f"{len(figures['quantize'][key]['fp32_nodes'])} FP32 node(s))")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/exp/base224", help="a trained artifact folder")
    p.add_argument("--data", help="its data (default: the clothing photos, bench/common.py)")
    p.add_argument("--wait-minutes", type=float, default=120,
                   help="how long to wait for --model's model.json to appear")
    p.add_argument("--threads", type=int, default=2, help="threads of every runtime "
                   "(the physical cores)")
    p.add_argument("--max-drop", type=float, default=1.0, help="guard budget, top-1 points")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls-b1", type=int, default=100, help="timed batch-1 calls per round")
    p.add_argument("--calls-b32", type=int, default=8, help="timed batch-32 calls per round")
    p.add_argument("--warmup-b1", type=int, default=10)
    p.add_argument("--hint-rounds", type=int, default=3, help="0: skip the hint study")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--name", default="runtime_openvino", help="results file name")
    return p.parse_args()


if __name__ == "__main__":
    main()
