"""The fast recipe's batch and step budget, and the final-epoch selection rule, chosen on
validation: CIFAR-10's training images with 5,000 of them held out, test scored once per run.

The 50,000 training images are split, per class and seeded, into 45,000 that train, 2,500
("select") that the run sees as its validation folder (what its selection rule reads), and
2,500 ("judge") that no run ever sees. Every epoch's weights are scored on both held-out halves
the way the library scores validation (epoch_scoring.val_predictions, the recipe's TTA); that
tracing is timed and left out of the wall clock.

Decisions, fixed before the runs:
- Recipe: the configuration with the highest top-1 on all 5,000 held-out images (the kept
  weights) is reported; the library default changes only if a candidate is *surely* better than
  it (the 95% paired interval of its gain over the default lies above zero, leanvision.paired).
- Final-epoch rule: for every run, the final epoch's weights against the best-by-select epoch's,
  paired, on the judge half; the rule stands unless best-by-validation wins on judge in most runs.
- Test top-1 (10,000 images) is printed for every run once, after training, and chooses nothing.

Candidates: the four batch/step budgets bench/fast_recipe.py once compared on test, as epochs of
45,000 images (the recipe's own rounding of its step budget); the default is what
`leanvision train cifar10/` picks. Writes bench/results/recipe_validation.json."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    CACHE,
    CLASSES,
    accuracy_interval,
    begin,
    cifar10,
    console,
    link_files,
    print_table,
    result_record,
    write_result,
)

import leanvision
from leanvision.data import decode_images, load_data
from leanvision.hardware import choose_hardware
from leanvision.models import model_preprocessing
from leanvision.paired import compare
from leanvision.training.epoch_scoring import val_predictions

# (name, batch, epochs of 45,000 images): 1024/10, 1024/13, 512/12 and 512/13 epochs of 50,000
# images as optimizer steps, rounded up to whole epochs of 45,000 as the recipe rounds its budget.
CANDIDATES = {"default": (None, None), "b512-14ep": (512, 14), "b1024-15ep": (1024, 15),
              "b1024-12ep": (1024, 12)}
HELD_OUT_PER_CLASS = 500
RECIPE_TTA = "flip-translate"  # the fast recipe's; checked against each run's card


def main() -> None:
    args = parse_args()
    run = begin([f"{args.held_out_per_class * 10} training images held out; one seed per "
                 "configuration", "test scored once per configuration, chose nothing"])
    root, judge_root = holdout_folders(cifar10(), args.seed, args.held_out_per_class)
    hw = choose_hardware(args.device)
    data = load_data(root)
    select, test = data.val, data.test
    judge = load_data(judge_root).train
    held_labels = np.concatenate([np.asarray(select.labels), np.asarray(judge.labels)])
    n_select = len(select.labels)
    names = [n for n in args.configs.split(",") if n]
    n_train = len(data.train.labels)
    decoded: dict = {}  # the held-out images, decoded on the first epoch, for every run
    runs = {name: train_one(name, root, select, judge, held_labels, n_select, n_train, hw, args,
                            decoded) for name in names}
    figures = {"runs": {n: r["record"] for n, r in runs.items()},
               "recipe": recipe_decision(runs, held_labels),
               "final_epoch_rule": rule_decision(runs, held_labels)}
    write_result("recipe_validation", result_record("recipe_validation", figures,
                                                    {"configs": names, "seed": args.seed,
                                                     "held_out": len(held_labels),
                                                     "train": len(data.train.labels),
                                                     "test": len(test.labels)}, run))
    report(figures, run)


def holdout_folders(source: Path, seed: int, per_class: int) -> tuple[Path, Path]:
    """Symlink folders: <root>/{train,val,test}/ and <judge>/<class>/, built once per seed."""
    name = f"cifar10-holdout{per_class}-s{seed}"
    root, judge = CACHE / name, CACHE / f"{name}-judge"
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == str(source):
        return root, judge
    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        files = sorted((source / "train" / cls).iterdir())
        held = set(rng.choice(len(files), per_class, replace=False).tolist())
        order = sorted(held)
        half = per_class // 2
        link_files([f for i, f in enumerate(files) if i not in held], root / "train" / cls)
        link_files([files[i] for i in order[:half]], root / "val" / cls)
        link_files([files[i] for i in order[half:]], judge / cls)
        link_files(sorted((source / "test" / cls).iterdir()), root / "test" / cls)
    marker.write_text(str(source))
    return root, judge


def train_one(name: str, root: Path, select, judge, held_labels: np.ndarray, n_select: int,
              n_train: int, hw, args, cache: dict) -> dict:
    batch, epochs = CANDIDATES[name]
    epochs = args.epochs or epochs
    preds: list[np.ndarray] = []
    overhead = {"seconds": 0.0}

    def trace(epoch: int, model) -> dict:
        t0 = time.perf_counter()
        pre = model_preprocessing(model)
        if "select" not in cache:
            size = tuple(pre["input_size"])
            cache["select"] = decode_images(select, size)
            cache["judge"] = decode_images(judge, size)
        both = [val_predictions(model, cache[part], pre["mean"], pre["std"], hw, tta=RECIPE_TTA)
                for part in ("select", "judge")]
        preds.append(np.concatenate(both))
        overhead["seconds"] += time.perf_counter() - t0
        top1 = float(np.mean(preds[-1] == held_labels))
        console.print(f"{name} epoch {epoch + 1}: held-out top-1 {top1:.4f}")
        return {}

    out = Path(tempfile.mkdtemp(prefix=f"recipe-{name}-", dir=args.work))
    started = time.perf_counter()
    summary = leanvision.train(root, out / "run", recipe="fast", batch_size=batch, epochs=epochs,
                               seed=args.seed, device=args.device, progress=False,
                               on_epoch_end=trace)
    wall = time.perf_counter() - started - overhead["seconds"]
    resolved = leanvision.info(out / "run")["config"]
    if resolved.get("tta") != RECIPE_TTA:
        raise SystemExit(f"the recipe's TTA is {resolved.get('tta')!r}; update the bench")
    return {"preds": preds, "n_select": n_select, "artifact": str(out / "run"),
            "record": run_record(summary, resolved, preds, held_labels, n_select, n_train, wall,
                                 overhead["seconds"])}


def run_record(summary: dict, resolved: dict, preds: list[np.ndarray], labels: np.ndarray,
               n_select: int, n_train: int, wall: float, tracing: float) -> dict:
    correct = [p == labels for p in preds]
    select = [float(c[:n_select].mean()) for c in correct]
    judge = [float(c[n_select:].mean()) for c in correct]
    kept = summary["training"]["best_epoch"]
    test = summary["metrics"]["test"]
    return {"batch_size": resolved["batch_size"], "epochs": resolved["epochs"],
            "optimizer_steps": resolved["epochs"] * (n_train // resolved["batch_size"]),
            "kept_epoch": kept, "selection": summary["training"]["selection"],
            "best_select_epoch": int(np.argmax(select)) + 1,
            "select_top1": select, "judge_top1": judge,
            "held_out_top1_kept": float(correct[kept - 1].mean()),
            "test_top1": test["top1"], "test_n": test["n"],
            "test_interval95": accuracy_interval(test["top1"], test["n"]),
            "wall_seconds": round(wall, 1), "tracing_seconds": round(tracing, 1),
            "training_images_per_second": summary["training"]["images_per_second"]}


def recipe_decision(runs: dict, labels: np.ndarray) -> dict:
    kept = {n: r["preds"][r["record"]["kept_epoch"] - 1] == labels for n, r in runs.items()}
    best = max(kept, key=lambda n: kept[n].mean())
    versus = {}
    if "default" in kept:
        for name, c in kept.items():
            if name != "default":
                versus[name] = gain_over_default(kept["default"], c)
    change = [n for n, v in versus.items() if v["surely_better"]]
    return {"best_on_validation": best, "vs_default": versus,
            "default_changes_to": max(change, key=lambda n: kept[n].mean()) if change else None}


def gain_over_default(default: np.ndarray, candidate: np.ndarray) -> dict:
    """A candidate's gain over the default (per-image correctness on the same images), paired:
    points, its 95% interval, and whether it is surely better (the interval above zero)."""
    drop = compare(default, candidate)  # the candidate's drop from the default
    return {"gain_points": round(-drop.drop_points, 2),
            "gain_interval95": [round(-drop.interval95[1], 2), round(-drop.interval95[0], 2)],
            "surely_better": bool(drop.interval95[1] < 0)}


def rule_decision(runs: dict, labels: np.ndarray) -> dict:
    per_run, best_wins = {}, 0
    for name, r in runs.items():
        rec, n = r["record"], r["n_select"]
        final, early = r["preds"][-1][n:], r["preds"][rec["best_select_epoch"] - 1][n:]
        drop = compare(early == labels[n:], final == labels[n:])  # final's drop from early
        per_run[name] = {"final_epoch": len(r["preds"]), "best_select_epoch":
                         rec["best_select_epoch"], "judge_final": rec["judge_top1"][-1],
                         "judge_best_select": rec["judge_top1"][rec["best_select_epoch"] - 1],
                         "same_weights": bool(rec["best_select_epoch"] == len(r["preds"])),
                         "final_drop_points": round(drop.drop_points, 2),
                         "final_drop_interval95": [round(v, 2) for v in drop.interval95],
                         "judge_predictions_differ": int((final != early).sum())}
        best_wins += per_run[name]["judge_best_select"] > per_run[name]["judge_final"]
    return {"runs": per_run, "best_select_wins_on_judge": int(best_wins),
            "rule_stands": bool(best_wins <= len(runs) // 2)}


def report(figures: dict, run) -> None:
    rows = [[n, r["batch_size"], r["epochs"], r["held_out_top1_kept"], r["kept_epoch"],
             r["test_top1"], r["wall_seconds"]] for n, r in figures["runs"].items()]
    print_table("fast recipe on CIFAR-10, chosen on held-out training images",
                ["config", "batch", "epochs", "held-out top-1", "kept epoch", "test top-1",
                 "wall s"], rows, run)
    rec = figures["recipe"]
    console.print(f"best on validation: {rec['best_on_validation']}; default changes to: "
                  f"{rec['default_changes_to'] or 'nothing (no candidate surely better)'}")
    rule = figures["final_epoch_rule"]
    console.print(f"final-epoch rule: best-by-validation beat the final weights on judge in "
                  f"{rule['best_select_wins_on_judge']} of {len(rule['runs'])} runs; "
                  f"rule stands: {rule['rule_stands']}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CANDIDATES),
                        help=f"comma list of {', '.join(CANDIDATES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--held-out-per-class", type=int, default=HELD_OUT_PER_CLASS)
    parser.add_argument("--epochs", type=int, default=None,
                        help="override every candidate's epochs (a smoke run, not a result)")
    parser.add_argument("--work", default=None, help="where run folders go (default: /tmp)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
