"""Self-training with a teacher (Noisy Student, Xie et al., 2020): `train DATA --unlabeled DIR
--pseudo-labels teacher`.

1. A teacher is trained on the labelled images alone (or `--teacher ARTIFACT` is used).
2. The teacher labels every unlabelled image once, in eval mode on the clean image; the images it
   labels with at least `threshold` confidence join the training set with that label.
3. A student of the same architecture is trained from scratch on labelled + pseudo-labelled
   images under the "strong" augmentation (the noise that lets a student outgrow its teacher);
   validation stays on labelled images only.
4. With `rounds` > 1 the student becomes the next round's teacher.

Compared with FixMatch's per-step pseudo-labels (fixmatch.py), each unlabelled image is
labelled once per round instead of once per step, and labelled by a converged network rather than
by the one being trained: on a CPU budget that is the cheaper way to turn unlabelled images into
accuracy (bench/few_labels.py). The intermediate networks are kept as artifacts under
OUT/self-training/ (teacher, round1, ...); OUT holds the last student."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from ...artifact import Artifact, load, require_image_only
from ...data import DataSource
from ...data.partition import concat_records, partition
from ...data.sources import ImageRecords
from ...data.unlabeled import find_unlabeled, load_unlabeled
from ...errors import ConfigError
from ...hardware import Hardware, choose_hardware
from ..config import TrainConfig
from .fixmatch import MIN_UNLABELED_IMAGES, predict_confidence

STUDENT_AUGMENT = "strong"
SUBFOLDER = "self-training"


def self_train(source: DataSource, cfg: TrainConfig, out_dir: Path, *, console: Console,
               on_epoch_end=None) -> dict[str, Any]:
    """Teacher, then `cfg.rounds` students; returns the last student's run summary."""
    from ..api import train_on

    # A folder that cannot serve is refused before the teacher spends any time.
    find_unlabeled(cfg.unlabeled, min_images=MIN_UNLABELED_IMAGES, role="--unlabeled",
                   need="for self-training")
    parts = partition(source, cfg.val_fraction, cfg.seed)
    work = out_dir / SUBFOLDER
    supervised = replace(cfg, unlabeled=None, teacher=None)
    if cfg.teacher:
        teacher = _given_teacher(cfg.teacher, source)
        console.print(f"self-training: teacher {cfg.teacher} (given)")
    else:
        console.print(f"self-training: training the teacher on the {len(parts.train)} labelled "
                      "images alone")
        summary = train_on(source, replace(supervised, epochs=cfg.teacher_epochs), work / "teacher",
                           parts=parts, console=console, stage="teacher")
        teacher = load(summary["artifact"])
    unlabeled = load_unlabeled(cfg.unlabeled, teacher.input_size,
                               min_images=MIN_UNLABELED_IMAGES, role="--unlabeled",
                               need="for self-training", skip_bad_images=cfg.skip_bad_images,
                               progress=cfg.progress)
    for note in unlabeled.notes:
        console.print(f"  unlabeled: {note}", style="dim")
    hw = choose_hardware(cfg.device, cfg.precision, cfg.channels_last)
    threshold = cfg.threshold or 0.0
    rounds: list[dict[str, Any]] = []
    student_cfg = replace(supervised, augment=STUDENT_AUGMENT)
    summary = {}
    for r in range(1, cfg.rounds + 1):
        labels, confidence = pseudo_label(teacher, unlabeled.images, hw)
        keep = select_confident(labels, confidence, cfg.pseudo_share, threshold,
                                len(source.classes))
        if len(keep) == 0:
            raise ConfigError(f"the teacher ({teacher.path}) labels none of the "
                              f"{len(unlabeled)} unlabelled images with confidence >= "
                              f"{threshold:g}; lower --threshold (its most confident label "
                              f"has {confidence.max():.3f}) or train the teacher longer "
                              "(--teacher-epochs)")
        rounds.append(_round_record(r, teacher, keep, labels, confidence, source.classes))
        console.print(f"self-training round {r}/{cfg.rounds}: {len(keep)} of {len(unlabeled)} "
                      f"unlabelled images pseudo-labelled (the most confident "
                      f"{cfg.pseudo_share:.0%} of each class, confidence >= {threshold:g})")
        pseudo = ImageRecords([unlabeled.paths[i] for i in keep], labels[keep],
                              str(unlabeled.folder))
        student_parts = replace(parts, train=concat_records([parts.train, pseudo]))
        last = r == cfg.rounds
        block = _block(cfg, unlabeled, rounds)
        summary = train_on(source, student_cfg, out_dir if last else work / f"round{r}",
                           parts=student_parts, console=console, stage="self-training",
                           parent=str(teacher.path), extra_card={"semi_supervised": block},
                           on_epoch_end=on_epoch_end if last else None)
        teacher = load(summary["artifact"])
    return summary


@torch.no_grad()
def pseudo_label(teacher: Artifact, images: torch.Tensor, hw: Hardware,
                 batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's label and confidence for each image: eval mode, the clean image with the
    teacher's own test-time augmentation (its card's), in the run's precision (bf16 labels 46k
    CIFAR images about 3x faster than fp32 on this CPU; a confidence off by 1e-3 moves few
    images across the cut)."""
    model = teacher.model.to(hw.device)
    if hw.channels_last:
        model = model.to(memory_format=torch.channels_last)
    confidence, label = predict_confidence(model, images, teacher.mean, teacher.std, hw,
                                           tta=teacher.tta, batch_size=batch_size)
    return label.numpy().astype(np.int64), confidence.numpy()


def select_confident(labels: np.ndarray, confidence: np.ndarray, share: float, floor: float,
                     num_classes: int) -> np.ndarray:
    """Indices of the images kept for the student: per predicted class, the most confident
    `share` of that class's images, and only those at `floor` confidence or more. A share per
    class (Zou et al.'s class-balanced self-training) rather than one global threshold: a
    teacher trained with label smoothing, or sure of a few easy classes, would otherwise hand
    the student mostly those classes; and a share means the same whatever the recipe's
    calibration (confidences under smoothing 0.2 stop at 0.82 for 10 classes)."""
    keep = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        ranked = members[np.argsort(-confidence[members], kind="stable")]
        ranked = ranked[:round(share * len(members))]
        keep.append(ranked[confidence[ranked] >= floor])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def _given_teacher(path: str, source: DataSource) -> Artifact:
    teacher = load(path)
    require_image_only(teacher.card, path, "train --teacher")
    if list(teacher.classes) != list(source.classes):
        raise ConfigError(f"--teacher {path} was trained on classes {teacher.classes}, the data "
                          f"has {source.classes}; pass a teacher trained on the same classes")
    return teacher


def _round_record(r: int, teacher: Artifact, keep: np.ndarray, labels: np.ndarray,
                  confidence: np.ndarray, classes: list[str]) -> dict[str, Any]:
    test = (teacher.card.get("metrics") or {}).get("test") or {}
    val = (teacher.card.get("metrics") or {}).get("val") or {}
    counts = np.bincount(labels[keep], minlength=len(classes))
    return {"round": r, "teacher": str(teacher.path), "teacher_val_top1": val.get("top1"),
            "teacher_test_top1": test.get("top1"), "pseudo_labelled": int(len(keep)),
            "share": round(len(keep) / max(1, len(labels)), 4),
            "mean_confidence": round(float(confidence.mean()), 4),
            "per_class": dict(zip(classes, counts.tolist(), strict=True))}


def _block(cfg: TrainConfig, unlabeled, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {"method": "self-training", "unlabeled": str(unlabeled.folder.resolve()),
            "images": len(unlabeled), "pseudo_share": cfg.pseudo_share,
            "threshold": cfg.threshold or 0.0, "rounds": list(rounds),
            "teacher_epochs": cfg.teacher_epochs, "student_augment": STUDENT_AUGMENT,
            "pseudo_labels": "teacher", "notes": unlabeled.notes,
            "skipped_images": [f"{item}: {reason}" for item, reason in unlabeled.skipped]}
