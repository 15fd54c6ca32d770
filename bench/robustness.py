"""Distribution shift on CIFAR-10 (issue 9's "Shift" target): a model trained on clean CIFAR-10
is scored on a corrupted, seeded copy of the test set (CIFAR-10-C families, one severity), then
adapted without labels on corrupted copies of training images (AdaBN, DANN) and scored again.

Per family: clean, corrupted and adapted test top-1, and the share of the accuracy lost to the
corruption that adaptation wins back, (adapted - corrupted) / (clean - corrupted). Target: >= 50%
on average over the families for AdaBN or DANN.

The base is --base (a trained artifact; default: train resnet20 like bench/compress.py). The
corrupted copies are PNG folders under --work (lossless: the JPEG family keeps exactly its own
artifacts), made at the base's input size. Writes bench/results/<name>.json (or --out)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import begin, cifar10, console, die, print_table, result_record, write_result
from PIL import Image

import leanvision
from leanvision.data import ImageChecks, decode_images, load_data
from leanvision.io import atomic_path, write_json
from leanvision.shift.corruptions import check_families, corrupt

WORK = Path("/tmp/leanvision-bench/robustness")
TARGET_RECOVERY = 0.5


def main() -> None:
    args = parse_args()
    run = begin([f"severity {args.severity}; test images capped at {args.max_test or 'all'}",
                 "one adaptation per family; the spread given is across the families"])
    torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else cifar10()
    work = Path(args.work)
    started = time.perf_counter()
    base = Path(args.base) if args.base else train_base(data, work / "base", args.base_epochs)
    art = leanvision.load(base)
    source = load_data(str(data))
    if source.test is None:
        die(f"{data} has no test/ split to corrupt")
    if list(source.classes) != art.classes:
        die(f"the base knows {art.classes}, the data {source.classes}; pass the base's data")
    test = _subset(source.test, args.max_test, args.seed)
    unlabelled = _subset(source.train, args.max_target, args.seed + 1)
    # Clean top-1 on the same (sub)set of test images the corrupted copies hold, decoded and
    # stored the same way, so the lost and recovered accuracy compare like with like.
    clean = score(base, write_corrupted(test, source.classes, art.input_size, None, args,
                                        work / "clean" / "test", labelled=True))
    families: dict[str, Any] = {}
    for family in check_families(args.families):
        console.print(f"[bold]{family}[/bold] severity {args.severity}")
        folder = work / f"{family}-s{args.severity}"
        test_dir = write_corrupted(test, source.classes, art.input_size, family, args,
                                   folder / "test", labelled=True)
        target_dir = write_corrupted(unlabelled, source.classes, art.input_size, family, args,
                                     folder / "target", labelled=False)
        row: dict[str, Any] = {"corrupted_top1": score(base, test_dir)}
        for method in args.methods.split(","):
            out = folder / method
            t0 = time.perf_counter()
            if not (out / "model.json").is_file():
                settings = ({"epochs": args.dann_epochs, "data": args.dann_data}
                            if method == "dann" else {})
                leanvision.adapt(base, target_dir, out, method=method, seed=args.seed,
                                 **{k: v for k, v in settings.items() if v is not None})
            row[f"{method}_top1"] = score(out, test_dir)
            row[f"{method}_seconds"] = round(time.perf_counter() - t0, 1)
            lost = clean - row["corrupted_top1"]
            row[f"{method}_recovered"] = ((row[f"{method}_top1"] - row["corrupted_top1"]) / lost
                                          if lost > 0 else None)
        families[family] = row
    methods = args.methods.split(",")
    summary = {m: _mean([r[f"{m}_recovered"] for r in families.values()]) for m in methods}
    best = max((v for v in summary.values() if v is not None), default=None)
    figures = {"base": {"artifact": str(base), "model": art.card["arch"], "clean_top1": clean},
               "severity": args.severity, "test_images": len(test),
               "target_images": len(unlabelled), "families": families,
               "mean_recovered": summary,
               "recovered_range": {m: _range([r[f"{m}_recovered"] for r in families.values()])
                                   for m in methods},
               "target_recovered": TARGET_RECOVERY,
               "target_met": best is not None and best >= TARGET_RECOVERY,
               "seconds": round(time.perf_counter() - started, 1)}
    rows = [[f, 100 * clean, 100 * r["corrupted_top1"],
             *[v for m in methods for v in (100 * r[f"{m}_top1"], _pct(r[f"{m}_recovered"]))]]
            for f, r in families.items()]
    rows.append(["mean", None, None, *[v for m in methods for v in (None, _pct(summary[m]))]])
    print_table(f"test top-1 % under shift (severity {args.severity})",
                ["family", "clean", "corrupted",
                 *[c for m in methods for c in (m, f"{m} recovered %")]], rows, run)
    record = result_record("robustness", figures, vars(args), run)
    if args.out:
        console.print(f"wrote {write_json(args.out, record)}")
    else:
        write_result(args.name, record)


def _range(values: list[float | None]) -> list[float] | None:
    known = [v for v in values if v is not None]
    return [round(min(known), 4), round(max(known), 4)] if known else None


def train_base(data: Path, out: Path, epochs: int) -> Path:
    if (out / "model.json").is_file():
        console.print(f"reusing the base at {out}")
        return out
    leanvision.train(str(data), out, model="resnet20", epochs=epochs, progress=False)
    return out


def write_corrupted(records, classes: list[str], size: tuple[int, int], family: str | None,
                    args, folder: Path, labelled: bool) -> Path:
    """PNGs of the corrupted images (family None: as they are): class folders for the labelled
    test copy, one flat folder for the unlabelled target. Reused when a finished copy is there
    (marker file)."""
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    decoded = decode_images(records, size, ImageChecks(), skip_bad=True)
    images = (decoded.images if family is None
              else corrupt(decoded.images, family, args.severity, seed=args.seed))
    for i, (img, label) in enumerate(zip(images, decoded.labels, strict=True)):
        sub = folder / classes[int(label)] if labelled else folder
        sub.mkdir(parents=True, exist_ok=True)
        with atomic_path(sub / f"{i:05d}.png") as tmp:
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    marker.write_text(f"{family} {args.severity} {args.seed}\n")
    return folder


def score(artifact: Path, folder: Path) -> float:
    return leanvision.evaluate(artifact, folder, split="all")["metrics"]["top1"]


def _subset(records, count: int | None, seed: int):
    if not count or count >= len(records):
        return records
    pick = np.sort(np.random.default_rng(seed).choice(len(records), count, replace=False))
    return records.subset(pick)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", help="A trained artifact (default: train resnet20 on --data)")
    p.add_argument("--base-epochs", type=int, default=30)
    p.add_argument("--data", help="Folder with train/ and test/ (default: CIFAR-10)")
    p.add_argument("--families", default="all", help="comma list of corruption families")
    p.add_argument("--severity", type=int, default=5, choices=range(1, 6))
    p.add_argument("--methods", default="adabn,dann")
    p.add_argument("--max-test", type=int, default=None, help="test images (default: all)")
    p.add_argument("--max-target", type=int, default=10000,
                   help="corrupted unlabelled training images to adapt on")
    p.add_argument("--dann-epochs", type=int, default=5)
    p.add_argument("--dann-data", default=None,
                   help="labelled source data for DANN (default: the base's training data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--name", default="robustness", help="results file name")
    p.add_argument("--out", default=None, help="write the JSON here instead of bench/results/")
    return p.parse_args()


if __name__ == "__main__":
    main()
