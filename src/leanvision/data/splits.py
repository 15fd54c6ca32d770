"""Seeded, stratified hold-out and k-fold splits that never crash on tiny classes."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..errors import ConfigError, DatasetError
from .sources import ImageRecords


def stratified_holdout(records: ImageRecords, val_fraction: float,
                       seed: int) -> tuple[ImageRecords, ImageRecords]:
    """(train, val) with each class split in proportion; singleton classes stay in train."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {val_fraction} must be between 0 and 1 (exclusive), "
                          "e.g. 0.1")
    labels = records.labels
    counts = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    # A class with one image cannot be in both halves; sklearn would refuse the whole split.
    splittable = np.flatnonzero(counts[labels] >= 2)
    if splittable.size == 0:
        raise DatasetError("cannot hold out a validation set: no class has 2 or more images; "
                           "add images or pass a separate validation set")
    try:
        train_part, val_part = train_test_split(
            splittable, test_size=val_fraction, random_state=seed, shuffle=True,
            stratify=labels[splittable])
    except ValueError:
        # sklearn needs at least one val and one train image per class overall; with many
        # classes and a small fraction it refuses, so allocate per class instead.
        train_part, val_part = _per_class_split(splittable, labels, val_fraction, seed)
    keep = np.setdiff1d(np.arange(len(records)), val_part)
    return records.subset(np.sort(keep)), records.subset(np.sort(val_part))


def _per_class_split(indices: np.ndarray, labels: np.ndarray, val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels[indices]):
        members = rng.permutation(indices[labels[indices] == cls])
        n_val = int(np.clip(np.floor(len(members) * val_fraction + 0.5), 1, len(members) - 1))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.concatenate(train), np.concatenate(val)


def stratified_kfold(records: ImageRecords, folds: int, seed: int,
                     classes: list[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(train_idx, val_idx)] per fold; every class appears in every fold's validation part."""
    if folds < 2:
        raise ConfigError(f"--folds {folds} is too few; cross-validation needs at least 2 folds")
    counts = np.bincount(records.labels)
    present = np.flatnonzero(counts)
    if present.size < 2:
        raise DatasetError("cross-validation needs at least 2 classes with images")
    smallest = int(present[np.argmin(counts[present])])
    if folds > counts[smallest]:
        name = classes[smallest] if classes is not None and smallest < len(classes) else smallest
        n = int(counts[smallest])
        fix = f"use --folds {n} or fewer, or add images" if n >= 2 else "add images to it"
        raise ConfigError(
            f"--folds {folds} is more than class {name!r} has images ({n}); every class needs "
            f"an image in each fold, so {fix}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    placeholder = np.zeros(len(records))
    return [(tr.astype(np.int64), va.astype(np.int64))
            for tr, va in splitter.split(placeholder, records.labels)]
