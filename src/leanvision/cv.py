"""`leanvision.cross_validate`: stratified k-fold training, one artifact per fold, and the
mean and spread of each validation metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .data import decoding_for, load_data
from .data.partition import cv_partitions
from .io import write_json
from .training.api import check_fresh, default_run_dir, train_on
from .training.config import TrainConfig

CV_METRICS = ("top1", "macro_f1", "ece", "loss")


@decoding_for("cross-validate")
def cross_validate(data: str | Path = "builtin:digits", folds: int = 5,
                   out: str | Path | None = None, *, console: Console | None = None,
                   **settings: Any) -> dict[str, Any]:
    """Train `folds` models, each validated on its own held-out fold; the test split (if any)
    is left alone, as in training."""
    console = console or Console(stderr=True)
    cfg = TrainConfig.from_dict({"data": str(data), **settings})
    source = load_data(cfg.data)
    parts_per_fold = cv_partitions(source, folds, cfg.seed)
    out_dir = Path(out) if out is not None else _cv_dir(cfg)
    check_fresh(out_dir)
    per_fold = []
    for k, parts in enumerate(parts_per_fold):
        console.rule(f"fold {k + 1} of {folds}")
        summary = train_on(source, cfg, out_dir / f"fold-{k + 1}", console=console, parts=parts,
                           extra_card={"cv": {"fold": k + 1, "folds": folds, "seed": cfg.seed}})
        val = summary["metrics"]["val"]
        per_fold.append({"fold": k + 1, "artifact": summary["artifact"],
                         **{m: val[m] for m in CV_METRICS}})
    result = {
        "data": cfg.data,
        "folds": folds,
        "per_fold": per_fold,
        "mean": {m: float(np.mean([f[m] for f in per_fold])) for m in CV_METRICS},
        "std": {m: float(np.std([f[m] for f in per_fold], ddof=1)) for m in CV_METRICS},
        "out": str(out_dir),
    }
    write_json(out_dir / "cv.json", result)
    _print(console, result)
    return result


def _cv_dir(cfg: TrainConfig) -> Path:
    run = default_run_dir(cfg)
    return Path("runs") / "cv" / run.name


def _print(console: Console, result: dict[str, Any]) -> None:
    table = Table(title=f"{result['folds']}-fold cross-validation")
    table.add_column("fold")
    for m in CV_METRICS:
        table.add_column(m, justify="right")
    for f in result["per_fold"]:
        table.add_row(str(f["fold"]), *(f"{f[m]:.4f}" for m in CV_METRICS))
    table.add_row("mean ± sd", *(f"{result['mean'][m]:.4f} ± {result['std'][m]:.4f}"
                                 for m in CV_METRICS))
    console.print(table)
    console.print(f"written: {result['out']}/cv.json and one artifact per fold")


def print_cross_validation(console: Console, result: dict[str, Any]) -> None:
    console.print(f"top-1 {result['mean']['top1']:.4f} ± {result['std']['top1']:.4f} over "
                  f"{len(result['per_fold'])} folds; {result['out']}/cv.json", highlight=False)
