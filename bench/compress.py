"""The compression stages on CIFAR-10, side by side in one run (issue 4's targets):

- prune:   resnet20 pruned to <= 50% of its FLOPs (Torch-Pruning, iterative, fine-tuned) loses
           <= 1 point of test top-1, and runs faster in PyTorch and ONNX Runtime;
- recover: the pruned network distilled from its unpruned parent (prune, then distill);
- distill: resnet8 trained with the resnet20 teacher (KD and DKD) beats resnet8 trained alone,
           same epochs and settings, by >= 1 point (on 1,000 training images per class by
           default, to fit the 2-core CPU: --distill-per-class 0 uses all 5,000);
- qat:     INT8 (ONNX Runtime QDQ) test top-1 within 0.5 point of FP32, beside plain
           post-training quantisation of the same base for contrast.

The base resnet20 is trained first (standard recipe, 10% of the training images held out for
validation; the test split never steers anything) unless --base names one. Writes
bench/results/compress.json and prints one table per stage."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    RESULTS,
    CpuShare,
    cifar10,
    console,
    print_table,
    result_record,
    subset,
    write_result,
)

import leanvision

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
    if stages == ["speed"]:
        return retime(base, work, args)
    if "prune" in stages:
        figures["prune"] = bench_prune(root, base, work / "pruned", args)
    if "distill" in stages:
        figures["distill"] = bench_distill(root, base, work, args)
    if "recover" in stages:
        figures["recover"] = bench_recover(root, base, work, args)
    if "qat" in stages:
        figures["qat"] = bench_qat(root, base, work / "qat", args)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    write_result(args.name, merged(args.name, result_record("compress", figures, vars(args))))


def merged(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """A run of some stages (--only) keeps the other stages' figures of an earlier run, each
    with the configuration and time of the run that made it."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return record
    old = json.loads(path.read_text())
    stamp = {k: old.get(k) for k in ("config", "git", "time_utc", "command")}
    figures = {k: {**v, "from_run": stamp} if isinstance(v, dict) and k != "base" else v
               for k, v in old.get("figures", {}).items() if k not in record["figures"]}
    record["figures"] = {**figures, **record["figures"]}
    return record


def retime(base: Path, work: Path, args) -> None:
    """Only the timings, again, on the artifacts a full run left in --work: for a quiet machine
    after a run whose timings were disturbed (their cpu_share_of_others says so)."""
    path = RESULTS / f"{args.name}.json"
    record = json.loads(path.read_text())
    figures = record["figures"]
    if "prune" in figures:
        timed = measure([base, work / "pruned"], ["torch", "onnx-fp32"], args.threads)
        figures["prune"]["speed"] = {"base": timed[base.name], "pruned": timed["pruned"],
                                     "cpu_share_of_others": timed["cpu_share_of_others"],
                                     "threads": args.threads, "retimed": True}
    if "qat" in figures:
        qat = work / "qat"
        timed = measure([qat], ["onnx-fp32", "onnx-int8"], args.threads)
        figures["qat"]["onnx_speed"] = {**timed[qat.name], "retimed": True,
                                        "cpu_share_of_others": timed["cpu_share_of_others"]}
    record["retimed_utc"] = result_record("compress", {}, {})["time_utc"]
    write_result(args.name, record)


def train_base(root: Path, out: Path, epochs: int) -> Path:
    if (out / "model.json").is_file():
        console.print(f"reusing the base at {out}")
        return out
    leanvision.train(root, out, model="resnet20", epochs=epochs, progress=False)
    return out


def bench_prune(root: Path, base: Path, out: Path, args) -> dict[str, Any]:
    t0 = time.perf_counter()
    if (out / "model.json").is_file():  # an interrupted run's finished stage: measure it again
        console.print(f"reusing the pruned artifact at {out}")
        summary = {"pruning": leanvision.load(out).card["pruning"]}
    else:
        summary = leanvision.prune(base, root, out, ratio=0.5, target="flops", importance="l2",
                                   scope="global", steps=args.prune_steps,
                                   round_to=args.round_to, finetune_epochs=args.prune_epochs,
                                   progress=False)
    seconds = summary["pruning"].get("seconds", time.perf_counter() - t0)
    parent, pruned = leanvision.load(base), leanvision.load(out)
    timed = measure([base, out], ["torch", "onnx-fp32"], args.threads)
    speed = {"base": timed[base.name], "pruned": timed[out.name],
             "cpu_share_of_others": timed["cpu_share_of_others"], "threads": args.threads}
    record = summary["pruning"]
    result = {
        "flops_fraction": record["flops_fraction"], "params_fraction": record["params_fraction"],
        "base_test_top1": parent.card["metrics"]["test"]["top1"],
        "pruned_test_top1": pruned.card["metrics"]["test"]["top1"],
        "steps": record["steps"], "speed": speed, "seconds": round(seconds, 1),
    }
    result["test_drop_points"] = 100 * (result["base_test_top1"] - result["pruned_test_top1"])
    rows = [[name, art.card["metrics"]["test"]["top1"], art.card["metrics"]["flops"] / 1e6,
             art.card["metrics"]["params"], speed[name]["torch"]["b1_p50_ms"],
             speed[name]["torch"]["b32_img_s"], speed[name]["onnx-fp32"]["b1_p50_ms"],
             speed[name]["onnx-fp32"]["b32_img_s"]]
            for name, art in (("base", parent), ("pruned", pruned))]
    print_table("prune: resnet20, 50% of the FLOPs removed", ["model", "test top-1", "MFLOPs",
                "params", "torch b1 ms", "torch b32 img/s", "ORT b1 ms", "ORT b32 img/s"], rows)
    return result


def bench_recover(root: Path, base: Path, work: Path, args) -> dict[str, Any]:
    """Prune, then distill to recover: the pruned network as the student of its own parent."""
    pruned = work / "pruned"
    t0 = time.perf_counter()
    summary = leanvision.distill(root, base, str(pruned), work / "pruned-kd", loss="kd",
                                 epochs=args.recover_epochs, lr=1e-3, warmup_epochs=0.0,
                                 progress=False)
    base_top1 = leanvision.load(base).card["metrics"]["test"]["top1"]
    pruned_top1 = leanvision.load(pruned).card["metrics"]["test"]["top1"]
    top1 = summary["metrics"]["test"]["top1"]
    print_table("prune, then distill from the unpruned parent",
                ["model", "test top-1", "drop vs base (points)"],
                [["base", base_top1, None], ["pruned (fine-tuned)", pruned_top1,
                                             100 * (base_top1 - pruned_top1)],
                 [f"pruned + KD ({args.recover_epochs} epochs)", top1,
                  100 * (base_top1 - top1)]])
    return {"epochs": args.recover_epochs, "test_top1": top1,
            "drop_points": 100 * (base_top1 - top1),
            "flops_fraction": summary["metrics"]["flops"] / leanvision.load(base).card[
                "metrics"]["flops"], "seconds": round(time.perf_counter() - t0, 1)}


def bench_distill(root: Path, base: Path, work: Path, args) -> dict[str, Any]:
    if args.distill_per_class:  # the first N training images of each class, all test images
        root = subset(root, args.distill_per_class, include_test=True)
    common = dict(epochs=args.distill_epochs, progress=False, seed=0)
    for name in ("student-alone", "student-kd", "student-dkd"):
        if not (work / name / "model.json").is_file():  # an interrupted run's leftovers
            shutil.rmtree(work / name, ignore_errors=True)
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
            "epochs": args.distill_epochs, "data": str(root),
            "train_images_per_class": args.distill_per_class or "all"}


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
    ptq = post_training_only(root, base, out.parent / "ptq")
    timed = measure([out], ["onnx-fp32", "onnx-int8"], args.threads)
    speed = {**timed[out.name], "cpu_share_of_others": timed["cpu_share_of_others"]}
    qat["int8_drop_vs_base_points"] = 100 * (ptq["fp32_test_top1"] - qat["int8_test_top1"])
    rows = [["base fp32 (PyTorch)", ptq["fp32_test_top1"], None, None],
            ["PTQ only, ORT int8", ptq["int8_test_top1"], ptq["drop_points"], None],
            ["QAT fp32 weights", qat["fp32_test_top1"], None, None],
            ["QAT, ORT int8", qat["int8_test_top1"], qat["drop_points"], qat["seconds"]]]
    print_table("quantize: resnet20, INT8 QDQ (uint8 activations, int8 per-channel weights)",
                ["model", "test top-1", "drop vs its fp32 (points)", "seconds"], rows)
    return {"qat": qat, "ptq_only": ptq, "onnx_speed": speed}


def post_training_only(root: Path, base: Path, out: Path) -> dict[str, Any]:
    """leanvision's PTQ (with its accuracy guard) on the same base: what QAT has to match."""
    summary = leanvision.quantize(base, root, out, method="ptq")
    metrics = summary["metrics"]
    fp32 = leanvision.load(base).card["metrics"]["test"]["top1"]
    int8 = metrics["int8"]["test"]["top1"]
    return {"fp32_test_top1": fp32, "int8_test_top1": int8, "drop_points": 100 * (fp32 - int8),
            "fp32_nodes": summary.get("quantization", {}).get("fp32_nodes", [])}


def measure(artifacts: list[Path], runtimes: list[str], threads: int) -> dict[str, Any]:
    """leanvision's own `bench` (batch-1 latency percentiles, batch-32 throughput) per artifact
    and runtime, exporting ONNX first where the artifact has none; with the CPU share others
    used meanwhile, since a timing is only as good as the machine is quiet."""
    for folder in artifacts:
        if "onnx-fp32" in runtimes and not (folder / "model.onnx").is_file():
            leanvision.export(folder)
    with CpuShare() as share, tempfile.TemporaryDirectory() as tmp:
        report = leanvision.bench(artifacts, runtimes=runtimes, batch=32, threads=threads,
                                  warmup=20, iterations=200, out=Path(tmp))
    speed: dict[str, Any] = {"cpu_share_of_others": round(share.others, 3), "threads": threads}
    for row in report["results"]:
        speed.setdefault(Path(row["artifact"]).name, {})[row["runtime"]] = {
            "b1_p50_ms": row["latency_ms"]["p50"], "b1_p90_ms": row["latency_ms"]["p90"],
            "b32_img_s": row["throughput"]["images_per_s"]}
    return speed


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="A trained resnet20 artifact (default: train one)")
    p.add_argument("--base-epochs", type=int, default=30)
    p.add_argument("--prune-steps", type=int, default=3)
    p.add_argument("--prune-epochs", type=int, default=5, help="fine-tuning epochs per step")
    p.add_argument("--round-to", type=int, default=8,
                   help="keep pruned channel counts multiples of this (1: any width)")
    p.add_argument("--recover-epochs", type=int, default=10,
                   help="'recover' stage: epochs of distilling the pruned model from the base")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--distill-epochs", type=int, default=15)
    p.add_argument("--distill-per-class", type=int, default=1000,
                   help="training images per class for the distillation runs (0: all 5,000); "
                   "the teacher is the base, trained on all of them")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads for timing runs")
    p.add_argument("--only", default="prune,recover,qat,distill",
                   help="stages to run; 'speed' only re-times a finished run's artifacts")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--name", default="compress", help="results file name")
    return p.parse_args()


if __name__ == "__main__":
    main()
