"""Each candidate against the base, image by image: the paired comparison (leanvision.paired)
that --max-drop is judged on.

A candidate's per-image predicted classes on the validation split are scored once, the way its
card's accuracy was (the same images, preprocessing, test-time augmentation and model file),
and kept beside its measurement in the stage folder (`measure-<runtime>-val-<key>.npz`: one
small int array and the labels); the base's likewise. A file that does not give the card's
accuracy is not used: that candidate is judged on its point estimate."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..data import load_data
from ..data.partition import partition
from ..data.sources import ImageRecords
from ..errors import LeanvisionError
from ..io import write_atomic
from ..paired import compare
from .constraints import Candidate
from .space import INT8_RUNTIME
from .stages import stage_key

OPENVINO_INT8 = "openvino-int8"


def metrics_group(runtime: str) -> str | None:
    """Where the card keeps the accuracy of what runs under `runtime`: the INT8 file's block
    for an INT8 runtime, else (None) the network's own (ONNX FP32 is parity-checked against it
    at export)."""
    return {INT8_RUNTIME: "int8", OPENVINO_INT8: "openvino_int8"}.get(runtime)


@dataclass(frozen=True)
class ValSplit:
    """The validation images every candidate is compared on: the base's hold-out."""

    data: str
    val_fraction: float
    seed: int
    skip_bad_images: bool = False

    def key(self) -> str:
        return stage_key("", "val", asdict(self))[:8]


@lru_cache(maxsize=4)
def _records(data: str, val_fraction: float, seed: int) -> ImageRecords:
    return partition(load_data(data), val_fraction, seed).val


def val_predictions(folder: Path, runtime: str, split: ValSplit,
                    threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, labels) of `folder` under `runtime` on the validation images,
    scored once and read back after."""
    path = Path(folder) / f"measure-{runtime}-val-{split.key()}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return stored["predicted"], stored["labels"]
    records = _records(split.data, split.val_fraction, split.seed)
    predicted, labels = predict_records(Path(folder), runtime, records, split.skip_bad_images,
                                        threads)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, predicted=predicted.astype(np.int32), labels=labels.astype(np.int32))
    write_atomic(path, write)
    return predicted, labels


def predict_records(folder: Path, runtime: str, records: ImageRecords, skip_bad: bool = False,
                    threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, labels) of `folder` under `runtime` on `records`, through the path
    that scored the card's accuracy for `runtime`: the network through evaluate (FP32
    runtimes), the INT8 file through the quantizer's scorer."""
    from ..artifact import load

    art = load(folder)
    if metrics_group(runtime) is None:
        from ..evaluate import evaluate_records

        result = evaluate_records(art, records, "val", "", skip_bad_images=skip_bad,
                                  keep_predictions=True)
        return result["predictions"]
    from ..compress.ptq import INT8_FILE, onnx_top1, runner_top1, scoring_set

    scored = scoring_set(art, records, "val", skip_bad)
    if runtime == OPENVINO_INT8:
        from ..runtime.openvino_runtime import INT8_XML, openvino_runner

        scores = runner_top1(openvino_runner(folder / INT8_XML, threads), scored)
    else:
        scores = onnx_top1(folder / INT8_FILE, scored)
    return np.asarray(scores.predictions), scored.labels.numpy()


def attach_comparisons(candidates: list[Candidate], base: Path, base_val: float,
                       split: ValSplit, threads: int = 1,
                       classes: list[str] | None = None) -> int:
    """Set each candidate's `comparison` with the base; returns how many got one. One whose
    predictions cannot be scored, are on other images or do not give its card's accuracy
    keeps None (its trial measured it, so the choice still has its point estimate)."""
    reference = reference_predictions(base, base_val, split, threads) if candidates else None
    if reference is None:
        return 0
    base_pred, labels = reference
    attached = 0
    for c in candidates:
        scored = _predictions_or_none(Path(c.artifact), c.runtime, split, threads)
        if scored is None or not np.array_equal(scored[1], labels):
            continue
        predicted = scored[0]
        correct = predicted == labels
        if abs(float(correct.mean()) - c.val_top1) > 1e-6:
            continue
        before = base_pred == labels
        c.comparison = compare(before, correct, base_pred, predicted)
        c.val_predicted = predicted
        c.class_comparisons = {
            classes[k] if classes else str(k): compare(before[labels == k], correct[labels == k])
            for k in np.unique(labels).tolist()}
        attached += 1
    return attached


def reference_predictions(base: Path, base_val: float, split: ValSplit,
                          threads: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """(predicted classes, labels) of the base on the validation images, or None when they
    cannot be scored or do not give its card's accuracy."""
    reference = _predictions_or_none(base, "torch", split, threads)
    if reference is None or abs(float(np.mean(reference[0] == reference[1])) - base_val) > 1e-6:
        return None
    return reference


def _predictions_or_none(folder: Path, runtime: str, split: ValSplit,
                         threads: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return val_predictions(folder, runtime, split, threads)
    except LeanvisionError:  # e.g. an unreadable image the trial's own scoring refused too
        return None
