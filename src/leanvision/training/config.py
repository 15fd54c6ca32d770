"""The training configuration: one typed dataclass, grouped by concern, validated on creation.

`None` means "let the recipe decide from the data" (see recipe.py); a value the user set is never
rewritten. Unknown keys are refused with a close-match suggestion.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError
from ..tta import TTA_MODES

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "triangle", "plateau", "constant")
RECIPES = ("auto", "standard", "fast")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
BALANCE = ("none", "loss", "sampler")
PSEUDO_LABELS = ("epoch", "step", "teacher")  # training/semi.py, training/self_training.py
THRESHOLDS = ("flex", "fixed")
# settings only one family of --unlabeled methods reads
FIXMATCH_ONLY = ("mu", "lambda_u", "thresholds")
SELF_TRAINING_ONLY = ("rounds", "teacher_epochs", "teacher", "pseudo_share")


@dataclass
class TrainConfig:
    # --- data ---
    data: str = "builtin:digits"
    val_fraction: float = 0.1
    img_size: int | None = None  # None: the model's own input size
    skip_bad_images: bool = False
    balance: str = "none"  # class imbalance: weighted loss or a balanced sampler
    cache_dir: str | None = None
    # --- recipe: which defaults fill the unset (None) settings ---
    recipe: str = "auto"  # auto: "fast" for small images with enough data, else "standard"
    # --- model ---
    model: str | None = None  # None: chosen from the image size and whether weights exist
    pretrained: bool | str | None = None  # None: use local weights when the model has them
    finetune: str = "auto"
    freeze_stages: int = 2
    dropout: float | None = None
    # --- optimisation ---
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    l1: float = 0.0
    schedule: str | None = None
    warmup_epochs: float | None = None
    step_size: int | None = None  # epochs between decays for schedule=step
    gamma: float = 0.1
    label_smoothing: float | None = None
    grad_clip: float | None = None
    norm_lr_scale: float | None = None  # lr multiplier for biases and norm parameters
    ema: bool | None = None
    ema_decay: float | None = None
    lookahead: bool | None = None  # EMA copied back into the weights (airbench's lookahead)
    early_stop: int | None = None  # patience in epochs; None: off
    # minutes for the whole run, decode to saved artifact (probe / lp-ft size their work to it)
    time_budget: float | None = None
    # --- augmentation ---
    augment: str = "light"
    translate: int | None = None  # random shift in pixels; None: 1/8 of the side
    mixup: float = 0.0
    cutmix: float = 0.0
    # --- semi-supervised (FixMatch): unlabelled images of the same classes ---
    unlabeled: str | None = None  # folder of unlabelled images; None: supervised only
    mu: int = 7  # unlabelled images per labelled one in each step
    # confidence a pseudo-label needs to count; None: 0.95 (FixMatch), none (teacher)
    threshold: float | None = None
    lambda_u: float = 1.0  # weight of the unlabelled consistency loss
    # "teacher": a converged teacher labels every image once per round, a student learns from
    # both (training/self_training.py; the default because it gained over the labels alone
    # on CIFAR-10 with 4,000 labels where FixMatch lost at the same time budget: the figures
    # are in bench/README.md and bench/results/few_labels-*.json); "epoch": FixMatch with
    # pseudo-labels taken once per epoch and only confident images forwarded (cheap); "step":
    # the paper's per-step weak-view labels (see training/semi.py)
    pseudo_labels: str = "teacher"
    # "teacher": students trained, each the next one's teacher (a second round bought nothing
    # on CIFAR-10 with 4,000 labels: bench/results/few_labels-2rounds.json)
    rounds: int = 1
    teacher_epochs: int | None = None  # "teacher": the teacher's epochs; None: the recipe's
    teacher: str | None = None  # "teacher": an artifact to use as the first teacher
    pseudo_share: float = 0.5  # "teacher": the most confident share of each class kept
    # "flex": FlexMatch's class-wise thresholds, low while a class is little learnt, rising to
    # `threshold`; "fixed": `threshold` for every class. Applies to pseudo_labels="epoch".
    thresholds: str = "fixed"
    # --- inference ---
    tta: str | None = None  # test-time augmentation, saved in the card for eval and predict
    # --- hardware ---
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    workers: int | None = None
    # --- bookkeeping ---
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        # Paths given through the Python API are kept as text: the config goes into JSON
        # (checkpoint, card) and must read back the same.
        for name in ("data", "cache_dir", "unlabeled", "teacher"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, str(value))
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
