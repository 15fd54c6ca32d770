"""Evaluation: accuracy, per-class precision/recall/F1, confusion, calibration (torchmetrics),
and the model's own cost (parameters, FLOPs, size on disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from .artifact import WEIGHTS_FILE, Artifact, load, same_data, skip_bad_choice, training_data
from .data import ImageChecks, decode_images, decoding_for, load_data, normalize
from .data.partition import cv_partitions, select_split
from .data.sources import ImageRecords
from .errors import DatasetError
from .hardware import choose_hardware, pixel_capped_batch
from .kinds import kind_of
from .tta import check_tta, tta_logits

CALIBRATION_BINS = 15


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, mean: list[float],
                   std: list[float], device: torch.device | str = "cpu",
                   batch_size: int = 256, tta: str | None = None) -> torch.Tensor:
    """fp32 logits [N, C] for uint8 images [N, 3, H, W]; the reference path for every figure."""
    model.eval()
    device = torch.device(device)
    batch_size = pixel_capped_batch(batch_size, images.shape[-2], images.shape[-1])
    # channels_last lets oneDNN / cuDNN use their fastest convolution kernels.
    model.to(device, memory_format=torch.channels_last)
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device), mean, std)
        x = x.contiguous(memory_format=torch.channels_last)
        out.append(tta_logits(model, x, tta).cpu())
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor,
                           classes: list[str]) -> dict[str, Any]:
    # imported here: torchmetrics takes seconds to import, and the CLI's --help reaches this
    # module through the training API's signature
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_calibration_error,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    num = len(classes)
    probs = logits.softmax(1)
    k = min(5, num)
    per = {name: f(probs, labels, num_classes=num, average="none")
           for name, f in (("precision", multiclass_precision), ("recall", multiclass_recall),
                           ("f1", multiclass_f1_score))}
    support = torch.bincount(labels, minlength=num)
    return {
        "n": int(len(labels)),
        "top1": float(multiclass_accuracy(probs, labels, num_classes=num, average="micro")),
        f"top{k}": float(multiclass_accuracy(probs, labels, num_classes=num, average="micro",
                                             top_k=k)),
        "loss": float(F.cross_entropy(logits, labels)),
        "macro_f1": float(per["f1"].mean()),
        "ece": float(multiclass_calibration_error(probs, labels, num_classes=num,
                                                  n_bins=CALIBRATION_BINS)),
        "per_class": {cls: {"precision": float(per["precision"][i]),
                            "recall": float(per["recall"][i]),
                            "f1": float(per["f1"][i]), "support": int(support[i])}
                      for i, cls in enumerate(classes)},
        "confusion": multiclass_confusion_matrix(probs, labels, num_classes=num).tolist(),
    }


def model_cost(model: torch.nn.Module, input_size: tuple[int, int],
               folder: Path | None = None) -> dict[str, Any]:
    from .models import count_flops, count_parameters

    cost = {"params": count_parameters(model), "flops": count_flops(model, input_size)}
    if folder is not None and (folder / WEIGHTS_FILE).is_file():
        cost["size_bytes"] = (folder / WEIGHTS_FILE).stat().st_size
    return cost


def remap_labels(records: ImageRecords, data_classes: list[str],
                 model_classes: list[str]) -> ImageRecords:
    """Map the data's class indices onto the model's by name; the data may hold a subset."""
    if data_classes == model_classes:
        return records
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = [c for c in data_classes if c not in index]
    if unknown:
        raise DatasetError(f"the data has classes the model does not know: "
                           f"{', '.join(unknown[:5])}; the model's classes are "
                           f"{', '.join(model_classes[:10])}"
                           + (" ..." if len(model_classes) > 10 else ""))
    lut = np.array([index[c] for c in data_classes], dtype=np.int64)
    return ImageRecords(records.items, lut[records.labels], records.root, records.texts)


@decoding_for("evaluate")
def evaluate(artifact: str | Path | Artifact, data: str | Path | None = None, *,
             split: str = "auto", batch_size: int = 256, skip_bad_images: bool | None = None,
             device: str = "auto", tta: str | None = None) -> dict[str, Any]:
    """Score an artifact on DATA (default: the data it was trained on).

    `split="auto"` scores test when there is one, else the validation hold-out the training run
    used (recreated from the card's seed and fraction), else every image. `tta` overrides the
    test-time augmentation the card stores (none, flip, flip-translate, multi-crop).
    `skip_bad_images` None: leave out unreadable images when the model's training did."""
    check_tta(tta)
    art = artifact if isinstance(artifact, Artifact) else load(artifact)
    skip_bad_images = skip_bad_choice(art.card, skip_bad_images)
    kind_evaluate = kind_of(art.card).evaluate  # e.g. images with text: text read from the data
    if kind_evaluate is not None:
        return kind_evaluate(art, data, split=split, batch_size=batch_size,
                             skip_bad_images=skip_bad_images, device=device, tta=tta)
    split_name, records, data_spec = evaluation_records(art, data, split)
    return evaluate_records(art, records, split_name, data_spec, batch_size=batch_size,
                            skip_bad_images=skip_bad_images, device=device, tta=tta)


def evaluation_records(art: Artifact, data: str | Path | None,
                       split: str = "auto") -> tuple[str, ImageRecords, str]:
    """(split name, labelled records with the model's class indices, data spec) that `evaluate`
    scores; every stage that measures an artifact on its data chooses the images this way."""
    config = art.card.get("config", {})
    data_spec = str(data) if data is not None else training_data(art.card)
    if not data_spec:
        raise DatasetError("the artifact's card does not name its training data; pass data=PATH")
    source = load_data(data_spec)
    same = same_data(data, art.card)
    val_fraction = config.get("val_fraction", 0.1) if same else 0.0
    fold = art.card.get("cv")
    if fold and same and split in ("auto", "val"):
        # A cross-validation fold's model is scored on its own held-out fold, as in training.
        parts = cv_partitions(source, fold["folds"], fold["seed"])[fold["fold"] - 1]
        split_name, records = "val", parts.val
    else:
        split_name, records = select_split(source, split, val_fraction, config.get("seed", 0))
    return split_name, remap_labels(records, source.classes, art.classes), data_spec


def evaluate_records(art: Artifact, records: ImageRecords, split_name: str, data_spec: str, *,
                     batch_size: int = 256, skip_bad_images: bool = False,
                     device: str = "auto", progress: bool = False,
                     tta: str | None = None, keep_predictions: bool = False) -> dict[str, Any]:
    """`tta` None: the card's own test-time augmentation. `keep_predictions`: the result's
    "predictions" holds (predicted classes, labels) per scored image, as numpy arrays."""
    tta = check_tta(tta) or art.tta
    hw = choose_hardware(device, "fp32")
    decoded = decode_images(records, art.input_size, ImageChecks(), skip_bad=skip_bad_images,
                            progress=progress)
    logits = predict_logits(art.model, decoded.images, art.mean, art.std, hw.device, batch_size,
                            tta=tta)
    metrics = classification_metrics(logits, decoded.labels, art.classes)
    art.model.to("cpu")
    kept = ({"predictions": (logits.argmax(1).cpu().numpy(), decoded.labels.cpu().numpy())}
            if keep_predictions else {})
    return {
        **kept,
        "artifact": str(art.path),
        "data": data_spec,
        "split": split_name,
        "tta": tta,
        "skipped_images": len(decoded.bad),
        "metrics": metrics,
        "cost": model_cost(art.model, art.input_size, art.path),
    }


def print_evaluation(console: Console, result: dict[str, Any]) -> None:
    """`leanvision eval`'s summary of evaluate()'s result."""
    m, cost = result["metrics"], result["cost"]
    console.print(f"{result['artifact']} on {result['data']} ({result['split']}, "
                  f"{m['n']} images, TTA {result.get('tta', 'none')})")
    topk = next((k for k in m if k.startswith("top") and k != "top1"), None)
    console.print(f"top-1 {m['top1']:.4f}" + (f"  {topk} {m[topk]:.4f}" if topk else "")
                  + f"  macro-F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}  "
                  f"loss {m['loss']:.4f}")
    table = Table("class", "precision", "recall", "F1", "support")
    for name, row in m["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                      f"{row['f1']:.3f}", str(row["support"]))
    console.print(table)
    console.print(f"{cost['params']:,} params, {cost['flops'] / 1e6:.1f} MFLOPs, "
                  f"{cost.get('size_bytes', 0) / 1e6:.2f} MB on disk")
