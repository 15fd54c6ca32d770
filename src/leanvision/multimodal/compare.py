"""`compare_fusions`: is the text worth it, and which fusion? Trains, on the same data with the
same recipe and budget: the image model alone, the text encoder alone, and one fused model per
fusion strategy; ranks them on validation and writes compare.json. The test split never ranks:
it is reported once per run beside the validation figure (DESIGN.md: the test split is sealed)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..data import load_data
from ..data.partition import partition
from ..errors import ConfigError
from ..io import run_folder, write_json
from ..setting import setting
from .config import FUSIONS

BASELINES = ("image-only", "text-only")


@dataclass
class CompareFusionsOptions:
    """compare_fusions' settings with their help (`leanvision compare-fusions` reads them)."""

    data: Path = setting(None, "CSV with path, label and text columns.")
    text_columns: str = setting(None, "Text columns (comma-separated).")
    fusions: str = setting(("early", "late", "attention"), "Fusion strategies to compare.")
    baselines: bool = setting(True, "Also train image-only and text-only models.")
    text_encoder: str = setting("hashed", "hashed or minilm.")
    model: str | None = setting(None, "Image network (default: from the recipe).")
    epochs: int | None = setting(None, "The same for every run.")


def compare_fusions(data: str | Path, text_columns: str | Sequence[str], *,
                    fusions: str | Sequence[str] = ("early", "late", "attention"),
                    baselines: bool = True, out: str | Path | None = None,
                    console: Console | None = None, **settings: Any) -> dict[str, Any]:
    """Train each variant under OUT/<name>/ and return {"runs", "ranking", "best", "json"}.

    `settings` go to every run alike (model, epochs, batch_size, lr, seed, text_encoder, ...),
    so the only difference between runs is what the model reads."""
    from ..training import train

    console = console or Console(stderr=True)
    if isinstance(fusions, str):
        fusions = [f.strip() for f in fusions.split(",") if f.strip()]
    unknown = [f for f in fusions if f not in FUSIONS or f == "text-only"]
    if unknown or not fusions:
        raise ConfigError(f"--fusions {','.join(fusions) or '(none)'}: choose from early, late, "
                          "attention (comma-separated)")
    _require_validation(data, settings)
    out_dir = Path(out) if out is not None else run_folder("compare-fusions")
    names = ([*BASELINES] if baselines else []) + list(fusions)
    image_settings = {k: v for k, v in settings.items() if k not in _TEXT_KEYS}
    runs = []
    for name in names:
        started = time.perf_counter()
        console.print(f"[bold]compare-fusions[/bold]: {name}")
        if name == "image-only":
            summary = train(data, out_dir / name, console=console, **image_settings)
        else:
            summary = train(data, out_dir / name, console=console, text_columns=text_columns,
                            fusion=name, **settings)
        runs.append(_row(name, summary, time.perf_counter() - started))
    # Ranked on validation only: a test figure that picked the winner no longer measures it.
    ranking = sorted(runs, key=lambda r: -1.0 if r["val_top1"] is None else -r["val_top1"])
    best = ranking[0]["name"] if ranking and ranking[0]["val_top1"] is not None else None
    result = {"data": str(data), "text_columns": text_columns, "split": "val",
              "settings": settings, "runs": runs, "ranking": [r["name"] for r in ranking],
              "best": best}
    path = write_json(out_dir / "compare.json", result)
    console.print(_table(runs))
    return {**result, "json": str(path), "out": str(out_dir)}


def _require_validation(data: str | Path, settings: dict[str, Any]) -> None:
    """Refuse before any training when there is nothing to rank on but the test split."""
    from ..training.config import TrainConfig

    fraction = settings.get("val_fraction")
    fraction = TrainConfig.val_fraction if fraction is None else float(fraction)
    seed = int(settings.get("seed") or 0)
    if partition(load_data(data), fraction, seed).val is None:
        raise ConfigError("compare-fusions ranks on validation accuracy (never on test) but "
                          "the data has no val split; pass --val-fraction 0.1 (or give rows "
                          "the split val)")


_TEXT_KEYS = {"text_encoder", "text_finetune", "max_tokens", "empty_text", "fusion_dim",
              "attention_heads", "text_dropout", "aux_weight", "hash_buckets", "hash_dim",
              "char_ngrams", "word_ngrams", "late_weight", "text_lr_scale"}


def _row(name: str, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    metrics = summary["metrics"]

    def top1(split: str, key: str = "top1") -> float | None:
        return metrics.get(split, {}).get(key)

    return {"name": name, "artifact": summary["artifact"], "val_top1": top1("val"),
            "test_top1": top1("test"),
            "test_top1_without_text": top1("test", "top1_without_text"),
            "val_top1_without_text": top1("val", "top1_without_text"),
            "params": metrics.get("params"), "epochs": summary["training"]["epochs_run"],
            "seconds": round(seconds, 1)}


def _table(runs: list[dict[str, Any]]) -> Table:
    """Ranked by val top-1; test top-1 beside it, as a report only."""
    table = Table(title="fusion comparison (ranked by val top-1; test reported, never ranked)")
    for col in ("model", "val top-1", "without text", "test top-1", "params", "seconds"):
        table.add_column(col, justify="left" if col == "model" else "right")

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for r in runs:
        table.add_row(r["name"], cell(r["val_top1"]), cell(r["val_top1_without_text"]),
                      cell(r["test_top1"]), f"{r['params']:,}", f"{r['seconds']:.0f}")
    return table
