"""The report's per-model sections: training curves, confusion and per-class tables,
calibration, and the explanation gallery with its drift from the parent."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import LeanvisionError
from ..formatting import percent
from . import html, plots
from .collect import (
    Evaluation,
    Explained,
    Variant,
    explain_variant,
    gallery_inputs,
    parent_folder,
)

# beyond this the per-class table lists the weakest classes only
MAX_CLASS_ROWS = 40


def _training_section(variants: list[Variant]) -> html.Section:
    parts = []
    for v in variants:
        if not v.history:
            continue
        parts.append(html.heading(f"{v.label} · {v.stage} · {len(v.history)} epoch(s)"))
        parts.append(html.image(plots.training_curves(v.history), f"training curves of {v.label}"))
        training = (v.card or {}).get("training") or {}
        if training.get("best_epoch"):
            parts.append(html.paragraph(
                f"Kept weights: epoch {training['best_epoch']} ({training.get('weights')}); "
                f"validation: {training.get('val_origin', '—')}.", "muted"))
    if not parts:
        parts.append(html.note("No training curves: none of the folders holds metrics.jsonl "
                               "(artifacts made without training, or moved away from their run)."))
    return html.Section("training", "Training curves", "".join(parts))


# ---- confusion and per-class -----------------------------------------------------------------

def _card_split(v: Variant) -> tuple[str, dict[str, Any]] | None:
    for split in ("test", "val"):
        entry = v.metrics.get(split)
        if isinstance(entry, dict) and entry.get("confusion") is not None:
            return split, entry
    return None


def _confusion_section(variants: list[Variant], evaluations: dict) -> html.Section:
    parts = []
    for v in variants:
        if not v.given or v.card is None:
            continue
        parts.append(html.heading(v.label))
        found = _card_split(v)
        evaluation = evaluations.get(v.name)
        if found is None and isinstance(evaluation, Evaluation):
            found = (evaluation.split, evaluation.metrics)
            source = f"recomputed on the {evaluation.split} split ({evaluation.n} images)"
        elif found is not None:
            source = f"from the card, {found[0]} split ({found[1].get('n', '?')} images)"
        if found is None:
            reason = evaluation if isinstance(evaluation, str) else "no data to recompute them"
            parts.append(html.note(f"No confusion matrix: the card records none and {reason}."))
            continue
        _, entry = found
        classes = list(v.card["classes"])
        parts.append(html.image(plots.confusion_matrix(entry["confusion"], classes),
                                f"confusion matrix of {v.label}", f"Confusion matrix {source}."))
        parts.append(_per_class_table(entry.get("per_class") or {}))
    if not parts:
        parts.append(html.note("No artifacts to evaluate."))
    return html.Section("confusion", "Confusion matrix and per-class figures", "".join(parts))


def _per_class_table(per_class: dict[str, dict[str, float]]) -> str:
    if not per_class:
        return html.note("No per-class precision / recall recorded.")
    items = list(per_class.items())
    shown, caption = items, ""
    if len(items) > MAX_CLASS_ROWS:
        shown = sorted(items, key=lambda kv: kv[1].get("recall", 0.0))[:MAX_CLASS_ROWS // 2]
        caption = html.paragraph(f"The {len(shown)} classes with the lowest recall of "
                                 f"{len(items)}.", "muted")
    rows = [[name, _pct(m.get("precision")), _pct(m.get("recall")), _pct(m.get("f1")),
             m.get("support", "—")] for name, m in shown]
    return caption + html.table(["class", "precision %", "recall %", "F1 %", "support"], rows,
                                compact=True)


# ---- calibration -----------------------------------------------------------------------------

def _calibration_section(variants: list[Variant], evaluations: dict) -> html.Section:
    parts = []
    for v in variants:
        if not v.given or v.card is None:
            continue
        evaluation = evaluations.get(v.name)
        parts.append(html.heading(v.label))
        if not isinstance(evaluation, Evaluation):
            parts.append(html.note(f"Calibration not available: it needs the model's "
                                   f"probabilities on held-out images, and {evaluation}."))
            continue
        ece = evaluation.metrics.get("ece")
        caption = (f"{evaluation.split} split of {evaluation.data}, {evaluation.n} images, "
                   f"ECE {ece:.4f} over {len(evaluation.reliability['count'])} bins"
                   + (f"; {evaluation.skipped_images} unreadable images skipped"
                      if evaluation.skipped_images else ""))
        parts.append(html.image(plots.reliability_diagram(evaluation.reliability, ece),
                                f"reliability diagram of {v.label}", caption))
        if evaluation.note:
            parts.append(html.paragraph(evaluation.note, "muted"))
    if not parts:
        parts.append(html.note("No artifacts to calibrate."))
    return html.Section("calibration", "Calibration", "".join(parts))


# ---- explanations ----------------------------------------------------------------------------

def _explanation_section(variants: list[Variant], evaluations: dict, count: int, method: str,
                         scratch: Path, console: Console) -> html.Section:
    title = "Explanations"
    if count == 0:
        return html.Section("explanations", title, html.note("No gallery: explain_images=0."))
    source = next((e for v in variants if isinstance(e := evaluations.get(v.name), Evaluation)
                   and e.gallery), None)
    if source is None:
        reason = next((e for e in evaluations.values() if isinstance(e, str)),
                      "no artifact with PyTorch weights was given")
        return html.Section("explanations", title, html.note(
            f"No gallery: it needs images of the data's val or test split, and {reason}."))
    files = gallery_inputs(source.gallery, scratch)
    on_page = {v.path.resolve() for v in variants}
    parts = [html.paragraph(f"{method} maps of {len(files)} {source.split} images of "
                            f"{source.data}, overlaid on each model's input. Drift compares a "
                            "variant's maps with its parent's on the same images: IoU of the "
                            "top-20% regions and Spearman rank correlation (1 = the same).",
                            "muted")]
    drift_rows = []
    for i, v in enumerate(variants):
        if not v.has_weights:
            continue
        parent = parent_folder(v)
        parent = parent if parent is not None and parent.resolve() in on_page else None
        console.print(f"report: explaining {v.name} ({method})")
        parts.append(html.heading(f"{v.label} · {v.stage}"))
        try:
            explained = explain_variant(v, source.gallery, files, method, parent,
                                        scratch / f"explain-{i}", console)
        except (LeanvisionError, ImportError, RuntimeError, ValueError) as exc:
            # e.g. a layer pytorch-grad-cam cannot hook: the rest of the page is still worth
            # having, so the gallery says why it is empty
            parts.append(html.note(f"No explanations for {v.label}: {exc}"))
            continue
        parent_name = next((p.label for p in variants if parent is not None
                            and p.path.resolve() == parent.resolve()), None)
        parts.append(_gallery(explained, v, parent_name))
        if explained.drift_mean:
            drift_rows.append([v.label, parent_name, _num(explained.drift_mean.get("iou"), 3),
                               _num(explained.drift_mean.get("rank_correlation"), 3)])
    if drift_rows:
        parts.insert(1, html.heading("Drift from the parent (mean over the images)")
                     + html.table(["variant", "parent", "top-20% IoU", "rank correlation"],
                                  drift_rows, text_columns=2))
    elif not any(parent_folder(v) for v in variants):
        parts.append(html.note("No drift: no variant's parent is among the variants."))
    return html.Section("explanations", title, "".join(parts))


def _gallery(explained: Explained, v: Variant, parent_name: str | None) -> str:
    if not explained.items:
        return html.note(f"explain wrote no overlays for {v.label}.")
    paired = any(item["parent_overlay"] for item in explained.items)
    figures = []
    for item in explained.items:
        words = [item["image"]]
        if item["label"] is not None:
            words.append(f"true {item['label']}")
        if item["predicted"] is not None:
            prob = item["probability"]
            words.append(f"predicted {item['predicted']}"
                         + (f" {100 * float(prob):.0f}%" if prob is not None else ""))
        if item["parent_probability"] is not None:
            words.append(f"parent {100 * float(item['parent_probability']):.0f}%")
        if item["faithfulness"]:
            words.append(f"faithfulness {item['faithfulness']['score']:+.3f}")
        if item["drift"]:
            words.append(f"drift IoU {_num(item['drift'].get('iou'), 2)}, "
                         f"ρ {_num(item['drift'].get('rank_correlation'), 2)}")
        pictures = [(item["overlay"], f"{v.label} on {item['image']}")]
        if item["parent_overlay"]:
            pictures.append((item["parent_overlay"], f"{parent_name} on {item['image']}"))
        figures.append(html.figure(pictures, " · ".join(words)))
    notes = []
    if paired:
        notes.append(f"Left: {v.label}; right: its parent {parent_name}.")
    if explained.faithfulness:
        notes.append(f"Mean faithfulness {explained.faithfulness['score']:+.3f} (insertion − "
                     "deletion area of the class probability; higher: the map points at what "
                     "the model uses).")
    if explained.layer:
        notes.append(f"Target layer: {explained.layer}.")
    if v.quantized:
        notes.append("Maps of the FP32 weights: the INT8 model has no gradients to follow.")
    return html.gallery(figures, wide=paired) + html.paragraph(" ".join(notes), "muted")


# the report's cells show the number alone (no % sign)
_pct = partial(percent, sign="")


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"
