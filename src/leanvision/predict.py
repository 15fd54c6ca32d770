"""`leanvision.predict`: top-k classes for image files, with the artifact's own preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from .artifact import Artifact, load, read_card
from .data import BadImageError, ImageChecks
from .data.images import decode_resized
from .errors import ConfigError
from .evaluate import predict_logits
from .hardware import choose_hardware
from .kinds import kind_of
from .tta import check_tta


def predict(artifact: str | Path | Artifact, images: list[str | Path], *, top_k: int = 5,
            device: str = "auto", batch_size: int = 64,
            runtime: str = "torch", tta: str | None = None,
            texts: list[str | None] | None = None) -> list[dict[str, Any]]:
    """One result per image, in order: {"image", "top": [{"class", "prob"}, ...]}, or
    {"image", "error"} for a file that is not a usable image (the others still get answers).

    `runtime`: "torch" (the artifact's PyTorch weights), or any Predictor runtime ("auto" follows
    the card's recommendation; "onnx-fp32", "onnx-int8" need the exported files). `tta`
    overrides the card's test-time augmentation (none, flip, flip-translate, multi-crop).
    `texts`: one text per image, in order, for a model trained with text columns (None or ""
    for an image without text: the image branch answers)."""
    check_tta(tta)
    card = artifact.card if isinstance(artifact, Artifact) else read_card(artifact)[1]
    kind_predictor = kind_of(card).predictor  # a kind with more inputs than images (texts)
    if kind_predictor is not None:
        folder = artifact.path if isinstance(artifact, Artifact) else artifact
        predictor = kind_predictor(folder, runtime=runtime,
                                   device="cpu" if device == "auto" else device)
        predictor.tta = tta or predictor.tta
        return predictor.predict_images(list(images), top_k=top_k, batch_size=batch_size,
                                        texts=texts)
    if texts:
        raise ConfigError("--text needs a model trained with --text-columns; this artifact "
                          "reads images only (drop --text)")
    if not images:
        raise ConfigError("no images given; pass one or more image files")
    if top_k < 1:
        raise ConfigError(f"--top-k {top_k} must be at least 1")
    if runtime != "torch":
        from .runtime.predictor import Predictor  # ONNX Runtime only when asked for

        folder = artifact.path if isinstance(artifact, Artifact) else artifact
        predictor = Predictor.from_artifact(folder, runtime=runtime)
        predictor.tta = tta or predictor.tta
        return predictor.predict_images(list(images), top_k=top_k, batch_size=batch_size)
    art = artifact if isinstance(artifact, Artifact) else load(artifact)
    results: list[dict[str, Any]] = []
    tensors, rows = [], []
    for path in images:
        results.append({"image": str(path)})
        try:
            tensors.append(decode_resized(path, art.input_size, ImageChecks()))
            rows.append(len(results) - 1)
        except BadImageError as exc:
            results[-1]["error"] = exc.reason
    if not tensors:
        return results
    hw = choose_hardware(device, "fp32")
    probs = predict_logits(art.model, torch.stack(tensors), art.mean, art.std, hw.device,
                           batch_size, tta=tta or art.tta).softmax(1)
    art.model.to("cpu")
    k = min(top_k, art.num_classes)
    for row, index in enumerate(rows):
        values, classes = probs[row].topk(k)
        results[index]["top"] = [{"class": art.classes[int(c)], "prob": float(v)}
                                 for v, c in zip(values, classes, strict=True)]
    return results


def print_predictions(console: Console, results: list[dict[str, Any]]) -> None:
    """`leanvision predict`'s lines: each image's top classes, or why it was not used."""
    for r in results:
        if "error" in r:
            console.print(f"{r['image']}: [red]{r['error']}[/red]", highlight=False)
            continue
        top = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        console.print(f"{r['image']}: {top}", highlight=False)


def unanswered(results: list[dict[str, Any]]) -> str | None:
    """Why `leanvision predict` fails although the good images were answered: one unusable
    image is still an error for a script (each is listed with its reason). None: all answered."""
    failed = sum(1 for r in results if "error" in r)
    if not failed:
        return None
    answered = len(results) - failed
    rest = f"the other {answered} were answered" if answered else "so there are no answers"
    return (f"{failed} of {len(results)} images could not be used (each is listed with its "
            f"reason); {rest}")
