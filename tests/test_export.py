"""ONNX export (parity with PyTorch, a dynamic batch axis, clear errors, no stray files) and
static INT8 quantisation of the exported file with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from leanvision.errors import ArtifactError, ConfigError, ModelError
from leanvision.models import create_model
from leanvision.runtime.export import export_onnx, ort_session
from leanvision.runtime.ort_quant import quantize_onnx_static

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resnet8_exports_with_parity_and_dynamic_batch(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", 4).eval()
    result = export_onnx(model, (32, 32), tmp_path / "model.onnx", batch=4)
    assert result["path"] == str(tmp_path / "model.onnx")
    assert result["max_abs_error"] < 1e-4 and result["opset"] >= 13 and result["seconds"] > 0
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic axis

    x = torch.randn(3, 3, 32, 32)  # a batch size the export never saw
    got = ort_session(tmp_path / "model.onnx").run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-3, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp files left


class Zeta(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(x, x + 1.0).mean((2, 3))


class Noisy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + torch.rand_like(x)).mean((2, 3))  # exports fine, never agrees


def test_unsupported_op_names_the_op_and_writes_nothing(tmp_path) -> None:
    with pytest.raises(ModelError, match=r"cannot translate the op prims\.zeta"):
        export_onnx(Zeta(), (8, 8), tmp_path / "model.onnx", batch=2)
    assert list(tmp_path.iterdir()) == []


def test_mismatch_raises_and_leaves_no_file(tmp_path) -> None:
    with pytest.raises(ModelError, match="disagrees with PyTorch at batch 1: max abs error"):
        export_onnx(Noisy(), (8, 8), tmp_path / "model.onnx", batch=2)
    assert list(tmp_path.iterdir()) == []


def _abs_only_model(path) -> None:
    """An ONNX graph with no op ORT's static quantiser handles."""
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["n", 3, 4, 4])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["n", 3, 4, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Abs", ["input"], ["logits"])],
                                   "abs", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
              str(path))


def test_static_quantisation_writes_qdq_model(tmp_path) -> None:
    torch.manual_seed(0)
    export_onnx(create_model("resnet8", 3).eval(), (16, 16), tmp_path / "model.onnx", batch=2)
    calibration = np.random.default_rng(0).normal(size=(10, 3, 16, 16)).astype(np.float32)
    result = quantize_onnx_static(tmp_path / "model.onnx", tmp_path / "model.int8.onnx",
                                  calibration, calibrate="percentile")
    assert result["q_nodes"] > 0 and result["dq_nodes"] > result["q_nodes"]
    assert result["calibration"] == {"method": "percentile", "images": 10, "per_channel": True}
    got = ort_session(tmp_path / "model.int8.onnx").run(None, {"input": calibration[:3]})[0]
    assert got.shape == (3, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx"]
    # The exporter's debugging records (stack traces, module names) are not shipped.
    fp32, int8 = (onnx.load(str(tmp_path / n)) for n in ("model.onnx", "model.int8.onnx"))
    assert any(n.metadata_props for n in fp32.graph.node)
    assert not any(n.metadata_props or n.doc_string for n in int8.graph.node)


def test_static_quantisation_refuses_unquantisable_or_missing_models(tmp_path) -> None:
    _abs_only_model(tmp_path / "abs.onnx")
    calibration = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ArtifactError, match="no QuantizeLinear/DequantizeLinear"):
        quantize_onnx_static(tmp_path / "abs.onnx", tmp_path / "abs.int8.onnx", calibration)
    with pytest.raises(ArtifactError, match="export the FP32 model first"):
        quantize_onnx_static(tmp_path / "none.onnx", tmp_path / "x.onnx", calibration)
    with pytest.raises(ConfigError, match="--calibrate 'kl'"):
        quantize_onnx_static(tmp_path / "abs.onnx", tmp_path / "x.onnx", calibration,
                             calibrate="kl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abs.onnx"]
