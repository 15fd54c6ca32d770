"""INT8 quantisation of an FP32 ONNX model with ONNX Runtime's own quantiser: static (QDQ format)
and dynamic (int8 weights, activations quantised at run time), plus the checks that the result
really holds quantised ops and really runs faster.

Static settings (fixed, because leanvision's QAT fake-quantisation mirrors them exactly):
- activations uint8, asymmetric, one scale per tensor, range from calibration images;
- weights int8, symmetric, one scale per output channel:

      scale_c = float32(max|w_c| / 127)      (ORT quant_utils.compute_scale_zp: symmetric int8
      q = clip(round_half_even(w / scale_c), -127, 127)      range is [-127, 127], zero point 0)

  (ORT only raises a weight scale when a conv bias would overflow int32 at input_scale x
  weight_scale, which needs a bias billions of times that product.)"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..errors import ArtifactError, ConfigError
from ..io import atomic_path
from .export import INPUT_NAME, OUTPUT_NAME, ort_session

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax,
                       "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
CALIBRATION_BATCH = 32
# Calibration batches are capped in pixels: ONNX Runtime's arena keeps the peak of the graph
# that outputs every tensor's range, and at photo sizes a batch of 32 held GBs
# (bench/results/memory.json).
CALIBRATION_PIXELS = 8 * 224 * 224
# Ops that show a model was really quantised (static QDQ or dynamic QOperator).
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
             "MatMulInteger", "QLinearConv", "QLinearMatMul")


class _ArrayReader(CalibrationDataReader):
    """Feeds the calibration images in batches (the exported batch axis is dynamic)."""

    def __init__(self, images: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        pixels = images.shape[-2] * images.shape[-1] if images.ndim == 4 else 1
        batch = max(1, min(batch, CALIBRATION_PIXELS // max(1, pixels)))
        self._batches = [images[i:i + batch] for i in range(0, len(images), batch)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return {INPUT_NAME: self._batches[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0


def preprocess_onnx(fp32_path: str | Path, out_path: str | Path) -> Path:
    """ORT's quantisation pre-processing (shape inference and graph clean-up such as Conv+BN
    fusion), which its quantisation guide asks for: without it INT8 ran slower than FP32 here.
    Node names of the result are the ones `nodes_to_exclude` refers to."""
    if not Path(fp32_path).is_file():
        raise ArtifactError(f"{fp32_path} does not exist; export the FP32 model first")
    with atomic_path(out_path) as tmp:
        quant_pre_process(str(fp32_path), str(tmp), skip_symbolic_shape=True)
    return Path(out_path)


def quantize_onnx_static(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray,
                         *, calibrate: str = "minmax", per_channel: bool = True,
                         nodes_to_exclude: Sequence[str] = (),
                         preprocessed: bool = False) -> dict[str, Any]:
    """Write an INT8 QDQ model of `fp32_path` to `out_path`.

    `calibration`: normalised float32 images [N, 3, H, W] (as the model's input expects).
    `nodes_to_exclude`: node names (of the pre-processed graph) that stay FP32.
    `preprocessed`: `fp32_path` already went through preprocess_onnx.
    Returns {"path", "q_nodes", "dq_nodes", "calibration", "nodes_to_exclude"}."""
    if calibrate not in CALIBRATION_METHODS:
        raise ConfigError(f"--calibrate {calibrate!r} is not one of "
                          f"{', '.join(CALIBRATION_METHODS)}")
    if not Path(fp32_path).is_file():
        raise ArtifactError(f"{fp32_path} does not exist; export the FP32 model first")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ConfigError(f"calibration images must be a non-empty [N, 3, H, W] array, got "
                          f"shape {calibration.shape}")
    with tempfile.TemporaryDirectory(prefix="leanvision-quant-") as scratch:
        prepared = Path(fp32_path)
        if not preprocessed:
            prepared = preprocess_onnx(fp32_path, Path(scratch) / "prepared.onnx")
        # The calibrators print progress to stdout and log per-channel notes on the root logger
        # (e.g. a BatchNormalization weight "out of range" for axis 1); a stage prints its own
        # summary instead.
        with (atomic_path(out_path) as tmp, contextlib.redirect_stdout(io.StringIO()),
              _quiet_root_logger()):
            quantize_static(
                str(prepared), str(tmp), _ArrayReader(calibration),
                quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[calibrate],
                nodes_to_exclude=list(nodes_to_exclude) or None,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            strip_debug_info(tmp)
            q_nodes, dq_nodes = count_qdq(tmp)
            if q_nodes == 0 or dq_nodes == 0:
                raise ArtifactError(f"ONNX Runtime's quantiser produced no QuantizeLinear/"
                                    f"DequantizeLinear nodes for {fp32_path} (found {q_nodes} "
                                    f"and {dq_nodes}); the model has no op it can quantise")
    return {"path": str(out_path), "q_nodes": q_nodes, "dq_nodes": dq_nodes,
            "calibration": {"method": calibrate, "images": int(len(calibration)),
                            "per_channel": per_channel},
            "nodes_to_exclude": list(nodes_to_exclude)}


def strip_debug_info(path: str | Path) -> None:
    """Drop what the exporter attached to each node for debugging (PyTorch stack traces, module
    names and FX nodes, about 300 bytes per node): the shipped INT8 file runs the same without
    them, is smaller (2.6% of a pruned airnet_m's), and does not carry the source paths of the
    machine that built it. Node names stay: the accuracy guard refers to them."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    onnx.save(model, str(path))


def quantize_onnx_dynamic(fp32_path: str | Path, out_path: str | Path, *,
                          per_channel: bool = True, preprocessed: bool = False) -> dict[str, Any]:
    """Write a dynamically quantised model of `fp32_path` (int8 weights, per channel where the
    op allows; activation ranges computed at run time, so no calibration data).

    Returns {"path", "nodes": {op: count of QUANT_OPS}}."""
    if not Path(fp32_path).is_file():
        raise ArtifactError(f"{fp32_path} does not exist; export the FP32 model first")
    with tempfile.TemporaryDirectory(prefix="leanvision-quant-") as scratch:
        prepared = Path(fp32_path)
        if not preprocessed:
            prepared = preprocess_onnx(fp32_path, Path(scratch) / "prepared.onnx")
        with atomic_path(out_path) as tmp, _quiet_root_logger():
            quantize_dynamic(str(prepared), str(tmp), per_channel=per_channel,
                             reduce_range=False, weight_type=QuantType.QInt8)
            strip_debug_info(tmp)
            nodes = quant_node_counts(tmp)
            if not nodes:
                raise ArtifactError(f"ONNX Runtime's dynamic quantiser left {fp32_path} without "
                                    "quantised ops; the model has no op it can quantise")
    return {"path": str(out_path), "nodes": nodes}


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def count_qdq(path: str | Path) -> tuple[int, int]:
    """(QuantizeLinear, DequantizeLinear) node counts of an ONNX file."""
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


def quant_node_counts(path: str | Path) -> dict[str, int]:
    """{op type: count} of the quantisation ops (QUANT_OPS) in an ONNX file; empty when none."""
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    return {op: ops.count(op) for op in QUANT_OPS if op in ops}


def median_latency_ms(path: str | Path, input_size: tuple[int, int], batch: int, *,
                      threads: int, runs: int = 30, warmup: int = 5) -> float:
    """Median wall time (ms) of one ORT run at `batch`, after `warmup` runs, `threads` intra-op
    threads. Random inputs: the time of these graphs does not depend on the values."""
    session = ort_session(path, threads)
    x = np.random.default_rng(0).normal(size=(batch, 3, *input_size)).astype(np.float32)
    feed = {INPUT_NAME: x}
    for _ in range(warmup):
        session.run([OUTPUT_NAME], feed)
    times = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        session.run([OUTPUT_NAME], feed)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)
