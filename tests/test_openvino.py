"""OpenVINO as an optional runtime: `quantize --backend openvino` writes an IR pair guarded like the
ONNX Runtime path, the Predictor runs openvino-fp32 / openvino-int8 with the caller's threads,
bench lists them, FP32 OpenVINO agrees with PyTorch, and without openvino installed each entry
point says how to install it while everything else keeps working."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import FAST, make_image_folder
from rich.console import Console
from typer.testing import CliRunner

from leanvision.artifact import load
from leanvision.cli import app
from leanvision.compress import ptq_openvino
from leanvision.compress.quantize import quantize
from leanvision.errors import ArtifactError, ConfigError
from leanvision.reports.collect import accuracy, resolve_variants, runtime_of, size_bytes
from leanvision.runtime.bench import bench
from leanvision.runtime.openvino_runtime import (
    check_parity,
    int8_layers,
    quantized_ops,
    read_model,
)
from leanvision.runtime.predictor import Predictor, available_runtimes
from leanvision.training.api import train

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = Console(quiet=True)
FAST_PTQ = dict(calibration_images=24, threads=1, timing_runs=3, console=QUIET)
IR_FILES = ("model.openvino-int8.bin", "model.openvino-int8.xml")
INSTALL = r'pip install "leanvision\[openvino\]"'


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict:
    """A tiny fp32 run and its OpenVINO INT8 artifact, shared by the tests below."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("openvino")
        data = make_image_folder(root / "data")
        train(data, root / "fp32", console=QUIET, **FAST)
        summary = quantize(root / "fp32", out=root / "ov", backend="openvino", **FAST_PTQ)
    finally:
        torch.set_num_threads(threads)
    return {"data": data, "fp32": root / "fp32", "out": root / "ov", "summary": summary}


def test_openvino_ptq_writes_a_guarded_ir_artifact(quantized) -> None:
    out = quantized["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.json", "model.onnx", "model.safetensors", *IR_FILES])
    card = json.loads((out / "model.json").read_text())
    assert card["stage"] == "quantize" and card["parent"] == str(quantized["fp32"])
    q = card["quantization"]
    assert (q["backend"], q["method"], q["format"]) == ("openvino", "ptq",
                                                        "OpenVINO IR (FakeQuantize)")
    assert q["calibration"]["images"] == 24 and q["calibration"]["split"] == "train"
    # Quantised in the file and run in 8-bit by the CPU plugin, convolutions included.
    assert q["nodes"]["quantized_ops"].get("Convolution", 0) > 0
    assert q["nodes"]["executed_int8"].get("Convolution", 0) > 0
    assert 0 <= q["parity"]["openvino_fp32_vs_torch_max_abs_logit"] < 1e-3
    guard = q["guard"]
    assert guard["met"] and guard["split"] == "val" and q["fp32_nodes"] == []
    metrics = card["metrics"]
    fp32, int8 = metrics["openvino_fp32"]["val"], metrics["openvino_int8"]["val"]
    assert set(int8) == {"n", "top1"} and int8["n"] == fp32["n"] == 9
    assert guard["drop_points"] == pytest.approx((fp32["top1"] - int8["top1"]) * 100)
    assert metrics["openvino_int8"]["size_bytes"] == sum((out / f).stat().st_size
                                                         for f in IR_FILES)
    assert "int8" not in metrics  # the ONNX Runtime path's key: nothing of it was run
    timings = q["timings"]
    assert timings["threads"] == 1 and set(timings) >= {"batch_1", "batch_32"}
    assert card["recommended_runtime"] == ("openvino-int8" if timings["int8_faster"]
                                           else "openvino-fp32")
    assert card["exports"]["openvino-int8"]["weights"] == "model.openvino-int8.bin"


def test_the_report_reads_an_openvino_artifact_as_what_it_ships(quantized) -> None:
    variant = resolve_variants([quantized["out"]])[0]
    metrics = json.loads((quantized["out"] / "model.json").read_text())["metrics"]
    assert variant.quantized and runtime_of(variant) == "openvino-int8"
    assert accuracy(variant, "val") == metrics["openvino_int8"]["val"]["top1"]
    assert size_bytes(variant) == metrics["openvino_int8"]["size_bytes"]


def test_predictor_runs_both_openvino_runtimes_with_the_callers_threads(quantized) -> None:
    out = quantized["out"]
    assert available_runtimes(out) == ["torch", "torch-compile", "onnx-fp32", "openvino-fp32",
                                       "openvino-int8"]
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    logits = {}
    for runtime in ("torch", "openvino-fp32", "openvino-int8"):
        predictor = Predictor.from_artifact(out, runtime=runtime, threads=1)
        assert predictor.runtime == runtime
        logits[runtime] = predictor.logits(images)
        if runtime != "torch":
            compiled = predictor._runner.compiled
            assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
            assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
            assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    np.testing.assert_allclose(logits["openvino-fp32"], logits["torch"], atol=1e-4, rtol=1e-4)
    scale = np.abs(logits["torch"]).max()
    assert np.abs(logits["openvino-int8"] - logits["torch"]).max() < 0.25 * scale + 0.05
    files = sorted((quantized["data"] / "red").iterdir())[:2]
    top = Predictor.from_artifact(out, runtime="openvino-int8", threads=1).predict_images(files)
    assert [r["top"][0]["class"] for r in top] == ["red", "red"]


def test_openvino_fp32_parity_with_torch_is_checked(quantized, monkeypatch) -> None:
    art = load(quantized["fp32"])
    onnx_path = quantized["out"] / "model.onnx"
    worst = check_parity(art.model, onnx_path, art.input_size, batch=4, threads=1)
    assert 0 <= worst < 1e-4
    # Another network's weights under the same file: the check must refuse, naming the figure.
    other = load(quantized["fp32"]).model
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    with pytest.raises(Exception, match="OpenVINO FP32 disagrees with PyTorch .* max abs"):
        check_parity(other, onnx_path, art.input_size, batch=4, threads=1)


def test_bench_lists_and_times_the_openvino_runtimes(quantized, tmp_path) -> None:
    report = bench([quantized["out"]], quantized["data"], batch=4, threads=1, warmup=1,
                   iterations=3, out=tmp_path / "bench", console=QUIET)
    rows = {r["runtime"]: r for r in report["results"]}
    assert "openvino-fp32" in report["settings"]["runtimes"]
    assert rows["onnx-int8"]["skipped"] == "no model file for this runtime"
    for runtime, precision, file in (("openvino-fp32", "fp32", "model.onnx"),
                                     ("openvino-int8", "int8", "model.openvino-int8.xml")):
        row = rows[runtime]
        assert row["precision"] == precision and row["file"] == file and row["threads"] == 1
        assert row["latency_ms"]["p50"] > 0 and row["throughput"]["images_per_s"] > 0
        assert row["accuracy"]["split"] == "val" and row["accuracy"]["n"] == 9
    assert rows["openvino-fp32"]["accuracy"] == rows["torch"]["accuracy"]


def test_guard_says_when_the_budget_cannot_be_met(quantized, tmp_path) -> None:
    summary = quantize(quantized["fp32"], out=tmp_path / "strict", backend="openvino",
                       max_drop=-1.0, max_rounds=1, **FAST_PTQ)
    guard = summary["quantization"]["guard"]
    assert not guard["met"] and guard["status"].startswith("NOT met")
    assert len(guard["rounds"]) == 2  # plain NNCF, then its accuracy control
    assert guard["rounds"][1]["by"] == "nncf.quantize_with_accuracy_control"
    # As in the ONNX Runtime path: the best model is still written, and the card says so.
    card = json.loads((tmp_path / "strict" / "model.json").read_text())
    assert card["quantization"]["guard"]["met"] is False


def test_guard_returns_harmful_ops_to_fp32(quantized, tmp_path, monkeypatch) -> None:
    # The tiny model loses nothing to INT8; pretend each layer run in 8-bit costs 5 points, so
    # every group NNCF's accuracy control returns to FP32 wins some back.
    def pseudo_top1(compiled) -> float:
        return 1.0 - 0.05 * sum(int8_layers(compiled).values())

    monkeypatch.setattr(ptq_openvino, "runner_top1", lambda run, scored: {
        "n": len(scored.labels), "top1": pseudo_top1(run.compiled)})
    monkeypatch.setattr(ptq_openvino, "_validate", lambda compiled, items, scored: (
        pseudo_top1(compiled), [pseudo_top1(compiled)] * len(list(items))))
    summary = quantize(quantized["fp32"], out=tmp_path / "restored", backend="openvino",
                       max_drop=0.0, max_rounds=2, **FAST_PTQ)
    q = summary["quantization"]
    first, restored = q["guard"]["rounds"]
    assert restored["fp32_nodes"] > 0 and restored["drop_points"] < first["drop_points"]
    kept = q["fp32_nodes"]
    assert len(kept) == restored["fp32_nodes"] and all(k["op_type"] for k in kept)
    # The written IR is the restored model: those ops no longer read a quantised input.
    still_int8 = quantized_ops(read_model(tmp_path / "restored" / "model.openvino-int8.xml"))
    assert kept and not {k["name"] for k in kept} & set(still_int8)
    assert still_int8  # and the rest is INT8 still


def test_damaged_ir_is_refused_by_name(quantized, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(quantized["out"], broken)
    (broken / "model.openvino-int8.bin").unlink()
    with pytest.raises(ArtifactError, match=r"model.openvino-int8.bin does not exist.*"
                                            "--backend openvino"):
        Predictor.from_artifact(broken, runtime="openvino-int8", threads=1)


def test_bad_backend_settings_are_refused_before_anything_is_written(quantized,
                                                                     tmp_path) -> None:
    fp32 = quantized["fp32"]
    with pytest.raises(ConfigError, match="--backend 'tensorrt' is not one of"):
        quantize(fp32, out=tmp_path / "a", backend="tensorrt", console=QUIET)
    with pytest.raises(ConfigError, match="--method ptq only"):
        quantize(fp32, out=tmp_path / "b", backend="openvino", method="dynamic", console=QUIET)
    with pytest.raises(ConfigError, match="--calibrate entropy applies to --backend onnxrun"):
        quantize(fp32, out=tmp_path / "c", backend="openvino", calibrate="entropy",
                 console=QUIET)
    result = CliRunner().invoke(app, ["quantize", str(fp32), "--out", str(tmp_path / "d"),
                                      "--backend", "openvino", "--method", "qat", "--json"])
    assert result.exit_code == 2 and "--method ptq only" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_without_openvino_everything_else_works_and_says_how_to_install(quantized, tmp_path,
                                                                        monkeypatch) -> None:
    for name in ("openvino", "nncf"):
        monkeypatch.setitem(sys.modules, name, None)  # `import openvino` now fails
    out = quantized["out"]
    for runtime in ("openvino-fp32", "openvino-int8"):
        with pytest.raises(ConfigError, match=f"--runtime {runtime} needs OpenVINO.*{INSTALL}"):
            Predictor.from_artifact(out, runtime=runtime, threads=1)
    with pytest.raises(ConfigError, match=f"--backend openvino needs OpenVINO.*{INSTALL}"):
        quantize(quantized["fp32"], out=tmp_path / "q", backend="openvino", console=QUIET)
    assert not (tmp_path / "q").exists()
    with pytest.raises(ConfigError, match=INSTALL):
        bench([out], runtimes=["openvino-int8"], out=tmp_path / "b1", console=QUIET)
    # Not named: skipped with the reason, the other runtimes measured.
    report = bench([out], batch=2, threads=1, warmup=0, iterations=2, out=tmp_path / "b2",
                   console=QUIET)
    rows = {r["runtime"]: r for r in report["results"]}
    assert "pip install" in rows["openvino-int8"]["skipped"]
    assert rows["onnx-fp32"]["latency_ms"]["p50"] > 0
    # The card recommends an OpenVINO runtime; auto falls back to what can run.
    card = json.loads((out / "model.json").read_text())
    assert card["recommended_runtime"].startswith("openvino")
    assert Predictor.from_artifact(out, threads=1).runtime == "onnx-fp32"
