"""Post-training quantization: a QDQ INT8 artifact that scores like FP32, an accuracy guard that
returns the most sensitive nodes to FP32 and says so, dynamic quantization, the speed check, and
bad input refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import FAST, make_image_folder
from rich.console import Console
from typer.testing import CliRunner

from leanvision.artifact import load
from leanvision.cli import app
from leanvision.compress import ptq
from leanvision.compress.quantize import quantize
from leanvision.errors import ConfigError
from leanvision.models import create_model
from leanvision.runtime.export import export_onnx, ort_session
from leanvision.runtime.ort_quant import preprocess_onnx, quantize_onnx_static
from leanvision.runtime.sensitivity import node_sensitivity
from leanvision.training.api import train

QUIET = Console(quiet=True)
FAST_PTQ = dict(calibration_images=24, threads=1, timing_runs=3, console=QUIET)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny fp32 run and its PTQ artifact, shared by the tests below (seconds in all)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("ptq")
        data = make_image_folder(root / "data")
        train(data, root / "fp32", console=QUIET, **FAST)
        summary = quantize(root / "fp32", out=root / "int8", **FAST_PTQ)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "fp32": root / "fp32", "out": root / "int8", "summary": summary}


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_ptq_writes_a_qdq_artifact_that_scores_like_fp32(trained) -> None:
    out = trained["out"]
    assert sorted(p.name for p in out.iterdir()) == ["model.int8.onnx", "model.json", "model.onnx",
                                                     "model.safetensors"]
    card = json.loads((out / "model.json").read_text())
    parent = json.loads((trained["fp32"] / "model.json").read_text())
    assert card["stage"] == "quantize" and card["parent"] == str(trained["fp32"])
    assert card["transforms"] == parent["transforms"] and card["input"] == parent["input"]
    q = card["quantization"]
    assert (q["method"], q["format"], q["weights"]) == ("ptq", "QDQ", "int8 per-channel symmetric")
    assert q["calibration"] == {"method": "minmax", "images": 24, "per_channel": True,
                                "split": "train"}
    ops = _ops(out / "model.int8.onnx")
    assert ops.count("QuantizeLinear") == q["nodes"]["QuantizeLinear"] > 0
    assert ops.count("DequantizeLinear") == q["nodes"]["DequantizeLinear"] > 0
    guard = q["guard"]
    assert guard["met"] and guard["split"] == "val" and q["fp32_nodes"] == []
    metrics = card["metrics"]
    fp32_top1, int8_top1 = metrics["onnx_fp32"]["val"]["top1"], metrics["int8"]["val"]["top1"]
    assert guard["drop_points"] == pytest.approx((fp32_top1 - int8_top1) * 100)
    assert abs(fp32_top1 - int8_top1) <= 0.005 and metrics["int8"]["val"]["n"] == 9
    assert q["files"]["model.int8.onnx"]["bytes"] < q["files"]["model.onnx"]["bytes"] / 2
    timings = q["timings"]
    assert timings["threads"] == 1 and set(timings) >= {"batch_1", "batch_32"}
    assert card["recommended_runtime"] == ("onnx-int8" if timings["int8_faster"] else "onnx-fp32")
    assert card["exports"]["onnx-int8"]["file"] == "model.int8.onnx"
    assert card["exports"]["onnx"]["preprocessing"] == card["input"]

    art = load(out)  # still a loadable artifact, with the parent's weights
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fp32 = art.model(x).numpy()
    int8 = ort_session(out / "model.int8.onnx").run(None, {"input": x.numpy()})[0]
    assert np.abs(int8 - fp32).max() < 0.25 * np.abs(fp32).max() + 0.05


def test_guard_records_the_paired_comparison_and_the_rule(trained) -> None:
    guard = json.loads((trained["out"] / "model.json").read_text())["quantization"]["guard"]
    comparison, n = guard["comparison"], guard["comparison"]["images"]
    assert guard["accept"] == "likely" and comparison["rule"] == guard["rule_applied"]
    assert n == 9 and comparison["lost"] - comparison["gained"] == pytest.approx(
        guard["drop_points"] * n / 100)
    low, high = comparison["interval95_points"]
    assert low <= guard["drop_points"] <= high and 0 <= comparison["agreement"] <= 1
    # 9 validation images cannot show anything within 0.5 points: said, and judged on the
    # point estimate rather than failing every model.
    assert guard["rule_applied"] == "point"
    assert "the 9 validation images cannot resolve 0.5 points at --accept likely" in (
        guard["status"])
    assert guard["status"].startswith("met: drop ") and "agreement" in guard["status"]
    assert set(guard["worst_class"]) == {"class", "drop_points", "images"}


def test_guard_returns_sensitive_nodes_to_fp32_until_within_budget(trained, tmp_path,
                                                                   monkeypatch) -> None:
    # The tiny model loses nothing to INT8; pretend it does, less with every node kept FP32.
    top1 = {"model.onnx": 0.9, "int8-0.onnx": 0.5, "int8-1.onnx": 0.85, "int8-2.onnx": 0.9}
    monkeypatch.setattr(ptq, "onnx_top1", lambda path, scored: {"n": 9,
                                                                 "top1": top1[Path(path).name]})
    summary = quantize(trained["fp32"], out=tmp_path / "guarded", **FAST_PTQ)
    q = summary["quantization"]
    assert [r["fp32_nodes"] for r in q["guard"]["rounds"]] == [0, 1, 3]
    assert [r["drop_points"] for r in q["guard"]["rounds"]] == pytest.approx([40, 5, 0])
    assert q["guard"]["met"] and q["guard"]["status"] == "met"
    kept = q["fp32_nodes"]
    assert len(kept) == 3 and all(set(k) == {"name", "op_type", "sqnr_loss_db"} for k in kept)
    # Those nodes really run in FP32: their weights are plain initializers, not dequantised.
    graph = onnx.load(str(tmp_path / "guarded" / "model.int8.onnx")).graph
    nodes = {n.name: n for n in graph.node}
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert any(k["op_type"] in ("Conv", "Gemm") for k in kept)
    for k in kept:
        node = nodes[k["name"]]
        assert node.op_type == k["op_type"]
        if node.op_type in ("Conv", "Gemm"):
            assert node.input[1] in floats
    assert summary["metrics"]["int8"]["val"]["top1"] == 0.9
    assert json.loads((tmp_path / "guarded" / "model.json").read_text())["quantization"][
        "fp32_nodes"] == kept


def test_guard_stops_after_bounded_rounds_and_says_budget_not_met(trained, tmp_path) -> None:
    summary = quantize(trained["fp32"], out=tmp_path / "strict", max_drop=-1.0, max_rounds=1,
                       **FAST_PTQ)
    guard = summary["quantization"]["guard"]
    assert len(guard["rounds"]) == 2 and not guard["met"]
    assert guard["status"].startswith("NOT met")
    # Equal drops: the model with fewer FP32 nodes (the faster one) is kept.
    assert summary["quantization"]["fp32_nodes"] == []


def test_dynamic_quantization_is_verified_too(trained, tmp_path) -> None:
    summary = quantize(trained["fp32"], out=tmp_path / "dyn", method="dynamic", **FAST_PTQ)
    q = summary["quantization"]
    assert q["method"] == "dynamic" and q["calibration"] is None
    ops = _ops(tmp_path / "dyn" / "model.int8.onnx")
    assert ops.count("DynamicQuantizeLinear") == q["nodes"]["DynamicQuantizeLinear"] > 0
    assert "ConvInteger" in q["nodes"] and "QuantizeLinear" not in ops
    assert len(q["guard"]["rounds"]) == 1 and q["guard"]["split"] == "val"
    assert summary["recommended_runtime"] in ("onnx-int8", "onnx-fp32")


def test_int8_slower_than_fp32_is_said_loudly_and_fp32_recommended(tmp_path,
                                                                   monkeypatch) -> None:
    monkeypatch.setattr(ptq, "median_latency_ms",
                        lambda path, size, batch, **kw: 2.0 if "int8" in Path(path).name else 1.0)
    console = Console(record=True, width=200)
    timings = ptq._speed_check(tmp_path, (8, 8), ptq.PTQConfig(threads=2), console)
    assert not timings["int8_faster"] and timings["threads"] == 2
    assert timings["batch_32"] == {"fp32_ms": 1.0, "int8_ms": 2.0, "speedup": 0.5}
    assert "WARNING: the INT8 model is NOT faster than FP32" in console.export_text()


def test_sensitivity_ranks_quantised_nodes(tmp_path) -> None:
    torch.manual_seed(0)
    export_onnx(create_model("resnet8", 3).eval(), (16, 16), tmp_path / "model.onnx", batch=2)
    prepared = preprocess_onnx(tmp_path / "model.onnx", tmp_path / "prepared.onnx")
    images = np.random.default_rng(0).normal(size=(16, 3, 16, 16)).astype(np.float32)
    quantize_onnx_static(prepared, tmp_path / "int8.onnx", images, preprocessed=True)
    ranked = node_sensitivity(prepared, tmp_path / "int8.onnx", images, batch=8)
    losses = [r["sqnr_loss_db"] for r in ranked]
    assert losses == sorted(losses, reverse=True) and len(ranked) >= 10
    ops = {n.name: n.op_type for n in onnx.load(str(prepared)).graph.node}
    assert all(ops[r["name"]] == r["op_type"] for r in ranked)
    assert {"Conv", "Gemm"} <= {r["op_type"] for r in ranked}
    assert all(0 < r["output_sqnr_db"] < 100 for r in ranked)


def test_bad_input_is_refused_before_anything_is_written(trained, tmp_path) -> None:
    fp32 = trained["fp32"]
    other = make_image_folder(tmp_path / "other", per_class=2,
                              classes={"cat": (200, 30, 30), "dog": (30, 180, 40)})
    with pytest.raises(ConfigError, match="do not match the model's"):
        quantize(fp32, data=other, out=tmp_path / "a", console=QUIET)
    with pytest.raises(ConfigError, match="not a quantization method"):
        quantize(fp32, out=tmp_path / "b", method="static", console=QUIET)
    with pytest.raises(ConfigError, match="--calibrate 'kl' is not one of"):
        quantize(fp32, out=tmp_path / "c", calibrate="kl", console=QUIET)
    with pytest.raises(ConfigError, match="--epochs and --lr apply to --method qat"):
        quantize(fp32, out=tmp_path / "d", epochs=2, console=QUIET)
    with pytest.raises(ConfigError, match="unknown dynamic setting 'thread'; did you mean"):
        quantize(fp32, out=tmp_path / "e", method="dynamic", thread=2, console=QUIET)
    with pytest.raises(ConfigError, match="--accept 'maybe' is not one of point, likely, sure"):
        quantize(fp32, out=tmp_path / "f", accept="maybe", console=QUIET)
    with pytest.raises(ConfigError, match="--max-drop and --accept apply to --method ptq"):
        quantize(fp32, out=tmp_path / "g", method="qat", accept="sure", console=QUIET)
    result = CliRunner().invoke(app, ["quantize", str(fp32), "--out", str(tmp_path / "h"),
                                      "--accept", "perhaps", "--json"])
    assert result.exit_code == 2 and "--accept 'perhaps' is not one of" in result.stdout
    with pytest.raises(ConfigError, match="already holds an artifact"):
        quantize(fp32, out=trained["out"], console=QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]
