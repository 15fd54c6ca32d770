"""`leanvision.adapt`: unsupervised domain adaptation of an artifact to an unlabelled target
folder, written as a new artifact (stage "adapt", the parent, the method and the target in its
card).

- adabn (default): re-estimate batch-norm statistics on the target; seconds, no labels, no
  training (see adabn.py).
- dann: fine-tune on the labelled source data (the card's data or `data`) with a gradient-
  reversal domain classifier against the target (see dann.py), then AdaBN on the target, so the
  running statistics are the target's, as its batches were during training.

Every check (method, target folder, batch norm, source data, output folder) runs before
anything is written; a failure afterwards removes what this call wrote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..artifact import CARD_FILE, WEIGHTS_FILE, Artifact, save_artifact
from ..compress.stage import (
    child_card,
    claim,
    data_of,
    default_out,
    open_parent,
    release,
    safe_name,
)
from ..data import decoding_for
from ..data.unlabeled import UnlabeledImages, load_unlabeled
from ..errors import ConfigError, DatasetError
from ..evaluate import evaluate_records, evaluation_records, model_cost
from ..formatting import percent
from ..hardware import choose_hardware
from ..setting import setting
from ..training.report import print_outputs
from .adabn import adabn, batch_norm_layers

ADAPT_METHODS = ("adabn", "dann")
# Fewer images estimate per-channel means and variances too noisily to improve on the source's.
MIN_TARGET_IMAGES = 32
KEPT_METRICS = ("n", "top1", "loss", "macro_f1", "ece")


@dataclass
class AdaptConfig:
    method: str = setting("adabn", "adabn (re-estimate batch-norm statistics; seconds) or dann "
                          "(domain-adversarial fine-tuning; stronger).")
    min_target_images: int = setting(MIN_TARGET_IMAGES, "Refuse target folders with fewer "
                                     "images.")
    batch_size: int = setting(256, "AdaBN: images per statistics batch (256); DANN: training "
                              "batch.")
    # beside cross-entropy
    domain_weight: float = setting(1.0, "DANN: weight of the domain loss.")
    target_bn: bool = setting(True, "DANN: finish with AdaBN on the target.")
    seed: int = 0

    def __post_init__(self) -> None:
        self.method = str(self.method).strip().lower()
        if self.method not in ADAPT_METHODS:
            raise ConfigError(f"--method {self.method!r} is not an adaptation method; choose "
                              f"{' or '.join(ADAPT_METHODS)}")
        if self.min_target_images < 2:
            raise ConfigError(f"--min-target-images must be at least 2 (batch statistics need "
                              f"two images), got {self.min_target_images}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be at least 2, got {self.batch_size}")
        if not self.domain_weight > 0:
            raise ConfigError(f"--domain-weight must be > 0, got {self.domain_weight}")


@dataclass
class AdaptOptions:
    """adapt's settings as `leanvision adapt` offers them; a plain field takes the help of
    AdaptConfig's or TrainConfig's (DANN's fine-tuning settings are TrainConfig fields)."""

    artifact: str = setting(None, "Artifact folder to adapt.")
    target: str = setting(None, "Folder of unlabelled images from the deployment domain (flat "
                          "or in subfolders).")
    method: str = "adabn"
    data: str | None = setting(None, "DANN: labelled source data (default: the data named in "
                               "the artifact's card).")
    out: str | None = None
    min_target_images: int = MIN_TARGET_IMAGES
    epochs: int | None = setting(None, "DANN: fine-tuning epochs (default 10).")
    batch_size: int | None = None
    lr: float | None = setting(None, "DANN: rate (default 1e-3 AdamW).")
    optimizer: str | None = setting(None, "DANN: optimizer.")
    augment: str | None = setting(None, "DANN: none, light, strong.")
    domain_weight: float = 1.0
    target_bn: bool = True
    skip_bad_images: bool = setting(False, "Adapt without unreadable images (target, and DANN's "
                                    "source data).")
    device: str = "auto"
    precision: str | None = setting(None, "DANN: auto, fp32, bf16 or fp16.")
    seed: int = 0


@decoding_for("adapt")
def adapt(artifact: str | Path | Artifact, target: str | Path, out: str | Path | None = None,
          *, method: str = "adabn", data: str | Path | None = None,
          min_target_images: int = MIN_TARGET_IMAGES, batch_size: int | None = None,
          domain_weight: float = 1.0, target_bn: bool = True, seed: int = 0,
          device: str = "auto", skip_bad_images: bool = False, progress: bool = False,
          console: Console | None = None, **train_settings: Any) -> dict[str, Any]:
    """Adapt ARTIFACT to the unlabelled images under TARGET and write a new artifact to `out`
    (default runs/adapt/<name>-<method>-<stamp>). `train_settings` (DANN only) are TrainConfig
    fields for the fine-tuning: epochs, lr, optimizer, augment, precision, ..."""
    console = console or Console(stderr=True)
    cfg = AdaptConfig(method=method, min_target_images=min_target_images,
                      batch_size=(batch_size or 256) if method != "dann" else 256,
                      domain_weight=domain_weight, target_bn=target_bn, seed=seed)
    if cfg.method == "adabn" and train_settings:
        raise ConfigError("AdaBN trains nothing, so " + ", ".join(
            "--" + k.replace("_", "-") for k in sorted(train_settings))
            + " do not apply; drop them or pass --method dann")
    art = open_parent(artifact, "adapt")
    bn_layers = batch_norm_layers(art.model)
    if cfg.method == "adabn" and not bn_layers:
        raise ConfigError(f"{art.path} ({art.card['arch']}) has no batch-norm layers with "
                          "running statistics, so AdaBN has nothing to re-estimate; use "
                          "--method dann, which aligns the features with a domain classifier")
    data_spec = data_of(art, data, None)  # without it, the source accuracy is not measured
    dann_plan = None
    if cfg.method == "dann":
        from .dann_stage import plan_dann  # the recipe and data checks DANN alone needs

        # The flag covers the labelled source images DANN trains on, too.
        skip = {"skip_bad_images": True} if skip_bad_images else {}
        dann_plan = plan_dann(art, data_spec, batch_size, {**train_settings, **skip}, seed=seed,
                              device=device, progress=progress)
    out_dir = Path(out) if out is not None else default_adapt_dir(art, cfg.method)
    created = claim(out_dir)
    target_images = load_unlabeled(target, art.input_size, min_images=cfg.min_target_images,
                                   need="to estimate the target domain's statistics; a few "
                                   "hundred or more estimate them well",
                                   skip_bad_images=skip_bad_images, progress=progress)
    console.print(f"[bold]leanvision adapt[/bold] {art.path} → {out_dir}: {cfg.method} on "
                  f"{len(target_images)} target images from {target_images.folder}")
    for note in target_images.notes:
        console.print(f"  target: {note}", style="dim")
    try:
        if cfg.method == "adabn":
            result = _run_adabn(art, target_images, cfg, out_dir, data_spec, device, console)
        else:
            from .dann_stage import run_dann

            result = run_dann(art, target_images, cfg, out_dir, dann_plan, device, console,
                              _target_block(target_images, cfg), finish=_finish)
    except BaseException:
        release(out_dir, created)
        raise
    print_adapt_summary(console, result, art)
    print_outputs(console, out_dir, [WEIGHTS_FILE, CARD_FILE, "metrics.jsonl", "config.json"])
    return result


def _run_adabn(art: Artifact, target: UnlabeledImages, cfg: AdaptConfig, out_dir: Path,
               data_spec: str | None, device: str, console: Console) -> dict[str, Any]:
    hw = choose_hardware(device, "fp32")
    before = _bn_state(art.model)
    done = adabn(art.model, target.images, art.mean, art.std, device=hw.device,
                 batch_size=cfg.batch_size, seed=cfg.seed)
    block = {**_target_block(target, cfg), "adabn": {**done, **_bn_shift(before, art.model)}}
    return _finish(art, art.model, block, out_dir, data_spec, art.card.get("config", {}),
                   console, device)


def _finish(parent: Artifact, model: torch.nn.Module, block: dict[str, Any], out_dir: Path,
            data_spec: str | None, config: dict[str, Any], console: Console,
            device: str, extra_card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the adapted artifact: the parent's architecture and preprocessing, this stage's
    lineage and block, and the source accuracy of the adapted weights (where the data is
    there), so that a drop on the source domain is visible beside the parent's."""
    card = child_card(parent, "adapt",
                      config={**config, "data": data_spec} if data_spec else config)
    card.update(extra_card or {})
    card["adapt"] = block
    save_artifact(out_dir, model, {**card, "metrics": {}})
    adapted = Artifact(path=out_dir, card=card, model=model)
    metrics, note = source_metrics(adapted, data_spec, device)
    if note:
        console.print(f"  source accuracy not measured: {note}", style="yellow")
        block["source_metrics_note"] = note
    card["metrics"] = {**metrics, **model_cost(model, parent.input_size, out_dir)}
    save_artifact(out_dir, model, card)
    return {"artifact": str(out_dir), "parent": str(parent.path), "method": block["method"],
            "target": block["target"], "target_images": block["images"],
            "metrics": card["metrics"], "adapt": block}


def source_metrics(art: Artifact, data_spec: str | None,
                   device: str) -> tuple[dict[str, Any], str | None]:
    """Top-1 etc. of `art` on the val and test splits of the source data, chosen as evaluate
    chooses them; ({}, reason) when the data is not there."""
    if not data_spec:
        return {}, "the parent's card names no training data (pass --data)"
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        try:
            name, records, spec = evaluation_records(art, data_spec, split)
        except ConfigError:
            continue  # the data has no such split
        except DatasetError as exc:
            return metrics, str(exc)
        result = evaluate_records(art, records, name, spec, skip_bad_images=True, device=device)
        metrics[name] = {k: v for k, v in result["metrics"].items()
                         if k in KEPT_METRICS or k in ("per_class", "confusion")}
    return metrics, None


def _target_block(target: UnlabeledImages, cfg: AdaptConfig) -> dict[str, Any]:
    return {"method": cfg.method, "target": str(target.folder.resolve()),
            "images": len(target), "files": target.files,
            "skipped_images": [f"{item}: {reason}" for item, reason in target.skipped],
            "target_sizes": dict(list(target.sizes.items())[:10]),
            "target_modes": target.modes, "notes": target.notes,
            "config": {"min_target_images": cfg.min_target_images,
                       "batch_size": cfg.batch_size, "seed": cfg.seed,
                       **({"domain_weight": cfg.domain_weight, "target_bn": cfg.target_bn}
                          if cfg.method == "dann" else {})}}


def _bn_state(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: (m.running_mean.clone(), m.running_var.clone())
            for name, m in batch_norm_layers(model)}


def _bn_shift(before: dict[str, tuple[torch.Tensor, torch.Tensor]],
              model: torch.nn.Module) -> dict[str, float]:
    """How far the statistics moved, in source standard deviations (0: the same domain)."""
    shifts = []
    for name, m in batch_norm_layers(model):
        mean, var = before[name]
        shifts.append(float(((m.running_mean - mean).abs() / var.sqrt().clamp(min=1e-5)).mean()))
    return {"mean_shift_in_source_std": sum(shifts) / len(shifts) if shifts else 0.0,
            "first_layer_shift": shifts[0] if shifts else 0.0}


def print_adapt_summary(console: Console, result: dict[str, Any], parent: Artifact) -> None:
    block = result["adapt"]
    table = Table(title=f"adapt ({block['method']}) result", show_header=True)
    table.add_column("source split")
    table.add_column("parent top-1", justify="right")
    table.add_column("adapted top-1", justify="right")
    parent_metrics = parent.card.get("metrics", {})
    for split in ("val", "test"):
        entry = result["metrics"].get(split)
        if isinstance(entry, dict):
            before = (parent_metrics.get(split) or {}).get("top1")
            table.add_row(split, percent(before), percent(entry["top1"]))
    console.print(table)
    details = [f"{block['images']} target images from {block['target']}"]
    if "adabn" in block:
        shift = block["adabn"].get("mean_shift_in_source_std")
        details.append(f"{block['adabn']['layers']} batch-norm layers re-estimated on the target"
                       + (f"; their means moved {shift:.2f} source std on average"
                          if shift is not None else ""))
    if "dann" in block:
        d = block["dann"]
        acc = d.get("domain_accuracy_last10pct")
        details.append(f"DANN {d['steps']} steps; the domain classifier ended at "
                       f"{'—' if acc is None else f'{100 * acc:.0f}%'} (50%: the features no "
                       "longer tell the domains apart)")
    for line in details:
        console.print(line)
    console.print("source accuracy shows what the adaptation cost on the training domain; "
                  "measure the target with `leanvision eval ARTIFACT --data LABELLED_TARGET`",
                  style="dim")


def default_adapt_dir(art: Artifact, method: str) -> Path:
    return default_out("adapt", f"{safe_name(art.path.name)}-{method}")
