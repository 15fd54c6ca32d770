"""Which images train, which choose checkpoints (val), which are only evaluated (test).

A test split never takes part in a training decision. When the data has no val split, a
stratified, seeded hold-out is cut from train; the same (fraction, seed) recreate it later, which
is how `eval --split val` reproduces the end-of-training figures."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .sources import DataSource, ImageRecords
from .splits import stratified_holdout, stratified_kfold

SPLITS = ("auto", "train", "val", "test", "all")


@dataclass
class Partition:
    train: ImageRecords
    val: ImageRecords | None
    test: ImageRecords | None
    val_origin: str  # "val folder", "held out 10% of train (seed 0)" or "none"


def partition(source: DataSource, val_fraction: float, seed: int) -> Partition:
    if source.val is not None and len(source.val):
        return Partition(source.train, source.val, source.test, "the data's own val split")
    if val_fraction <= 0:
        return Partition(source.train, None, source.test, "none")
    train, val = stratified_holdout(source.train, val_fraction, seed)
    if len(val) == 0:
        return Partition(source.train, None, source.test, "none (too few images to hold out)")
    origin = f"held out {val_fraction:.0%} of train, stratified (seed {seed})"
    return Partition(train, val, source.test, origin)


def select_split(source: DataSource, split: str, val_fraction: float,
                 seed: int) -> tuple[str, ImageRecords]:
    """The records `eval` should score; "auto" prefers test, then val, then everything."""
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SPLITS)}")
    parts = partition(source, val_fraction, seed)
    if split == "all":
        return "all", concat_records([r for r in (source.train, source.val, source.test) if r])
    if split == "auto":
        for name in ("test", "val"):
            records = getattr(parts, name)
            if records is not None and len(records):
                return name, records
        return "all", concat_records([r for r in (source.train, source.val) if r])
    records = getattr(parts, split)
    if records is None or not len(records):
        raise ConfigError(f"the data has no {split} split; use --split auto or all")
    return split, records


def concat_records(parts: list[ImageRecords]) -> ImageRecords:
    import numpy as np

    items = [item for p in parts for item in p.items]
    labels = np.concatenate([p.labels for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    # Text rows travel only when every part has them (CSV text columns).
    texts = ([t for p in parts for t in p.texts]
             if parts and all(p.texts is not None for p in parts) else None)
    return ImageRecords(items, labels, parts[0].root if parts else None, texts)


def cv_partitions(source: DataSource, folds: int, seed: int) -> list[Partition]:
    """One Partition per stratified fold over train+val; the test split stays untouched."""
    records = concat_records([r for r in (source.train, source.val) if r is not None])
    splits = stratified_kfold(records, folds, seed, classes=source.classes)
    return [Partition(records.subset(tr), records.subset(va), None,
                      f"fold {k + 1} of {folds} (seed {seed})")
            for k, (tr, va) in enumerate(splits)]
