"""What a report shows, gathered from run and artifact folders: the variants and their lineage,
training histories, card metrics, recomputed probabilities (for calibration) and speed."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import CARD_FILE, WEIGHTS_FILE, read_card, same_data, training_data
from ..errors import ArtifactError, ConfigError, LeanvisionError
from ..io import read_jsonl
from ..runtime.openvino_runtime import INT8_XML

METRICS_FILE = "metrics.jsonl"
INT8_FILE = "model.int8.onnx"
# What a quantized artifact ships, by backend: (its file, the card's metrics key, its runtime).
INT8_FORMATS = ((INT8_FILE, "int8", "onnx-int8"), (INT8_XML, "openvino_int8", "openvino-int8"))
# A report compares variants on this machine; `leanvision bench` is the careful measurement.
BENCH = {"batch": 32, "warmup": 5, "iterations": 30}
RELIABILITY_BINS = 15  # as evaluate.CALIBRATION_BINS, so the diagram and the card's ECE agree
INPUT_HELP = ("pass a training run folder (it holds metrics.jsonl and model.json, written by "
              "`leanvision train DATA --out DIR`) or an artifact folder (it holds model.json)")


@dataclass
class Variant:
    """One run or artifact folder. `card` is None for a run that never wrote its artifact."""

    path: Path
    card: dict[str, Any] | None
    history: list[dict[str, Any]]
    given: bool  # named by the user; False: a parent found on disk through a card's lineage
    name: str = ""  # unique on the page, from the folder's name
    label: str = ""  # what made it, for people ("resnet8 ← KD · INT8"; names.py)

    @property
    def stage(self) -> str:
        return str(self.card.get("stage", "?")) if self.card else "run (no artifact)"

    @property
    def metrics(self) -> dict[str, Any]:
        return (self.card or {}).get("metrics") or {}

    @property
    def int8(self) -> tuple[str, str, str] | None:
        """The INT8 model it ships (file, metrics key, runtime), or None."""
        return next((f for f in INT8_FORMATS
                     if (self.path / f[0]).is_file() and f[1] in self.metrics), None)

    @property
    def quantized(self) -> bool:
        return self.int8 is not None

    @property
    def has_weights(self) -> bool:
        return self.card is not None and (self.path / WEIGHTS_FILE).is_file()


@dataclass
class Evaluation:
    """Probabilities of one variant on one split, and what follows from them."""

    split: str
    data: str
    n: int
    metrics: dict[str, Any]  # classification_metrics of the recomputed logits
    reliability: dict[str, list[float]]  # per bin: confidence, accuracy, count
    skipped_images: int = 0
    note: str | None = None
    gallery: list[dict[str, Any]] = field(default_factory=list)  # image path, true class


def resolve_variants(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Variant]:
    """The folders named, then the parents their cards name that exist on disk (whole chains)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        raise ConfigError("no runs or artifacts given; " + INPUT_HELP)
    variants: dict[Path, Variant] = {}
    for p in paths:
        variant = _open(p, given=True)
        variants.setdefault(variant.path.resolve(), variant)
    queue = list(variants.values())
    while queue:
        child = queue.pop(0)
        parent = parent_folder(child)
        if parent is None or parent.resolve() in variants:
            continue
        try:
            found = _open(parent, given=False)
        except LeanvisionError:
            continue  # a parent that was moved or is incomplete is named, not shown
        variants[parent.resolve()] = found
        queue.append(found)
    _name(ordered := list(variants.values()))
    return ordered


def _open(p: str | os.PathLike, given: bool) -> Variant:
    path = Path(p)
    if not path.exists():
        raise ArtifactError(f"'{p}' does not exist; {INPUT_HELP}")
    if path.is_file():
        if path.name not in (CARD_FILE, METRICS_FILE, WEIGHTS_FILE):
            raise ArtifactError(f"'{p}' is a file, not a run or artifact folder; {INPUT_HELP}")
        path = path.parent
    has_card, has_history = (path / CARD_FILE).is_file(), (path / METRICS_FILE).is_file()
    if not has_card and not has_history:
        raise ArtifactError(f"'{p}' is not a leanvision run or artifact: it holds neither "
                            f"{CARD_FILE} nor {METRICS_FILE}; {INPUT_HELP}")
    card = read_card(path)[1] if has_card else None
    history = read_jsonl(path / METRICS_FILE) if has_history else []
    if not history and not _has_scores(card):
        what = f"{METRICS_FILE} is empty" if has_history else f"there is no {METRICS_FILE}"
        raise ArtifactError(f"'{p}' has no metrics to report: {what} and its {CARD_FILE} "
                            "records no accuracy (the run stopped before it finished). Finish "
                            "it (`leanvision train --resume DIR`) or re-run the stage that made "
                            "it, then report again")
    return Variant(path=path, card=card, history=history, given=given)


def _has_scores(card: dict[str, Any] | None) -> bool:
    metrics = (card or {}).get("metrics") or {}
    return any(isinstance(metrics.get(s), dict) and metrics[s].get("top1") is not None
               for s in ("train", "val", "test"))


def parent_folder(variant: Variant) -> Path | None:
    """The parent artifact's folder if it is on disk. Cards record the path as it was given when
    the stage ran (often relative to that working directory), so the child's folder is tried
    too."""
    parent = (variant.card or {}).get("parent")
    if not parent:
        return None
    raw = Path(parent)
    candidates = [raw] if raw.is_absolute() else [raw, variant.path / raw,
                                                  variant.path.parent / raw.name]
    return next((c for c in candidates if (c / CARD_FILE).is_file()), None)


def _name(variants: list[Variant]) -> None:
    """Short unique labels: the folder name, with its parent folder where two share a name."""
    counts: dict[str, int] = {}
    for v in variants:
        counts[v.path.name] = counts.get(v.path.name, 0) + 1
    seen: set[str] = set()
    for v in variants:
        name = v.path.name if counts[v.path.name] == 1 else f"{v.path.parent.name}/{v.path.name}"
        while name in seen:
            name += "'"
        seen.add(name)
        v.name = name


def headline_split(variants: list[Variant]) -> str:
    """test when every scored variant has it (the figure no training decision saw), else val."""
    scored = [v for v in variants if v.card is not None]
    if scored and all(_top1(v, "test") is not None for v in scored):
        return "test"
    return "val"


def _top1(variant: Variant, split: str) -> float | None:
    entry = variant.metrics.get(split)
    return entry.get("top1") if isinstance(entry, dict) else None


def int8_top1(variant: Variant, split: str) -> float | None:
    key = variant.int8[1] if variant.int8 else "int8"
    entry = variant.metrics.get(key, {}).get(split)
    return entry.get("top1") if isinstance(entry, dict) else None


def accuracy(variant: Variant, split: str) -> float | None:
    """The accuracy of what the variant ships: INT8 for a quantized artifact."""
    if variant.quantized:
        value = int8_top1(variant, split)
        if value is not None:
            return value
    return _top1(variant, split)


def size_bytes(variant: Variant) -> int | None:
    if variant.int8:
        file, key, _ = variant.int8
        recorded = variant.metrics[key].get("size_bytes")
        return int(recorded) if recorded else (variant.path / file).stat().st_size
    if variant.metrics.get("size_bytes") is not None:
        return int(variant.metrics["size_bytes"])
    weights = variant.path / WEIGHTS_FILE
    return weights.stat().st_size if weights.is_file() else None


def runtime_of(variant: Variant) -> str:
    """The runtime a variant is timed with: its INT8 model for a quantized artifact (what it was
    made for), else eager PyTorch, which every artifact has."""
    return variant.int8[2] if variant.int8 else "torch"


# ---- speed ---------------------------------------------------------------------------------

def speed_from_file(bench_path: str | os.PathLike, variants: list[Variant]) -> dict[Path, dict]:
    """Rows of a bench.json, one per variant: the variant's own runtime where it was timed."""
    path = Path(bench_path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["results"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"bench file '{bench_path}' could not be read ({exc}); pass the "
                          "bench.json that `leanvision bench ARTIFACT...` wrote") from None
    return _pick_rows(rows, variants)


def measure_speed(variants: list[Variant], scratch: Path, console) -> dict[Path, dict]:
    """Time every artifact briefly with leanvision.runtime.bench, each under runtime_of()."""
    import torch

    from ..runtime.bench import bench

    timed = [v for v in variants if v.card is not None]
    runtimes = sorted({runtime_of(v) for v in timed})
    if not timed:
        return {}
    # The caller's thread setting, not all cores: a report run beside other work stays polite.
    result = bench([v.path for v in timed], runtimes=runtimes, batch=BENCH["batch"],
                   threads=torch.get_num_threads(),
                   warmup=BENCH["warmup"], iterations=BENCH["iterations"], out=scratch,
                   console=console)
    return _pick_rows(result["results"], variants)


def _pick_rows(rows: list[dict], variants: list[Variant]) -> dict[Path, dict]:
    by_folder: dict[Path, list[dict]] = {}
    for row in rows:
        if "latency_ms" in row:
            by_folder.setdefault(Path(row["artifact"]).resolve(), []).append(row)
    picked = {}
    for v in variants:
        found = by_folder.get(v.path.resolve(), [])
        wanted = runtime_of(v)
        row = next((r for r in found if r.get("runtime") == wanted), found[0] if found else None)
        if row is not None:
            picked[v.path.resolve()] = row
    return picked


# ---- probabilities -------------------------------------------------------------------------

def evaluate_variant(variant: Variant, data: str | os.PathLike | None,
                     gallery_size: int) -> Evaluation | None:
    """Logits of the variant's PyTorch weights on the split its card scored (test, else val),
    for calibration (which needs probabilities the card does not keep) and for the gallery's
    images. None when the data is unknown or gone; the reason is raised as a LeanvisionError."""
    import torch

    from ..artifact import load
    from ..data import ImageChecks, decode_images, load_data
    from ..data.partition import cv_partitions, select_split
    from ..evaluate import classification_metrics, predict_logits, remap_labels

    config = (variant.card or {}).get("config", {})
    data_spec = str(data) if data is not None else training_data(variant.card)
    if not data_spec:
        raise ConfigError("its card does not name the data it was trained on; pass data=...")
    source = load_data(data_spec)
    same = same_data(data, variant.card)
    fold = variant.card.get("cv")
    if fold and same:
        split, records = "val", cv_partitions(source, fold["folds"], fold["seed"])[
            fold["fold"] - 1].val
    else:
        val_fraction = config.get("val_fraction", 0.1) if same else 0.0
        split, records = select_split(source, "auto", val_fraction, config.get("seed", 0))
    art = load(variant.path)
    records = remap_labels(records, source.classes, art.classes)
    decoded = decode_images(records, art.input_size, ImageChecks(), skip_bad=True)
    logits = predict_logits(art.model, decoded.images, art.mean, art.std, "cpu", tta=art.tta)
    art.model.to("cpu")
    metrics = classification_metrics(logits, decoded.labels, art.classes)
    probs = torch.softmax(logits.float(), 1)
    note = ("figures of the FP32 PyTorch weights; the INT8 model's accuracy is in the variants "
            "table" if variant.quantized else None)
    return Evaluation(split=split, data=data_spec, n=len(decoded), metrics=metrics,
                      reliability=reliability(probs.numpy(), decoded.labels.numpy()),
                      skipped_images=len(decoded.bad), note=note,
                      gallery=gallery_images(records, decoded.kept, decoded.labels.numpy(),
                                             art.classes, gallery_size))


def reliability(probs: np.ndarray, labels: np.ndarray,
                bins: int = RELIABILITY_BINS) -> dict[str, list[float]]:
    """Mean confidence, accuracy and count per equal-width confidence bin (empty bins: NaN)."""
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out: dict[str, list[float]] = {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(),
                                   "confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        out["count"].append(count)
        out["confidence"].append(float(confidence[mask].mean()) if count else float("nan"))
        out["accuracy"].append(float(correct[mask].mean()) if count else float("nan"))
    return out


def gallery_images(records, kept: np.ndarray, labels: np.ndarray, classes: list[str],
                   count: int) -> list[dict[str, Any]]:
    """`count` decodable images of the split, one class after another, so that the gallery
    shows as many classes as it has room for."""
    if count <= 0:
        return []
    by_class: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(position)
    order: list[int] = []
    queues = [by_class[c] for c in sorted(by_class)]
    while len(order) < count and any(queues):
        for queue in queues:
            if queue and len(order) < count:
                order.append(queue.pop(0))
    return [{"item": records.items[int(kept[p])], "label": classes[int(labels[p])],
             "describe": records.describe(int(kept[p]))} for p in order]


# ---- explanations --------------------------------------------------------------------------

@dataclass
class Explained:
    """One variant's gallery: per image its overlay, and its parent's with their drift."""

    items: list[dict[str, Any]]  # overlay / parent_overlay (PNG bytes or None), image, label,
    #                              predicted, probability, faithfulness, drift
    drift_mean: dict[str, Any] | None
    faithfulness: dict[str, float] | None  # mean deletion, insertion, score
    layer: str | None


def gallery_inputs(images: list[dict[str, Any]], scratch: Path) -> list[Path]:
    """Files explain() can read: built-in data comes as arrays, written here as PNGs."""
    from PIL import Image

    files = []
    for i, image in enumerate(images):
        item = image["item"]
        if isinstance(item, np.ndarray):
            path = scratch / f"image-{i:03d}.png"
            Image.fromarray(item).save(path)
            item = path
        files.append(Path(item))
    return files


def explain_variant(variant: Variant, images: list[dict[str, Any]], files: list[Path],
                    method: str, parent: Path | None, out: Path, console) -> Explained:
    """explain() on the gallery images, with drift from `parent` when it is among the variants.
    Its files go to `out`, a scratch folder: the page inlines what it shows."""
    from ..explanations import explain

    result = explain(variant.path, [str(f) for f in files], method=method, out=out,
                     parent=str(parent) if parent is not None else None, faithfulness=True,
                     console=console)
    return read_explanations(result, Path(result.get("out", out)), images)


def read_explanations(result: dict[str, Any], out: Path,
                      images: list[dict[str, Any]]) -> Explained:
    """The overlays and figures of an explain() result (the record it writes as explain.json:
    "images" -> per image "predicted" and "explanations", paths relative to `out`)."""
    items = []
    for i, record in enumerate(result.get("images") or []):
        for entry in record.get("explanations") or []:
            overlay = _read(out, entry.get("overlay"))
            if overlay is None:
                continue
            parent = entry.get("parent") or {}
            items.append({
                "overlay": overlay, "parent_overlay": _read(out, parent.get("overlay")),
                "image": images[i]["describe"] if i < len(images) else record.get("name"),
                "label": images[i]["label"] if i < len(images) else None,
                "predicted": entry.get("class"), "probability": entry.get("prob"),
                "parent_probability": parent.get("prob"),
                "faithfulness": entry.get("faithfulness"), "drift": entry.get("drift"),
            })
    drift = result.get("drift") or {}
    return Explained(items=items, drift_mean=drift.get("mean"),
                     faithfulness=result.get("faithfulness"), layer=result.get("target_layer"))


def _read(out: Path, name: str | None) -> bytes | None:
    if not name:
        return None
    path = Path(name) if Path(name).is_absolute() else out / name
    return path.read_bytes() if path.is_file() else None
