"""`leanvision.explain`: why did the model say that? A map per image and class, written as an
overlay PNG and a raw .npy, scored for faithfulness, and compared with the parent model's map."""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from .._version import __version__
from ..artifact import CARD_FILE, Artifact, load
from ..data import BadImageError, ImageChecks, load_rgb, normalize, to_tensor_resized
from ..errors import ConfigError, DatasetError
from ..hardware import choose_hardware
from ..io import run_folder, write_atomic, write_json
from ..kinds import kind_of
from ..setting import setting
from .attribution import ATTRIBUTION_METHODS, DEFAULT_GRID, DEFAULT_SAMPLES, attribution_maps
from .cam import CAM_METHODS, TargetLayer, cam_maps, find_target_layer, frozen
from .drift import explanation_drift, mean_drift
from .faithfulness import STEPS, deletion_insertion, summarise

METHODS = CAM_METHODS + ATTRIBUTION_METHODS
RESULT_FILE = "explain.json"
PARENT_FOLDER = "parent"
# Overlays of 32 px inputs are upscaled (nearest, whole multiples) to at least this many pixels
# on the shorter side, so they can be seen; the .npy maps stay at the model's input size.
MIN_OVERLAY_SIDE = 128


@dataclass
class _Explainer:
    """One model ready to explain: its artifact, the decoded images and (CAMs) its layer."""

    art: Artifact
    images: list[torch.Tensor]  # uint8 [3, H, W] at the model's input size
    layer: TargetLayer | None
    device: torch.device

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with frozen(self.art.model), torch.no_grad():
            return self.art.model(x).float().softmax(1)[0].cpu()

    def normalised(self, index: int) -> torch.Tensor:
        return normalize(self.images[index].to(self.device), self.art.mean, self.art.std)[None]


@dataclass
class ExplainOptions:
    """explain's settings with their help (`leanvision explain` draws its options from here)."""

    artifact: Path = setting(None, "Artifact folder to explain.")
    images: list[Path] = setting((), "Image files.")
    method: str = setting("gradcam", "gradcam, gradcam++, scorecam, lime or shap.")
    target: str | None = setting(None, "Class names (comma-separated) or 'all'; default: the "
                                 "predicted class.")
    parent: str | None = setting(None, "Also explain this artifact ('auto': the card's parent) "
                                 "and report how the maps drifted.")
    faithfulness: bool = setting(True, "Score each map by deletion/insertion.")
    samples: int = setting(DEFAULT_SAMPLES, "lime/shap: perturbed samples per image.")


def explain(artifact: str | Path | Artifact, images: Sequence[str | Path], *,
            method: str = "gradcam", target: str | Sequence[str] | None = None,
            out: str | Path | None = None, parent: str | Path | Artifact | None = None,
            faithfulness: bool = True, console: Console | None = None,
            samples: int = DEFAULT_SAMPLES, grid: int = DEFAULT_GRID, top_fraction: float = 0.2,
            seed: int = 0, device: str = "auto",
            texts: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Explain the model's decision on each image; write overlays, maps and OUT/explain.json.

    target: None = the predicted class, "all" = every class, or class names (a list, or one
    string with commas). parent: an artifact to compare with, or "auto" for the card's parent
    when it exists. Every input is checked (method, images, classes, parent) before anything
    is written. Returns the explain.json record plus "path" and "out"."""
    method = _check_method(method)
    if isinstance(images, str | Path):
        images = [images]
    if not images:
        raise ConfigError("no images given; pass one or more image files to explain")
    _check_counts(samples, grid, top_fraction)
    console = console or Console(stderr=True)
    started = time.perf_counter()
    art = artifact if isinstance(artifact, Artifact) else load(artifact)
    kind_explain = kind_of(art.card).explain
    if kind_explain is not None:
        # E.g. an image + text model: each image is explained with its own text (in order).
        return kind_explain(art, images, texts, out=out, console=console, method=method,
                            target=target, faithfulness=faithfulness, samples=samples,
                            grid=grid, top_fraction=top_fraction, seed=seed, device=device)
    if texts:
        raise ConfigError("--text needs a model trained with --text-columns; this artifact "
                          "reads images only (drop --text)")
    parent_art, parent_note = _resolve_parent(art, parent)
    paths = [Path(p) for p in images]
    pictures = _decode_all(paths, art.input_size)
    hw = choose_hardware(device, "fp32")
    child = _prepare(art, pictures, method, hw.device)
    wanted = _target_indices(target, art.classes)
    other = None
    if parent_art:
        # JPEGs decode at a scale that depends on the input size (see load_rgb's draft_to);
        # each model sees the pixels predict would give it.
        same = tuple(parent_art.input_size) == tuple(art.input_size)
        other = _prepare(parent_art, pictures if same else
                         _decode_all(paths, parent_art.input_size), method, hw.device)
    out_dir = Path(out) if out is not None else run_folder("explain", _safe(art.path.name))

    settings = dict(method=method, samples=samples, grid=grid, seed=seed)
    records, devices = [], {}
    try:
        for ex in (child, other):
            if ex is not None:
                devices[id(ex)] = _device_of(ex.art.model)
                ex.art.model.to(hw.device)
        for i, path in enumerate(paths):
            records.append(_explain_image(i, path, child, other, wanted, out_dir, settings,
                                          faithfulness, top_fraction))
    finally:
        for ex in (child, other):
            if ex is not None:
                ex.art.model.to(devices.get(id(ex), "cpu"))

    explanations = [e for r in records for e in r["explanations"]]
    faith = summarise([e["faithfulness"] for e in explanations if e["faithfulness"]])
    drifts = [e["drift"] for e in explanations if e["drift"]]
    result: dict[str, Any] = {
        "artifact": str(art.path), "arch": art.card.get("arch"), "stage": art.card.get("stage"),
        "method": method, "target": _target_text(target),
        "target_layer": child.layer.name if child.layer else None,
        "features": None if child.layer else f"{grid}x{grid} grid cells, {samples} samples",
        "input_size": list(art.input_size),
        "faithfulness_metric": {"name": "deletion-insertion", "steps": STEPS,
                                "fill": "mean colour", "score": "insertion - deletion"}
        if faithfulness else None,
        "faithfulness": faith,
        "parent": _parent_record(other, parent_note),
        "drift": {"mean": mean_drift(drifts), "top_fraction": top_fraction,
                  "explanations": len(drifts)} if other else None,
        "images": records,
        "seconds": round(time.perf_counter() - started, 3),
        "leanvision": __version__,
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    path = write_json(out_dir / RESULT_FILE, result)
    console.print(_summary_table(result))
    console.print(f"wrote {len(explanations)} explanations ({method}) to {out_dir}")
    return {**result, "path": str(path), "out": str(out_dir)}


def _explain_image(i: int, path: Path, child: _Explainer, other: _Explainer | None,
                   wanted: list[int] | None, out_dir: Path, settings: dict,
                   faithfulness: bool, top_fraction: float) -> dict[str, Any]:
    started = time.perf_counter()
    x = child.normalised(i)
    probs = child.probabilities(x)
    predicted = int(probs.argmax())
    classes = wanted if wanted is not None else [predicted]
    explanations = []
    for cls in classes:
        t0 = time.perf_counter()
        name = child.art.classes[cls]
        saliency = _maps(child, x, cls, settings)
        stem = f"{i:03d}-{_safe(path.stem)}-{_safe(name)}"
        rgb = child.images[i].permute(1, 2, 0).numpy()
        entry: dict[str, Any] = {
            "class": name, "prob": round(float(probs[cls]), 6),
            "overlay": _write_overlay(out_dir / f"{stem}.png", rgb, saliency),
            "map": _write_map(out_dir / f"{stem}.npy", saliency),
            "faithfulness": deletion_insertion(child.art.model, x[0], saliency, cls)
            if faithfulness else None,
            "parent": None, "drift": None,
        }
        if other is not None and name in other.art.classes:
            entry["parent"], parent_map = _explain_parent(i, stem, name, other, out_dir,
                                                          settings)
            entry["drift"] = explanation_drift([saliency], [parent_map],
                                               top_fraction)["per_image"][0]
        entry["seconds"] = round(time.perf_counter() - t0, 4)
        explanations.append(entry)
    return {"image": str(path), "name": path.name,
            "predicted": {"class": child.art.classes[predicted],
                          "prob": round(float(probs[predicted]), 6)},
            "explanations": explanations, "seconds": round(time.perf_counter() - started, 4)}


def _explain_parent(i: int, stem: str, name: str, other: _Explainer, out_dir: Path,
                    settings: dict) -> tuple[dict[str, Any], np.ndarray]:
    cls = other.art.classes.index(name)
    x = other.normalised(i)
    saliency = _maps(other, x, cls, settings)
    rgb = other.images[i].permute(1, 2, 0).numpy()
    record = {"prob": round(float(other.probabilities(x)[cls]), 6),
              "overlay": _write_overlay(out_dir / PARENT_FOLDER / f"{stem}.png", rgb, saliency,
                                        relative_to=out_dir),
              "map": _write_map(out_dir / PARENT_FOLDER / f"{stem}.npy", saliency,
                                relative_to=out_dir)}
    return record, saliency


def _maps(ex: _Explainer, x: torch.Tensor, cls: int, settings: dict) -> np.ndarray:
    """float32 [H, W] in [0, 1] at the model's input size."""
    if ex.layer is not None:
        return cam_maps(ex.art.model, x, [cls], settings["method"], ex.layer)[0]
    return attribution_maps(ex.art.model, x, [cls], settings["method"],
                            samples=settings["samples"], cells=settings["grid"],
                            seed=settings["seed"])[0]


def _prepare(art: Artifact, pictures: list[Image.Image], method: str,
             device: torch.device) -> _Explainer:
    images = [to_tensor_resized(p, art.input_size) for p in pictures]
    layer = find_target_layer(art.model, art.input_size) if method in CAM_METHODS else None
    return _Explainer(art=art, images=images, layer=layer, device=device)


def _decode_all(paths: list[Path], size: tuple[int, int]) -> list[Image.Image]:
    """Decode every image the way predict does for a model of input `size`; one DatasetError
    naming the bad ones."""
    pictures, bad = [], []
    for path in paths:
        try:
            pictures.append(load_rgb(path, ImageChecks(), draft_to=size))
        except BadImageError as exc:
            bad.append(f"{path}: {exc.reason}")
    if bad:
        raise DatasetError(f"{len(bad)} of {len(paths)} files could not be used as images "
                           f"(first: {bad[0]}); pass only image files (PNG, JPEG, ...) and "
                           "nothing was written")
    return pictures


def _check_method(method: str) -> str:
    key = str(method).strip().lower()
    if key not in METHODS:
        close = difflib.get_close_matches(key, METHODS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown explanation method {method!r}{hint}; choose one of "
                          f"{', '.join(METHODS)}")
    return key


def _check_counts(samples: int, grid: int, top_fraction: float) -> None:
    if samples < 2:
        raise ConfigError(f"--samples {samples} must be at least 2 for LIME / SHAP")
    if grid < 1:
        raise ConfigError(f"--grid {grid} must be at least 1 cell per side")
    if not 0 < top_fraction <= 1:
        raise ConfigError(f"--top-fraction {top_fraction} must be in (0, 1]")


def _target_indices(target: str | Sequence[str] | None, classes: list[str]) -> list[int] | None:
    """None for "the predicted class"; else class indices, checked against the card."""
    if target is None:
        return None
    names = ([t.strip() for t in target.split(",") if t.strip()] if isinstance(target, str)
             else [str(t) for t in target])
    if names == ["all"] and "all" not in classes:
        return list(range(len(classes)))
    unknown = [n for n in names if n not in classes]
    if unknown or not names:
        first = unknown[0] if unknown else ""
        close = difflib.get_close_matches(first, classes, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
        raise ConfigError(f"unknown class {first!r}{hint} for --target; the model's classes are "
                          f"{shown}, or pass 'all'")
    return [classes.index(n) for n in dict.fromkeys(names)]


def _target_text(target: str | Sequence[str] | None) -> str | list[str]:
    if target is None:
        return "predicted"
    return target if isinstance(target, str) else [str(t) for t in target]


def _resolve_parent(art: Artifact, parent: str | Path | Artifact | None
                    ) -> tuple[Artifact | None, str | None]:
    """The parent artifact (or None) and, for parent="auto", why there is none."""
    if parent is None:
        return None, None
    if isinstance(parent, Artifact):
        return parent, None
    if str(parent) != "auto":
        return load(parent), None
    recorded = art.card.get("parent")
    if not recorded:
        return None, "the card names no parent"
    # Stages record the parent's path as given at the time; it may be relative to the working
    # directory then or to the artifact's own folder.
    for candidate in (Path(recorded), art.path.parent / recorded, art.path / recorded):
        if (candidate / CARD_FILE).is_file():
            return load(candidate), None
    return None, f"the parent {recorded} named by the card does not exist here"


def _parent_record(other: _Explainer | None, note: str | None) -> dict[str, Any] | None:
    if other is None:
        return {"artifact": None, "note": note} if note else None
    return {"artifact": str(other.art.path), "arch": other.art.card.get("arch"),
            "target_layer": other.layer.name if other.layer else None,
            "input_size": list(other.art.input_size)}


def _write_overlay(target: Path, rgb_uint8: np.ndarray, saliency: np.ndarray,
                   relative_to: Path | None = None) -> str:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    overlay = show_cam_on_image(rgb_uint8.astype(np.float32) / 255.0, saliency, use_rgb=True)
    image = Image.fromarray(overlay)
    scale = -(-MIN_OVERLAY_SIDE // min(image.size))  # ceil
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    write_atomic(target, lambda tmp: image.save(tmp, format="PNG"))
    return target.relative_to(relative_to or target.parent).as_posix()


def _write_map(target: Path, saliency: np.ndarray, relative_to: Path | None = None) -> str:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, saliency.astype(np.float32))

    write_atomic(target, save)
    return target.relative_to(relative_to or target.parent).as_posix()


def _device_of(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "x"


def _summary_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"explain · {result['method']} · layer {result['target_layer'] or '-'}")
    for col in ("image", "class", "prob", "faithfulness", "drift IoU"):
        table.add_column(col, justify="left" if col in ("image", "class") else "right")
    for rec in result["images"]:
        for e in rec["explanations"]:
            faith = f"{e['faithfulness']['score']:+.3f}" if e["faithfulness"] else "-"
            drift = f"{e['drift']['iou']:.3f}" if e["drift"] else "-"
            table.add_row(rec["name"], e["class"], f"{e['prob']:.3f}", faith, drift)
    return table
