"""`leanvision.train` (the function): data → decoded cache → model → fit → artifact with metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from .. import tracking
from ..artifact import CARD_FILE, Artifact
from ..data import DataSource, DecodedImages, ImageChecks, decode_images, load_data
from ..data.partition import Partition, concat_records, partition
from ..errors import ConfigError, DatasetError
from ..hardware import choose_hardware, describe_machine
from ..io import run_folder, write_json
from ..kinds import training_kind
from ..models import create_model, model_preprocessing
from ..models.finetune import plan_finetune
from . import distributed
from .budget import budget_epochs
from .checkpoint import CHECKPOINT_FILE, find_checkpoint, load_checkpoint
from .config import TrainConfig
from .finish import write_artifact
from .loop import FitInputs, fit
from .param_setup import _chain_epoch_start, finetune_groups
from .recipe import data_stats, resolve_recipe
from .report import print_config, print_counts
from .transfer_run import (
    CACHED_STRATEGIES,
    FINAL_SHARE,
    fit_transfer,
    precheck_budget,
    transfer_ready,
)


@dataclass
class StartModel:
    """A trained network a stage continues from (a pruned model, a student artifact), with the
    card facts that must travel with it into the new artifact."""

    model: torch.nn.Module
    arch: str
    input_size: tuple[int, int]
    mean: list[float]
    std: list[float]
    arch_kwargs: dict = field(default_factory=dict)
    transforms: list[dict] = field(default_factory=list)
    interpolation: str = "bilinear"
    tta: str = "none"
    # Its frozen part is still the pretrained one (trained by the cached transfer path), so a
    # continuation may train only the top on cached activations too.
    transfer: bool = False
    # Stages of it that train on cached activations (None: the transfer recipe's own count).
    top_stages: int | None = None

    @classmethod
    def from_artifact(cls, art: Artifact, model: torch.nn.Module | None = None,
                      transforms: list[dict] | None = None) -> StartModel:
        """`model`/`transforms`: the artifact's network after a further edit (e.g. pruning)."""
        return cls(model=model if model is not None else art.model, arch=art.card["arch"],
                   input_size=art.input_size, mean=art.mean, std=art.std,
                   arch_kwargs=dict(art.card.get("arch_kwargs", {})),
                   transforms=list(transforms if transforms is not None
                                   else art.card.get("transforms", [])),
                   interpolation=art.card["input"].get("interpolation", "bilinear"),
                   tta=art.tta)


def train(data: str | Path = "builtin:digits", out: str | Path | None = None, *,
          resume: str | Path | None = None, console: Console | None = None,
          on_epoch_end: Callable[[int, torch.nn.Module], dict | None] | None = None,
          nproc: int = 1, port: int | None = None, track: bool = False,
          track_uri: str | None = None, **settings: Any) -> dict[str, Any]:
    """Train a classifier on DATA and write an artifact folder; returns the run summary.

    `settings` are TrainConfig fields (model, epochs, batch_size, lr, optimizer, ...); unset ones
    come from the recipe for the data's size. With `resume`, the run continues exactly where its
    last checkpoint stopped (only `epochs` may be raised). `on_epoch_end(epoch, model)` may
    return extra figures to log per epoch; they never steer training.

    `nproc`: data-parallel processes on this machine (batch_size is global; see
    training/distributed.py); `port`: their rendezvous port (default: a free one). Under
    torchrun leave nproc at 1. `track` / `track_uri`: record the run in MLflow (tracking.py).

    With `text_columns` (a CSV's text columns) the model reads each image with its text: see
    leanvision.multimodal (fusion, text_encoder, ... are then accepted too)."""
    kind, settings = training_kind(settings, resume)
    if kind.train is not None:  # another kind of model (images with text, ...) trains itself
        return kind.train(data, out, resume=resume, console=console, on_epoch_end=on_epoch_end,
                          nproc=nproc, port=port, track=track, track_uri=track_uri, **settings)
    console = console or Console(stderr=True)
    state = None
    if resume is not None:
        ckpt_file = find_checkpoint(resume)
        state = load_checkpoint(ckpt_file)
        cfg = _resumed_config(state["config"], settings)
        out_dir = ckpt_file.parent
    else:
        cfg = TrainConfig.from_dict({"data": str(data), **settings})
        out_dir = Path(out) if out is not None else default_run_dir(cfg)
    distributed.check_nproc(nproc, cfg.device, cfg.batch_size)
    if cfg.unlabeled and (nproc > 1 or distributed.launched()):
        raise ConfigError("--unlabeled (FixMatch) trains in one process; drop --nproc")
    if nproc > 1:
        if resume is None:
            check_fresh(out_dir)
        again = f"--resume {out_dir} --nproc {nproc}"
        return distributed.launch(
            train, dict(data=data, out=out_dir, resume=resume, on_epoch_end=on_epoch_end,
                        track=track, track_uri=track_uri, **settings),
            nproc=nproc, port=port,
            resume_hint=f"the last finished epoch's checkpoint is in {out_dir}: continue "
                        f"with `leanvision train {again}`")
    with distributed.process_group(cfg.device) as w:
        out_dir = distributed.share(out_dir, w)  # rank 0's folder (its name has a timestamp)
        if resume is None:
            check_fresh(out_dir)
        if not w.main:
            console = Console(stderr=True, quiet=True)
        source = load_data(cfg.data)
        params = {**cfg.to_dict(), "processes": w.size}
        with tracking.tracked_run(track and w.main, track_uri if w.main else None,
                                  stage="train", params=params, folder=out_dir) as run:
            if cfg.unlabeled and cfg.pseudo_labels == "teacher":
                from .semi.self_training import self_train

                summary = self_train(source, cfg, out_dir, console=console,
                                     on_epoch_end=on_epoch_end)
            else:
                summary = train_on(source, cfg, out_dir, state=state, console=console,
                                   on_epoch_end=on_epoch_end)
            if run is not None:
                run.finish(out_dir)
        return summary


def train_on(source: DataSource, cfg: TrainConfig, out_dir: Path, *,
             state: dict | None = None, console: Console,
             parts: Partition | None = None, extra_card: dict | None = None,
             on_epoch_end: Callable | None = None, start: StartModel | None = None,
             stage: str = "train", parent: str | None = None,
             criterion: Callable | None = None,
             epoch_hook: Callable[[int, torch.nn.Module], None] | None = None) -> dict[str, Any]:
    """Fit a model on `source` and write an artifact to `out_dir`.

    Stages pass `start` (continue from a trained, possibly pruned, network instead of creating
    `cfg.model`), their `stage` name and `parent` artifact for the card's lineage, and a
    `criterion(logits, targets, inputs, indices)` in place of cross-entropy, and an
    `epoch_hook(epoch, model)` that may edit the model at the start of every epoch (soft filter
    pruning zeroes filters there)."""
    started = time.perf_counter()
    distributed.join(cfg.device)  # a stage launched by torchrun / nproc reaches DDP here
    parts = parts or partition(source, cfg.val_fraction, cfg.seed)
    num_classes = len(source.classes)
    notes: list[str] = []
    stats = data_stats(parts.train, num_classes)
    if state is None:
        cfg, notes = resolve_recipe(cfg, stats)
    hw = choose_hardware(cfg.device, cfg.precision, cfg.channels_last)

    # Seeded init and augmentation: two runs with the same config are the same run.
    torch.manual_seed(cfg.seed)
    start, pre, fresh = _start_model(cfg, num_classes, start, resumed=state is not None)
    model, input_size = start.model, tuple(start.input_size)
    strategy, cached = _plan(cfg, start, fresh, state is not None, len(parts.train) / num_classes,
                             stats.median_side)
    if cached:
        notes.append(f"finetune = {strategy}: the frozen part runs once; the rest trains on "
                     "its cached output")
    print_config(console, cfg, notes, hw, input_size, out_dir, stage=stage)
    for warning in [*source.warnings, *out_inside_data(out_dir, cfg.data)]:
        console.print(f"warning: {warning}", style="yellow", highlight=False)
    if cached:
        n_images = len(parts.train) + (len(parts.val) if parts.val is not None else 0)
        precheck_budget(cfg, model, strategy, input_size, hw, pre["mean"], pre["std"], n_images,
                        top_stages=start.top_stages)

    train_imgs, val_imgs = decode_partition(parts, input_size, cfg)
    print_counts(console, cfg, source.classes, train_imgs, val_imgs, parts)
    skipped = train_imgs.bad + (val_imgs.bad if val_imgs is not None else [])
    budget_record: dict[str, Any] = {}
    if not cached and state is None:
        cfg, budget_record = budget_epochs(
            cfg, model, input_size, hw, len(train_imgs),
            len(val_imgs) if val_imgs is not None else 0, num_classes, started, console,
            custom_criterion=criterion is not None)

    inputs, semi = _fit_inputs(cfg, model, input_size, pre, fresh, cached, strategy, train_imgs,
                               val_imgs, num_classes, criterion, on_epoch_end, epoch_hook,
                               console)
    if semi is not None:
        extra_card = {**(extra_card or {}), "semi_supervised": semi.block}
    w = distributed.world()
    if cfg.time_budget is not None and w.size == 1:  # ranks would not agree on when to stop
        inputs.deadline = started + cfg.time_budget * 60 * (1 - FINAL_SHARE)
    if w.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", {"config": cfg.to_dict(), "recipe_notes": notes,
                                             "finetune": strategy, "processes": w.size,
                                             "machine": describe_machine()})
    transfer = None
    if cached:
        result, transfer = fit_transfer(inputs, cfg, hw, out_dir, strategy, console, started,
                                        top_stages=start.top_stages)
    else:
        result = fit(inputs, cfg, hw, out_dir, resume=state, console=console)
    if not w.main:  # rank 0 evaluates and writes the artifact; the others get its summary
        return distributed.share(None, w)

    if semi is not None:
        extra_card["semi_supervised"] = {**semi.block, **semi.criterion.record()}
    training = {k: v for k, v in (("transfer", transfer), ("time_budget", budget_record)) if v}
    return distributed.share(write_artifact(
        out_dir, model, result, start, pre, source, parts, train_imgs, cfg, hw, console,
        started=started, stage=stage, parent=parent, strategy=strategy, skipped=skipped,
        extra_card=extra_card, extra_training=training), w)


def _fit_inputs(cfg: TrainConfig, model: torch.nn.Module, input_size: tuple[int, int],
                pre: dict[str, Any], fresh: bool, cached: bool, strategy: str,
                train_imgs: DecodedImages,
                val_imgs: DecodedImages | None, num_classes: int, criterion: Callable | None,
                on_epoch_end: Callable | None, epoch_hook: Callable | None,
                console: Console) -> tuple[FitInputs, Any]:
    """What the fit loop needs besides the config, and the semi-supervised set-up (or None)."""
    groups, on_epoch_start = ([], None) if cached else finetune_groups(model, strategy, cfg)
    if epoch_hook is not None:
        on_epoch_start = _chain_epoch_start(on_epoch_start, epoch_hook, model)
    class_w, sample_w = balance_weights(cfg.balance, train_imgs.labels, num_classes)
    semi = None
    if cfg.unlabeled:
        from .semi.setup import fixmatch_criterion

        semi, criterion, on_epoch_start = fixmatch_criterion(
            cfg, model, input_size, num_classes, pre, class_w, criterion, on_epoch_start,
            console, labelled_per_epoch=len(train_imgs))
    inputs = FitInputs(model=model, num_classes=num_classes, param_groups=groups,
                       train=train_imgs, val=val_imgs, mean=pre["mean"], std=pre["std"],
                       class_weights=class_w, sample_weights=sample_w,
                       on_epoch_start=on_epoch_start, on_epoch_end=on_epoch_end,
                       on_ema=semi.criterion.use_teacher if semi is not None else None,
                       criterion=criterion, init_from_data=fresh)
    return inputs, semi


def _plan(cfg: TrainConfig, start: StartModel, fresh: bool, resumed: bool,
          images_per_class: float, median_side: float) -> tuple[str, bool]:
    """(the fine-tuning strategy, whether it trains on cached activations of a frozen part)."""
    continues_transfer = fresh or start.transfer
    strategy = plan_finetune(cfg.finetune, pretrained=bool(cfg.pretrained),
                             images_per_class=images_per_class, epochs=cfg.epochs,
                             freeze_stages=cfg.freeze_stages,
                             cached_top=continues_transfer
                             and transfer_ready(start.model, median_side))
    return strategy, continues_transfer and not resumed and strategy in CACHED_STRATEGIES


def _start_model(cfg: TrainConfig, num_classes: int, start: StartModel | None,
                 resumed: bool) -> tuple[StartModel, dict[str, Any], bool]:
    """(the network to fit, its preprocessing, whether it is fresh from `cfg.model`)."""
    if start is not None:
        return start, {"mean": start.mean, "std": start.std,
                       "interpolation": start.interpolation}, False
    # On resume the weights come from the checkpoint, so no pretrained file is read.
    model = create_model(cfg.model, num_classes, pretrained=False if resumed else cfg.pretrained,
                         drop_rate=cfg.dropout, img_size=cfg.img_size)
    pre = model_preprocessing(model)
    input_size = (cfg.img_size, cfg.img_size) if cfg.img_size else tuple(pre["input_size"])
    return StartModel(model=model, arch=cfg.model, input_size=input_size, mean=pre["mean"],
                      std=pre["std"], arch_kwargs={"img_size": cfg.img_size} if cfg.img_size
                      else {}, interpolation=pre.get("interpolation", "bilinear"),
                      tta=cfg.tta), pre, True


def decode_partition(parts: Partition, input_size: tuple[int, int],
            cfg: TrainConfig) -> tuple[DecodedImages, DecodedImages | None]:
    """One decode of train+val: a single scan (so one message lists every bad file) and one
    cache entry. Train comes first, so both halves are views, not copies, of the decoded set."""
    records = parts.train if parts.val is None else concat_records([parts.train, parts.val])
    decoded = decode_images(records, input_size, ImageChecks(), skip_bad=cfg.skip_bad_images,
                            cache_dir=cfg.cache_dir, progress=cfg.progress, workers=cfg.workers)
    n_train = int(np.searchsorted(decoded.kept, len(parts.train)))
    if n_train == 0:
        raise DatasetError("none of the training images could be decoded; check the files")
    # Every skipped file is reported once, with train's images.
    train = DecodedImages(decoded.images[:n_train], decoded.labels[:n_train],
                          decoded.kept[:n_train], decoded.bad)
    if parts.val is None:
        return train, None
    val = DecodedImages(decoded.images[n_train:], decoded.labels[n_train:],
                        decoded.kept[n_train:] - len(parts.train), [])
    if len(val) == 0:
        raise DatasetError("every validation image was unreadable; fix the images or pass "
                           "--val-fraction 0")
    return train, val


def balance_weights(mode: str, labels: torch.Tensor, num_classes: int):
    """(loss class weights, sampler weights per image) for `--balance MODE`; None where the
    mode does not use one."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    if mode == "loss":
        return counts.sum() / (num_classes * counts), None
    if mode == "sampler":
        return None, (1.0 / counts)[labels].double()
    return None, None


def _resumed_config(saved: dict, settings: dict) -> TrainConfig:
    cfg = TrainConfig.from_dict(saved)
    settings = {k: v for k, v in settings.items() if v is not None}
    extra = sorted(set(settings) - {"epochs", "progress"})
    if extra:
        raise ConfigError("--resume continues a run with its saved settings; only --epochs may "
                          f"change (got {', '.join('--' + k.replace('_', '-') for k in extra)})")
    if "epochs" in settings and settings["epochs"] < cfg.epochs:
        raise ConfigError(f"--epochs {settings['epochs']} is fewer than the run's "
                          f"{cfg.epochs}; resume can only extend training")
    return replace(cfg, **settings)


def out_inside_data(out_dir: Path, data: str) -> list[str]:
    """A warning when the output folder lies inside the data folder: its files would sit
    beside the class folders, and the next scan of the data would take it for a class."""
    folder = Path(data).expanduser()
    if data.startswith("builtin:") or not folder.is_dir():
        return []
    if not out_dir.resolve().is_relative_to(folder.resolve()):
        return []
    return [f"the output folder {out_dir} is inside the data folder {data}: the next run over "
            "the data would read it as a class; write outside the data (default: runs/train/)"]


def check_fresh(out_dir: Path) -> None:
    """Refuse to start a run in a folder that already holds one (resume continues it)."""
    if (out_dir / CHECKPOINT_FILE).exists() or (out_dir / CARD_FILE).exists():
        raise ConfigError(f"{out_dir} already holds a training run; pass --resume {out_dir} to "
                          "continue it, or choose another --out")


def default_run_dir(cfg: TrainConfig) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(cfg.data.replace("builtin:", "")).name)
    return run_folder("train", f"{name}-{cfg.model or 'auto'}")
