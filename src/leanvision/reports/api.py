"""`leanvision report RUN_OR_ARTIFACT...`: one self-contained HTML page a person reads — training
curves, confusion and per-class figures, calibration, every variant's accuracy, speed and size
with Pareto charts, and a gallery of explanations with their drift from the parent."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from rich.console import Console

from .._version import __version__
from ..errors import ConfigError, LeanvisionError
from ..io import run_folder, write_text
from ..setting import setting
from . import html, plots
from .collect import (
    BENCH,
    Evaluation,
    Variant,
    accuracy,
    evaluate_variant,
    headline_split,
    int8_top1,
    measure_speed,
    parent_folder,
    resolve_variants,
    size_bytes,
    speed_from_file,
)
from .names import readable_names
from .sections import (
    _calibration_section,
    _confusion_section,
    _explanation_section,
    _num,
    _pct,
    _training_section,
)
from .shift_section import robustness_section

REPORT_FILE = "report.html"


@dataclass
class ReportOptions:
    """report's settings with their help (`leanvision report` draws its options from here)."""

    paths: list[Path] = setting((), "Run or artifact folders (parents named in their cards are "
                                "added when on disk).")
    out: Path | None = setting(None, "report.html path or folder (default: "
                               "runs/report/<time>/report.html).")
    data: str | None = setting(None, "Data for calibration and the gallery (default: the data in "
                               "each card).")
    bench: Path | None = setting(None, "A bench.json from `leanvision bench` with the variants' "
                                 "speed.")
    measure: bool = setting(True, "Time variants with no bench figures.")
    pareto: Path | None = setting(None, "A pareto.json from `leanvision optimize`: its paired "
                                  "intervals become error bars in the Pareto charts.")
    explain_images: int = setting(4, "Images in the explanation gallery (0: none).")
    explain_method: str = setting("gradcam", "Method of the gallery's maps.")


def report(paths: str | os.PathLike | Sequence[str | os.PathLike],
           out: str | os.PathLike | None = None, *, data: str | os.PathLike | None = None,
           bench: str | os.PathLike | None = None, measure: bool = True,
           pareto: str | os.PathLike | None = None,
           explain_images: int = 4, explain_method: str = "gradcam",
           console: Console | None = None) -> dict[str, Any]:
    """Write one self-contained HTML report on the runs / artifacts in `paths` (and the parents
    their cards name, where those are on disk).

    `out`: an .html file, or a folder to hold report.html (default runs/report/<stamp>/).
    `data`: the dataset to recompute probabilities and draw gallery images from (default: the
    data each card names). `bench`: a bench.json whose timings fill the variants table; without
    it the variants are timed briefly when `measure` is true. `pareto`: optimize's
    pareto.json, whose paired comparisons with the base draw error bars. Returns {"path",
    "sections", "variants"}; a missing ingredient becomes a note on the page, never an
    error."""
    console = console or Console(stderr=True)
    if explain_images < 0:
        raise ConfigError(f"--explain-images must be >= 0, got {explain_images}")
    if explain_images:
        explain_method = _check_method(explain_method)
    variants = resolve_variants(paths)
    for v, label in zip(variants, readable_names(variants).values(), strict=True):
        v.label = label
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
        add_intervals(rows, pareto)
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
        return run_folder("report") / REPORT_FILE
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
        known = parent is not None and parent.resolve() in by_path
        parent_name = by_path[parent.resolve()].name if known else v.card.get("parent")
        metrics = v.metrics
        rows.append({
            "name": v.name, "label": v.label or v.name, "path": str(v.path), "stage": v.stage,
            "parent": parent_name, "given": v.given,
            "parent_label": by_path[parent.resolve()].label if known else v.card.get("parent"),
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
    headers = ["#", "variant", "stage", "parent", "val top-1", "test top-1", "int8 top-1",
               "runtime", "p50 ms (b1)", f"img/s (b{batch or 'N'})", "size MB", "params",
               "MFLOPs"]
    table_rows = [[
        str(i), html.Titled(r["label"] + ("" if r["given"] else " (parent)"), r["path"]),
        r["stage"], html.Titled(r["parent_label"], str(r["parent"])) if r["parent"] else "—",
        _pct(r["val_top1"]), _pct(r["test_top1"]), _pct(r["int8_top1"]), r["runtime"] or "—",
        _num(r["latency_ms_p50"], 3), _num(r["throughput"], 0),
        _num(r["size_bytes"] / 1e6 if r["size_bytes"] else None, 2),
        f"{r['params']:,}" if r["params"] else "—",
        _num(r["flops"] / 1e6 if r["flops"] else None, 1)] for i, r in enumerate(rows, 1)]
    headers, table_rows, empty = drop_empty_columns(headers, table_rows)
    front = ["front" if r["pareto_latency"] or r["pareto_size"] else "" for r in rows]
    text = sum(h in ("#", "variant", "stage", "parent") for h in headers)
    parts = [html.table(headers, table_rows, front, text_columns=text),
             html.paragraph(f"Accuracy is top-1 in %; the Pareto charts use {split} top-1 of "
                            "what each variant ships (INT8 for a quantized artifact), each "
                            "point numbered as its row. Marked rows are Pareto-optimal on "
                            "latency or on size; a name's tooltip gives its folder. "
                            + speed_note, "muted")]
    if empty:
        parts.append(html.paragraph(empty_columns_sentence(empty, speed_note), "muted"))
    axes = []
    if any(r["latency_ms_p50"] is not None for r in rows):
        axes.append(("latency p50 at batch 1 (ms)", [r["latency_ms_p50"] for r in rows]))
    else:
        parts.append(html.note("Accuracy against latency: no latency figures (see above)."))
    axes.append(("size (MB)", [r["size_bytes"] / 1e6 if r["size_bytes"] else None
                               for r in rows]))
    if any(r["accuracy"] is not None for r in rows):
        bars = _error_bars(rows, split)
        png = plots.pareto_charts([r["label"] for r in rows], [r["accuracy"] for r in rows],
                                  axes, f"{split} top-1", bars)
        parts.append('<div id="pareto">' + html.image(
            png, "Pareto charts: accuracy against latency and size",
            "Red, filled: Pareto-optimal (no other variant is both as cheap and as accurate). "
            "Numbers: the rows of the table, named in the key."
            + (" Bars: the 95% interval of each variant's paired drop against the base, on "
               "the same validation images." if any(bars) else "")
        ) + "</div>")
    else:
        parts.append(html.note(f"No Pareto chart: no variant records a {split} accuracy."))
    missing = [v for v in variants if v.card is not None and v.card.get("parent")
               and parent_folder(v) is None]
    for v in missing:
        parts.append(html.note(f"{v.label}: its parent {v.card['parent']} is not on disk, so "
                               "it is not compared."))
    return html.Section("variants", "Variants", "".join(parts))


def add_intervals(rows: list[dict[str, Any]], pareto: str | os.PathLike | None) -> None:
    """Each row's paired comparison with the base from optimize's pareto.json ("paired": the
    drop and its 95% interval in points, on the validation images), where it has one."""
    if pareto is None:
        return
    path = Path(pareto)
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        entries = [*found["front"], found.get("chosen") or {}]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"pareto file '{pareto}' could not be read ({exc}); pass the "
                          "pareto.json that `leanvision optimize` wrote") from None
    paired = {}
    for e in entries:
        if isinstance(e.get("paired"), dict) and e.get("artifact"):
            folder = Path(e["artifact"])
            for where in (folder, path.parent / "stages" / folder.name, path.parent / folder):
                paired.setdefault(where.resolve(), e["paired"])
    for r in rows:
        r["paired"] = paired.get(Path(r["path"]).resolve())


def _error_bars(rows: list[dict[str, Any]], split: str) -> list[tuple[float, float] | None]:
    """How far each row's bar reaches below and above its accuracy: the 95% interval of its
    paired drop against the base (scored on validation, so none for a test-split chart)."""
    bars = []
    for r in rows:
        paired = r.get("paired") or {}
        interval, drop = paired.get("interval95_points"), paired.get("drop_points")
        if split != "val" or not interval or drop is None:
            bars.append(None)
            continue
        low, high = sorted(interval)
        bars.append((max(0.0, high - drop) / 100, max(0.0, drop - low) / 100))
    return bars


# Why a column of the variants table can be empty for every variant (it is then left out).
EMPTY_BECAUSE = {
    "parent": "no variant was made from another artifact",
    "test top-1": "the data has no test split (a test/ folder, or a split column in a CSV), "
                  "so every accuracy here is on the validation hold-out, the split that also "
                  "chose among the variants",
    "int8 top-1": "no variant is quantized",
    "runtime": "speed was not measured", "params": "the cards record no parameter count",
    "MFLOPs": "the cards record no FLOP count",
}


def drop_empty_columns(headers: list[str], rows: list[list[Any]],
                       ) -> tuple[list[str], list[list[Any]], list[str]]:
    """The table without the columns every row leaves empty ("—"), and those columns."""
    empty = [i for i in range(len(headers)) if rows and all(r[i] == "—" for r in rows)]
    keep = [i for i in range(len(headers)) if i not in empty]
    return ([headers[i] for i in keep], [[r[i] for i in keep] for r in rows],
            [headers[i] for i in empty])


def empty_columns_sentence(empty: list[str], speed_note: str) -> str:
    """One sentence on each left-out column: why no variant has a figure there."""
    speed = [c for c in empty if c == "runtime" or c.startswith(("p50", "img/s"))]
    reasons = [f"{c}: {EMPTY_BECAUSE[c]}" for c in empty if c in EMPTY_BECAUSE
               and c != "runtime"]
    if speed:
        reasons.append(f"{', '.join(speed)}: {speed_note.rstrip('.')}")
    others = [c for c in empty if c not in EMPTY_BECAUSE and c not in speed]
    if others:
        reasons.append(f"{', '.join(others)}: no variant records one")
    return "Left out, empty for every variant: " + "; ".join(reasons) + "."


# ---- training --------------------------------------------------------------------------------
