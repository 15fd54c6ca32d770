"""`leanvision optimize clothing/ --time-budget 30` (issue 22's targets), defaults otherwise:

- the whole command (the base's training included) ends within the budget;
- the chosen model is within 1 point of the base on validation;
- at batch 1 it is >= 3x faster than the base in PyTorch FP32 eager and >= 1.5x faster than the
  base's own best INT8 model (the search's INT8 trials of the base as it is: same network, same
  resolution), timed side by side in a fresh process after the search: interleaved rounds,
  each round times every model once (rotated order), median of the round medians and range;
- test top-1 of the base and the chosen model, read once at the end from their cards (the search
  decides on validation only).

Run: python bench/optimize_photos.py [--budget 30] [--data FOLDER]  (or python bench/optimize.py
--photos). Writes bench/results/optimize_photos.json (optimize_photos-<FOLDER name>.json for
another folder: the same command on photos the defaults were not chosen on)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common import (
    CpuShare,
    begin,
    clothing,
    console,
    print_table,
    result_record,
    write_result,
)

WORK = Path("/tmp/leanvision-bench/optimize-photos")


def main() -> None:
    args = parse_args()
    if args.time_only:
        print(json.dumps(retime(Path(args.time_only), args.rounds, args.iterations,
                                args.threads)))
        return
    run = begin()
    data = Path(args.data) if args.data else clothing()
    out = WORK / datetime.now().strftime("%Y%m%d-%H%M%S")
    command = [sys.executable, "-m", "leanvision", "optimize", str(data), "--time-budget",
               str(args.budget), "--out", str(out), "--json"]
    console.print("running: " + " ".join(command[2:]))
    with CpuShare() as share:
        t0 = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
    if done.returncode:
        console.print(f"[red]optimize exited with {done.returncode}[/red]")
        sys.exit(done.returncode)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # A fresh process, so that nothing the search loaded or warmed is reused by the timing.
    timed = json.loads(subprocess.run(
        [sys.executable, __file__, "--time-only", str(out), "--rounds", str(args.rounds),
         "--iterations", str(args.iterations), "--threads", str(args.threads)],
        check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1])
    figures = summarise(summary, timed, wall, args.budget, share.others)
    record = result_record("optimize_photos", figures,
                           {"budget_minutes": args.budget, "data": str(data), "out": str(out),
                            "rounds": args.rounds, "iterations": args.iterations,
                            "threads": args.threads}, run)
    write_result(f"optimize_photos-{data.name}" if args.data else "optimize_photos", record)
    print_summary(figures, data.name)


def retime(out: Path, rounds: int, iterations: int, threads: int) -> dict[str, Any]:
    """Batch-1 latency of the base (torch eager), each INT8 model of the base as it is, and the
    chosen model, interleaved."""
    from leanvision.artifact import read_card
    from leanvision.search.retime import RetimeSettings, time_interleaved

    search = json.loads((out / "search.json").read_text())
    pareto = json.loads((out / "pareto.json").read_text())
    models = {"base (torch fp32 eager)": (out / "base", "torch")}
    for t in search["trials"]:
        p = t.get("pipeline") or {}
        if (t["state"] == "COMPLETE" and p.get("quant") != "none" and p.get("source") == "base"
                and not p.get("prune_ratio") and not p.get("resolution")):
            models[f"base {p['quant']} ({p['runtime']})"] = (out / t["artifact"], p["runtime"])
    chosen = pareto.get("chosen")
    if chosen:
        models["chosen: " + chosen["label"]] = (out / "chosen", chosen["runtime"])
    names = list(models)
    rounds_ms = time_interleaved([models[n] for n in names], threads,
                                 RetimeSettings(rounds=rounds, iterations=iterations, warmup=5))
    per_round = dict(zip(names, rounds_ms, strict=True))
    sizes = {n: list(read_card(models[n][0])[1]["input"]["size"]) for n in names}
    return {"models": {n: {"artifact": str(models[n][0]), "runtime": models[n][1],
                           "input_size": sizes[n],
                           "latency_ms_rounds": [round(v, 3) for v in per_round[n]],
                           "latency_ms_median": round(statistics.median(per_round[n]), 3),
                           "latency_ms_range": [round(min(per_round[n]), 3),
                                                round(max(per_round[n]), 3)]}
                       for n in names},
            "chosen": "chosen: " + chosen["label"] if chosen else None}


def summarise(summary: dict[str, Any], timed: dict[str, Any], wall: float, budget: float,
              others: float) -> dict[str, Any]:
    models = timed["models"]
    base_key = "base (torch fp32 eager)"
    int8 = {k: v for k, v in models.items() if k.startswith("base ") and k != base_key}
    best_int8 = min(int8, key=lambda k: int8[k]["latency_ms_median"]) if int8 else None
    chosen_key = timed["chosen"]
    base, candidate = summary["base"], summary.get("candidate")
    figures: dict[str, Any] = {
        "wall_s": round(wall, 1), "budget_s": budget * 60, "within_budget": wall <= budget * 60,
        "others_cpu_share": round(others, 3), "statement": summary["statement"],
        "met": summary["met"], "trials": summary["trials"], "left_out": summary["left_out"],
        "base": {"val_top1": base["val_top1"], "test_top1": base["test_top1"]},
        "best_base_int8": best_int8, "timing": models}
    if chosen_key:
        c = models[chosen_key]["latency_ms_median"]
        figures["chosen"] = {"label": candidate["label"], "runtime": candidate["runtime"],
                             "val_top1": candidate["val_top1"],
                             "test_top1": candidate.get("test_top1"),
                             "val_drop_points": round(100 * (base["val_top1"]
                                                             - candidate["val_top1"]), 2)}
        figures["speedup_vs_base_torch"] = round(models[base_key]["latency_ms_median"] / c, 2)
        if best_int8:
            figures["speedup_vs_best_base_int8"] = round(
                int8[best_int8]["latency_ms_median"] / c, 2)
    return figures


def _top1(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_summary(f: dict[str, Any], name: str) -> None:
    rows = [[name, m["runtime"], "x".join(map(str, m["input_size"])), m["latency_ms_median"],
             f"{m['latency_ms_range'][0]:.2f}-{m['latency_ms_range'][1]:.2f}"]
            for name, m in f["timing"].items()]
    print_table("batch-1 latency, fresh process, interleaved rounds",
                ["model", "runtime", "input", "median ms", "range ms"], rows)
    chosen = f.get("chosen") or {}
    print_table(f"optimize {name} --time-budget", ["figure", "value"], [
        ["whole command s (budget)", f"{f['wall_s']} ({f['budget_s']:.0f})"],
        ["base val / test top-1", f"{_top1(f['base']['val_top1'])} / "
                                  f"{_top1(f['base']['test_top1'])}"],
        ["chosen", chosen.get("label", "none")],
        ["chosen val / test top-1", f"{chosen.get('val_top1')} / {chosen.get('test_top1')}"],
        ["val drop (points)", chosen.get("val_drop_points")],
        ["speed-up vs base torch", f.get("speedup_vs_base_torch")],
        ["speed-up vs best base INT8", f.get("speedup_vs_best_base_int8")],
        ["left out", f["left_out"]["line"] or "-"]])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=30.0, help="--time-budget minutes")
    p.add_argument("--data", default=None, help="another photo folder (default: clothing); "
                   "results go to optimize_photos-<folder name>.json")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time-only", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    main()
