"""The default recipe: fill every unset (None) training setting from the data's size.

Each choice is recorded with its reason, printed at the start of the run and saved in the card.
A value the user set is never changed."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from ..data import ImageRecords
from ..models.pretrained import packaged_weights_path
from ..models.split import splittable
from .config import TrainConfig
from .optim import default_lr, default_weight_decay

SMALL_IMAGE_SIDE = 64  # at or below this, a small CNN at 32 px beats a big net's 224 px on CPU
SMALL_DEFAULT_MODEL = "resnet20"
FAST_MODEL = "airnet_m"
# bench/optimizer_study.py (resnet20, CIFAR-10 10k images, each optimizer at its lr-find rate):
# AdamW at 4.9e-3 beat Adadelta, SGD+momentum, RMSprop, Adagrad, Adam and plain SGD.
SCRATCH_ADAMW_LR = 5e-3
FAST_NETS = ("airnet_s", "airnet_m")
FAST_MIN_IMAGES = 5000  # below this, epochs of a few large batches teach too little
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
    return packaged_weights_path(model) is not None


FIXMATCH_THRESHOLD = 0.95


def choose_recipe(cfg: TrainConfig, stats: DataStats) -> str:
    if cfg.recipe != "auto":
        return cfg.recipe
    # The fast recipe is one tuned whole (net, optimizer, rates); a user's own model or
    # optimizer choice gets the standard recipe around it instead.
    fast_ok = (stats.median_side <= SMALL_IMAGE_SIDE and stats.n_train >= FAST_MIN_IMAGES
               and (cfg.model is None or cfg.model in FAST_NETS) and not cfg.pretrained
               and cfg.optimizer in (None, "nesterov"))
    return "fast" if fast_ok else "standard"


def resolve_recipe(cfg: TrainConfig, stats: DataStats) -> tuple[TrainConfig, list[str]]:
    recipe = choose_recipe(cfg, stats)
    notes = [f"recipe = {recipe}" + (" (chosen from the data)" if cfg.recipe == "auto" else "")]
    chosen: dict = {"recipe": recipe}

    def pick(name: str, value, why: str) -> None:
        # The first choice stands: the user's, then the earliest pick with a reason.
        if getattr(cfg, name) is None and name not in chosen:
            chosen[name] = value
            notes.append(f"{name} = {value}: {why}")

    if cfg.unlabeled:  # FixMatch (self-training's students and teacher train supervised)
        pick("threshold", FIXMATCH_THRESHOLD, "FixMatch's threshold")
        pick("label_smoothing", 0.0, "--unlabeled: a pseudo-label needs confidence above "
             "--threshold, and smoothing caps it (at 0.91 for 0.1 over 10 classes)")
    if recipe == "fast":
        _fast(cfg, stats, pick)
    else:
        _standard(cfg, stats, pick, chosen)
    return replace(cfg, **chosen), notes


def _standard(cfg: TrainConfig, stats: DataStats, pick, chosen: dict) -> None:
    small = stats.median_side <= SMALL_IMAGE_SIDE
    model = cfg.model or (SMALL_DEFAULT_MODEL if small else LARGE_DEFAULT_MODEL)
    pick("model", model, f"images are about {stats.median_side} px"
         + (", a small residual CNN at 32 px trains fast on CPU" if small
            else ", a mobile ImageNet net fine-tunes well"))
    local = has_local_weights(model)
    pick("pretrained", local, "local ImageNet weights found" if local
         else "no local weights for this model")
    finetuning = bool(chosen.get("pretrained", cfg.pretrained))
    model = chosen.get("model", cfg.model)
    if finetuning and not small and cfg.finetune in ("auto", "lp-ft", "probe") \
            and (cfg.finetune != "auto" or splittable(model)):
        _transfer(cfg, stats, pick)
        return

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

    pick("optimizer", "adamw", "AdamW fine-tunes pretrained nets robustly" if finetuning
         else "AdamW won the optimizer study (bench/results/optimizer_study.json)")
    optimizer = chosen.get("optimizer", cfg.optimizer)
    if optimizer == "adamw" and not finetuning:
        pick("lr", SCRATCH_ADAMW_LR, "the optimizer study's lr-find rate for AdamW from scratch")
    else:
        pick("lr", default_lr(optimizer, batch), f"the usual rate for {optimizer} at batch "
             f"{batch}")
    pick("weight_decay", default_weight_decay(optimizer), f"the usual decay for {optimizer}")
    pick("momentum", 0.9, "the usual momentum")
    pick("schedule", "cosine", "cosine decay needs no tuning")
    pick("warmup_epochs", 1.0 if epochs >= 10 else 0.0, "a short warmup steadies early steps")
    pick("label_smoothing", 0.1, "mild smoothing regularises the head")
    pick("norm_lr_scale", 1.0, "one rate for every parameter")
    pick("ema", True, "an average of recent weights generalises better than the last")
    pick("lookahead", False, "the EMA is kept beside the weights instead")
    pick("tta", "none", "plain inference")
    steps = max(1, stats.n_train // batch) * epochs
    # Average over roughly the last tenth of training, within [0.9, 0.9999].
    pick("ema_decay", float(np.clip(1 - 10 / steps, 0.9, 0.9999)), f"{steps} optimizer steps")


# The fast recipe: airbench's schedule and settings (Jordan 2024), expressed for a mean-reduced
# loss. airbench's lr is 11.5 per 1024 examples with its step-size correction 1 + 1/(1 - m);
# its weight decay per step works out to 0.0153 / 11.5 of the weights, whatever the batch.
FAST_MOMENTUM = 0.85
FAST_LR_PER_1024 = 11.5 / (1 + 1 / (1 - FAST_MOMENTUM))
FAST_WEIGHT_DECAY = 0.0153 / 11.5
# On a CPU a smaller batch costs almost no throughput and buys twice the steps, so the recipe
# uses 512 (airbench's 1024 suits a GPU's parallelism); the batch sizes and epoch counts
# compared are in bench/README.md and bench/results/fast_recipe*.json (bench/fast_recipe.py).
FAST_BATCH = 512
FAST_STEPS = 13 * (50_000 // FAST_BATCH)  # 13 epochs of CIFAR-10's 50k training images
FAST_MIN_EPOCHS = 13


def _fast(cfg: TrainConfig, stats: DataStats, pick) -> None:
    pick("model", FAST_MODEL, "airbench94's network: a whitened first layer, no residuals, "
         "fast on CPU")
    pick("pretrained", False, "trained from scratch in minutes")
    batch = int(min(FAST_BATCH, 2 ** int(np.log2(max(16, stats.n_train // 16)))))
    pick("batch_size", batch, "large batches keep 2 cores busy; at least 16 steps per epoch")
    batch = cfg.batch_size or batch
    steps_per_epoch = max(1, stats.n_train // batch)
    epochs = int(np.clip(math.ceil(FAST_STEPS / steps_per_epoch), FAST_MIN_EPOCHS, 100))
    pick("epochs", epochs, f"{FAST_STEPS} steps of batch {batch}, the fast recipe's budget")
    pick("optimizer", "nesterov", "airbench's SGD with Nesterov momentum")
    pick("momentum", FAST_MOMENTUM, "airbench's momentum")
    pick("lr", round(FAST_LR_PER_1024 * batch / 1024, 6), f"airbench's rate at batch {batch}")
    pick("weight_decay", FAST_WEIGHT_DECAY, "airbench's decay for a mean-reduced loss")
    pick("norm_lr_scale", 64.0, "batch-norm shifts learn 64x faster (airbench's bias scaler)")
    pick("schedule", "triangle", "linear warmup to 23% then linear decay to 7%")
    pick("warmup_epochs", 0.0, "the triangle schedule warms up by itself")
    pick("label_smoothing", 0.2, "airbench's smoothing")
    pick("ema", False, "lookahead averages the weights instead")
    pick("ema_decay", 0.0, "unused without EMA")
    pick("lookahead", True, "average the weights every 5 steps from epoch 3 and copy back")
    pick("translate", 2, "2-pixel shifts with flips, as airbench")
    pick("tta", "flip-translate", "flip and 1-pixel shifts at inference, +0.5 points")


# Transfer on cached activations (training/transfer.py): the top of a pretrained net trains on
# what its frozen lower part computed once. Settings chosen on the clothing set's validation
# split and held for every data set (bench/results/transfer.json).
TRANSFER_BATCH = 32
TRANSFER_IMAGE_STEPS = 12_000  # about 4 epochs of 3,000 images; more passes over less data
TRANSFER_LR = 3e-4


def _transfer(cfg: TrainConfig, stats: DataStats, pick) -> None:
    pick("batch_size", TRANSFER_BATCH, "batches of cached activations")
    epochs = int(np.clip(round(TRANSFER_IMAGE_STEPS / max(1, stats.n_train)), 3, 30))
    pick("epochs", epochs, f"about {TRANSFER_IMAGE_STEPS} image-steps of the top, 3 to 30 epochs")
    pick("optimizer", "adamw", "AdamW fine-tunes pretrained nets robustly")
    pick("lr", TRANSFER_LR, "a small rate: the head starts trained (LP-FT)")
    pick("weight_decay", 0.05, "AdamW's usual decoupled decay")
    pick("momentum", 0.9, "the usual momentum")
    pick("schedule", "onecycle", "a tenth of warmup, then cosine decay")
    pick("warmup_epochs", 0.0, "the one-cycle schedule warms up by itself")
    pick("label_smoothing", 0.1, "mild smoothing regularises the head")
    pick("dropout", 0.2, "dropout before the classifier, as the net was pretrained")
    pick("norm_lr_scale", 1.0, "one rate for every parameter")
    pick("ema", False, "a few hundred steps: the annealed final weights are the result")
    pick("ema_decay", 0.0, "unused without EMA")
    pick("lookahead", False, "not needed for a short fine-tune")
    pick("tta", "none", "plain inference")
