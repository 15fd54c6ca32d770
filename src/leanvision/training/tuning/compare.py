"""`leanvision.compare`: the same model and data trained once per optimizer, each at the rate its
own learning-rate range test suggests, ranked by validation accuracy."""

from __future__ import annotations

import difflib
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ...data import decoding_for, load_data
from ...data.partition import partition
from ...errors import ConfigError, LeanvisionError
from ...io import read_jsonl, write_atomic, write_json
from ..api import check_fresh, default_run_dir, train_on
from ..config import OPTIMIZERS, TrainConfig
from ..loop import METRICS_FILE
from ..report import print_outputs
from .lr_find import lr_find_on

DEFAULT_OPTIMIZERS = ("sgd", "momentum", "adagrad", "rmsprop", "adadelta", "adam", "adamw")


@decoding_for("compare optimizers")
def compare(data: str | Path, optimizers: tuple[str, ...] | list[str] | str = DEFAULT_OPTIMIZERS,
            out: str | Path | None = None, *, epochs: int | None = None,
            find_steps: int = 100, console: Console | None = None,
            **settings: Any) -> dict[str, Any]:
    """For each optimizer: lr_find picks its rate, then a full training run with that rate into
    <out>/<optimizer>/. Writes compare.json and compare.png; returns the ranked results.

    `settings` are TrainConfig fields shared by every run (model, batch_size, ...); `lr` and
    `optimizer` are what this study varies, so they cannot be set."""
    console = console or Console(stderr=True)
    names = _check_optimizers(optimizers)
    fixed = sorted(k for k in ("lr", "optimizer") if settings.get(k) is not None)
    if fixed:
        raise ConfigError(f"compare chooses {' and '.join(fixed)} itself; drop "
                          + ", ".join("--" + k for k in fixed))
    settings = {k: v for k, v in settings.items() if k not in ("lr", "optimizer")}
    base = TrainConfig.from_dict({"data": str(data), "epochs": epochs, **settings})
    source = load_data(base.data)
    parts = partition(source, base.val_fraction, base.seed)
    if parts.val is None:
        raise ConfigError("compare ranks optimizers by validation accuracy but the data has no "
                          "val split; pass --val-fraction 0.1 (or add a val/ folder)")
    out_dir = Path(out) if out is not None else Path("runs") / "compare" / default_run_dir(
        base).name
    for name in names:
        check_fresh(out_dir / name)

    runs = []
    for name in names:
        console.rule(f"{name}: learning-rate range test, then training")
        runs.append(_one_optimizer(source, parts, base, name, out_dir / name, find_steps,
                                   console))
    ranked = sorted(runs, key=lambda r: -1.0 if r["best_val_top1"] is None
                    else r["best_val_top1"], reverse=True)
    for rank, run in enumerate(ranked, start=1):
        run["rank"] = rank
    result = {
        "data": base.data,
        "model": ranked[0]["model"] if ranked else base.model,
        "optimizers": names,
        "ranking": [r["optimizer"] for r in ranked],
        "best": ranked[0]["optimizer"] if ranked and ranked[0]["best_val_top1"] is not None
        else None,
        "runs": {r["optimizer"]: r for r in runs},
        "config": {**base.to_dict(), "find_steps": find_steps},
        "out": str(out_dir),
        "json": str(out_dir / "compare.json"),
        "plot": str(out_dir / "compare.png"),
    }
    write_json(out_dir / "compare.json", result)
    write_atomic(out_dir / "compare.png", lambda p: _plot(p, runs))
    print_ranking(console, ranked)
    print_outputs(console, out_dir, ["compare.json", "compare.png"])
    return result


def _one_optimizer(source, parts, base: TrainConfig, name: str, run_dir: Path, find_steps: int,
                   console: Console) -> dict[str, Any]:
    started = time.perf_counter()
    cfg = TrainConfig.from_dict({**base.to_dict(), "optimizer": name})
    found = lr_find_on(source, parts, cfg, run_dir, steps=find_steps, console=console)
    find_seconds = time.perf_counter() - started
    lr = found["suggested_lr"]
    record: dict[str, Any] = {"optimizer": name, "lr": lr, "lr_find": {
        k: found[k] for k in ("suggested_lr", "min_loss_lr", "lr_at_min_loss",
                              "suggestion_method", "stopped", "steps_run")}}
    try:
        summary = train_on(source, TrainConfig.from_dict({**cfg.to_dict(), "lr": lr}), run_dir,
                           console=console, parts=parts)
    except LeanvisionError as exc:  # one diverging optimizer is a result, not a failed study
        summary, record["error"] = None, str(exc)
    history = read_jsonl(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).exists() else []
    val_curve = [_best_of(h) for h in history]
    record.update({
        "model": found["model"],
        "final_val_top1": history[-1].get("val_top1") if history else None,
        "best_val_top1": max((v for v in val_curve if v is not None), default=None),
        "artifact_val_top1": summary["metrics"]["val"]["top1"] if summary else None,
        "epochs_run": len(history),
        "find_seconds": round(find_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "artifact": summary["artifact"] if summary else None,
        "history": history,
    })
    return record


def _best_of(epoch: dict[str, Any]) -> float | None:
    """An epoch's val top-1 of the weights training would keep: the model's or its EMA's."""
    values = [epoch[k] for k in ("val_top1", "ema_val_top1") if epoch.get(k) is not None]
    return max(values) if values else None


def print_ranking(console: Console, ranked: list[dict[str, Any]]) -> None:
    table = Table(title="optimizers ranked by best validation top-1")
    for col in ("rank", "optimizer", "lr", "best val top-1", "final val top-1", "epochs",
                "seconds"):
        table.add_column(col, justify="left" if col == "optimizer" else "right")
    for r in ranked:
        table.add_row(str(r["rank"]), r["optimizer"], f"{r['lr']:.3g}", _top1(r["best_val_top1"]),
                      _top1(r["final_val_top1"]), str(r["epochs_run"]), f"{r['seconds']:.0f}")
    console.print(table)
    for r in ranked:
        if r.get("error"):
            console.print(f"{r['optimizer']}: {r['error']}", style="yellow")


def _top1(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _plot(path: Path, runs: list[dict[str, Any]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    acc_ax, loss_ax = fig.subplots(1, 2)
    for run in runs:
        epochs = [h["epoch"] for h in run["history"]]
        label = f"{run['optimizer']} (lr {run['lr']:.2g})"
        acc_ax.plot(epochs, [_best_of(h) for h in run["history"]], marker="o", label=label)
        loss_ax.plot(epochs, [h["train_loss"] for h in run["history"]], marker="o", label=label)
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.set_title("validation top-1 (model or EMA)")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("top-1")
    loss_ax.set_title("training loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    acc_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _check_optimizers(optimizers: tuple[str, ...] | list[str] | str) -> list[str]:
    names = [n.strip() for n in optimizers.split(",")] if isinstance(optimizers, str) \
        else [str(n).strip() for n in optimizers]
    names = [n for n in names if n]
    if not names:
        raise ConfigError("--optimizers is empty; pass e.g. --optimizers sgd,momentum,adamw")
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], OPTIMIZERS, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(f"unknown optimizer {', '.join(repr(n) for n in unknown)}{suggestion}; "
                          f"choose from: {', '.join(OPTIMIZERS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--optimizers lists a name twice ({', '.join(names)}); give each once")
    return names
