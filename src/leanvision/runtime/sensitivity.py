"""Which quantised nodes cost the most accuracy: per-node signal-to-quantisation-noise ratio from
ONNX Runtime's QDQ debugging tools (onnxruntime.quantization.qdq_loss_debug).

Both models (the pre-processed FP32 graph and its QDQ model, which keeps the FP32 node and tensor
names) run on a few calibration batches with every activation saved. For each tensor that the
QDQ model quantises, ORT's `xmodel_err` is the SQNR (dB) of the QDQ model's dequantised value
against the FP32 model's value: the noise accumulated up to that point. A node's sensitivity is
the SQNR it loses, from its noisiest activation input to its output:

    loss(node) = min_i SQNR(input_i) - SQNR(output)        (dB; larger = more sensitive)

Tensors the QDQ model does not quantise (a Conv output feeding a fused Relu, say) inherit the
SQNR of their producer's inputs upstream and of their single consumer's output downstream."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)

from .ort_quant import _ArrayReader, _quiet_root_logger

UNMEASURED_DB = 200.0  # a graph input nobody quantised: treat it as noise-free


def node_sensitivity(fp32_path: str | Path, int8_path: str | Path, images: np.ndarray, *,
                     batch: int = 16, max_images: int = 64) -> list[dict[str, Any]]:
    """Quantised nodes of `int8_path`, most sensitive first: [{"name", "op_type", "sqnr_loss_db",
    "output_sqnr_db"}]. `fp32_path` is the pre-processed graph `int8_path` was quantised from;
    `images` are normalised calibration images (the first `max_images` are used)."""
    images = np.ascontiguousarray(images[:max_images], dtype=np.float32)
    sqnr = _tensor_sqnr(Path(fp32_path), Path(int8_path), images, batch)
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    quantised = _quantised_node_names(Path(int8_path))
    weights = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def upstream(tensor: str, seen: frozenset[str] = frozenset()) -> float:
        if tensor in sqnr:
            return sqnr[tensor]
        node = producer.get(tensor)
        if node is None or tensor in seen:
            return UNMEASURED_DB
        inputs = [i for i in node.input if i and i not in weights]
        return min((upstream(i, seen | {tensor}) for i in inputs), default=UNMEASURED_DB)

    def downstream(tensor: str) -> float | None:
        while tensor not in sqnr:
            users = consumers.get(tensor, [])
            if len(users) != 1 or not users[0].output:
                return None
            tensor = users[0].output[0]
        return sqnr[tensor]

    ranked = []
    for node in graph.node:
        if node.name not in quantised or not node.output:
            continue
        out = downstream(node.output[0])
        inputs = [i for i in node.input if i and i not in weights]
        if out is None or not inputs:
            continue
        loss = min(upstream(i) for i in inputs) - out
        ranked.append({"name": node.name, "op_type": node.op_type,
                       "sqnr_loss_db": round(float(loss), 3),
                       "output_sqnr_db": round(float(out), 3)})
    ranked.sort(key=lambda r: (-r["sqnr_loss_db"], r["output_sqnr_db"]))
    return ranked


def _tensor_sqnr(fp32_path: Path, int8_path: Path, images: np.ndarray,
                 batch: int) -> dict[str, float]:
    """{tensor name: SQNR (dB) of the QDQ model's dequantised value vs the FP32 value}."""
    with (tempfile.TemporaryDirectory(prefix="leanvision-sqnr-") as scratch,
          contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger()):
        fp32_aug, int8_aug = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        modify_model_output_intermediate_tensors(str(fp32_path), str(fp32_aug))
        modify_model_output_intermediate_tensors(str(int8_path), str(int8_aug))
        float_acts = collect_activations(str(fp32_aug), _ArrayReader(images, batch))
        qdq_acts = collect_activations(str(int8_aug), _ArrayReader(images, batch))
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    return {name: float(err["xmodel_err"]) for name, err in errors.items()
            if "xmodel_err" in err and np.isfinite(err["xmodel_err"])}


def _quantised_node_names(int8_path: Path) -> set[str]:
    """Nodes of the QDQ model that compute on dequantised inputs (the ones that run in INT8)."""
    graph = onnx.load(str(int8_path), load_external_data=False).graph
    dequantised = {out for node in graph.node if node.op_type == "DequantizeLinear"
                   for out in node.output}
    return {node.name for node in graph.node
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dequantised for i in node.input)}
