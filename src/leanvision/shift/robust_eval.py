"""`leanvision.robustness`: accuracy of an artifact under the CIFAR-10-C corruption families at
several severities, the mean corruption accuracy and the drop per family.

The images are chosen and decoded exactly as `evaluate` does (same split, same resize), then
corrupted at the model's input size, and scored through the same inference path: the card's
normalisation and test-time augmentation, in PyTorch or in the artifact's ONNX Runtime model
(so an INT8 artifact is measured as it ships)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._version import __version__
from ..artifact import Artifact, skip_bad_choice
from ..compress.stage import open_parent
from ..data import ImageChecks, decode_images, decoding_for
from ..errors import ConfigError
from ..evaluate import evaluation_records, predict_logits
from ..formatting import percent
from ..hardware import choose_hardware
from ..io import write_json
from ..setting import setting
from ..training.report import print_outputs
from ..tta import check_tta
from .corruptions import FAMILIES, check_families, check_severities, corrupt, parameter

ROBUSTNESS_FILE = "robustness.json"
Scorer = Callable[[torch.Tensor], torch.Tensor]  # uint8 [N, 3, H, W] -> logits [N, C]


@dataclass
class RobustnessConfig:
    severities: tuple[int, ...] = setting((1, 3, 5), "Comma list of CIFAR-10-C severities 1..5.")
    families: tuple[str, ...] = setting(FAMILIES, "Comma list of gaussian_noise, gaussian_blur, "
                                        "jpeg_compression, brightness, contrast, pixelate; or "
                                        "all.")
    split: str = setting("auto", "auto (test, else val), train, val, test or all.")
    seed: int = setting(0, "Seed of the noise (and of --max-images).")
    # a subset for a quick look
    max_images: int | None = setting(None, "Score a seeded random subset this big.")
    batch_size: int = 256
    runtime: str = setting("auto", "auto (what the artifact ships: INT8 ONNX for a quantized "
                           "one), torch, onnx-fp32 or onnx-int8.")
    tta: str | None = None  # None: the card's own

    def __post_init__(self) -> None:
        self.severities = check_severities(self.severities)
        self.families = check_families(self.families)
        check_tta(self.tta)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"--max-images must be at least 1, got {self.max_images}")


@decoding_for("measure robustness")
def robustness(artifact: str | Path | Artifact, data: str | Path | None = None, *,
               out: str | Path | None = None, split: str = "auto",
               severities: tuple[int, ...] | list[int] | str = (1, 3, 5),
               families: tuple[str, ...] | list[str] | str | None = None, seed: int = 0,
               max_images: int | None = None, batch_size: int = 256, runtime: str = "auto",
               tta: str | None = None, device: str = "auto",
               skip_bad_images: bool | None = None, progress: bool = False,
               console: Console | None = None) -> dict[str, Any]:
    """Top-1 of ARTIFACT on DATA (default: the data its card names) clean and under every
    corruption family x severity; writes robustness.json into the artifact folder (or `out`)
    and returns the same record. `families`: names or a comma list (default: all six).
    `skip_bad_images` None: leave out unreadable images when the model's training did."""
    console = console or Console(stderr=True)
    cfg = RobustnessConfig(severities=severities, families=check_families(families),
                           split=split, seed=seed, max_images=max_images,
                           batch_size=batch_size, runtime=runtime, tta=tta)
    art = open_parent(artifact, "robustness")
    target = Path(out) / ROBUSTNESS_FILE if out is not None else art.path / ROBUSTNESS_FILE
    score, runtime_used, tta_used = make_scorer(art, cfg, device)
    split_name, records, data_spec = evaluation_records(art, data, cfg.split)
    if cfg.max_images is not None and cfg.max_images < len(records):
        pick = np.random.default_rng(cfg.seed).choice(len(records), cfg.max_images,
                                                      replace=False)
        records = records.subset(np.sort(pick))
    decoded = decode_images(records, art.input_size, ImageChecks(),
                            skip_bad=skip_bad_choice(art.card, skip_bad_images), progress=progress)
    images, labels = decoded.images, decoded.labels
    console.print(f"[bold]leanvision robustness[/bold] {art.path} on {data_spec} "
                  f"({split_name}, {len(labels)} images, {runtime_used}, TTA {tta_used}): "
                  f"{len(cfg.families)} corruptions x severities "
                  f"{', '.join(map(str, cfg.severities))}")
    started = time.perf_counter()
    jobs = [(f, s) for f in cfg.families for s in cfg.severities]
    bar = Progress(TextColumn("[bold]{task.fields[job]}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                   console=console, disable=not progress)
    with bar:
        task = bar.add_task("robustness", total=len(jobs) + 1, job="clean")
        clean = top1(score(images), labels)
        bar.advance(task)
        table: dict[str, dict[int, float]] = {f: {} for f in cfg.families}
        for family, severity in jobs:
            bar.update(task, job=f"{family} {severity}")
            table[family][severity] = top1(score(corrupt(images, family, severity, cfg.seed)),
                                           labels)
            bar.advance(task)
    record = summarise(clean, table, art, cfg, size=art.input_size)
    record.update(artifact=str(art.path), data=data_spec, split=split_name, n=len(labels),
                  skipped_images=len(decoded.bad), runtime=runtime_used, tta=tta_used,
                  seconds=round(time.perf_counter() - started, 2))
    write_json(target, record)
    record["json"] = str(target)
    print_robustness(console, record)
    print_outputs(console, target.parent, [ROBUSTNESS_FILE])
    return record


def make_scorer(art: Artifact, cfg: RobustnessConfig, device: str) -> tuple[Scorer, str, str]:
    """The network call evaluate / predict make for this artifact and runtime, with the TTA;
    returns (scorer, runtime name, TTA mode)."""
    tta = cfg.tta or art.tta
    predictor = None
    if cfg.runtime != "torch":
        from ..runtime.predictor import Predictor  # ONNX Runtime only when it is used

        predictor = Predictor.from_artifact(art.path, runtime=cfg.runtime)
        if predictor.runtime == "torch":
            predictor = None
    if predictor is not None:
        predictor.tta = tta

        def score_onnx(images: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.from_numpy(predictor.logits(images[i:i + cfg.batch_size]))
                              for i in range(0, len(images), cfg.batch_size)])

        return score_onnx, predictor.runtime, tta
    hw = choose_hardware(device, "fp32")

    def score_torch(images: torch.Tensor) -> torch.Tensor:
        return predict_logits(art.model, images, art.mean, art.std, hw.device, cfg.batch_size,
                              tta=tta)

    return score_torch, "torch", tta


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def summarise(clean: float, table: dict[str, dict[int, float]], art: Artifact,
              cfg: RobustnessConfig, size: tuple[int, int]) -> dict[str, Any]:
    """The JSON record: per family its top-1 per severity, mean and drop from clean; the mean
    corruption accuracy (mCA, over every family x severity) and the mean drop."""
    families: dict[str, Any] = {}
    for family, by_severity in table.items():
        mean = float(np.mean(list(by_severity.values())))
        families[family] = {
            "top1": {str(s): v for s, v in by_severity.items()},
            "mean_top1": mean,
            "drop": clean - mean,
            "parameters": {str(s): parameter(family, s, size) for s in by_severity},
        }
    mca = float(np.mean([f["mean_top1"] for f in families.values()]))
    return {
        "clean_top1": clean,
        "mean_corruption_top1": mca,
        "mean_drop": clean - mca,
        # the share of clean accuracy lost: comparable between models of different accuracy
        "relative_drop": (clean - mca) / clean if clean > 0 else None,
        "families": families,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "stage": art.card.get("stage"),
        "leanvision": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def print_robustness(console: Console, record: dict[str, Any]) -> None:
    severities = record["config"]["severities"]
    table = Table(title=f"top-1 under corruption ({record['n']} {record['split']} images, "
                  f"{record['runtime']})", show_header=True)
    table.add_column("corruption")
    for s in severities:
        table.add_column(f"sev {s}", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("drop", justify="right")
    for family, row in record["families"].items():
        table.add_row(family, *[percent(row["top1"][str(s)]) for s in severities],
                      percent(row["mean_top1"]), _pts(row["drop"]))
    table.add_section()
    table.add_row("clean", *[""] * len(severities), percent(record["clean_top1"]), "")
    table.add_row("all corruptions (mCA)", *[""] * len(severities),
                  percent(record["mean_corruption_top1"]), _pts(record["mean_drop"]))
    console.print(table)


def _pts(x: float) -> str:
    return f"{100 * x:.2f} pts"


__all__ = ["ROBUSTNESS_FILE", "RobustnessConfig", "robustness"]


def print_summary_line(console: Console, result: dict[str, Any]) -> None:
    """The line `leanvision robustness` ends with."""
    console.print(f"clean {100 * result['clean_top1']:.2f}%, mean corruption accuracy "
                  f"{100 * result['mean_corruption_top1']:.2f}% (drop "
                  f"{100 * result['mean_drop']:.2f} pts); {result['json']}", highlight=False)
