"""`leanvision optimize` on CIFAR-10 (issue 8's targets), max drop 1 point, from a base trained
here with leanvision's default recipe (airnet_m, the fast recipe; test-time augmentation off so
that every accuracy and latency is one forward pass) unless --base names one:

- chosen vs the base in FP32 PyTorch: >= 8x smaller (model file) and >= 4x faster (batch-1 p50
  latency), at <= 1 point of top-1 lost;
- chosen vs the best single technique alone at the same accuracy budget: INT8 PTQ only, and
  pruning only (the fastest of 30/50/70% of the FLOPs removed, fine-tuned, FP32 PyTorch or ONNX
  Runtime, within 1 point): >= 1.5x faster;
- the search time.

The single techniques are searched the same way (optimize over a one-technique space) and share
the main search's stage cache, so a model the search already built is not built again. Every
latency in the comparison is re-measured at the end under the protocol (bench/protocol.py):
every model once per round, --repeats rounds in rotated order, 200 calls at batch 1 per round;
the speed-ups are paired round by round (median, min-max, every repeat), with the CPU share
other processes used meanwhile. Decisions use the
validation split (10% of the training images, or --data's val/ folder); test top-1 is reported
beside.
Writes bench/results/optimize.json. `--photos`: the clothing photos under --time-budget
(bench/optimize_photos.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import CpuShare, Run, begin, cifar10, console, print_table, result_record, write_result
from timing import TimingSettings, speedup, time_artifacts

import leanvision
from leanvision.search import Budget, SearchSpace, optimize

WORK = Path("/tmp/leanvision-bench/optimize")
MAX_DROP = 1.0


def main() -> None:
    if "--photos" in sys.argv:  # the photo benchmark of issue 22: see optimize_photos.py
        import optimize_photos

        sys.argv.remove("--photos")
        optimize_photos.main()
        return
    args = parse_args()
    run = begin()
    root = Path(args.data) if args.data else cifar10()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    base = Path(args.base) if args.base else train_base(root, work / "base-train", args)
    budget = Budget(finetune_epochs=args.finetune_epochs, kd_epochs=args.kd_epochs,
                    student_epochs=args.student_epochs, qat_epochs=args.qat_epochs,
                    calibration_images=args.calibration_images,
                    bench_iterations=args.bench_iterations,
                    train_settings={"progress": False})
    common = dict(base=base, max_drop=MAX_DROP, budget=budget, threads=args.threads)

    t0 = time.perf_counter()
    space = None  # the default space for this base, unless narrowed below
    if args.prune_ratios or args.students is not None:
        from leanvision.artifact import read_card
        from leanvision.search.space import PRUNE_RATIOS, default_students

        card = read_card(base)[1]
        students = (tuple(n for n in args.students.split(",") if n)
                    if args.students is not None
                    else default_students(card["arch"], min(card["input"]["size"])))
        ratios = (tuple(float(r) for r in args.prune_ratios.split(","))
                  if args.prune_ratios else PRUNE_RATIOS)
        space = SearchSpace(prune_ratios=ratios, students=students)
    search = optimize(root, out=work / "search", trials=args.trials, timeout_s=args.timeout_s,
                      space=space, **common)
    search_s = time.perf_counter() - t0
    singles = {
        "ptq_only": single(root, work, "ptq-only", SearchSpace(
            prune_ratios=(0.0,), recoveries=("none",), quantizations=("ptq",),
            runtimes=("onnx-int8",)), 1, common),
        "prune_only": single(root, work, "prune-only", SearchSpace(
            prune_ratios=(0.3, 0.5, 0.7), recoveries=("none",), quantizations=("none",),
            runtimes=("torch", "onnx-fp32")), 6, common),
    }
    if not search["candidate"]:
        console.print(f"[red]no candidate: {search['statement']}[/red]")
    timed = retime(search, singles, base, args)
    figures = summarise(search, singles, timed, search_s)
    print_summary(figures, run)
    write_result(args.name, result_record("optimize", figures, vars(args), run))


def train_base(root: Path, out: Path, args) -> Path:
    if (out / "model.json").is_file():
        console.print(f"reusing the base at {out}")
        return out
    # The default recipe, as a user running `leanvision optimize DATA` without --base gets it;
    # one view at inference, so the base's accuracy and latency describe the same computation.
    leanvision.train(root, out, model=args.base_model, epochs=args.base_epochs, tta="none",
                     progress=False)
    return out


def single(root: Path, work: Path, name: str, space: SearchSpace, trials: int,
           common: dict[str, Any]) -> dict[str, Any]:
    """One technique alone under the same budget, sharing the main search's stage cache."""
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "stages").exists():
        (out / "stages").symlink_to((work / "search" / "stages").resolve())
    return optimize(root, out=out, trials=trials, space=space, **common)


def retime(search: dict[str, Any], singles: dict[str, Any], base: Path,
           args) -> dict[str, Any]:
    """Batch-1 latency of the base (PyTorch FP32) and each chosen model under its runtime, in
    one pass with the same settings."""
    wanted = {"base": (base, "torch")}
    for name, summary in [("chosen", search), *singles.items()]:
        if summary["candidate"]:
            wanted[name] = (Path(summary["candidate"]["artifact"]),
                            summary["candidate"]["runtime"])
    with CpuShare() as share:
        paired = time_artifacts(wanted, args.threads, TimingSettings(repeats=args.repeats))
    timed: dict[str, Any] = {"paired": paired}
    for name, (folder, runtime) in wanted.items():
        timed[name] = {"artifact": str(folder), "runtime": runtime,
                       "b1_p50_ms": paired[name]["b1_ms"]["median"],
                       "b32_img_s": paired[name]["b32_img_s"]["median"],
                       "size_bytes": model_file(folder, runtime).stat().st_size}
    timed["cpu_share_of_others"] = round(share.others, 3)
    timed["threads"] = args.threads
    return timed


def model_file(folder: Path, runtime: str) -> Path:
    from leanvision.runtime.predictor import Predictor

    return Predictor.from_artifact(folder, runtime=runtime, threads=1).model_file


def summarise(search: dict[str, Any], singles: dict[str, Any], timed: dict[str, Any],
              search_s: float) -> dict[str, Any]:
    base = search["base"]
    figures: dict[str, Any] = {
        "base": {**base, **timed["base"]}, "search_seconds": round(search_s, 1),
        "trials": search["trials"], "met": search["met"], "statement": search["statement"],
        "pareto": search["pareto"], "timing": {k: timed[k] for k in
                                               ("cpu_share_of_others", "threads", "paired")}}
    for name, summary in [("chosen", search), *singles.items()]:
        c = summary["candidate"]
        if not c or name not in timed:
            figures[name] = None
            continue
        figures[name] = {"label": c["label"], "runtime": c["runtime"], "met": summary["met"],
                         "val_top1": c["val_top1"], "test_top1": c["test_top1"],
                         "val_drop_points": c["drop_points"],
                         "test_drop_points": _drop(base["test_top1"], c["test_top1"]),
                         **timed[name]}
    chosen = figures["chosen"]
    if chosen:
        chosen["vs_base"] = {
            "size_ratio": round(timed["base"]["size_bytes"] / chosen["size_bytes"], 2),
            "speedup_b1": speedup(timed["paired"], "chosen", "base")}
        chosen["vs_single"] = {name: speedup(timed["paired"], "chosen", name)
                               for name in singles if figures[name] and figures[name]["met"]}
        chosen["targets"] = {  # judged on the medians; the ranges are beside them
            "8x_smaller": chosen["vs_base"]["size_ratio"] >= 8,
            "4x_faster": chosen["vs_base"]["speedup_b1"]["median"] >= 4,
            "1.5x_faster_than_single": bool(chosen["vs_single"]) and min(
                v["median"] for v in chosen["vs_single"].values()) >= 1.5,
            "within_1_point_val": chosen["val_drop_points"] <= MAX_DROP}
    return figures


def _drop(base: float | None, other: float | None) -> float | None:
    return None if base is None or other is None else round(100 * (base - other), 3)


def print_summary(figures: dict[str, Any], run: Run) -> None:
    rows = []
    base_ms = figures["base"]["b1_p50_ms"]
    for name in ("base", "chosen", "ptq_only", "prune_only"):
        f = figures.get(name)
        if not f:
            rows.append([name, None, None, None, None, None, None])
            continue
        rows.append([f"{name}: {f.get('label', figures['base']['arch'] + ' fp32 @ torch')}",
                     f.get("val_top1"), f.get("test_top1"), f["b1_p50_ms"],
                     base_ms / f["b1_p50_ms"], f["size_bytes"] / 1e6,
                     figures["base"]["size_bytes"] / f["size_bytes"]])
    print_table(f"optimize on CIFAR-10, max drop {MAX_DROP} point; search "
                f"{figures['search_seconds']:.0f} s", ["model", "val top-1", "test top-1",
                                                      "b1 p50 ms", "x faster", "MB",
                                                      "x smaller"], rows, run=run)
    console.print(figures["statement"])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="A trained CIFAR-10 artifact, e.g. "
                   "/tmp/leanvision-bench/runs/airnet-base (default: train one here)")
    p.add_argument("--data", default=None,
                   help="the CIFAR-10 folder to search on (default: the shared copy, its val "
                   "split 10%% of train); give the folder the --base was trained on, so that "
                   "the search's validation images are ones the base never trained on")
    p.add_argument("--base-model", default=None,
                   help="architecture of the base trained here (default: the recipe's choice, "
                   "airnet_m on CIFAR-10)")
    p.add_argument("--base-epochs", type=int, default=None,
                   help="epochs of the base trained here (default: the recipe's)")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--prune-ratios", default=None,
                   help="narrow the main search's prune ratios, e.g. 0,0.7 (default: the "
                   "space's 0,0.3,0.5,0.7); the pruning-only baseline always tries 0.3/0.5/0.7")
    p.add_argument("--students", default=None,
                   help="the main search's students, comma-separated ('' for none; default: "
                   "the space's choice for the base)")
    p.add_argument("--timeout-s", type=float, default=None,
                   help="stop starting new trials of the main search after this long")
    p.add_argument("--finetune-epochs", type=int, default=5, help="after pruning")
    p.add_argument("--kd-epochs", type=int, default=5, help="distilling a pruned net")
    p.add_argument("--student-epochs", type=int, default=20,
                   help="distilling a registry student from the base")
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--calibration-images", type=int, default=300)
    p.add_argument("--bench-iterations", type=int, default=100,
                   help="batch-1 calls per candidate during the search")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                   help="threads for training and timing")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved rounds of the final timing (the protocol's minimum is 5)")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--name", default="optimize", help="results file name")
    return p.parse_args()


if __name__ == "__main__":
    main()
