"""`leanvision quantize ARTIFACT --backend openvino`: post-training INT8 through NNCF for OpenVINO's
CPU plugin, with the same calibration images, validation split and accuracy guard as the ONNX
Runtime path (ptq.py): never the test split, which is scored for the card after every decision.

    artifact ─ model.onnx (parity-checked against PyTorch in ONNX Runtime, then in OpenVINO FP32)
             ─ nncf.quantize on the OpenVINO model of model.onnx (calibration: the same seeded
               training images; NNCF's default CPU scheme: int8 per-channel symmetric weights,
               8-bit per-tensor activations, fast bias correction)
             ─ accuracy guard against OpenVINO FP32 on validation: when the drop exceeds
               max_drop points, NNCF's accuracy control returns the most harmful groups of ops to
               FP32, one group per iteration, for at most max_rounds iterations; the model with
               the lower drop (then fewer FP32 ops) is kept, and a budget still not met is said
             ─ model.openvino-int8.xml + .bin ─ verify: quantised ops present; INT8 vs FP32
               OpenVINO median latency at batch 1 and 32 ─ card"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import shutil
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from ..artifact import CARD_FILE, WEIGHTS_FILE, Artifact
from ..data import DataSource, normalize
from ..errors import ArtifactError
from ..hardware import physical_cores
from ..io import write_json
from ..runtime.export import export_onnx
from ..runtime.openvino_runtime import (
    INT8_BIN,
    INT8_XML,
    check_parity,
    int8_layers,
    median_latency_ms,
    model_runner,
    openvino_runner,
    quantized_ops,
    read_model,
    require_nncf,
    save_ir,
)
from ..runtime.stage import onnx_export_record
from ..tta import tta_logits
from .guard import guard_record
from .guard_split import guard_images, reported, with_guard_images
from .ptq import (
    ONNX_FILE,
    TIMING_BATCHES,
    PTQConfig,
    ScoringSet,
    calibration_images,
    copy_weights,
    guard_verdict,
    quantized_card,
    runner_top1,
    scored_splits,
    scoring_set,
    speed_check,
)


def run_openvino_ptq(art: Artifact, source: DataSource, pcfg: PTQConfig, out_dir: Path,
                     console: Console) -> dict[str, Any]:
    """Quantize `art` with NNCF into `out_dir` (which must not hold an artifact yet); a folder
    this call made is removed again when it fails."""
    created = not out_dir.exists()
    try:
        return _quantize_into(art, source, pcfg, out_dir, console)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _quantize_into(art: Artifact, source: DataSource, pcfg: PTQConfig, out_dir: Path,
                   console: Console) -> dict[str, Any]:
    nncf = require_nncf()
    parts, seed, splits = scored_splits(art, source, pcfg)
    checked, guard_set = guard_images(
        parts, seed, splits, lambda r, name: scoring_set(art, r, name, pcfg.skip_bad_images),
        console)
    threads = pcfg.threads or physical_cores()
    copy_weights(art, out_dir)
    exported = export_onnx(art.model, art.input_size, out_dir / ONNX_FILE)
    parity = check_parity(art.model, out_dir / ONNX_FILE, art.input_size, threads=threads)
    fp32_run = openvino_runner(out_dir / ONNX_FILE, threads)
    # Every decision below sees the guard's images only; the rest are scored for the card after.
    fp32 = {} if guard_set is None else {guard_set.name: runner_top1(fp32_run, guard_set)}
    calibration = calibration_images(art, checked.calibration_pool, pcfg.calibration_images,
                                     seed)
    best, guard = _guarded(out_dir / ONNX_FILE, calibration, guard_set, fp32, pcfg, threads,
                           console)
    guard = with_guard_images(guard, checked)
    save_ir(best, out_dir / INT8_XML)
    quantized = quantized_ops(read_model(out_dir / INT8_XML))
    int8_run = openvino_runner(out_dir / INT8_XML, threads)
    executed = int8_layers(int8_run.compiled)
    if not quantized or not executed:
        raise ArtifactError(f"{out_dir / INT8_XML} holds {len(quantized)} quantised op(s), of "
                            f"which the CPU plugin runs {sum(executed.values())} layer(s) in "
                            "8-bit; there is no INT8 model here: keep model.onnx")
    timings = _speed_check(out_dir, art.input_size, threads, pcfg, console)
    scored = reported(splits, guard_set)
    fp32 = {name: fp32[name] if name in fp32 else runner_top1(fp32_run, s)
            for name, s in scored.items()}
    int8 = {name: (guard["int8_top1"] if name == guard.get("split") else
                   runner_top1(int8_run, s)) for name, s in scored.items()}
    card = _card(art, out_dir, pcfg, nncf, exported, parity, fp32, int8, guard,
                 {"quantized_ops": _by_type(quantized), "executed_int8": executed}, timings,
                 len(calibration))
    write_json(out_dir / CARD_FILE, card)  # last: a folder with a card is complete
    _print_summary(console, card)
    return {"artifact": str(out_dir), "metrics": card["metrics"],
            "quantization": card["quantization"],
            "recommended_runtime": card["recommended_runtime"]}


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF prints progress bars to stdout and INFO lines through its logger; the stage prints
    its own summary instead."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _guarded(onnx_path: Path, calibration: np.ndarray, guard_set: ScoringSet | None,
             fp32: dict[str, Any], pcfg: PTQConfig, threads: int,
             console: Console) -> tuple[Any, dict[str, Any]]:
    """nncf.quantize; when the drop exceeds the budget, NNCF's accuracy control (at most
    max_rounds iterations). Returns the best ov.Model and the guard's record (ptq's shape)."""
    nncf = require_nncf()
    # One image per item: NNCF's subset_size counts items, and its statistics assume batch 1.
    calibration_set = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    options = {"subset_size": len(calibration), "target_device": nncf.TargetDevice.CPU}
    with _quiet_nncf():
        quantized = nncf.quantize(read_model(onnx_path), calibration_set, **options)
    if guard_set is None:
        return quantized, guard_record(pcfg, None, None, [], [], None)
    scored = _model_top1(quantized, guard_set, threads)
    verdict = guard_verdict(fp32, scored, guard_set, pcfg, console)
    drop = verdict.drop_points
    rounds = [{"round": 0, "fp32_nodes": 0, "top1": scored["top1"], "drop_points": drop}]
    console.print(f"guard round 0: 0 op(s) FP32, openvino int8 top-1 {scored['top1']:.4f}, "
                  f"{verdict.statement(pcfg.max_drop)}")
    best = (drop, 0, quantized, [], scored, verdict)
    if not verdict.met and pcfg.max_rounds > 0:
        validation_set = nncf.Dataset(_items(guard_set), lambda item: _normalised(item[0],
                                                                                   guard_set))
        parameters = nncf.quantization.advanced_parameters.AdvancedAccuracyRestorerParameters(
            max_num_iterations=pcfg.max_rounds, num_ranking_workers=1,
            ranking_subset_size=min(pcfg.sensitivity_images, len(guard_set.labels)))
        with _quiet_nncf():
            restored = nncf.quantize_with_accuracy_control(
                read_model(onnx_path), calibration_set, validation_set,
                lambda compiled, items: _validate(compiled, items, guard_set),
                max_drop=pcfg.max_drop / 100, drop_type=nncf.DropType.ABSOLUTE,
                advanced_accuracy_restorer_parameters=parameters, **options)
        int8_before, int8_after = quantized_ops(quantized), quantized_ops(restored)
        returned = [{"name": name, "op_type": op, "sqnr_loss_db": None}
                    for name, op in int8_before.items() if name not in int8_after]
        scored = _model_top1(restored, guard_set, threads)
        verdict = guard_verdict(fp32, scored, guard_set, pcfg, None)
        drop = verdict.drop_points
        rounds.append({"round": 1, "fp32_nodes": len(returned), "top1": scored["top1"],
                       "drop_points": drop, "by": "nncf.quantize_with_accuracy_control"})
        console.print(f"guard round 1 (NNCF accuracy control): {len(returned)} op(s) FP32, "
                      f"openvino int8 top-1 {scored['top1']:.4f}, "
                      f"{verdict.statement(pcfg.max_drop)}")
        if (drop, len(returned)) < best[:2]:
            best = (drop, len(returned), restored, returned, scored, verdict)
    _, _, model, kept_fp32, scored, verdict = best
    return model, guard_record(pcfg, guard_set.name, verdict, kept_fp32, rounds, scored)


def _items(scored: ScoringSet) -> list[tuple[torch.Tensor, int]]:
    """One (uint8 [1, 3, H, W], label) per image: accuracy control ranks per item."""
    return [(scored.images[i:i + 1], int(scored.labels[i])) for i in range(len(scored.labels))]


def _normalised(images: torch.Tensor, scored: ScoringSet) -> np.ndarray:
    return np.ascontiguousarray(normalize(images, scored.mean, scored.std).numpy(),
                                dtype=np.float32)


def _validate(compiled: Any, items: Iterable[tuple[torch.Tensor, int]],
              scored: ScoringSet) -> tuple[float, list[float]]:
    """NNCF's validation_fn: top-1 with the card's TTA, and 1.0 / 0.0 per image."""

    def network(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(compiled(np.ascontiguousarray(x.numpy()))[0]))

    hits = []
    for images, label in items:
        x = normalize(images, scored.mean, scored.std)
        with torch.no_grad():
            hits.append(float(int(tta_logits(network, x, scored.tta).argmax(1)[0]) == label))
    return (float(np.mean(hits)) if hits else 0.0), hits


def _model_top1(model: Any, scored: ScoringSet, threads: int) -> dict[str, Any]:
    return runner_top1(model_runner(model, threads), scored)


def _speed_check(out_dir: Path, input_size: tuple[int, int], threads: int, pcfg: PTQConfig,
                 console: Console) -> dict[str, Any]:
    """OpenVINO FP32 (model.onnx) against OpenVINO INT8 at batch 1 and 32; INT8 is
    recommended only when it is faster at both, as in the ONNX Runtime path."""
    return speed_check(out_dir, input_size, threads, pcfg, (ONNX_FILE, INT8_XML),
                       median_latency_ms, "OpenVINO ", "openvino-fp32", console)


def _card(art: Artifact, out_dir: Path, pcfg: PTQConfig, nncf: Any, exported: dict[str, Any],
          parity: float, fp32: dict[str, Any], int8: dict[str, Any], guard: dict[str, Any],
          nodes: dict[str, Any], timings: dict[str, Any],
          calibration_count: int) -> dict[str, Any]:
    import openvino

    names = (WEIGHTS_FILE, ONNX_FILE, INT8_XML, INT8_BIN)
    files = {name: {"file": name, "bytes": (out_dir / name).stat().st_size} for name in names}
    metrics = copy.deepcopy(art.card.get("metrics", {}))
    metrics["openvino_fp32"] = fp32
    metrics["openvino_int8"] = {**int8, "size_bytes": files[INT8_XML]["bytes"]
                                + files[INT8_BIN]["bytes"]}
    card = quantized_card(art, metrics)
    card["quantization"] = {
        "backend": "openvino",
        "method": "ptq",
        "format": "OpenVINO IR (FakeQuantize)",
        "activations": "8-bit per-tensor (NNCF performance preset: symmetric)",
        "weights": "int8 per-channel symmetric",
        "calibration": {"method": "nncf (min / max ranges, fast bias correction)",
                        "images": calibration_count, "split": "train"},
        "guard": {k: v for k, v in guard.items() if k not in ("fp32_nodes", "int8_top1")},
        "fp32_nodes": guard["fp32_nodes"],
        "nodes": nodes,
        "export": {k: exported[k] for k in ("opset", "max_abs_error")},
        "parity": {"openvino_fp32_vs_torch_max_abs_logit": parity},
        "files": files,
        "timings": timings,
        "versions": {"openvino": openvino.__version__, "nncf": nncf.__version__},
        "config": {**asdict(pcfg), "backend": "openvino"},
    }
    card["recommended_runtime"] = ("openvino-int8" if timings["int8_faster"]
                                   else "openvino-fp32")
    card["exports"] = {"onnx": onnx_export_record(card, ONNX_FILE, exported),
                       "openvino-int8": {**onnx_export_record(card, INT8_XML),
                                         "weights": INT8_BIN}}
    return card


def _by_type(ops: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op_type in ops.values():
        counts[op_type] = counts.get(op_type, 0) + 1
    return counts


def _print_summary(console: Console, card: dict[str, Any]) -> None:
    q, metrics = card["quantization"], card["metrics"]
    for split, scored in metrics["openvino_fp32"].items():
        console.print(f"{split}: fp32 (OpenVINO) top-1 {scored['top1']:.4f}, int8 top-1 "
                      f"{metrics['openvino_int8'][split]['top1']:.4f}")
    console.print(f"OpenVINO FP32 vs PyTorch: max abs logit difference "
                  f"{q['parity']['openvino_fp32_vs_torch_max_abs_logit']:.3g}")
    console.print(f"accuracy guard: {q['guard']['status']}")
    kept = q["fp32_nodes"]
    console.print("stayed FP32: " + (", ".join(f"{n['name']} ({n['op_type']})" for n in kept)
                                     if kept else "none"))
    t = q["timings"]
    console.print("latency (median ms, FP32 -> INT8, OpenVINO): " + ", ".join(
        f"batch {b}: {t[f'batch_{b}']['fp32_ms']:.2f} -> {t[f'batch_{b}']['int8_ms']:.2f} "
        f"(x{t[f'batch_{b}']['speedup']:.2f})" for b in TIMING_BATCHES)
        + f"; recommended runtime: {card['recommended_runtime']}")
    sizes = ", ".join(f"{f['file']} {f['bytes'] / 1e6:.2f} MB" for f in q["files"].values())
    console.print(f"files: {sizes}")
