"""The compression stages on CIFAR-10, side by side in one run (issue 4's targets):

- prune:   resnet20 pruned to <= 50% of its FLOPs (Torch-Pruning, iterative, fine-tuned) loses
           <= 1 point of test top-1, and runs faster in PyTorch and ONNX Runtime;
- recover: the pruned network distilled from its unpruned parent (prune, then distill);
- distill: resnet8 trained with the resnet20 teacher (KD and DKD) beats resnet8 trained alone,
           same epochs and settings, by >= 1 point (on 1,000 training images per class by
           default, to fit the 2-core CPU: --distill-per-class 0 uses all 5,000);
- qat:     INT8 (ONNX Runtime QDQ) test top-1 within 0.5 point of FP32, beside plain
           post-training quantisation of the same base for contrast.

Speeds follow the protocol (bench/protocol.py): the models compared are timed in --repeats
interleaved rounds (median, min-max, every repeat; speed-ups paired round by round). One run
writes one file: a run of some stages (--only) writes compress-<stages>.json unless --name says
otherwise, and `--only speed` writes <name>-retimed.json with its own revision instead of
editing the run it re-times.

The base resnet20 is trained first (standard recipe, 10% of the training images held out for
validation; the test split never steers anything) unless --base names one. Writes
bench/results/compress.json and prints one table per stage."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    RESULTS,
    CpuShare,
    Run,
    begin,
    cifar10,
    console,
    print_table,
    result_record,
    subset,
    write_result,
)
from timing import TimingSettings, speedup, time_artifacts

import leanvision
from leanvision.paired import compare

WORK = Path("/tmp/leanvision-bench/compress")


def main() -> None:
    args = parse_args()
    run = begin()
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
        return retime(base, work, args, run)
    if args.distill_per_class:
        run.caveat(f"distillation on {args.distill_per_class} training images per class")
    if "prune" in stages:
        figures["prune"] = bench_prune(root, base, work / "pruned", args, run)
    if "distill" in stages:
        figures["distill"] = bench_distill(root, base, work, args, run)
    if "recover" in stages:
        figures["recover"] = bench_recover(root, base, work, args, run)
    if "qat" in stages:
        figures["qat"] = bench_qat(root, base, work / "qat", args, run)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    name = args.name or ("compress" if set(stages) >= set(ALL_STAGES)
                         else "compress-" + "-".join(stages))
    write_result(name, result_record("compress", figures, vars(args), run))


ALL_STAGES = ("prune", "recover", "qat", "distill")


def retime(base: Path, work: Path, args, run: Run) -> None:
    """Only the timings, again, on the artifacts a full run left in --work: for a quiet machine
    after a run whose timings were disturbed (their cpu_share_of_others says so). Written to
    <name>-retimed.json with this run's own revision; the run it re-times is left as it was."""
    name = args.name or "compress"
    source = json.loads((RESULTS / f"{name}.json").read_text())
    figures: dict[str, Any] = {"retimes": {"file": f"{name}.json", "git": source.get("git"),
                                           "time_utc": source.get("time_utc")}}
    if "prune" in source["figures"]:
        figures["prune_speed"] = prune_speed(base, work / "pruned", args)
    if "qat" in source["figures"]:
        figures["qat_onnx_speed"] = measure([work / "qat"], ["onnx-fp32", "onnx-int8"], args)
    write_result(f"{name}-retimed", result_record("compress", figures, vars(args), run))


def prune_speed(base: Path, pruned: Path, args) -> dict[str, Any]:
    timed = measure([base, pruned], ["torch", "onnx-fp32"], args)
    speed = {"base": timed[base.name], "pruned": timed[pruned.name],
             "cpu_share_of_others": timed["cpu_share_of_others"], "threads": args.threads}
    speed["pruned_vs_base"] = {rt: {"b1": speedup(timed["paired"], f"{pruned.name}/{rt}",
                                                  f"{base.name}/{rt}"),
                                    "b32": speedup(timed["paired"], f"{pruned.name}/{rt}",
                                                   f"{base.name}/{rt}", "b32_img_s")}
                               for rt in ("torch", "onnx-fp32")}
    return speed


def train_base(root: Path, out: Path, epochs: int) -> Path:
    if (out / "model.json").is_file():
        console.print(f"reusing the base at {out}")
        return out
    leanvision.train(root, out, model="resnet20", epochs=epochs, progress=False)
    return out


def bench_prune(root: Path, base: Path, out: Path, args, run: Run) -> dict[str, Any]:
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
    speed = prune_speed(base, out, args)
    record = summary["pruning"]
    result = {
        "flops_fraction": record["flops_fraction"], "params_fraction": record["params_fraction"],
        "base_test_top1": parent.card["metrics"]["test"]["top1"],
        "pruned_test_top1": pruned.card["metrics"]["test"]["top1"],
        "steps": record["steps"], "speed": speed, "seconds": round(seconds, 1),
    }
    result["test_drop_points"] = 100 * (result["base_test_top1"] - result["pruned_test_top1"])
    rows = [[name, art.card["metrics"]["test"]["top1"], art.card["metrics"]["flops"] / 1e6,
             art.card["metrics"]["params"], speed[name]["torch"]["b1_ms"]["median"],
             speed[name]["torch"]["b32_img_s"]["median"],
             speed[name]["onnx-fp32"]["b1_ms"]["median"],
             speed[name]["onnx-fp32"]["b32_img_s"]["median"]]
            for name, art in (("base", parent), ("pruned", pruned))]
    gain = speed["pruned_vs_base"]
    rows.append(["pruned / base (min-max)", None, None, None] + [
        f"{g['median']:.2f}x ({g['min']:.2f}-{g['max']:.2f})"
        for rt in ("torch", "onnx-fp32") for g in (gain[rt]["b1"], gain[rt]["b32"])])
    print_table(f"prune: resnet20, 50% of the FLOPs removed (speed: median of {args.repeats} "
                "interleaved rounds)", ["model", "test top-1", "MFLOPs", "params",
                                        "torch b1 ms", "torch b32 img/s", "ORT b1 ms",
                                        "ORT b32 img/s"], rows, run=run)
    return result


def bench_recover(root: Path, base: Path, work: Path, args, run: Run) -> dict[str, Any]:
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
                  100 * (base_top1 - top1)]], run=run)
    return {"epochs": args.recover_epochs, "test_top1": top1,
            "drop_points": 100 * (base_top1 - top1),
            "flops_fraction": summary["metrics"]["flops"] / leanvision.load(base).card[
                "metrics"]["flops"], "seconds": round(time.perf_counter() - t0, 1)}


def bench_distill(root: Path, base: Path, work: Path, args, run: Run) -> dict[str, Any]:
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
    alone_correct = test_correct(work / "student-alone")
    for loss in ("kd", "dkd"):
        runs[loss]["gain_points"] = 100 * (runs[loss]["test_top1"] - runs["alone"]["test_top1"])
        # "beats alone" through the paired comparison on the same test images: a negative
        # drop is a gain, and its interval says whether the gain is more than noise
        paired = compare(alone_correct, test_correct(work / f"student-{loss}"))
        runs[loss]["vs_alone"] = {**paired.record(0.0, "point"), "text": paired.describe()}
    rows = [[name, run["test_top1"], run.get("gain_points"),
             (run.get("vs_alone") or {}).get("text"), run["seconds"]]
            for name, run in runs.items()]
    print_table(f"distill: {args.student} student, resnet20 teacher (test top-1 {teacher:.4f}), "
                f"{args.distill_epochs} epochs each", ["student", "test top-1",
                                                       "gain (points)", "against alone",
                                                       "seconds"], rows,
                run=run)
    return {"student": args.student, "teacher_test_top1": teacher, "runs": runs,
            "epochs": args.distill_epochs, "data": str(root),
            "train_images_per_class": args.distill_per_class or "all"}


def test_correct(folder: Path):
    """Per-image correctness of an artifact on its data's test split (the paired comparison's
    input: both students are scored on the same images in the same order)."""
    from leanvision.evaluate import evaluate_records, evaluation_records

    art = leanvision.load(folder)
    split, records, spec = evaluation_records(art, None, "test")
    predicted, labels = evaluate_records(art, records, split, spec,
                                         keep_predictions=True)["predictions"]
    return predicted == labels


def bench_qat(root: Path, base: Path, out: Path, args, run: Run) -> dict[str, Any]:
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
    speed = measure([out], ["onnx-fp32", "onnx-int8"], args)
    speed["int8_vs_fp32"] = {key: speedup(speed["paired"], f"{out.name}/onnx-int8",
                                          f"{out.name}/onnx-fp32", key)
                             for key in ("b1_ms", "b32_img_s")}
    qat["int8_drop_vs_base_points"] = 100 * (ptq["fp32_test_top1"] - qat["int8_test_top1"])
    rows = [["base fp32 (PyTorch)", ptq["fp32_test_top1"], None, None],
            ["PTQ only, ORT int8", ptq["int8_test_top1"], ptq["drop_points"], None],
            ["QAT fp32 weights", qat["fp32_test_top1"], None, None],
            ["QAT, ORT int8", qat["int8_test_top1"], qat["drop_points"], qat["seconds"]]]
    print_table("quantize: resnet20, INT8 QDQ (uint8 activations, int8 per-channel weights)",
                ["model", "test top-1", "drop vs its fp32 (points)", "seconds"], rows,
                run=run)
    return {"qat": qat, "ptq_only": ptq, "onnx_speed": speed}


def post_training_only(root: Path, base: Path, out: Path) -> dict[str, Any]:
    """leanvision's PTQ (with its accuracy guard) on the same base: what QAT has to match."""
    summary = leanvision.quantize(base, root, out, method="ptq")
    metrics = summary["metrics"]
    fp32 = leanvision.load(base).card["metrics"]["test"]["top1"]
    int8 = metrics["int8"]["test"]["top1"]
    return {"fp32_test_top1": fp32, "int8_test_top1": int8, "drop_points": 100 * (fp32 - int8),
            "fp32_nodes": summary.get("quantization", {}).get("fp32_nodes", [])}


def measure(artifacts: list[Path], runtimes: list[str], args) -> dict[str, Any]:
    """Batch-1 latency and batch-32 throughput per artifact and runtime, all in the same
    interleaved rounds (bench/timing.py), exporting ONNX first where the artifact has none;
    with the CPU share others used meanwhile, since a timing is only as good as the machine
    is quiet. {artifact name: {runtime: {"b1_ms", "b32_img_s"}}, "paired": every timing}."""
    for folder in artifacts:
        if "onnx-fp32" in runtimes and not (folder / "model.onnx").is_file():
            leanvision.export(folder)
    pairs = {f"{folder.name}/{rt}": (folder, rt) for folder in artifacts for rt in runtimes}
    with CpuShare() as share:
        timed = time_artifacts(pairs, args.threads, TimingSettings(repeats=args.repeats))
    speed: dict[str, Any] = {"cpu_share_of_others": round(share.others, 3),
                             "threads": args.threads, "paired": timed}
    for name, (folder, rt) in pairs.items():
        speed.setdefault(folder.name, {})[rt] = timed[name]
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
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved timing rounds (the protocol's minimum is 5)")
    p.add_argument("--only", default="prune,recover,qat,distill",
                   help="stages to run; 'speed' only re-times a finished run's artifacts")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--name", help="results file name (default: compress, or "
                   "compress-<stages> for a run of some stages)")
    return p.parse_args()


if __name__ == "__main__":
    main()
