"""`leanvision.distill`: train a student on DATA against a teacher artifact's logits.

The student trains through the ordinary fit loop (train_on) with a criterion that asks the
teacher about the very batch the student sees. When augmentation leaves the pixels unchanged the
teacher's answers never change either, so they are computed once for the whole training set."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from ..artifact import Artifact, load, save_artifact
from ..data import DataSource, decoding_for, load_data, normalize
from ..data.partition import partition
from ..errors import ConfigError
from ..hardware import Hardware, choose_hardware, pixel_capped_batch
from ..models import model_preprocessing
from ..setting import setting
from ..tracking import tracked
from ..training import distributed
from ..training.api import StartModel, decode_partition, train_on
from ..training.config import TrainConfig
from ..training.losses import dkd_loss, kd_loss
from ..training.recipe import data_stats, resolve_recipe
from .evidence import Predictions, comparisons, val_predictions
from .stage import check_fresh, default_out, open_parent, safe_name

DISTILL_LOSSES = ("kd", "dkd")
CACHE_MODES = ("auto", "always", "never")
TEACHER_BATCH = 256
# The paper's code warms DKD up over 20 epochs of 240; short runs get a quarter of their length.
DKD_WARMUP_MAX_EPOCHS = 20


@dataclass
class DistillConfig:
    loss: str = setting("kd", "kd (Hinton) or dkd (decoupled KD).")
    temperature: float = setting(4.0, "Softening temperature of both logits.")
    alpha: float = setting(0.9, "KD: weight of the teacher's soft targets.")
    dkd_alpha: float = setting(1.0, "DKD: weight of target-class KD.")
    dkd_beta: float = setting(8.0, "DKD: weight of non-target-class KD.")
    # None: min(20, epochs // 4)
    dkd_warmup_epochs: float | None = setting(None, "DKD: epochs to ramp it in.")
    cache_teacher: str = setting("auto", "auto, always or never: cache the teacher's logits "
                                 "(only without augmentation).")

    def __post_init__(self) -> None:
        if self.loss not in DISTILL_LOSSES:
            raise ConfigError(f"--loss {self.loss!r} is not a distillation loss; choose one of "
                              + ", ".join(DISTILL_LOSSES))
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0 (got {self.temperature}); 4 is usual")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1] (got {self.alpha}): 1 learns from the "
                              "teacher only, 0 from the labels only")
        for flag, value in (("--dkd-alpha", self.dkd_alpha), ("--dkd-beta", self.dkd_beta)):
            if not value >= 0:
                raise ConfigError(f"{flag} must be >= 0 (got {value})")
        if self.dkd_warmup_epochs is not None and not self.dkd_warmup_epochs >= 0:
            raise ConfigError(f"--dkd-warmup-epochs must be >= 0 (got {self.dkd_warmup_epochs})")
        if self.cache_teacher not in CACHE_MODES:
            raise ConfigError(f"--cache-teacher {self.cache_teacher!r} is not supported; choose "
                              "one of " + ", ".join(CACHE_MODES))


@dataclass
class DistillOptions:
    """distill's training settings as `leanvision distill` offers them: TrainConfig fields, unset
    unless given (a plain field takes TrainConfig's help)."""

    data: str = setting(None, "Folder, CSV file or builtin:digits to train on.")
    teacher: str = setting(None, "Trained artifact whose logits teach the student.")
    student: str = setting(None, "Model name (leanvision models) or an artifact folder, e.g. a "
                           "pruned model.")
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = setting(None, "Default: the recipe's rate.")
    optimizer: str | None = setting(None, "Default: the recipe's optimizer.")
    augment: str | None = None
    val_fraction: float | None = None
    device: str = TrainConfig.device
    precision: str = TrainConfig.precision
    seed: int | None = None
    nproc: int = 1
    skip_bad_images: bool | None = setting(None, "Leave out images that cannot be decoded "
                                           "(default: as the parent artifact was trained).")


@dataclass(frozen=True)
class Preprocess:
    """What a network expects of its input tensor."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, art: Artifact) -> Preprocess:
        return cls(tuple(art.input_size), tuple(art.mean), tuple(art.std))


def teacher_input(x: torch.Tensor, student: Preprocess, teacher: Preprocess) -> torch.Tensor:
    """The student's normalised batch [B, 3, h, w] as the teacher expects it [B, 3, H, W]."""
    if student == teacher:
        return x
    view = (1, -1, 1, 1)
    pixels = (x.float() * torch.tensor(student.std, device=x.device).view(view)
              + torch.tensor(student.mean, device=x.device).view(view))
    if student.size != teacher.size:
        # antialias: a plain bilinear downscale aliases the high frequencies the teacher uses.
        pixels = F.interpolate(pixels, size=teacher.size, mode="bilinear", antialias=True,
                               align_corners=False)
    return ((pixels - torch.tensor(teacher.mean, device=x.device).view(view))
            / torch.tensor(teacher.std, device=x.device).view(view))


@torch.no_grad()
def run_teacher(teacher: torch.nn.Module, x: torch.Tensor, student: Preprocess,
                teacher_pre: Preprocess, hw: Hardware) -> torch.Tensor:
    with hw.autocast():
        return teacher(teacher_input(x, student, teacher_pre)).float()


@torch.no_grad()
def cache_teacher_logits(teacher: torch.nn.Module, images: torch.Tensor, student: Preprocess,
                         teacher_pre: Preprocess, hw: Hardware,
                         batch: int = TEACHER_BATCH) -> torch.Tensor:
    """Teacher logits [N, C] for decoded uint8 images [N, 3, h, w], on hw.device."""
    chunks = []
    batch = pixel_capped_batch(batch, images.shape[-2], images.shape[-1])
    for start in range(0, len(images), batch):
        x = normalize(images[start:start + batch].to(hw.device), student.mean, student.std)
        chunks.append(run_teacher(teacher, x, student, teacher_pre, hw))
    return torch.cat(chunks)


class DistillCriterion:
    """`criterion(logits, targets, inputs, indices)` for train_on: the student's loss against
    the teacher's logits for the same images (looked up by index when cached)."""

    def __init__(self, teacher: torch.nn.Module, cfg: DistillConfig, *, student: Preprocess,
                 teacher_pre: Preprocess, hw: Hardware, label_smoothing: float = 0.0,
                 warmup_steps: int = 0, cache: torch.Tensor | None = None) -> None:
        self.teacher, self.cfg, self.hw = teacher, cfg, hw
        self.student, self.teacher_pre = student, teacher_pre
        self.label_smoothing, self.warmup_steps, self.cache = label_smoothing, warmup_steps, cache
        self.steps = 0
        self.teacher_batches = 0  # forward passes of the teacher during training

    def teacher_logits(self, inputs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[indices.to(self.cache.device)].to(inputs.device)
        self.teacher_batches += 1
        return run_teacher(self.teacher, inputs, self.student, self.teacher_pre, self.hw)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor,
                 indices: torch.Tensor) -> torch.Tensor:
        teacher_logits = self.teacher_logits(inputs, indices)
        self.steps += 1
        if self.cfg.loss == "kd":
            return kd_loss(logits, teacher_logits, targets, self.cfg.temperature,
                           self.cfg.alpha, label_smoothing=self.label_smoothing)
        warmup = min(1.0, self.steps / self.warmup_steps) if self.warmup_steps else 1.0
        return dkd_loss(logits, teacher_logits, targets, self.cfg.dkd_alpha, self.cfg.dkd_beta,
                        self.cfg.temperature, warmup=warmup)


# The student's artifact when it is one (a pruned model), else the teacher's.
@tracked("distill", ("student", "teacher"))
@decoding_for("distill")
def distill(data: str | Path, teacher: str | Path, student: str | Path,
            out: str | Path | None = None, *, loss: str = "kd", temperature: float = 4.0,
            alpha: float = 0.9, dkd_alpha: float = 1.0, dkd_beta: float = 8.0,
            dkd_warmup_epochs: float | None = None, cache_teacher: str = "auto",
            console: Console | None = None, nproc: int = 1,
            **train_settings: Any) -> dict[str, Any]:
    """Train STUDENT (a model name, or an artifact folder such as a pruned model) on DATA with
    TEACHER's logits as soft targets; writes a "distill" artifact and returns train's summary
    plus a "distill" block. `train_settings` are TrainConfig fields (epochs, lr, augment, ...).
    Every check (classes, names, flags) runs before anything is written. `nproc`: data-parallel
    processes, as for train (training/distributed.py). skip_bad_images, unless given, is True
    when the teacher (or student artifact) was trained with it, on the same data."""
    if nproc > 1:
        return distributed.relaunch(
            distill, dict(data=data, teacher=teacher, student=student, loss=loss,
                          temperature=temperature, alpha=alpha, dkd_alpha=dkd_alpha,
                          dkd_beta=dkd_beta, dkd_warmup_epochs=dkd_warmup_epochs,
                          cache_teacher=cache_teacher),
            nproc=nproc, settings=train_settings, out=out, what="distillation",
            default_out=lambda: default_distill_dir(str(data), student),
            check_out=lambda folder: check_fresh(folder, run=True))
    console = console or Console(stderr=True)
    if not distributed.world_rank_is_main():
        console = Console(stderr=True, quiet=True)
    dcfg = DistillConfig(loss=loss, temperature=temperature, alpha=alpha, dkd_alpha=dkd_alpha,
                         dkd_beta=dkd_beta, dkd_warmup_epochs=dkd_warmup_epochs,
                         cache_teacher=cache_teacher)
    for key, flag in (("data", "DATA"), ("model", "--student")):
        if key in train_settings:
            raise ConfigError(f"distill takes its {key} as {flag}; drop the '{key}' setting")
    teacher_art, student_art, arch = _open_models(teacher, student, train_settings)
    cfg = TrainConfig.from_dict({"data": str(data), "model": arch, **train_settings})
    source = load_data(cfg.data)
    _check_classes("teacher", teacher_art, source)
    if student_art is not None:
        _check_classes("student", student_art, source)
    use_cache = _cache_decision(dcfg.cache_teacher, cfg)
    out_dir = Path(out) if out is not None else default_distill_dir(cfg.data, student)
    check_fresh(out_dir, run=True)

    parts = partition(source, cfg.val_fraction, cfg.seed)
    main = distributed.world_rank_is_main()
    # Scored before training (a student artifact's network is trained in place) and before
    # the teacher moves to the training device (evaluate leaves a network on the CPU).
    references = {"teacher": val_predictions(teacher_art, parts) if main else None,
                  "start": val_predictions(student_art, parts)
                  if main and student_art is not None else None}
    # The recipe resolves the same way again inside train_on; here it only tells the criterion
    # the epochs, batch size and smoothing the run will use.
    resolved, _ = resolve_recipe(cfg, data_stats(parts.train, len(source.classes)))
    hw = choose_hardware(resolved.device, resolved.precision, resolved.channels_last)
    student_pre = (Preprocess.of(student_art) if student_art is not None
                   else _named_preprocess(arch, cfg.img_size))
    teacher_pre = Preprocess.of(teacher_art)
    teacher_net = teacher_art.model.to(hw.device).eval().requires_grad_(False)
    cached = (_teacher_cache(teacher_net, parts, student_pre, teacher_pre, resolved, hw)
              if use_cache else TeacherCache(n_train=len(parts.train)))
    n_train = cached.n_train
    steps_per_epoch = max(1, n_train // min(resolved.batch_size, n_train))
    warmup_epochs = (dcfg.dkd_warmup_epochs if dcfg.dkd_warmup_epochs is not None
                     else min(DKD_WARMUP_MAX_EPOCHS, resolved.epochs // 4))
    criterion = DistillCriterion(teacher_net, dcfg, student=student_pre, teacher_pre=teacher_pre,
                                 hw=hw, label_smoothing=resolved.label_smoothing or 0.0,
                                 warmup_steps=round(warmup_epochs * steps_per_epoch),
                                 cache=cached.logits)

    block = _card_block(dcfg, teacher_art, student, use_cache, warmup_epochs)
    console.print(f"teacher {teacher_art.path}: " + (
        f"logits cached for {n_train} training images in {cached.seconds}s" if use_cache
        else "run on every batch (augmentation changes the pixels each epoch)"))
    summary = train_on(source, cfg, out_dir, console=console, parts=parts,
                       extra_card={"distill": block}, start=_start(student_art),
                       stage="distill", parent=str((student_art or teacher_art).path),
                       criterion=criterion)
    judged = _judge_student(out_dir, references, parts, console) if main else {}
    summary["distill"] = {**block, **judged, "teacher_input_adapted": student_pre != teacher_pre,
                          "teacher_cache_seconds": cached.seconds,
                          "teacher_train_top1": cached.train_top1,
                          "teacher_batches": criterion.teacher_batches}
    return summary


def _judge_student(out_dir: Path, references: dict[str, Predictions | None], parts,
                   console: Console) -> dict[str, Any]:
    """The distilled student against the teacher and, for a student artifact (a pruned
    network being recovered), against itself before distillation, image by image on the
    validation images; printed, and added to the card's "distill" block."""
    student = load(out_dir)
    judged = comparisons({f"vs_{name}": (reference, val_predictions(student, parts))
                          for name, reference in references.items()})
    for name, what in (("teacher", "the teacher"), ("start", "the student before "
                                                              "distillation")):
        if f"vs_{name}_text" in judged:
            console.print(f"against {what}: {judged[f'vs_{name}_text']}", highlight=False)
    if judged:
        student.card["distill"] = {**student.card.get("distill", {}), **judged}
        save_artifact(out_dir, student.model, student.card)
    return judged


def _open_models(teacher: str | Path, student: str | Path, settings: dict[str, Any]
                 ) -> tuple[Artifact, Artifact | None, str]:
    """(teacher, student artifact or None for a registry name, the student's architecture);
    sets skip_bad_images in `settings` to the parents' choice when it was not chosen."""
    teacher_art = open_parent(teacher, "distill")
    student_art = open_parent(student, "distill") if _is_artifact_path(student) else None
    if student_art is not None:
        _check_artifact_size(student_art, settings.get("img_size"))
        arch = student_art.card["arch"]
    else:
        arch = str(student)
        model_preprocessing(arch)  # an unknown name raises here, with close matches
    if settings.get("skip_bad_images") is None:  # not chosen: the parents' choice
        settings["skip_bad_images"] = any(
            bool(used.card.get("config", {}).get("skip_bad_images"))
            for used in (teacher_art, student_art) if used is not None)
    return teacher_art, student_art, arch


@dataclass
class TeacherCache:
    """The teacher's logits for every training image (None: asked on every batch)."""

    n_train: int
    logits: torch.Tensor | None = None
    seconds: float | None = None
    train_top1: float | None = None


def _teacher_cache(teacher_net: torch.nn.Module, parts, student_pre: Preprocess,
                   teacher_pre: Preprocess, resolved: TrainConfig, hw: Hardware) -> TeacherCache:
    started = time.perf_counter()
    train_imgs, _ = decode_partition(parts, student_pre.size, resolved)
    cache = cache_teacher_logits(teacher_net, train_imgs.images, student_pre, teacher_pre, hw)
    hits = cache.argmax(1).cpu() == train_imgs.labels
    return TeacherCache(n_train=len(train_imgs), logits=cache,
                        seconds=round(time.perf_counter() - started, 2),
                        train_top1=float(hits.float().mean()))


def _card_block(dcfg: DistillConfig, teacher: Artifact, student: str | Path, cached: bool,
                warmup_epochs: float) -> dict[str, Any]:
    block: dict[str, Any] = {"teacher": str(teacher.path), "student": str(student),
                             "loss": dcfg.loss, "temperature": dcfg.temperature,
                             "alpha": dcfg.alpha}
    if dcfg.loss == "dkd":
        block.update(dkd_alpha=dcfg.dkd_alpha, dkd_beta=dcfg.dkd_beta,
                     dkd_warmup_epochs=warmup_epochs)
    metrics = teacher.card.get("metrics", {})
    top1 = next((metrics[s]["top1"] for s in ("val", "test")
                 if isinstance(metrics.get(s), dict) and "top1" in metrics[s]), None)
    block.update(teacher_cached=cached, teacher_top1=top1)
    return block


def _start(student_art: Artifact | None) -> StartModel | None:
    # A registry name leaves the model to train_on, so it is built (and initialised from the
    # data, for nets that do so) exactly as `train` builds it.
    return StartModel.from_artifact(student_art) if student_art is not None else None


def _named_preprocess(arch: str, img_size: int | None) -> Preprocess:
    pre = model_preprocessing(arch)
    size = (img_size, img_size) if img_size else tuple(pre["input_size"])
    return Preprocess(size, tuple(pre["mean"]), tuple(pre["std"]))


def _is_artifact_path(student: str | Path) -> bool:
    # Registry names never contain a path separator; a mistyped folder then gets the artifact
    # error ("does not exist") rather than an "unknown model" one.
    text = str(student)
    return isinstance(student, Path) or Path(text).exists() or "/" in text or "\\" in text


def _check_artifact_size(art: Artifact, img_size: int | None) -> None:
    if img_size is not None and (img_size, img_size) != art.input_size:
        h, w = art.input_size
        raise ConfigError(f"the student artifact {art.path} is trained at {h}x{w}; drop "
                          f"--img-size {img_size} or pass a model name as --student")


def _check_classes(role: str, art: Artifact, source: DataSource) -> None:
    have, want = art.classes, list(source.classes)
    if have == want:
        return
    missing = [c for c in want if c not in have]
    extra = [c for c in have if c not in want]
    if not missing and not extra:
        detail = (f"the same classes in another order ({role}: {_names(have)}; data: "
                  f"{_names(want)})")
    else:
        parts = []
        if missing:
            parts.append(f"data classes the {role} lacks: {_names(missing)}")
        if extra:
            parts.append(f"{role} classes the data lacks: {_names(extra)}")
        detail = "; ".join(parts)
    raise ConfigError(f"the {role} {art.path} knows other classes than {source.spec}: {detail}. "
                      f"Pass --{role} an artifact trained on this data (`leanvision train "
                      f"{source.spec}`), or distill on the data the {role} was trained on")


def _names(names: list[str], shown: int = 5) -> str:
    text = ", ".join(repr(n) for n in names[:shown])
    return f"[{text}{f', +{len(names) - shown} more' if len(names) > shown else ''}]"


def _cache_decision(mode: str, cfg: TrainConfig) -> bool:
    # Only then are an image's pixels, hence the teacher's logits, the same every epoch.
    # (augment="none" ignores --translate, so it needs no test of its own.)
    identity = cfg.augment == "none" and not cfg.mixup and not cfg.cutmix
    if mode == "always" and not identity:
        changes = [f"--augment {cfg.augment}"] if cfg.augment != "none" else []
        changes += [f"--{k} {getattr(cfg, k)}" for k in ("mixup", "cutmix") if getattr(cfg, k)]
        raise ConfigError("--cache-teacher always needs the same pixels every epoch, but "
                          f"{' and '.join(changes)} change them; pass --augment none without "
                          "--mixup/--cutmix, or --cache-teacher auto")
    return identity and mode != "never"


def default_distill_dir(data: str, student: str | Path) -> Path:
    name = safe_name(Path(data.replace("builtin:", "")).name)
    return default_out("distill", f"{name}-{safe_name(Path(str(student)).name)}")
