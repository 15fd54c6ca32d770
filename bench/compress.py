"""The compression stages on CIFAR-10, side by side in one run (issue 4's targets):

- prune:   resnet20 pruned to <= 50% of its FLOPs (Torch-Pruning, iterative, fine-tuned) loses
           <= 1 point of test top-1, and runs faster in PyTorch and ONNX Runtime;
- distill: resnet8 trained with the resnet20 teacher (KD and DKD) beats resnet8 trained alone,
           same epochs and settings, by >= 1 point;
- qat:     INT8 (ONNX Runtime QDQ) test top-1 within 0.5 point of FP32, beside plain
           post-training quantisation of the same base for contrast.

The base resnet20 is trained first (standard recipe, 10% of the training images held out for
validation; the test split never steers anything) unless --base names one. Writes
bench/results/compress.json and prints one table per stage."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import CpuShare, cifar10, console, print_table, result_record, write_result

import leanvision
from leanvision.data import ImageChecks, decode_images, load_data, normalize
from leanvision.runtime.export import export_onnx, ort_session
from leanvision.runtime.ort_quant import quantize_onnx_static

WORK = Path("/tmp/leanvision-bench/compress")


def main() -> None:
    args = parse_args()
    root = cifar10()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    started = time.perf_counter()
    base = Path(args.base) if args.base else train_base(root, work / "base", args.base_epochs)
    base_card = leanvision.load(base).card
    figures: dict[str, Any] = {"base": {"artifact": str(base), "model": base_card["arch"],
                                        "test_top1": base_card["metrics"]["test"]["top1"],
                                        "val_top1": base_card["metrics"]["val"]["top1"]}}
    stages = args.only.split(",")
    if "prune" in stages:
        figures["prune"] = bench_prune(root, base, work / "pruned", args)
    if "distill" in stages:
        figures["distill"] = bench_distill(root, base, work, args)
    if "qat" in stages:
        figures["qat"] = bench_qat(root, base, work / "qat", args)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    write_result(args.name, result_record("compress", figures, vars(args)))


def train_base(root: Path, out: Path, epochs: int) -> Path:
    if (out / "model.json").is_file():
        console.print(f"reusing the base at {out}")
        return out
    leanvision.train(root, out, model="resnet20", epochs=epochs, progress=False)
    return out


def bench_prune(root: Path, base: Path, out: Path, args) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = leanvision.prune(base, root, out, ratio=0.5, target="flops", importance="l2",
                               scope="global", steps=args.prune_steps, round_to=args.round_to,
                               finetune_epochs=args.prune_epochs, progress=False)
    seconds = time.perf_counter() - t0
    parent, pruned = leanvision.load(base), leanvision.load(out)
    speed = {name: measure_speed(art, args.threads)
             for name, art in (("base", parent), ("pruned", pruned))}
    record = summary["pruning"]
    result = {
        "flops_fraction": record["flops_fraction"], "params_fraction": record["params_fraction"],
        "base_test_top1": parent.card["metrics"]["test"]["top1"],
        "pruned_test_top1": pruned.card["metrics"]["test"]["top1"],
        "steps": record["steps"], "speed": speed, "seconds": round(seconds, 1),
    }
    result["test_drop_points"] = 100 * (result["base_test_top1"] - result["pruned_test_top1"])
    rows = [[name, art.card["metrics"]["test"]["top1"], art.card["metrics"]["flops"] / 1e6,
             art.card["metrics"]["params"], speed[name]["torch_b1_ms"],
             speed[name]["torch_b32_img_s"], speed[name]["ort_b1_ms"],
             speed[name]["ort_b32_img_s"]]
            for name, art in (("base", parent), ("pruned", pruned))]
    print_table("prune: resnet20, 50% of the FLOPs removed", ["model", "test top-1", "MFLOPs",
                "params", "torch b1 ms", "torch b32 img/s", "ORT b1 ms", "ORT b32 img/s"], rows)
    return result


def bench_distill(root: Path, base: Path, work: Path, args) -> dict[str, Any]:
    common = dict(epochs=args.distill_epochs, progress=False, seed=0)
    runs: dict[str, Any] = {}
    t0 = time.perf_counter()
    alone = leanvision.train(root, work / "student-alone", model=args.student, **common)
    runs["alone"] = {"test_top1": alone["metrics"]["test"]["top1"],
                     "seconds": round(time.perf_counter() - t0, 1)}
    for loss in ("kd", "dkd"):
        t0 = time.perf_counter()
        got = leanvision.distill(root, base, args.student, work / f"student-{loss}", loss=loss,
                                 **common)
        runs[loss] = {"test_top1": got["metrics"]["test"]["top1"],
                      "teacher_cached": got["distill"]["teacher_cached"],
                      "seconds": round(time.perf_counter() - t0, 1)}
    teacher = leanvision.load(base).card["metrics"]["test"]["top1"]
    for loss in ("kd", "dkd"):
        runs[loss]["gain_points"] = 100 * (runs[loss]["test_top1"] - runs["alone"]["test_top1"])
    rows = [[name, run["test_top1"], run.get("gain_points"), run["seconds"]]
            for name, run in runs.items()]
    print_table(f"distill: {args.student} student, resnet20 teacher (test top-1 {teacher:.4f}), "
                f"{args.distill_epochs} epochs each", ["student", "test top-1",
                                                       "gain (points)", "seconds"], rows)
    return {"student": args.student, "teacher_test_top1": teacher, "runs": runs,
            "epochs": args.distill_epochs}


def bench_qat(root: Path, base: Path, out: Path, args) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = leanvision.quantize(base, root, out, method="qat", epochs=args.qat_epochs,
                                  progress=False)
    seconds = time.perf_counter() - t0
    metrics = summary["metrics"]
    qat = {"fp32_test_top1": metrics["test"]["top1"],
           "int8_test_top1": metrics["int8"]["test"]["top1"], "seconds": round(seconds, 1),
           "files": summary["quantization"]["files"]}
    qat["drop_points"] = 100 * (qat["fp32_test_top1"] - qat["int8_test_top1"])
    ptq = post_training_only(root, base)
    speed = measure_onnx_pair(out / "model.onnx", out / "model.int8.onnx", args.threads)
    rows = [["base fp32 (PyTorch)", ptq["fp32_test_top1"], None, None],
            ["PTQ only, ORT int8", ptq["int8_test_top1"], ptq["drop_points"], None],
            ["QAT fp32 weights", qat["fp32_test_top1"], None, None],
            ["QAT, ORT int8", qat["int8_test_top1"], qat["drop_points"], qat["seconds"]]]
    print_table("quantize: resnet20, INT8 QDQ (uint8 activations, int8 per-channel weights)",
                ["model", "test top-1", "drop vs its fp32 (points)", "seconds"], rows)
    return {"qat": qat, "ptq_only": ptq, "onnx_speed": speed}


def post_training_only(root: Path, base: Path) -> dict[str, Any]:
    """The same ORT quantizer on the base without QAT: what QAT has to beat or match."""
    art = leanvision.load(base)
    data = load_data(root)
    test = decode_images(data.test, art.input_size, ImageChecks())
    rng = np.random.default_rng(0)
    calib_idx = np.sort(rng.choice(len(data.train), 512, replace=False))
    calib = decode_images(data.train.subset(calib_idx), art.input_size, ImageChecks())
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_onnx(art.model, art.input_size, fp32)
        int8 = Path(tmp) / "model.int8.onnx"
        quantize_onnx_static(fp32, int8, normalize(calib.images, art.mean, art.std).numpy())
        top1 = onnx_top1(int8, test.images, test.labels, art.mean, art.std)
    fp32_top1 = art.card["metrics"]["test"]["top1"]
    return {"fp32_test_top1": fp32_top1, "int8_test_top1": top1,
            "drop_points": 100 * (fp32_top1 - top1)}


def onnx_top1(path: Path, images: torch.Tensor, labels: torch.Tensor, mean, std) -> float:
    session = ort_session(path)
    name = session.get_inputs()[0].name
    hits = 0
    for i in range(0, len(images), 500):
        x = normalize(images[i:i + 500], mean, std).numpy()
        hits += int((session.run(None, {name: x})[0].argmax(1) == labels[i:i + 500].numpy()).sum())
    return hits / len(images)


def measure_speed(art: leanvision.Artifact, threads: int) -> dict[str, Any]:
    model = art.model.eval()
    h, w = art.input_size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, art.input_size, path)
        session = ort_session(path, threads=threads)
        name = session.get_inputs()[0].name
        ort_run = lambda x: session.run(None, {name: x})  # noqa: E731
        with CpuShare() as share:
            figures = {
                "torch_b1_ms": latency_ms(torch_runner(model), torch.randn(1, 3, h, w)),
                "torch_b32_img_s": throughput(torch_runner(model), torch.randn(32, 3, h, w)),
                "ort_b1_ms": latency_ms(ort_run, np.random.randn(1, 3, h, w).astype(np.float32)),
                "ort_b32_img_s": throughput(ort_run,
                                            np.random.randn(32, 3, h, w).astype(np.float32)),
            }
    figures["threads"], figures["cpu_share_of_others"] = threads, round(share.others, 3)
    return figures


def measure_onnx_pair(fp32: Path, int8: Path, threads: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for label, path in (("fp32", fp32), ("int8", int8)):
        session = ort_session(path, threads=threads)
        name = session.get_inputs()[0].name
        shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
        run = lambda x, s=session, n=name: s.run(None, {n: x})  # noqa: E731
        one = np.random.randn(1, *shape[1:]).astype(np.float32)
        many = np.random.randn(32, *shape[1:]).astype(np.float32)
        figures[f"{label}_b1_ms"] = latency_ms(run, one)
        figures[f"{label}_b32_img_s"] = throughput(run, many)
    figures["int8_speedup_b1"] = figures["fp32_b1_ms"] / figures["int8_b1_ms"]
    figures["int8_speedup_b32"] = figures["int8_b32_img_s"] / figures["fp32_b32_img_s"]
    return figures


def torch_runner(model: torch.nn.Module):
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return run


def latency_ms(run, x, warmup: int = 20, iters: int = 200) -> float:
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def throughput(run, x, warmup: int = 5, iters: int = 50) -> float:
    for _ in range(warmup):
        run(x)
    t0 = time.perf_counter()
    for _ in range(iters):
        run(x)
    return len(x) * iters / (time.perf_counter() - t0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="A trained resnet20 artifact (default: train one)")
    p.add_argument("--base-epochs", type=int, default=30)
    p.add_argument("--prune-steps", type=int, default=3)
    p.add_argument("--prune-epochs", type=int, default=5, help="fine-tuning epochs per step")
    p.add_argument("--round-to", type=int, default=None,
                   help="keep pruned channel counts multiples of this")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--distill-epochs", type=int, default=15)
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads for timing runs")
    p.add_argument("--only", default="prune,distill,qat")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--name", default="compress", help="results file name")
    return p.parse_args()


if __name__ == "__main__":
    main()
