"""Self-training's pseudo-label share, rounds and student epochs, and the final-epoch rule on a
noisy recipe, chosen on held-out labelled images (issue 24): bench/few_labels.py's setting
(4,000 CIFAR-10 labels, 400 per class; airnet_s, the fast recipe, a teacher then one student of
--epochs), with 2,000 more labelled training images ("judge", 200 per class) that no run
trains on, validates on or sees as unlabelled data; the remaining 44,000 training images are the
unlabelled pool.

Every configuration's student learns from the same teacher: the first configuration trains it
as `train --unlabeled` does, the others are given it (`teacher=`), so they differ in the
student alone and their judge scores pair image by image. `rounds2` is the second round of
`--rounds 2`: a student trained, as the library's second round is, with the default
configuration's student as its teacher (same seed, split and settings), so it pairs with the
first round's student. `--default-run DIR` reuses an earlier run of the default configuration
(its student and teacher) instead of training it again: its final student is scored on judge
anew, and its per-epoch curves stay in the earlier result file. Every student epoch's weights are
scored on judge the way the library scores validation (epoch_scoring.val_predictions, the
recipe's TTA); that tracing is timed and left out of the wall clock. The run's own validation
split (10% of the labels, 400 images) picks nothing here; it is what the library's selection
reads, and its per-epoch curve comes from the run's metrics.jsonl.

Decisions, fixed before the runs:
- Share: the library's default (TrainConfig.pseudo_share) changes to a candidate's only if the
  candidate's final student is *surely* better on judge than the default's (the 95% paired
  interval of its gain lies above zero, leanvision.paired); bench/few_labels.py uses the
  library's default either way.
- Extra cost has to be earned: `bench/few_labels.py`'s 36 student epochs stay only if the
  36-epoch student is surely better on judge than the 24-epoch one (else the bench runs 24),
  and the library's one round (TrainConfig.rounds) becomes two only if the second round's
  student is surely better than the first's.
- Final-epoch rule: per run, the final student weights against the epoch that scored best on
  the run's own validation split, paired on judge; the rule stands unless best-by-validation
  wins on judge in most runs.
- Test top-1 (10,000 images) is printed once per configuration, after training, and chooses
  nothing.

    python bench/few_labels_validation.py [--configs default,share0.6,epochs24,rounds2]
        [--epochs 36] [--default-run DIR]

Writes bench/results/few_labels_validation.json (--name)."""

from __future__ import annotations

import argparse
import json
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
    subset,
    write_result,
)
from few_labels import unlabelled_folder
from recipe_validation import gain_over_default
from rich.console import Console

import leanvision
from leanvision.data import decode_images, load_data
from leanvision.hardware import choose_hardware
from leanvision.models import model_preprocessing
from leanvision.paired import compare
from leanvision.training.config import TrainConfig
from leanvision.training.epoch_scoring import val_predictions

QUIET = Console(quiet=True)
LIBRARY_SHARE = TrainConfig.pseudo_share
# Each candidate's settings over the default's; "teacher_from" names the configuration whose
# student is its teacher (a further round).
CANDIDATES: dict[str, dict] = {"default": {}, "share0.6": {"pseudo_share": 0.6},
                               "epochs24": {"epochs": 24}, "rounds2": {"teacher_from": "default"}}
# Choices where one configuration costs more: (cheaper, costlier); the costlier one is chosen
# only if it is surely better on judge.
COST_CHOICES = {"student_epochs": ("epochs24", "default"), "rounds": ("default", "rounds2")}
RECIPE_TTA = "flip-translate"  # the fast recipe's; checked against each run's card


def main() -> None:
    args = parse_args()
    names = [n for n in args.configs.split(",") if n]
    unknown = set(names) - set(CANDIDATES)
    if unknown or not names:
        raise SystemExit(f"unknown or no --configs {sorted(unknown)}; choose from "
                         f"{', '.join(CANDIDATES)}")
    run = begin([f"{args.held_out_per_class * len(CLASSES)} labelled training images held out "
                 "as judge; one seed; every configuration's student from one shared teacher",
                 "test scored once per configuration, chose nothing"])
    if args.default_run:
        run.caveat(f"default configuration reused from {args.default_run} (an earlier run, "
                   "its final student scored on judge again)")
    root = cifar10()
    labelled = subset(root, args.labels_per_class, include_test=True)
    judge_root = judge_folder(root, args.labels_per_class, args.held_out_per_class)
    unlabelled = unlabelled_folder(root, args.labels_per_class + args.held_out_per_class,
                                   args.unlabelled_limit)
    judge = load_data(judge_root).train
    labels = np.asarray(judge.labels)
    work = Path(tempfile.mkdtemp(prefix="few-labels-validation-", dir=args.work))
    hw = choose_hardware(args.device)
    cache: dict = {}
    runs, teacher = {}, None
    if args.default_run:
        runs["default"] = reused_run(Path(args.default_run), judge, labels, hw, cache)
        teacher = runs["default"]["teacher"]
    for name in names:
        if name in runs:
            continue
        source = CANDIDATES[name].get("teacher_from")
        if source and source not in runs:
            raise SystemExit(f"--configs: {name} needs {source} before it (its teacher)")
        given = runs[source]["artifact"] if source else teacher
        runs[name] = train_one(name, labelled, unlabelled, judge, labels, given, work, hw,
                               args, cache)
        teacher = teacher or runs[name]["teacher"]
    figures = {"runs": {n: r["record"] for n, r in runs.items()},
               "teacher": teacher_record(teacher),
               "share": share_decision(runs, labels),
               "cost_choices": cost_decisions(runs, labels),
               "final_epoch_rule": rule_decision(runs, labels),
               "library_share": LIBRARY_SHARE}
    config = {**vars(args), "judge": len(labels),
              "unlabelled": sum(1 for f in unlabelled.iterdir() if not f.name.startswith("."))}
    write_result(args.name, result_record("few_labels_validation", figures, config, run))
    report(figures, run)


def judge_folder(root: Path, labels_per_class: int, per_class: int) -> Path:
    """<judge>/<class>/: the `per_class` training images after each class's labelled ones."""
    target = CACHE / f"cifar10-judge-after{labels_per_class}-n{per_class}"
    marker = target / ".complete"
    if marker.is_file() and marker.read_text() == str(root):
        return target
    for cls in CLASSES:
        files = sorted((root / "train" / cls).iterdir())
        link_files(files[labels_per_class:labels_per_class + per_class], target / cls)
    marker.write_text(str(root))
    return target


def train_one(name: str, labelled: Path, unlabelled: Path, judge, labels: np.ndarray,
              teacher: str | None, work: Path, hw, args, cache: dict) -> dict:
    spec = CANDIDATES[name]
    preds: list[np.ndarray] = []
    overhead = {"seconds": 0.0}

    def trace(epoch: int, model) -> dict:
        t0 = time.perf_counter()
        preds.append(judge_predictions(model, judge, hw, cache))
        overhead["seconds"] += time.perf_counter() - t0
        console.print(f"{name} student epoch {epoch + 1}: judge top-1 "
                      f"{np.mean(preds[-1] == labels):.4f}")
        return {}

    out = work / name
    settings = dict(model=args.model, recipe="fast", epochs=spec.get("epochs", args.epochs),
                    seed=args.seed, unlabeled=unlabelled, pseudo_labels="teacher",
                    device=args.device, teacher_epochs=args.teacher_epochs, progress=False)
    if "pseudo_share" in spec:
        settings["pseudo_share"] = spec["pseudo_share"]
    if teacher is not None:
        settings["teacher"] = teacher
    started = time.perf_counter()
    summary = leanvision.train(labelled, out, console=QUIET, on_epoch_end=trace, **settings)
    wall = time.perf_counter() - started - overhead["seconds"]
    resolved = leanvision.info(out)["config"]
    if resolved.get("tta") != RECIPE_TTA:
        raise SystemExit(f"the recipe's TTA is {resolved.get('tta')!r}; update the bench")
    used_teacher = teacher or str(out / "self-training" / "teacher")
    record = run_record(summary, resolved, out, preds, labels, wall, overhead["seconds"],
                        trained_teacher=teacher is None)
    return {"preds": preds, "teacher": used_teacher, "artifact": summary["artifact"],
            "record": {**record, "teacher": teacher and str(teacher)}}


def judge_predictions(model, judge, hw, cache: dict) -> np.ndarray:
    """The model's judge predictions, scored the way the library scores validation."""
    pre = model_preprocessing(model)
    if "judge" not in cache:
        cache["judge"] = decode_images(judge, tuple(pre["input_size"]))
    return val_predictions(model, cache["judge"], pre["mean"], pre["std"], hw, tta=RECIPE_TTA)


def reused_run(folder: Path, judge, labels: np.ndarray, hw, cache: dict) -> dict:
    """An earlier run of the default configuration: its final student scored on judge anew;
    its teacher becomes every new configuration's."""
    student = leanvision.load(folder)
    if student.tta != RECIPE_TTA:
        raise SystemExit(f"--default-run {folder}: its TTA is {student.tta!r}, not the recipe's")
    semi = student.card.get("semi_supervised") or {}
    if not semi.get("rounds"):
        raise SystemExit(f"--default-run {folder} is not a self-training run; pass the default "
                         "configuration's run folder from an earlier few_labels_validation run")
    preds = judge_predictions(student.model, judge, hw, cache)
    judge_top1 = float(np.mean(preds == labels))
    config = leanvision.info(folder)["config"]
    test = student.card["metrics"]["test"]
    record = {"reused": str(folder), "pseudo_share": config["pseudo_share"],
              "epochs": config["epochs"], "pseudo_labelled": semi["rounds"][-1]["pseudo_labelled"],
              "judge_top1": [judge_top1],
              "judge_interval95": accuracy_interval(judge_top1, len(labels)),
              "test_top1": test["top1"], "test_n": test["n"],
              "test_interval95": accuracy_interval(test["top1"], test["n"]),
              "best_val_epoch": None, "kept_epoch": None}
    return {"preds": [preds], "teacher": semi["rounds"][0]["teacher"], "artifact": str(folder),
            "record": record}


def run_record(summary: dict, resolved: dict, out: Path, preds: list[np.ndarray],
               labels: np.ndarray, wall: float, tracing: float, trained_teacher: bool) -> dict:
    val = [row["val_top1"] for row in read_metrics(out) if "val_top1" in row]
    judge = [float(np.mean(p == labels)) for p in preds]
    kept = summary["training"]["best_epoch"]
    test = summary["metrics"]["test"]
    semi = leanvision.load(summary["artifact"]).card.get("semi_supervised", {})
    pseudo = semi.get("rounds", [{}])[-1].get("pseudo_labelled")
    return {"pseudo_share": resolved["pseudo_share"], "epochs": resolved["epochs"],
            "pseudo_labelled": pseudo, "kept_epoch": kept,
            "selection": summary["training"]["selection"],
            "best_val_epoch": int(np.argmax(val)) + 1 if val else None,
            "val_top1": val, "judge_top1": judge,
            "judge_top1_kept": judge[kept - 1] if 0 < kept <= len(judge) else None,
            "judge_interval95": accuracy_interval(judge[-1], len(labels)) if judge else None,
            "test_top1": test["top1"], "test_n": test["n"],
            "test_interval95": accuracy_interval(test["top1"], test["n"]),
            "wall_seconds": round(wall, 1), "tracing_seconds": round(tracing, 1),
            "includes_teacher": trained_teacher}


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def teacher_record(teacher: str | None) -> dict:
    if teacher is None:
        return {}
    card = leanvision.load(teacher).card
    return {"artifact": teacher, "val_top1": card["metrics"]["val"]["top1"],
            "test_top1": card["metrics"]["test"]["top1"]}


def share_decision(runs: dict, labels: np.ndarray) -> dict:
    """Each candidate's final student against the default's, paired on judge."""
    final = {n: r["preds"][-1] == labels for n, r in runs.items()
             if r["preds"] and set(CANDIDATES.get(n, {})) <= {"pseudo_share"}}
    versus = {}
    if "default" in final:
        for name, correct in final.items():
            if name != "default":
                versus[name] = gain_over_default(final["default"], correct)
    better = [n for n, v in versus.items() if v["surely_better"]]
    return {"best_on_judge": max(final, key=lambda n: final[n].mean()) if final else None,
            "vs_default": versus,
            "default_changes_to": max(better, key=lambda n: final[n].mean()) if better else None}


def cost_decisions(runs: dict, labels: np.ndarray) -> dict:
    """For each (cheaper, costlier) pair that ran: the costlier configuration's gain on judge,
    paired, and the choice (the costlier only if surely better)."""
    out = {}
    for choice, (cheap, costly) in COST_CHOICES.items():
        if cheap in runs and costly in runs:
            gain = gain_over_default(runs[cheap]["preds"][-1] == labels,
                                     runs[costly]["preds"][-1] == labels)
            out[choice] = {"cheaper": cheap, "costlier": costly, "costlier_gain": gain,
                           "chosen": costly if gain["surely_better"] else cheap}
    return out


def rule_decision(runs: dict, labels: np.ndarray) -> dict:
    per_run, best_wins = {}, 0
    for name, r in runs.items():
        rec = r["record"]
        best = rec["best_val_epoch"]
        if not r["preds"] or best is None:
            continue
        final, early = r["preds"][-1], r["preds"][best - 1]
        drop = compare(early == labels, final == labels)  # final's drop from best-by-val
        per_run[name] = {"final_epoch": len(r["preds"]), "best_val_epoch": best,
                         "kept_epoch": rec["kept_epoch"],
                         "judge_final": rec["judge_top1"][-1],
                         "judge_best_val": rec["judge_top1"][best - 1],
                         "best_judge_epoch": int(np.argmax(rec["judge_top1"])) + 1,
                         "final_drop_points": round(drop.drop_points, 2),
                         "final_drop_interval95": [round(v, 2) for v in drop.interval95]}
        best_wins += per_run[name]["judge_best_val"] > per_run[name]["judge_final"]
    return {"runs": per_run, "best_val_wins_on_judge": int(best_wins),
            "rule_stands": bool(best_wins <= len(per_run) // 2)}


def report(figures: dict, run) -> None:
    rows = [[n, r["pseudo_share"], r["epochs"], r["pseudo_labelled"], r["judge_top1"][-1],
             r["best_val_epoch"], r["kept_epoch"], r["test_top1"], r.get("wall_seconds")]
            for n, r in figures["runs"].items()]
    for row in rows:
        row[-1] = row[-1] if row[-1] is not None else "reused"
    print_table("self-training on 4,000 CIFAR-10 labels, chosen on 2,000 held-out labelled "
                "images", ["config", "share", "epochs", "pseudo-labelled", "judge top-1 (final)",
                           "best-val epoch", "kept epoch", "test top-1", "wall s"], rows, run)
    share = figures["share"]
    for name, v in share["vs_default"].items():
        console.print(f"{name} vs default on judge: {v['gain_points']:+.2f} points (95% "
                      f"{v['gain_interval95'][0]:+.2f} to {v['gain_interval95'][1]:+.2f})")
    console.print(f"library share {figures['library_share']} changes to: "
                  f"{share['default_changes_to'] or 'nothing (no candidate surely better)'}")
    for choice, c in figures["cost_choices"].items():
        g = c["costlier_gain"]
        console.print(f"{choice}: {c['costlier']} over {c['cheaper']} on judge "
                      f"{g['gain_points']:+.2f} points (95% {g['gain_interval95'][0]:+.2f} to "
                      f"{g['gain_interval95'][1]:+.2f}); chosen: {c['chosen']}")
    rule = figures["final_epoch_rule"]
    console.print(f"final-epoch rule: best-by-validation beat the final weights on judge in "
                  f"{rule['best_val_wins_on_judge']} of {len(rule['runs'])} runs; rule stands: "
                  f"{rule['rule_stands']}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CANDIDATES),
                   help=f"comma list of {', '.join(CANDIDATES)} (the first trains the teacher)")
    p.add_argument("--labels-per-class", type=int, default=400)
    p.add_argument("--held-out-per-class", type=int, default=200)
    p.add_argument("--unlabelled-limit", type=int, default=None,
                   help="unlabelled images per class at most (a smoke run, not a result)")
    p.add_argument("--model", default="airnet_s")
    p.add_argument("--epochs", type=int, default=36,
                   help="each student's epochs but epochs24's (36: the setting the judged runs "
                        "started from; bench/few_labels.py now runs 24, chosen here)")
    p.add_argument("--teacher-epochs", type=int, default=None,
                   help="the teacher's epochs (default: the recipe's)")
    p.add_argument("--default-run", default=None, metavar="DIR",
                   help="an earlier run's default configuration folder, reused (not retrained)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", default=None, help="where run folders go (default: /tmp)")
    p.add_argument("--name", default="few_labels_validation", help="results file name")
    return p.parse_args()


if __name__ == "__main__":
    main()
