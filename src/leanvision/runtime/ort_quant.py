"""Static INT8 quantisation of an FP32 ONNX model with ONNX Runtime's own quantiser (QDQ format).

Settings (fixed, because leanvision's QAT fake-quantisation mirrors them exactly):
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
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..errors import ArtifactError, ConfigError
from ..io import atomic_path
from .export import INPUT_NAME

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax,
                       "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
CALIBRATION_BATCH = 32


class _ArrayReader(CalibrationDataReader):
    """Feeds the calibration images in batches (the exported batch axis is dynamic)."""

    def __init__(self, images: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self._batches = [images[i:i + batch] for i in range(0, len(images), batch)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return {INPUT_NAME: self._batches[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0


def quantize_onnx_static(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray,
                         *, calibrate: str = "minmax", per_channel: bool = True) -> dict[str, Any]:
    """Write an INT8 QDQ model of `fp32_path` to `out_path`.

    `calibration`: normalised float32 images [N, 3, H, W] (as the model's input expects).
    Returns {"path", "q_nodes", "dq_nodes", "calibration"}."""
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
        prepared = Path(scratch) / "prepared.onnx"
        # Shape inference and ORT's graph clean-up first, as ORT's quantisation guide asks.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
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
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            q_nodes, dq_nodes = count_qdq(tmp)
            if q_nodes == 0 or dq_nodes == 0:
                raise ArtifactError(f"ONNX Runtime's quantiser produced no QuantizeLinear/"
                                    f"DequantizeLinear nodes for {fp32_path} (found {q_nodes} "
                                    f"and {dq_nodes}); the model has no op it can quantise")
    return {"path": str(out_path), "q_nodes": q_nodes, "dq_nodes": dq_nodes,
            "calibration": {"method": calibrate, "images": int(len(calibration)),
                            "per_channel": per_channel}}


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
