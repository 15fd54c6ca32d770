"""`leanvision report RUN_OR_ARTIFACT...`: one self-contained HTML page a person reads — training
curves, confusion and per-class figures, calibration, every variant's accuracy, speed and size
with Pareto charts, and a gallery of explanations with their drift from the parent."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from rich.console import Console

from .._version import __version__
from ..errors import ConfigError, LeanvisionError
from ..io import write_text
from . import html, plots
from .collect import (
    BENCH,
    Evaluation,
    Explained,
    Variant,
    accuracy,
    evaluate_variant,
    explain_variant,
    gallery_inputs,
    headline_split,
    int8_top1,
    measure_speed,
    parent_folder,
    resolve_variants,
    size_bytes,
    speed_from_file,
)
from .shift_section import robustness_section

REPORT_FILE = "report.html"
MAX_CLASS_ROWS = 40  # beyond this the per-class table lists the weakest classes only


def report(paths: str | os.PathLike | Sequence[str | os.PathLike],
           out: str | os.PathLike | None = None, *, data: str | os.PathLike | None = None,
           bench: str | os.PathLike | None = None, measure: bool = True,
           explain_images: int = 4, explain_method: str = "gradcam",
           console: Console | None = None) -> dict[str, Any]:
    """Write one self-contained HTML report on the runs / artifacts in `paths` (and the parents
    their cards name, where those are on disk).

    `out`: an .html file, or a folder to hold report.html (default runs/report/<stamp>/).
    `data`: the dataset to recompute probabilities and draw gallery images from (default: the
    data each card names). `bench`: a bench.json whose timings fill the variants table; without
    it the variants are timed briefly when `measure` is true. Returns {"path", "sections",
    "variants"}; a missing ingredient becomes a note on the page, never an error."""
    console = console or Console(stderr=True)
    if explain_images < 0:
        raise ConfigError(f"--explain-images must be >= 0, got {explain_images}")
    if explain_images:
        explain_method = _check_method(explain_method)
    variants = resolve_variants(paths)
    if data is not None:
        from ..data import load_data

        load_data(data)  # data the user names must exist; a card's data may have moved (a note)
    target = _target(out)
    with tempfile.TemporaryDirectory(prefix="leanvision-report-") as scratch:
        speed, speed_note = _speed(variants, bench, measure, Path(scratch), console)
        evaluations = {}
        for v in variants:
            if v.given and v.card is not None:
                console.print(f"report: scoring {v.name}")
                evaluations[v.name] = _evaluate(v, data, explain_images)
        rows = variant_rows(variants, speed)
        sections = [
            _variants_section(rows, variants, speed_note),
            _training_section(variants),
            _confusion_section(variants, evaluations),
            _calibration_section(variants, evaluations),
            robustness_section(variants),
            _explanation_section(variants, evaluations, explain_images, explain_method,
                                Path(scratch), console),
        ]
    stamp = datetime.now().isoformat(timespec="seconds")
    meta = (f"leanvision {escape(__version__)} · {escape(stamp)} · "
            f"{len(variants)} variant(s): "
            + ", ".join(f"<code>{escape(str(v.path))}</code>" for v in variants))
    path = write_text(target, html.page("leanvision report", meta, sections))
    console.print(f"wrote {path}")
    return {"path": str(path), "sections": [s.id for s in sections], "variants": rows}


def _check_method(method: str) -> str:
    """An unknown method is refused before any work; without the explain module the gallery
    is a note instead."""
    try:
        from ..explanations import METHODS
    except ImportError:
        return method
    key = str(method).strip().lower()
    if key not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; choose one of "
                          f"{', '.join(METHODS)} (or explain_images=0 for no gallery)")
    return key


def _target(out: str | os.PathLike | None) -> Path:
    if out is None:
        return Path("runs") / "report" / datetime.now().strftime("%Y%m%d-%H%M%S") / REPORT_FILE
    out = Path(out)
    return out if out.suffix.lower() in (".html", ".htm") else out / REPORT_FILE


def _speed(variants: list[Variant], bench: str | os.PathLike | None, measure: bool,
           scratch: Path, console: Console) -> tuple[dict[Path, dict], str]:
    if bench is not None:
        return speed_from_file(bench, variants), f"Latency and throughput from {bench}."
    if not measure:
        return {}, "Not measured (measure=False); pass a bench.json to show speed."
    try:
        rows = measure_speed(variants, scratch, console)
    except (LeanvisionError, ImportError, RuntimeError, OSError) as exc:
        return {}, f"Speed could not be measured: {exc}"
    return rows, (f"Measured now on this machine with leanvision bench ({BENCH['iterations']} "
                  f"timed calls at batch 1, batch {BENCH['batch']} for throughput): a quick "
                  "comparison; run `leanvision bench` for careful figures.")


def _evaluate(variant: Variant, data, explain_images: int) -> Evaluation | str:
    """The recomputed evaluation, or the reason it is not available."""
    if not variant.has_weights:
        return "the artifact holds no PyTorch weights (model.safetensors) to score"
    try:
        return evaluate_variant(variant, data, explain_images)
    except LeanvisionError as exc:
        return str(exc)


# ---- variants --------------------------------------------------------------------------------

def variant_rows(variants: list[Variant], speed: dict[Path, dict]) -> list[dict[str, Any]]:
    """One record per artifact: what the variants table and the Pareto charts show."""
    split = headline_split(variants)
    by_path = {v.path.resolve(): v for v in variants}
    rows = []
    for v in variants:
        if v.card is None:
            continue
        bench_row = speed.get(v.path.resolve(), {})
        parent = parent_folder(v)
        parent_name = (by_path[parent.resolve()].name if parent is not None
                       and parent.resolve() in by_path else v.card.get("parent"))
        metrics = v.metrics
        rows.append({
            "name": v.name, "path": str(v.path), "stage": v.stage, "parent": parent_name,
            "given": v.given,
            "val_top1": (metrics.get("val") or {}).get("top1"),
            "test_top1": (metrics.get("test") or {}).get("top1"),
            "int8_top1": int8_top1(v, split) if v.quantized else None,
            "accuracy": accuracy(v, split), "accuracy_split": split,
            "runtime": bench_row.get("runtime"),
            "latency_ms_p50": (bench_row.get("latency_ms") or {}).get("p50"),
            "throughput": (bench_row.get("throughput") or {}).get("images_per_s"),
            "throughput_batch": (bench_row.get("throughput") or {}).get("batch"),
            "size_bytes": size_bytes(v), "params": metrics.get("params"),
            "flops": metrics.get("flops"),
        })
    for key, cost in (("pareto_latency", "latency_ms_p50"), ("pareto_size", "size_bytes")):
        scored = [r for r in rows if r[cost] is not None and r["accuracy"] is not None]
        front = plots.pareto_front([(float(r[cost]), float(r["accuracy"])) for r in scored])
        for r in rows:
            r[key] = False
        for r, on in zip(scored, front, strict=True):
            r[key] = on
    return rows


def _variants_section(rows: list[dict[str, Any]], variants: list[Variant],
                      speed_note: str) -> html.Section:
    if not rows:
        return html.Section("variants", "Variants", html.note(
            "No artifacts: the runs given never wrote their model (no model.json)."))
    split = rows[0]["accuracy_split"]
    batch = next((r["throughput_batch"] for r in rows if r["throughput_batch"]), None)
    headers = ["variant", "stage", "parent", "val top-1", "test top-1", "int8 top-1", "runtime",
               "p50 ms (b1)", f"img/s (b{batch or 'N'})", "size MB", "params", "MFLOPs"]
    table_rows = [[
        r["name"] + ("" if r["given"] else " (parent)"), r["stage"], r["parent"] or "—",
        _pct(r["val_top1"]), _pct(r["test_top1"]), _pct(r["int8_top1"]), r["runtime"] or "—",
        _num(r["latency_ms_p50"], 3), _num(r["throughput"], 0),
        _num(r["size_bytes"] / 1e6 if r["size_bytes"] else None, 2),
        f"{r['params']:,}" if r["params"] else "—",
        _num(r["flops"] / 1e6 if r["flops"] else None, 1)] for r in rows]
    front = ["front" if r["pareto_latency"] or r["pareto_size"] else "" for r in rows]
    parts = [html.table(headers, table_rows, front, text_columns=3),
             html.paragraph(f"Accuracy is top-1 in %; the Pareto charts use {split} top-1 of "
                            "what each variant ships (INT8 for a quantized artifact). "
                            "Marked rows are Pareto-optimal on latency or on size. " + speed_note,
                            "muted")]
    axes = []
    if any(r["latency_ms_p50"] is not None for r in rows):
        axes.append(("latency p50 at batch 1 (ms)", [r["latency_ms_p50"] for r in rows]))
    else:
        parts.append(html.note("Accuracy against latency: no latency figures (see above)."))
    axes.append(("size (MB)", [r["size_bytes"] / 1e6 if r["size_bytes"] else None
                               for r in rows]))
    if any(r["accuracy"] is not None for r in rows):
        png = plots.pareto_charts([r["name"] for r in rows], [r["accuracy"] for r in rows],
                                  axes, f"{split} top-1")
        parts.append('<div id="pareto">' + html.image(
            png, "Pareto charts: accuracy against latency and size",
            "Red, filled: Pareto-optimal (no other variant is both as cheap and as accurate)."
        ) + "</div>")
    else:
        parts.append(html.note(f"No Pareto chart: no variant records a {split} accuracy."))
    missing = [v for v in variants if v.card is not None and v.card.get("parent")
               and parent_folder(v) is None]
    for v in missing:
        parts.append(html.note(f"{v.name}: its parent {v.card['parent']} is not on disk, so it "
                               "is not compared."))
    return html.Section("variants", "Variants", "".join(parts))


# ---- training --------------------------------------------------------------------------------

def _training_section(variants: list[Variant]) -> html.Section:
    parts = []
    for v in variants:
        if not v.history:
            continue
        parts.append(html.heading(f"{v.name} · {v.stage} · {len(v.history)} epoch(s)"))
        parts.append(html.image(plots.training_curves(v.history), f"training curves of {v.name}"))
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
        parts.append(html.heading(v.name))
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
                                f"confusion matrix of {v.name}", f"Confusion matrix {source}."))
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
        parts.append(html.heading(v.name))
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
                                f"reliability diagram of {v.name}", caption))
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
        parts.append(html.heading(f"{v.name} · {v.stage}"))
        try:
            explained = explain_variant(v, source.gallery, files, method, parent,
                                        scratch / f"explain-{i}", console)
        except (LeanvisionError, ImportError, RuntimeError, ValueError) as exc:
            # e.g. a layer pytorch-grad-cam cannot hook: the rest of the page is still worth
            # having, so the gallery says why it is empty
            parts.append(html.note(f"No explanations for {v.name}: {exc}"))
            continue
        parent_name = next((p.name for p in variants if parent is not None
                            and p.path.resolve() == parent.resolve()), None)
        parts.append(_gallery(explained, v, parent_name))
        if explained.drift_mean:
            drift_rows.append([v.name, parent_name, _num(explained.drift_mean.get("iou"), 3),
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
        return html.note(f"explain wrote no overlays for {v.name}.")
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
        pictures = [(item["overlay"], f"{v.name} on {item['image']}")]
        if item["parent_overlay"]:
            pictures.append((item["parent_overlay"], f"{parent_name} on {item['image']}"))
        figures.append(html.figure(pictures, " · ".join(words)))
    notes = []
    if paired:
        notes.append(f"Left: {v.name}; right: its parent {parent_name}.")
    if explained.faithfulness:
        notes.append(f"Mean faithfulness {explained.faithfulness['score']:+.3f} (insertion − "
                     "deletion area of the class probability; higher: the map points at what "
                     "the model uses).")
    if explained.layer:
        notes.append(f"Target layer: {explained.layer}.")
    if v.quantized:
        notes.append("Maps of the FP32 weights: the INT8 ONNX model has no gradients to follow.")
    return html.gallery(figures, wide=paired) + html.paragraph(" ".join(notes), "muted")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"
