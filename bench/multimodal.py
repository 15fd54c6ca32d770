"""Images with text (issue 10) on a SYNTHETIC image + caption set: CIFAR-10 images, each paired
with a short seeded caption that names the true class 60% of the time, a wrong class 20% of the
time, and says nothing useful otherwise ("a photo", "nice shot").

Trained with the same model, epochs, batch and seed: the image alone, the caption alone, and one
fused model per fusion strategy (early, late, attention) with the hashed n-gram encoder, plus an
early fusion with the pretrained all-MiniLM-L6-v2 (frozen; --no-minilm skips it). Each is scored
on held-out test images with their captions, and without them (the fallback). Writes
bench/results/multimodal.json.

The captions are generated, not written by people: the figures show whether fusion combines two
noisy, partly misleading signals better than either alone, not how captions in the wild help."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import CACHE, CLASSES, begin, cifar10, console, print_table, result_record, write_result
from rich.console import Console

import leanvision
from leanvision.io import write_text

QUIET = Console(quiet=True)
TRUE_TEMPLATES = ("a photo of a {c}", "my {c}", "{c} in the picture", "look at this {c}",
                  "a small {c} outdoors", "another {c} shot", "the {c}")
FILLERS = ("a photo", "nice shot", "taken last summer", "image from the archive",
           "picture number {n}", "what is this", "blurry but ok", "low resolution scan")
NOISE = ("old", "nice", "blurry", "random", "tiny", "great", "dark", "bright")


def caption(rng: np.random.Generator, label: int, p_true: float, p_wrong: float) -> tuple[
        str, str]:
    """(caption, kind): kind is "true", "wrong" or "none"."""
    u = rng.random()
    if u < p_true + p_wrong:
        kind = "true" if u < p_true else "wrong"
        cls = label if kind == "true" else int(rng.choice([i for i in range(10) if i != label]))
        text = TRUE_TEMPLATES[rng.integers(len(TRUE_TEMPLATES))].format(c=CLASSES[cls])
    else:
        kind = "none"
        text = FILLERS[rng.integers(len(FILLERS))].format(n=int(rng.integers(1000)))
    if rng.random() < 0.5:  # a distracting word, so the text is not a clean template
        text = f"{NOISE[rng.integers(len(NOISE))]} {text}"
    return text, kind


def build_csv(root: Path, args: argparse.Namespace) -> tuple[Path, dict[str, dict[str, int]]]:
    rng = np.random.default_rng(args.seed)
    rows = ["path,caption,label,split"]
    kinds: dict[str, dict[str, int]] = {}
    plan = (("train", "train", 0, args.train_per_class),
            ("val", "train", args.train_per_class, args.val_per_class),
            ("test", "test", 0, args.test_per_class))
    for split, folder, start, count in plan:
        counts = {"true": 0, "wrong": 0, "none": 0}
        for label, cls in enumerate(CLASSES):
            files = sorted((root / folder / cls).iterdir())[start:start + count]
            for f in files:
                text, kind = caption(rng, label, args.p_true, args.p_wrong)
                counts[kind] += 1
                rows.append(f"{f},{text},{cls},{split}")
        kinds[split] = counts
    target = CACHE / "multimodal" / (f"cifar10-captions-{args.train_per_class}-"
                                     f"{args.val_per_class}-{args.test_per_class}-s{args.seed}.csv")
    write_text(target, "\n".join(rows) + "\n")
    return target, kinds


def main() -> None:
    args = parse_args()
    run = begin()
    torch.set_num_threads(args.threads)
    csv, kinds = build_csv(cifar10(), args)
    console.print(f"data: {csv} (captions per split: {kinds})")
    work = Path(args.work)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common = dict(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                  seed=args.seed, progress=False, max_tokens=16)
    t0 = time.perf_counter()
    compared = leanvision.compare_fusions(csv, "caption", fusions=args.fusions,
                                          out=work / stamp, console=QUIET, **common)
    runs = compared["runs"]
    if args.minilm:
        started = time.perf_counter()
        summary = leanvision.train(csv, work / stamp / "early-minilm", text_columns="caption",
                                   fusion="early", text_encoder="minilm", console=QUIET,
                                   **common)
        from leanvision.multimodal.compare import _row

        runs.append(_row("early-minilm", summary, time.perf_counter() - started))
    total = time.perf_counter() - t0
    image_top1 = next(r["test_top1"] for r in runs if r["name"] == "image-only")
    text_top1 = next(r["test_top1"] for r in runs if r["name"] == "text-only")
    fused = [r for r in runs if r["name"] not in ("image-only", "text-only")]
    best = max(fused, key=lambda r: r["test_top1"])
    figures = {
        "runs": runs, "captions": kinds, "seconds": round(total, 1),
        "image_only_test_top1": image_top1, "text_only_test_top1": text_top1,
        "best_fusion": best["name"], "best_fusion_test_top1": best["test_top1"],
        "fusion_beats_both": best["test_top1"] > max(image_top1, text_top1),
        "gain_over_image_points": round(100 * (best["test_top1"] - image_top1), 2),
    }
    print_table(f"CIFAR-10 + synthetic captions ({args.p_true:.0%} true, {args.p_wrong:.0%} "
                f"wrong), {args.model}, {args.epochs} epochs, same budget",
                ["model", "test top-1", "test top-1 without text", "params", "seconds"],
                [[r["name"], r["test_top1"], r["test_top1_without_text"], r["params"],
                  r["seconds"]] for r in runs], run)
    console.print(f"best fusion {best['name']}: {100 * best['test_top1']:.2f}% vs image-only "
                  f"{100 * image_top1:.2f}% and text-only {100 * text_top1:.2f}% "
                  f"(beats both: {figures['fusion_beats_both']})")
    write_result(args.name, result_record("multimodal", figures, vars(args), run))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=500)
    p.add_argument("--p-true", type=float, default=0.6, help="captions naming the true class")
    p.add_argument("--p-wrong", type=float, default=0.2, help="captions naming a wrong class")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--fusions", default="early,late,attention")
    p.add_argument("--minilm", action=argparse.BooleanOptionalAction, default=True,
                   help="also an early fusion with the frozen pretrained all-MiniLM-L6-v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=str(CACHE / "multimodal-runs"))
    p.add_argument("--name", default="multimodal", help="results file name")
    return p.parse_args()


if __name__ == "__main__":
    main()
