"""The DANN branch of `adapt`: settings and checks before anything is written (plan_dann), then
fine-tuning through the ordinary training stage (train_on) with the DANN criterion (run_dann)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..artifact import Artifact, load
from ..data import DataSource, load_data
from ..data.partition import Partition, partition
from ..errors import ConfigError
from ..hardware import choose_hardware
from ..training.api import StartModel, train_on
from ..training.config import TrainConfig
from ..training.recipe import data_stats, resolve_recipe
from .adabn import adabn, batch_norm_layers
from .dann import DannCriterion, classifier_layer

DANN_EPOCHS = 10


@dataclass
class DannPlan:
    source: DataSource
    cfg: TrainConfig  # as given; the recipe resolves it inside train_on
    resolved: TrainConfig  # what train_on will run
    parts: Partition


def plan_dann(art: Artifact, data_spec: str | None, batch_size: int | None,
              settings: dict[str, Any], *, seed: int, device: str, progress: bool) -> DannPlan:
    if not data_spec:
        raise ConfigError("DANN learns from labelled source images beside the target ones, and "
                          f"{art.path}'s card names no training data; pass --data")
    if "model" in settings or "data" in settings:
        raise ConfigError("adapt keeps the artifact's architecture and takes the source data "
                          "as --data; drop 'model' / 'data'")
    try:
        classifier_layer(art.model)
    except ValueError as exc:
        raise ConfigError(f"{art.path} ({art.card['arch']}): {exc}") from None
    parent = art.card.get("config", {})
    base: dict[str, Any] = {
        "data": data_spec, "model": art.card["arch"], "seed": seed,
        # the parent's hold-out: its validation images stay unseen by the fine-tuning too
        "val_fraction": parent.get("val_fraction", 0.1), "epochs": DANN_EPOCHS,
        "warmup_epochs": 0.0, "tta": art.tta, "device": device, "progress": progress,
        # a parent trained without its unreadable images reads the same data the same way
        "skip_bad_images": bool(parent.get("skip_bad_images", False))}
    if "optimizer" not in settings and "lr" not in settings:
        # a trained network needs a gentle rate, as in pruning's fine-tuning
        base.update({"optimizer": "adamw", "lr": 1e-3})
    if batch_size is not None:
        base["batch_size"] = batch_size
    cfg = TrainConfig.from_dict({**base, **{k: v for k, v in settings.items()
                                            if v is not None}})
    source = load_data(cfg.data)
    if list(source.classes) != art.classes:
        raise ConfigError(f"the source data {source.spec} has classes {source.classes[:10]}, "
                          f"the artifact {art.classes[:10]}; DANN fine-tunes the classifier on "
                          "the source labels, so pass the data the artifact was trained on")
    parts = partition(source, cfg.val_fraction, cfg.seed)
    resolved, _ = resolve_recipe(cfg, data_stats(parts.train, len(source.classes)))
    return DannPlan(source, cfg, resolved, parts)


def run_dann(art: Artifact, target, acfg, out_dir: Path, plan: DannPlan, device: str,
             console: Console, block: dict[str, Any], *, finish: Callable) -> dict[str, Any]:
    resolved = plan.resolved
    hw = choose_hardware(resolved.device, resolved.precision, resolved.channels_last)
    n_train = len(plan.parts.train)
    steps = resolved.epochs * max(1, n_train // min(resolved.batch_size, n_train))
    criterion = DannCriterion(art.model, target.images, mean=art.mean, std=art.std, hw=hw,
                              total_steps=steps, augment=resolved.augment != "none",
                              seed=resolved.seed, domain_weight=acfg.domain_weight,
                              label_smoothing=resolved.label_smoothing or 0.0)
    try:
        train_on(plan.source, plan.cfg, out_dir, console=console, parts=plan.parts,
                 extra_card={"adapt": block}, start=StartModel.from_artifact(art),
                 stage="adapt", parent=str(art.path), criterion=criterion)
    finally:
        block["dann"] = criterion.close()
    trained = load(out_dir)
    if acfg.target_bn and batch_norm_layers(trained.model):
        # Training forwarded source and target batches separately, so each was normalised with
        # its own statistics; the running averages mix both. The deployed model sees only the
        # target: give it the target's.
        block["adabn"] = adabn(trained.model, target.images, art.mean, art.std,
                               device=hw.device, seed=acfg.seed)
    return finish(art, trained.model, block, out_dir, plan.cfg.data, trained.card["config"],
                  console, device, extra_card={"training": trained.card.get("training", {})})
