"""Quantisation-aware training: the QAT artifact reloads as a plain folded network, its INT8 QDQ
model agrees with PyTorch, and the fake quantisation rounds weights exactly as ORT does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import FAST, make_image_folder
from onnx import numpy_helper
from rich.console import Console
from torch import nn

from leanvision.artifact import load, make_card, save_artifact
from leanvision.compress.qat import (
    QATConv2d,
    QATLinear,
    fake_quant_weight,
    prepare_qat,
    restore_float,
    weight_scale,
)
from leanvision.compress.quantize import quantize
from leanvision.errors import ConfigError
from leanvision.models import create_model
from leanvision.runtime.export import ort_session
from leanvision.training.api import train

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict:
    """One tiny fp32 run and its QAT artifact, shared by the tests below (seconds in all)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("qat")
        data = make_image_folder(root / "data")
        train(data, root / "fp32", console=QUIET, **FAST)
        summary = quantize(root / "fp32", out=root / "int8", method="qat", console=QUIET,
                           progress=False, calibration_images=24)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "data": data, "summary": summary, "out": root / "int8"}


@pytest.mark.usefixtures("one_thread")
def test_qat_artifact_reloads_as_plain_folded_network(quantized) -> None:
    art = load(quantized["out"])
    card = art.card
    assert card["stage"] == "quantize" and card["parent"] == str(quantized["root"] / "fp32")
    assert [t["kind"] for t in card["transforms"]] == ["fold_bn"]
    assert not any(isinstance(m, nn.BatchNorm2d | QATConv2d | QATLinear)
                   for m in art.model.modules())
    q = card["quantization"]
    assert (q["method"], q["format"], q["activations"], q["weights"]) == (
        "qat", "QDQ", "uint8 per-tensor", "int8 per-channel symmetric")
    assert q["calibration"]["images"] == 24 and q["calibration"]["method"] == "minmax"
    assert q["fake_quant_layers"] == 10 and q["folded_bn"] == 9
    for name in ("model.safetensors", "model.onnx", "model.int8.onnx"):
        assert q["files"][name]["bytes"] == (quantized["out"] / name).stat().st_size
    assert q["files"]["model.int8.onnx"]["bytes"] < q["files"]["model.onnx"]["bytes"] / 2
    metrics = card["metrics"]
    assert set(metrics["int8"]) >= {"val", "size_bytes"} and "top1" in metrics["val"]


@pytest.mark.usefixtures("one_thread")
def test_int8_model_has_qdq_nodes_and_matches_pytorch_top1(quantized) -> None:
    out = quantized["out"]
    ops = [n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node]
    q = json.loads((out / "model.json").read_text())["quantization"]
    assert ops.count("QuantizeLinear") == q["nodes"]["QuantizeLinear"] > 0
    assert ops.count("DequantizeLinear") == q["nodes"]["DequantizeLinear"] > 0
    metrics = quantized["summary"]["metrics"]
    assert metrics["int8"]["val"]["n"] == metrics["val"]["n"]
    assert abs(metrics["int8"]["val"]["top1"] - metrics["val"]["top1"]) <= 0.25

    art = load(out)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    int8 = ort_session(out / "model.int8.onnx").run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        fp32 = art.model(x).numpy()
    assert int8.shape == fp32.shape
    # Quantisation noise, not a different network: logits stay close to the float ones.
    assert np.abs(int8 - fp32).max() < 0.25 * np.abs(fp32).max() + 0.05


@pytest.mark.usefixtures("one_thread")
def test_fake_quant_weights_equal_ort_int8_weights(quantized) -> None:
    state = load(quantized["out"]).model.state_dict()
    graph = onnx.load(str(quantized["out"] / "model.int8.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    compared = 0
    for key, weight in state.items():
        if not key.endswith(".weight") or f"{key}_quantized" not in inits:
            continue
        q, scale = inits[f"{key}_quantized"], inits[f"{key}_scale"]
        assert q.dtype == np.int8 and not np.any(inits[f"{key}_zero_point"])
        np.testing.assert_array_equal(scale, weight_scale(weight).numpy())
        dequantised = q.astype(np.float32) * scale.reshape(-1, *[1] * (q.ndim - 1))
        np.testing.assert_array_equal(fake_quant_weight(weight).numpy(), dequantised)
        compared += 1
    assert compared == 10  # every conv and the classifier


@pytest.mark.usefixtures("one_thread")
def test_qat_layers_straight_through_and_observer_freezes() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    swapped, kept = prepare_qat(model)
    assert swapped == ["0", "3"] and kept == []
    assert set(model.state_dict()) == set(reference)  # observer state is not saved
    conv = model[0]
    conv.observer_steps = 2
    model.train()
    for scale in (1.0, 2.0, 50.0):
        model(torch.randn(4, 3, 8, 8) * scale).sum().backward()
    assert int(conv.observed) == 2 and float(conv.input_high) < 20  # the x50 batch came later
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    w = torch.randn(6, 3, 3, 3, requires_grad=True)
    fake_quant_weight(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through
    assert fake_quant_weight(w).detach().div(weight_scale(w).view(-1, 1, 1, 1)).round().abs(
    ).max() == 127
    assert restore_float(model) == ["0", "3"]
    assert type(model[0]) is nn.Conv2d and type(model[3]) is nn.Linear


def test_bad_input_is_refused_before_anything_is_written(quantized, tmp_path: Path) -> None:
    fp32 = quantized["root"] / "fp32"
    with pytest.raises(ConfigError, match="not a quantization method"):
        quantize(fp32, out=tmp_path / "a", method="bogus", console=QUIET)
    other = make_image_folder(tmp_path / "other", per_class=2,
                              classes={"cat": (200, 30, 30), "dog": (30, 180, 40)})
    with pytest.raises(ConfigError, match="do not match the model's"):
        quantize(fp32, data=other, out=tmp_path / "c", console=QUIET)
    with pytest.raises(ConfigError, match="unknown training setting 'epoch'"):
        quantize(fp32, out=tmp_path / "d", method="qat", console=QUIET, epoch=3)
    bare = create_model("resnet8", 3)
    card = make_card(arch="resnet8", arch_kwargs={}, classes=["blue", "green", "red"],
                     input_size=(32, 32), mean=[0.5] * 3, std=[0.25] * 3, stage="train")
    save_artifact(tmp_path / "bare", bare, card)
    with pytest.raises(ConfigError, match="pass --data"):
        quantize(tmp_path / "bare", out=tmp_path / "e", console=QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "other"]
