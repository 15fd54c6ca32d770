"""How often each acceptance rule decides wrongly (issue 25's bench target).

On CIFAR-10, a small base and variants with a range of true drops (INT8 PTQ, unstructured
magnitude pruning at several amounts without fine-tuning, structured pruning with a short
recovery) each predict all 10,000 test images: the drop on those 10,000 is the "truth". Then
many seeded 1,000-image validation subsets are drawn from them, and on each the paired
comparison (leanvision.paired) decides "within the budget" under every rule (point / likely /
sure). Per rule and budget: how often it accepts a variant whose true drop exceeds the budget
(a wrong accept) and how often it rejects one truly within it (a wrong reject).

Statistics, not timing: no quiet window is needed. Writes bench/results/decisions.json and
prints one table per rule.

    python bench/decisions.py [--train-per-class 2000] [--epochs 15] [--subsets 2000]"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    begin,
    cifar10,
    console,
    print_table,
    result_record,
    subset,
    write_result,
)

import leanvision
from leanvision.data import load_data
from leanvision.paired import RULE_LEVELS, RULES, score_interval
from leanvision.search.evidence import predict_records

WORK = Path("/tmp/leanvision-bench/decisions")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    run = begin()
    root = cifar10()
    # The stages train and validate on a subset; only the bench scores the 10,000 test images.
    data = subset(root, args.train_per_class)
    work = Path(args.work)
    base = build(work / "base", lambda out: leanvision.train(
        data, out, model=args.model, epochs=args.epochs, progress=False))
    variants = make_variants(base, data, work, args)
    test = load_data(str(root)).test
    console.print(f"predicting the {len(test)} test images with the base and "
                  f"{len(variants)} variants")
    truth = {name: predict_records(folder, runtime, test, threads=args.threads)
             for name, (folder, runtime) in {"base": (base, "torch"), **variants}.items()}
    figures = decide(truth, args)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    config = {k: v for k, v in vars(args).items() if k != "work"}
    write_result("decisions", result_record("decisions", figures, config, run))
    print_tables(figures)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet8")
    p.add_argument("--train-per-class", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--subsets", type=int, default=2000, help="validation subsets per variant")
    p.add_argument("--subset-size", type=int, default=1000)
    p.add_argument("--budgets", default="0.5,1,2", help="comma-separated budgets in points")
    # 5% steps: magnitude pruning's drop grows fast past a fifth of the weights, and the
    # variants near the budget are the ones a rule can get wrong.
    p.add_argument("--sparsities", default="0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.5,0.6",
                   help="unstructured magnitude pruning amounts, no fine-tuning")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=25)
    p.add_argument("--work", default=str(WORK))
    return p.parse_args()


def build(out: Path, make) -> Path:
    """`make(out)` once; a finished artifact from an earlier run is reused."""
    if (out / "model.json").is_file():
        console.print(f"reusing {out}")
    else:
        console.print(f"building {out.name} ...")
        make(out)
    return out


def make_variants(base: Path, data: Path, work: Path,
                  args: argparse.Namespace) -> dict[str, tuple[Path, str]]:
    """{name: (artifact, runtime)}: variants whose true drops range from about none to many
    points."""
    variants = {"int8 ptq": (build(work / "ptq", lambda out: leanvision.quantize(
        base, data, out, method="ptq", max_drop=100.0, accept="point")), "onnx-int8")}
    for amount in (float(a) for a in args.sparsities.split(",")):
        name = f"magnitude {amount:.0%}"
        variants[name] = (build(work / f"magnitude{round(amount * 100)}", lambda out, a=amount:
                                leanvision.prune(base, data, out, ratio=a, method="unstructured",
                                                 finetune_epochs=0, check=False,
                                                 progress=False)), "torch")
    for ratio in (0.3, 0.5):
        name = f"structured {ratio:.0%} + 1 epoch"
        variants[name] = (build(work / f"structured{round(ratio * 100)}", lambda out, r=ratio:
                                leanvision.prune(base, data, out, ratio=r, finetune_epochs=1,
                                                 scope="global", check=False,
                                                 progress=False)), "torch")
    return variants


def decide(truth: dict[str, tuple[np.ndarray, np.ndarray]],
           args: argparse.Namespace) -> dict[str, Any]:
    """Per variant: its true drop and agreement on all images, and per budget and rule the
    share of subsets on which the rule accepts it."""
    base_pred, labels = truth["base"]
    base_right = base_pred == labels
    n_all, n = len(labels), args.subset_size
    rng = np.random.default_rng(args.seed)
    # One set of subsets for every variant: the same validation splits judge them all.
    picks = np.stack([rng.choice(n_all, n, replace=False) for _ in range(args.subsets)])
    budgets = [float(b) for b in args.budgets.split(",")]
    variants = {}
    for name, (pred, theirs) in truth.items():
        if name == "base":
            continue
        assert np.array_equal(theirs, labels), f"{name} was scored on other images"
        right = pred == labels
        lost = (base_right & ~right)[picks].sum(axis=1)
        gained = (~base_right & right)[picks].sum(axis=1)
        accepted = {str(b): accept_rates(lost, gained, n, b) for b in budgets}
        variants[name] = {
            "true_drop_points": round(float(base_right.mean() - right.mean()) * 100, 3),
            "agreement": round(float(np.mean(pred == base_pred)), 5),
            "lost": int((base_right & ~right).sum()), "gained": int((~base_right & right).sum()),
            "accept_rate": accepted}
    return {"base_test_top1": round(float(base_right.mean()), 5), "test_images": n_all,
            "subset_size": n, "subsets": args.subsets, "budgets": budgets,
            "variants": variants, "summary": summary(variants, budgets)}


def accept_rates(lost: np.ndarray, gained: np.ndarray, n: int, budget: float) -> dict[str, float]:
    """Share of subsets on which each rule accepts (paired.PairedComparison.accepts, on
    arrays: the estimate, or the upper bound of the 80% / 95% interval, within the budget)."""
    rates = {}
    for rule in RULES:
        level = RULE_LEVELS[rule]
        upper = ((lost - gained) / n if level is None
                 else score_interval(lost, gained, n, level)[1]) * 100
        rates[rule] = round(float(np.mean(upper <= budget + 1e-9)), 4)
    return rates


def summary(variants: dict[str, Any], budgets: list[float]) -> dict[str, Any]:
    """Per budget and rule: the mean wrong-accept rate over variants truly over the budget,
    the mean wrong-reject rate over those truly within it, and the worst of each."""
    out = {}
    for b in budgets:
        over = [v for v in variants.values() if v["true_drop_points"] > b]
        within = [v for v in variants.values() if v["true_drop_points"] <= b]
        # Near the budget (over it by at most the budget again; within it by at most half):
        # where the rules differ. Far variants are decided right by every rule.
        near_over = [v for v in over if v["true_drop_points"] <= 2 * b]
        near_within = [v for v in within if v["true_drop_points"] >= b / 2]
        out[str(b)] = {rule: {
            "wrong_accept_near": _mean([v["accept_rate"][str(b)][rule] for v in near_over]),
            "wrong_reject_near": _mean([1 - v["accept_rate"][str(b)][rule]
                                        for v in near_within]),
            "variants_near_over": len(near_over), "variants_near_within": len(near_within),
            "wrong_accept_mean": _mean([v["accept_rate"][str(b)][rule] for v in over]),
            "wrong_accept_worst": _max([v["accept_rate"][str(b)][rule] for v in over]),
            "wrong_reject_mean": _mean([1 - v["accept_rate"][str(b)][rule] for v in within]),
            "wrong_reject_worst": _max([1 - v["accept_rate"][str(b)][rule] for v in within]),
            "variants_over": len(over), "variants_within": len(within)} for rule in RULES}
    return out


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _max(values: list[float]) -> float | None:
    return round(float(np.max(values)), 4) if values else None


def print_tables(figures: dict[str, Any]) -> None:
    ordered = sorted(figures["variants"].items(), key=lambda kv: kv[1]["true_drop_points"])
    for b in figures["budgets"]:
        for rule in RULES:
            rows = []
            for name, v in ordered:
                rate = v["accept_rate"][str(b)][rule]
                over = v["true_drop_points"] > b
                rows.append([name, v["true_drop_points"], f"{100 * v['agreement']:.1f}%",
                             "over" if over else "within", f"{100 * rate:.1f}%",
                             f"{100 * (rate if over else 1 - rate):.1f}%"])
            s = figures["summary"][str(b)][rule]
            title = (f"--accept {rule}, budget {b:g} point(s), {figures['subsets']} subsets of "
                     f"{figures['subset_size']}: wrong accepts {_pct(s['wrong_accept_mean'])} "
                     f"(worst {_pct(s['wrong_accept_worst'])}), wrong rejects "
                     f"{_pct(s['wrong_reject_mean'])} (worst {_pct(s['wrong_reject_worst'])}); "
                     f"near the budget {_pct(s['wrong_accept_near'])} and "
                     f"{_pct(s['wrong_reject_near'])}")
            print_table(title, ["variant", "true drop", "agreement", "truth", "accepted",
                                "wrong"], rows)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    main()
