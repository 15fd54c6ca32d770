"""The training configuration: one typed dataclass, grouped by concern, validated on creation.

`None` means "let the recipe decide from the data" (see recipe.py); a value the user set is never
rewritten. Unknown keys are refused with a close-match suggestion.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError
from ..setting import setting
from ..tta import TTA_MODES

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "triangle", "plateau", "constant")
RECIPES = ("auto", "standard", "fast")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
BALANCE = ("none", "loss", "sampler")
PSEUDO_LABELS = ("epoch", "step", "teacher")  # training/semi/
THRESHOLDS = ("flex", "fixed")
# settings only one family of --unlabeled methods reads
FIXMATCH_ONLY = ("mu", "lambda_u", "thresholds")
SELF_TRAINING_ONLY = ("rounds", "teacher_epochs", "teacher", "pseudo_share")


@dataclass
class TrainConfig:
    # --- data ---
    data: str = setting("builtin:digits", "Folder, CSV file or builtin:digits.")
    val_fraction: float = setting(0.1, "Hold-out for data without a val split.")
    img_size: int | None = setting(None, "Input size; default: the model's.")
    skip_bad_images: bool = setting(False, "Leave out images that cannot be decoded.")
    # class imbalance: weighted loss or a balanced sampler
    balance: str = setting("none", "none, loss (class weights) or sampler.")
    cache_dir: str | None = setting(None, "Folder for decoded images on disk (default: in "
                                    "memory, or ~/.cache/leanvision when they would not fit).")
    # --- recipe: which defaults fill the unset (None) settings ---
    recipe: str = setting("auto", "auto, standard, or fast (airbench-style, for CIFAR-sized "
                          "data).")
    # --- model ---
    model: str | None = setting(None, "Model name (leanvision models); default from the image "
                                "size.")
    pretrained: bool | str | None = setting(None, "auto, yes, no, or a weights file.")
    finetune: str = setting("auto", "auto, full, probe, lp-ft, freeze, lower-lr.")
    freeze_stages: int = setting(2, "Stages kept frozen by --finetune freeze.")
    dropout: float | None = setting(None, "Dropout before the classifier.")
    # --- optimisation ---
    epochs: int | None = setting(None, "Default: from the data's size.")
    batch_size: int | None = setting(None, "Default: from the data's size.")
    lr: float | None = setting(None, "Default: the optimizer's usual rate.")
    optimizer: str | None = setting(None, "sgd, momentum, nesterov, adagrad, rmsprop, adadelta, "
                                    "adam, adamw.")
    momentum: float | None = setting(None, "Momentum of sgd-family optimizers (default: the "
                                     "recipe's).")
    weight_decay: float | None = setting(None, "Default: the recipe's.")
    l1: float = setting(0.0, "L1 penalty on weights.")
    schedule: str | None = setting(None, "cosine, step, onecycle, triangle, plateau, constant.")
    warmup_epochs: float | None = setting(None, "Epochs of linear warm-up (default: the "
                                          "recipe's).")
    step_size: int | None = setting(None, "--schedule step: epochs between decays (default: a "
                                    "third of the run).")
    gamma: float = setting(0.1, "--schedule step: factor of each decay.")
    label_smoothing: float | None = setting(None, "Default: the recipe's.")
    grad_clip: float | None = setting(None, "Clip the gradient norm to this.")
    norm_lr_scale: float | None = setting(None, "LR multiplier for biases and norms.")
    ema: bool | None = setting(None, "Keep an exponential moving average of the weights.")
    ema_decay: float | None = setting(None, "--ema: decay per step (default: the recipe's).")
    # EMA copied back into the weights (airbench's lookahead)
    lookahead: bool | None = setting(None, "Average weights every 5 steps and copy back "
                                     "(airbench).")
    early_stop: int | None = setting(None, "Stop after N epochs without val gain.")
    # decode to saved artifact; probe / lp-ft size their work to it
    time_budget: float | None = setting(None, "Minutes for the whole run (probe, lp-ft): "
                                        "epochs are sized to fit.")
    # --- augmentation ---
    augment: str = setting("light", "none, light (crop+flip), strong.")
    translate: int | None = setting(None, "Random shift in pixels (default 1/8).")
    mixup: float = setting(0.0, "MixUp alpha (0: off).")
    cutmix: float = setting(0.0, "CutMix alpha (0: off).")
    # --- semi-supervised: unlabelled images of the same classes ---
    unlabeled: str | None = setting(None, "Folder of unlabelled images of the same classes: "
                                    "semi-supervised training (self-training with a teacher, "
                                    "or FixMatch).")
    mu: int = setting(7, "FixMatch: unlabelled images per labelled one per step.")
    threshold: float | None = setting(None, "--unlabeled: pseudo-label confidence needed "
                                      "(default 0.95; none with a teacher).")
    lambda_u: float = setting(1.0, "FixMatch: weight of the unlabelled loss.")
    # "teacher" is the default because it gained over the labels alone on CIFAR-10 with 4,000
    # labels where FixMatch lost at the same time budget (the figures are in bench/README.md and
    # bench/results/few_labels-*.json); see training/semi/
    pseudo_labels: str = setting("teacher", "--unlabeled: teacher (self-training: a teacher "
                                 "trained on the labels labels every image once, a student "
                                 "learns from both), epoch (FixMatch, labelled once per epoch, "
                                 "only confident images trained) or step (FixMatch's per-step "
                                 "labels).")
    # a second round bought nothing on CIFAR-10 with 4,000 labels
    # (bench/results/few_labels-2rounds.json)
    rounds: int = setting(1, "--pseudo-labels teacher: students trained, each the next round's "
                          "teacher.")
    teacher_epochs: int | None = setting(None, "--pseudo-labels teacher: the teacher's epochs "
                                         "(default: the recipe's).")
    teacher: str | None = setting(None, "--pseudo-labels teacher: an artifact to use as the "
                                  "first teacher instead of training one.")
    pseudo_share: float = setting(0.5, "--pseudo-labels teacher: the most confident share of "
                                  "each class's images that gets a label.")
    # FlexMatch thresholds rise to `threshold` as a class is learnt; for pseudo_labels="epoch"
    thresholds: str = setting("fixed", "FixMatch: flex (FlexMatch's class-wise thresholds, low "
                              "while a class is little learnt) or fixed (--threshold for all).")
    # --- inference ---
    # saved in the card for eval and predict
    tta: str | None = setting(None, "Test-time augmentation: none, flip, flip-translate, "
                              "multi-crop.")
    # --- hardware ---
    device: str = setting("auto", "auto, cpu or cuda.")
    precision: str = setting("auto", "auto, fp32, bf16 or fp16.")
    channels_last: bool | None = setting(None, "Channels-last memory layout, which lets "
                                         "oneDNN and cuDNN pick faster kernels (default: yes).")
    workers: int | None = setting(None, "Image-decoding worker processes (default: from the "
                                  "CPU count).")
    # --- bookkeeping ---
    seed: int = setting(0, "Seed of the split, the initialisation and the augmentation.")
    progress: bool = setting(True, "Show progress bars (default: when stderr is a terminal).")

    def __post_init__(self) -> None:
        # Paths given through the Python API are kept as text: the config goes into JSON
        # (checkpoint, card) and must read back the same.
        for name in ("data", "cache_dir", "unlabeled", "teacher"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))
        self.pretrained = _pretrained_choice(self.pretrained)
        _one_of("optimizer", self.optimizer, OPTIMIZERS, allow_none=True)
        _one_of("schedule", self.schedule, SCHEDULES, allow_none=True)
        _one_of("recipe", self.recipe, RECIPES)
        _one_of("tta", self.tta, TTA_MODES, allow_none=True)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("device", self.device, DEVICES)
        _one_of("balance", self.balance, BALANCE)
        _one_of("pseudo_labels", self.pseudo_labels, PSEUDO_LABELS)
        _one_of("thresholds", self.thresholds, THRESHOLDS)
        _range("val_fraction", self.val_fraction, 0.0, 0.9)
        _range("epochs", self.epochs, 1, 100_000)
        _range("batch_size", self.batch_size, 1, 1_000_000)
        _range("lr", self.lr, 0.0, 100.0, low_open=True)
        _range("img_size", self.img_size, 8, 4096)
        _range("momentum", self.momentum, 0.0, 1.0)
        _range("translate", self.translate, 0, 64)
        _range("norm_lr_scale", self.norm_lr_scale, 0.0, 1e4, low_open=True)
        _range("weight_decay", self.weight_decay, 0.0, 1.0)
        _range("l1", self.l1, 0.0, 1.0)
        _range("label_smoothing", self.label_smoothing, 0.0, 0.9)
        _range("dropout", self.dropout, 0.0, 0.99)
        _range("mixup", self.mixup, 0.0, 10.0)
        _range("cutmix", self.cutmix, 0.0, 10.0)
        _range("grad_clip", self.grad_clip, 0.0, 1e6, low_open=True)
        _range("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        _range("warmup_epochs", self.warmup_epochs, 0.0, 1000.0)
        _range("early_stop", self.early_stop, 1, 100_000)
        _range("time_budget", self.time_budget, 0.0, 1e6, low_open=True)
        _range("freeze_stages", self.freeze_stages, 0, 100)
        _range("gamma", self.gamma, 0.0, 1.0, low_open=True)
        _range("step_size", self.step_size, 1, 100_000)
        _range("workers", self.workers, 1, 256)
        _range("mu", self.mu, 1, 64)
        _range("threshold", self.threshold, 0.0, 1.0, low_open=True)
        _range("lambda_u", self.lambda_u, 0.0, 100.0)
        _range("rounds", self.rounds, 1, 20)
        _range("pseudo_share", self.pseudo_share, 0.0, 1.0, low_open=True)
        _range("teacher_epochs", self.teacher_epochs, 1, 100_000)
        if self.unlabeled:
            self._refuse_other_methods_settings()

    def _refuse_other_methods_settings(self) -> None:
        """A FixMatch setting under self-training (or the reverse) would be ignored silently."""
        if self.pseudo_labels == "teacher":
            foreign, owner, fix = FIXMATCH_ONLY, "FixMatch (--pseudo-labels epoch|step)", "epoch"
        else:
            foreign, owner, fix = (SELF_TRAINING_ONLY, "self-training (--pseudo-labels teacher)",
                                   "teacher")
        defaults = {f.name: f.default for f in fields(self)}
        for name in foreign:
            if getattr(self, name) != defaults[name]:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} applies to {owner}, not to --pseudo-labels "
                                  f"{self.pseudo_labels}: drop {flag} or pass --pseudo-labels "
                                  f"{fix}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        reject_unknown(values, {f.name for f in fields(cls)}, "training setting")
        return cls(**values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _pretrained_choice(value: bool | str | None) -> bool | str | None:
    """`pretrained` as typed on a command line: auto, yes, no, or a weights file."""
    if not isinstance(value, str):
        return value
    words = {"auto": None, "yes": True, "true": True, "1": True, "no": False, "false": False,
             "0": False}
    return words.get(value.lower(), value)


def _one_of(name: str, value: Any, allowed: tuple[str, ...], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(
            f"{_flag(name)} {value!r} is not supported{suggestion}; choose one of: "
            + ", ".join(allowed)
        )


def _range(
    name: str,
    value: float | None,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if value is None:
        return
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ConfigError(
            f"{_flag(name)} {value} is out of range; use a value in {left}{low}, {high}{right}"
        )


def reject_unknown(values: dict[str, Any], known: set[str], what: str) -> None:
    """An unknown key is an error that names the closest known one (a typo never passes)."""
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"unknown {what} '{key}'{suggestion}")
