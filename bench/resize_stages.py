"""How `leanvision.resize` should re-fit a transfer-trained parent at a smaller input side
(issue 22): how deep the trained top is, on the clothing photos.

A base is trained once with defaults (EfficientNet-Lite0, LP-FT at 224 px), or given with --base.
It is then resized to --size (default 160) with the top `--stages` deep (default 2 = the transfer
recipe's own depth, and 3), for --seeds seeds, interleaved (seed 0: 2, 3; seed 1: 2, 3; ...).
The choice is made on validation: per depth, the median of the val top-1 over seeds, its range,
and the paired difference per seed (same seed, same val images). Test top-1 is read once per
run from the card at the end and only reported.

    python bench/resize_stages.py [--base DIR] [--size 160] [--stages 2 3] [--seeds 3]

Writes bench/results/resize_stages.json."""

from __future__ import annotations

import argparse
import json
import statistics
import time
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

WORK = Path("/tmp/leanvision-bench/resize-stages")


def main() -> None:
    args = parse_args()
    run = begin()
    import leanvision
    from leanvision.artifact import read_card

    data = clothing()
    WORK.mkdir(parents=True, exist_ok=True)
    base = Path(args.base) if args.base else WORK / "base"
    if not (base / "model.json").is_file():
        console.print(f"training the base with defaults into {base} ...")
        leanvision.train(str(data), base, progress=False)
    _, base_card = read_card(base)
    runs: list[dict[str, Any]] = []
    with CpuShare() as share:
        for seed in range(args.seeds):
            for stages in args.stages:
                out = WORK / f"r{args.size}-top{stages}-s{seed}"
                t0 = time.perf_counter()
                leanvision.resize(base, data, out, size=args.size, top_stages=stages,
                                  seed=seed, progress=False)
                _, card = read_card(out)
                runs.append({"stages": stages, "seed": seed,
                             "seconds": round(time.perf_counter() - t0, 1),
                             "start_val_top1": card["training"]["transfer"]["start_val_top1"],
                             "val_top1": card["metrics"]["val"]["top1"],
                             "test_top1": card["metrics"].get("test", {}).get("top1")})
                console.print(json.dumps(runs[-1]))
    figures = summarize(runs, args.stages)
    figures.update({"base": str(base), "base_val_top1": base_card["metrics"]["val"]["top1"],
                    "base_test_top1": base_card["metrics"].get("test", {}).get("top1"),
                    "size": args.size, "runs": runs, "others_cpu_share": share.others})
    print_table(f"resize to {args.size} px: top depth (base val "
                f"{figures['base_val_top1']:.2%})",
                ["stages", "val median", "val range", "paired diff vs first (points)",
                 "test (report)", "seconds"],
                [[s["stages"], f"{s['val_median']:.2%}", s["val_range"], s["paired_diff"],
                  s["test"], s["seconds_median"]] for s in figures["by_stages"]], run)
    record = result_record("resize_stages", figures, vars(args), run)
    console.print(f"wrote {write_result('resize_stages', record)}")


def summarize(runs: list[dict[str, Any]], depths: list[int]) -> dict[str, Any]:
    first = {r["seed"]: r["val_top1"] for r in runs if r["stages"] == depths[0]}
    rows = []
    for stages in depths:
        mine = [r for r in runs if r["stages"] == stages]
        vals = [r["val_top1"] for r in mine]
        rows.append({"stages": stages, "val_median": statistics.median(vals),
                     "val_range": f"{min(vals):.2%}-{max(vals):.2%}",
                     "paired_diff": " ".join(f"{100 * (r['val_top1'] - first[r['seed']]):+.2f}"
                                             for r in mine),
                     "test": " ".join(f"{r['test_top1']:.2%}" for r in mine
                                      if r["test_top1"] is not None),
                     "seconds_median": statistics.median(r["seconds"] for r in mine)})
    return {"by_stages": rows}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="a trained artifact (default: train one with defaults)")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    p.add_argument("--seeds", type=int, default=3)
    return p.parse_args()


if __name__ == "__main__":
    main()
