"""`leanvision quantize ARTIFACT --method ptq` (default) and `--method dynamic`: post-training
INT8 through ONNX Runtime, guarded for accuracy and checked for speed.

    artifact ─ model.onnx (parity-checked) ─ ORT pre-processing ─┬─ ptq: calibrate on training
             images, quantize_static (QDQ, uint8 activations, int8 per-channel weights)
             ─ accuracy guard: while top-1 drops more than max_drop points against FP32 ONNX,
               return the nodes that lose the most SQNR to FP32 (1, 2, 4, ... more) and redo
                                                                 └─ dynamic: quantize_dynamic
             ─ model.int8.onnx ─ verify: quantised ops present; INT8 vs FP32 median latency at
               batch 1 and 32 ─ card: what stayed FP32, timings, recommended runtime

The guard scores the validation split the parent trained with (its seed and fraction), with the
card's preprocessing and test-time augmentation: the numbers a user of the artifact will see.
Without a validation split it checks a slice of train held out of calibration, or says it has
nothing to check on (guard_split); the test split is scored only for the card, after every
decision."""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from ..artifact import CARD_FILE, WEIGHTS_FILE, Artifact, save_weights
from ..data import DataSource, ImageChecks, ImageRecords, decode_images, normalize
from ..data.partition import partition
from ..errors import ArtifactError, ConfigError
from ..evaluate import classification_metrics
from ..hardware import physical_cores, pixel_capped_batch
from ..io import write_atomic, write_json
from ..paired import DEFAULT_ACCEPT, RULES
from ..runtime.export import INPUT_NAME, OUTPUT_NAME, export_onnx, ort_session
from ..runtime.ort_quant import (
    CALIBRATION_METHODS,
    median_latency_ms,
    preprocess_onnx,
    quant_node_counts,
    quantize_onnx_dynamic,
    quantize_onnx_static,
)
from ..runtime.sensitivity import node_sensitivity
from ..runtime.stage import onnx_export_record
from ..tta import tta_logits
from .guard import Scores, Verdict, guard_record, judge
from .guard_split import guard_images, reported, with_guard_images
from .stage import child_card

ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
PTQ_METHODS = ("ptq", "dynamic")
TIMING_BATCHES = (1, 32)


@dataclass
class PTQConfig:
    method: str = "ptq"
    calibration_images: int = 300  # a few hundred images fix uint8 ranges; more adds little
    calibrate: str = "minmax"
    max_drop: float = 0.5  # top-1 points INT8 may lose against FP32 ONNX on validation data
    accept: str = DEFAULT_ACCEPT  # how sure "within max_drop" must be: paired.DEFAULT_ACCEPT
    max_rounds: int = 4  # guard rounds that return 1, 2, 4, 8 more nodes to FP32
    sensitivity_images: int = 64  # calibration images the per-node SQNR is measured on
    threads: int | None = None  # timing threads; None: the physical cores
    timing_runs: int = 30
    skip_bad_images: bool = False

    def __post_init__(self) -> None:
        if self.method not in PTQ_METHODS:
            raise ConfigError(f"--method {self.method!r} is not a post-training method; choose "
                              f"one of {', '.join(PTQ_METHODS)}")
        if self.calibrate not in CALIBRATION_METHODS:
            raise ConfigError(f"--calibrate {self.calibrate!r} is not one of "
                              f"{', '.join(CALIBRATION_METHODS)}")
        if self.accept not in RULES:
            raise ConfigError(f"--accept {self.accept!r} is not one of {', '.join(RULES)}")
        if self.calibration_images < 1:
            raise ConfigError(f"--calibration-images {self.calibration_images} must be >= 1")
        if not 0 <= self.max_rounds <= 10:
            raise ConfigError(f"max_rounds {self.max_rounds} must be between 0 and 10")
        if self.sensitivity_images < 1 or self.timing_runs < 1:
            raise ConfigError("sensitivity_images and timing_runs must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads {self.threads} must be >= 1")


@dataclass
class ScoringSet:
    """Decoded, normalised images of one split, scored again and again by the guard."""

    name: str
    images: torch.Tensor  # uint8 [N, 3, H, W]; normalised batch by batch (float32 is 4x larger)
    labels: torch.Tensor  # int64 [N]
    mean: list[float]
    std: list[float]
    classes: list[str]
    tta: str


def scoring_set(art: Artifact, records: ImageRecords, name: str, skip_bad: bool) -> ScoringSet:
    decoded = decode_images(records, art.input_size, ImageChecks(), skip_bad=skip_bad)
    return ScoringSet(name, decoded.images, decoded.labels, art.mean, art.std, art.classes,
                      art.tta)


@torch.no_grad()
def onnx_top1(path: str | Path, scored: ScoringSet, batch_size: int = 256) -> dict[str, Any]:
    """{"n", "top1"} of an ONNX file on `scored`, with the card's test-time augmentation."""
    session = ort_session(path)
    return runner_top1(lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], scored,
                       batch_size)


@torch.no_grad()
def runner_top1(run: Callable[[np.ndarray], np.ndarray], scored: ScoringSet,
                batch_size: int = 256) -> dict[str, Any]:
    """{"n", "top1"} of any runtime's network call (normalised float32 in, logits out) on
    `scored`, with the card's test-time augmentation; its `predictions` are the classes."""

    def network(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run(np.ascontiguousarray(x.numpy(), dtype=np.float32)))

    batch_size = pixel_capped_batch(batch_size, *scored.images.shape[-2:])
    logits = torch.cat([
        tta_logits(network, normalize(scored.images[i:i + batch_size], scored.mean,
                                      scored.std), scored.tta)
        for i in range(0, len(scored.images), batch_size)])
    result = classification_metrics(logits, scored.labels, scored.classes)
    scores = Scores(n=result["n"], top1=result["top1"])
    scores.predictions = logits.argmax(1).numpy()
    return scores


def calibration_images(art: Artifact, train: ImageRecords, n: int, seed: int) -> np.ndarray:
    """A seeded sample of training images, normalised as the model expects (float32 NCHW)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(train), min(n, len(train)), replace=False))
    decoded = decode_images(train.subset(pick), art.input_size, ImageChecks(), skip_bad=True)
    return normalize(decoded.images, art.mean, art.std).numpy()


def run_ptq(art: Artifact, source: DataSource, pcfg: PTQConfig, out_dir: Path,
            console: Console) -> dict[str, Any]:
    """Quantize `art` after training into `out_dir` (which must not hold an artifact yet);
    a folder this call made is removed again when it fails."""
    created = not out_dir.exists()
    try:
        return _ptq_into(art, source, pcfg, out_dir, console)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def scored_splits(art: Artifact, source: DataSource, pcfg: PTQConfig,
                  ) -> tuple[Any, int, dict[str, ScoringSet]]:
    """(the parent's partition, its seed, {"val" / "test": ScoringSet}) of `source`: the
    validation split the parent trained with (its seed and fraction), decoded first so that an
    unreadable image is reported before any export work."""
    parent_cfg = art.card.get("config", {})
    seed = int(parent_cfg.get("seed", 0))
    parts = partition(source, float(parent_cfg.get("val_fraction", 0.1)), seed)
    splits = {name: scoring_set(art, records, name, pcfg.skip_bad_images)
              for name in ("val", "test")
              if (records := getattr(parts, name)) is not None and len(records)}
    return parts, seed, splits


def _ptq_into(art: Artifact, source: DataSource, pcfg: PTQConfig, out_dir: Path,
              console: Console) -> dict[str, Any]:
    parts, seed, splits = scored_splits(art, source, pcfg)
    checked, guard_set = guard_images(
        parts, seed, splits, lambda r, name: scoring_set(art, r, name, pcfg.skip_bad_images),
        console)
    copy_weights(art, out_dir)
    exported = export_onnx(art.model, art.input_size, out_dir / ONNX_FILE)
    # Every decision below sees the guard's images only; the rest are scored for the card after.
    fp32 = {} if guard_set is None else {guard_set.name: onnx_top1(out_dir / ONNX_FILE,
                                                                  guard_set)}
    calibration = None
    with tempfile.TemporaryDirectory(prefix="leanvision-ptq-") as scratch:
        prepared = preprocess_onnx(out_dir / ONNX_FILE, Path(scratch) / "prepared.onnx")
        if pcfg.method == "ptq":
            calibration = calibration_images(art, checked.calibration_pool,
                                             pcfg.calibration_images, seed)
            best, guard = _guarded_static(prepared, calibration, guard_set, fp32, pcfg,
                                          Path(scratch), console)
        else:
            best = Path(scratch) / "int8-dynamic.onnx"
            quantize_onnx_dynamic(prepared, best, per_channel=True, preprocessed=True)
            guard = _dynamic_guard(best, guard_set, fp32, pcfg, console)
        write_atomic(out_dir / INT8_FILE, lambda tmp: shutil.copyfile(best, tmp))
    guard = with_guard_images(guard, checked)
    nodes = quant_node_counts(out_dir / INT8_FILE)
    if not nodes.get("QuantizeLinear") and not nodes.get("DynamicQuantizeLinear"):
        raise ArtifactError(f"{out_dir / INT8_FILE} holds no quantisation nodes ({nodes}); "
                            "ONNX Runtime found nothing to quantise in this model")
    timings = _speed_check(out_dir, art.input_size, pcfg, console)
    scored = reported(splits, guard_set)
    fp32 = {name: fp32[name] if name in fp32 else onnx_top1(out_dir / ONNX_FILE, s)
            for name, s in scored.items()}
    int8 = {name: (guard["int8_top1"] if name == guard.get("split") else
                   onnx_top1(out_dir / INT8_FILE, s)) for name, s in scored.items()}
    card = _card(art, out_dir, pcfg, exported, fp32, int8, guard, nodes, timings, calibration)
    write_json(out_dir / CARD_FILE, card)  # last: a folder with a card is complete
    _print_summary(console, card)
    return {"artifact": str(out_dir), "metrics": card["metrics"],
            "quantization": card["quantization"],
            "recommended_runtime": card["recommended_runtime"]}


def _guarded_static(prepared: Path, calibration: np.ndarray, guard_set: ScoringSet | None,
                    fp32: dict[str, Any], pcfg: PTQConfig, scratch: Path,
                    console: Console) -> tuple[Path, dict[str, Any]]:
    """Quantize; while the drop exceeds the budget, return the most sensitive nodes to FP32.
    Returns the best model (lowest drop, then fewest FP32 nodes) and the guard's record."""
    excluded: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    best: tuple[float, int, Path, list[dict[str, Any]], dict[str, Any], Verdict] | None = None
    for round_no in range(pcfg.max_rounds + 1):
        path = scratch / f"int8-{round_no}.onnx"
        quantize_onnx_static(prepared, path, calibration, calibrate=pcfg.calibrate,
                             per_channel=True, nodes_to_exclude=[e["name"] for e in excluded],
                             preprocessed=True)
        if guard_set is None:
            return path, guard_record(pcfg, None, None, [], [], None)
        scored = onnx_top1(path, guard_set)
        verdict = guard_verdict(fp32, scored, guard_set, pcfg, console if not rounds else None)
        drop = verdict.drop_points
        rounds.append({"round": round_no, "fp32_nodes": len(excluded),
                       "top1": scored["top1"], "drop_points": drop})
        console.print(f"guard round {round_no}: {len(excluded)} node(s) FP32, int8 top-1 "
                      f"{scored['top1']:.4f}, {verdict.statement(pcfg.max_drop)}")
        if best is None or (drop, len(excluded)) < best[:2]:
            best = (drop, len(excluded), path, list(excluded), scored, verdict)
        if verdict.met or round_no == pcfg.max_rounds:
            break
        ranked = node_sensitivity(prepared, path, calibration,
                                  max_images=pcfg.sensitivity_images)
        # One node stays INT8 at least: a model with none is no INT8 model (and ORT refuses).
        more = ranked[:min(2 ** round_no, len(ranked) - 1)]
        if not more:
            break
        excluded += more
    assert best is not None
    _, _, path, kept_fp32, scored, verdict = best
    return path, guard_record(pcfg, guard_set.name, verdict, kept_fp32, rounds, scored)


def _dynamic_guard(path: Path, guard_set: ScoringSet | None, fp32: dict[str, Any],
                   pcfg: PTQConfig, console: Console) -> dict[str, Any]:
    """Dynamic quantisation has no QDQ pairs to debug: the drop is measured and reported."""
    if guard_set is None:
        return guard_record(pcfg, None, None, [], [], None)
    scored = onnx_top1(path, guard_set)
    verdict = guard_verdict(fp32, scored, guard_set, pcfg, console)
    rounds = [{"round": 0, "fp32_nodes": 0, "top1": scored["top1"],
               "drop_points": verdict.drop_points}]
    return guard_record(pcfg, guard_set.name, verdict, [], rounds, scored)


def guard_verdict(fp32: dict[str, Any], scored: dict[str, Any], guard_set: ScoringSet,
                  pcfg: PTQConfig, console: Console | None) -> Verdict:
    """The guard's judgement of one INT8 model; `console` (the first round's) hears once when
    the split is too small for --accept."""
    verdict = judge(fp32[guard_set.name], scored, guard_set.labels.numpy(), pcfg.max_drop,
                    pcfg.accept, guard_set.classes)
    if console is not None and verdict.note:
        console.print(f"accuracy guard: {verdict.note}; hold out more validation images for a "
                      "decision that noise cannot flip")
    return verdict


def _speed_check(out_dir: Path, input_size: tuple[int, int], pcfg: PTQConfig,
                 console: Console) -> dict[str, Any]:
    """Median latency of FP32 and INT8 ONNX at batch 1 and 32; INT8 is recommended only when
    it is faster at both (a slower INT8 model is the complaint this check exists for)."""
    return speed_check(out_dir, input_size, pcfg.threads or physical_cores(), pcfg,
                       (ONNX_FILE, INT8_FILE), median_latency_ms, "", "onnx-fp32", console)


def speed_check(out_dir: Path, input_size: tuple[int, int], threads: int, pcfg: PTQConfig,
                files: tuple[str, str], latency: Callable[..., float], engine: str,
                fp32_runtime: str, console: Console) -> dict[str, Any]:
    """FP32 `files[0]` against INT8 `files[1]` at batch 1 and 32, timed by `latency` (one
    runtime's median); `engine` names the runtime in the warning ("" for ONNX Runtime)."""
    timings: dict[str, Any] = {"threads": threads, "runs": pcfg.timing_runs}
    slower = []
    for batch in TIMING_BATCHES:
        fp32_ms, int8_ms = (latency(out_dir / name, input_size, batch, threads=threads,
                                    runs=pcfg.timing_runs) for name in files)
        speedup = fp32_ms / int8_ms if int8_ms > 0 else 0.0
        timings[f"batch_{batch}"] = {"fp32_ms": round(fp32_ms, 4), "int8_ms": round(int8_ms, 4),
                                     "speedup": round(speedup, 3)}
        if speedup <= 1.0:
            slower.append(f"batch {batch}: INT8 {int8_ms:.2f} ms vs FP32 {fp32_ms:.2f} ms")
    timings["int8_faster"] = not slower
    if slower:
        console.print(f"[bold red]WARNING: the {engine}INT8 model is NOT faster than {engine}"
                      f"FP32 on this machine ({'; '.join(slower)}, {threads} thread(s)). Keep "
                      f"using {files[0]} (recommended_runtime: {fp32_runtime}).[/bold red]")
    return timings


def _card(art: Artifact, out_dir: Path, pcfg: PTQConfig, exported: dict[str, Any],
          fp32: dict[str, Any], int8: dict[str, Any], guard: dict[str, Any],
          nodes: dict[str, int], timings: dict[str, Any],
          calibration: np.ndarray | None) -> dict[str, Any]:
    metrics = copy.deepcopy(art.card.get("metrics", {}))
    files = {name: {"file": name, "bytes": (out_dir / name).stat().st_size}
             for name in (WEIGHTS_FILE, ONNX_FILE, INT8_FILE)}
    metrics["onnx_fp32"] = fp32
    metrics["int8"] = {**int8, "size_bytes": files[INT8_FILE]["bytes"]}
    static = pcfg.method == "ptq"
    card = quantized_card(art, metrics)
    card["quantization"] = {
        "backend": "onnxruntime",
        "method": pcfg.method,
        "format": "QDQ" if static else "dynamic (QOperator: ConvInteger / MatMulInteger)",
        "activations": "uint8 per-tensor" if static else "uint8, range computed per run",
        "weights": "int8 per-channel symmetric" if static else "int8 per-channel",
        "calibration": ({"method": pcfg.calibrate, "images": int(len(calibration)),
                         "per_channel": True, "split": "train"} if static else None),
        "guard": {k: v for k, v in guard.items() if k not in ("fp32_nodes", "int8_top1")},
        "fp32_nodes": guard["fp32_nodes"],
        "nodes": nodes,
        "export": {k: exported[k] for k in ("opset", "max_abs_error")},
        "files": files,
        "timings": timings,
        "config": asdict(pcfg),
    }
    card["recommended_runtime"] = "onnx-int8" if timings["int8_faster"] else "onnx-fp32"
    card["exports"] = {"onnx": onnx_export_record(card, ONNX_FILE, exported),
                       "onnx-int8": onnx_export_record(card, INT8_FILE)}
    return card


def quantized_card(art: Artifact, metrics: dict[str, Any]) -> dict[str, Any]:
    """The card of a quantize stage's artifact before its "quantization" block: the parent's
    architecture, preprocessing, config and TTA, this stage's lineage and `metrics`."""
    parent = art.card
    card = child_card(art, "quantize", config=copy.deepcopy(parent.get("config", {})),
                      metrics=metrics)
    card["input"] = copy.deepcopy(parent["input"])  # the parent's, as written
    if "cv" in parent:
        card["cv"] = copy.deepcopy(parent["cv"])
    return card


def copy_weights(art: Artifact, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    source = art.path / WEIGHTS_FILE
    if source.is_file():
        write_atomic(out_dir / WEIGHTS_FILE, lambda tmp: shutil.copyfile(source, tmp))
    else:
        save_weights(art.model, out_dir / WEIGHTS_FILE)


def _print_summary(console: Console, card: dict[str, Any]) -> None:
    q, metrics = card["quantization"], card["metrics"]
    for split, scored in metrics["onnx_fp32"].items():
        console.print(f"{split}: fp32 (ONNX) top-1 {scored['top1']:.4f}, int8 top-1 "
                      f"{metrics['int8'][split]['top1']:.4f}")
    console.print(f"accuracy guard: {q['guard']['status']}")
    kept = q["fp32_nodes"]
    console.print("stayed FP32: " + (", ".join(f"{n['name']} ({n['op_type']})" for n in kept)
                                     if kept else "none"))
    t = q["timings"]
    console.print("latency (median ms, FP32 -> INT8): " + ", ".join(
        f"batch {b}: {t[f'batch_{b}']['fp32_ms']:.2f} -> {t[f'batch_{b}']['int8_ms']:.2f} "
        f"(x{t[f'batch_{b}']['speedup']:.2f})" for b in TIMING_BATCHES)
        + f"; recommended runtime: {card['recommended_runtime']}")
    sizes = ", ".join(f"{f['file']} {f['bytes'] / 1e6:.2f} MB" for f in q["files"].values())
    console.print(f"files: {sizes}")
