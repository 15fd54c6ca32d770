"""What the compression stages print: the plan before the work, the result table after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..artifact import CARD_FILE, WEIGHTS_FILE
from ..formatting import percent
from ..training.report import print_outputs


def print_prune_plan(console: Console, art, cfg, base, out_dir: Path) -> None:
    console.print(f"[bold]leanvision prune[/bold] {art.path} → {out_dir}")
    console.print(f"{cfg.method} pruning of {art.card['arch']}: remove {cfg.ratio:.0%} of the "
                  f"{cfg.target} ({cfg.importance} importance, {cfg.scope} scope) in "
                  f"{cfg.steps} step(s), {cfg.finetune_epochs} fine-tuning epoch(s) each; "
                  f"{base.flops / 1e6:.1f} MFLOPs, {base.params:,} params now")


def print_prune_summary(console: Console, summary: dict[str, Any], out_dir: Path) -> None:
    record = summary["pruning"]
    table = Table(title="pruning result", show_header=True)
    for column in ("step", "FLOPs", "params", "sparsity", "val top-1 pruned",
                   "val top-1 fine-tuned"):
        table.add_column(column, justify="right")
    base = record["base"]
    for entry in record["steps"]:
        table.add_row(str(entry["step"]), _ratio(entry.get("flops"), base["flops"]),
                      _ratio(entry.get("params"), base["params"]),
                      f"{entry.get('sparsity', 0.0):.0%}",
                      percent(entry.get("val_top1_pruned", entry.get("val_top1_soft"))),
                      percent(entry.get("val_top1_finetuned")))
    console.print(table)
    result = record["result"]
    console.print(f"FLOPs {base['flops'] / 1e6:.1f}M → {result['flops'] / 1e6:.1f}M "
                  f"({record['flops_fraction']:.0%}), params {base['params']:,} → "
                  f"{result['params']:,} ({record['params_fraction']:.0%}); checks: "
                  + _checks(record["checks"]))
    print_outputs(console, out_dir, [WEIGHTS_FILE, CARD_FILE, "metrics.jsonl"])


def prune_step_line(entry: dict[str, Any], base, cfg) -> str:
    acc = entry.get("val_top1_finetuned")
    before = entry.get("val_top1_pruned")
    against = entry.get("finetuned_vs_parent_text")
    return (f"step {entry['step']}/{cfg.steps}: FLOPs {entry['flops'] / base.flops:.0%}, params "
            f"{entry['params'] / base.params:.0%} of the original; val top-1 "
            f"{percent(before)} pruned → {percent(acc)} fine-tuned"
            + (f"; against the parent: {against}" if against else ""))


def _checks(checks: dict[str, Any]) -> str:
    if not checks:
        return "off"
    return ", ".join(f"{name} {value}" if isinstance(value, str) else f"{name} ok"
                     for name, value in checks.items())


def _ratio(value: float | None, base: float) -> str:
    return "—" if value is None else f"{value / base:.0%}"
