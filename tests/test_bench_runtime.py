"""`bench`: one row per artifact and runtime with latency percentiles, throughput, accuracy,
size and cost, threads recorded, a JSON file under OUT, and skipped runtimes said so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from rich.console import Console

from leanvision.artifact import make_card, save_artifact
from leanvision.errors import ConfigError
from leanvision.models import count_flops, count_parameters, create_model
from leanvision.runtime.bench import bench
from leanvision.runtime.export import export_onnx

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = Console(quiet=True)


def _artifact(folder: Path, data: Path, with_onnx: bool) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet8", 3).eval()
    card = make_card(arch="resnet8", arch_kwargs={}, classes=["blue", "green", "red"],
                     input_size=(16, 16), mean=[0.5] * 3, std=[0.25] * 3, stage="train",
                     config={"data": str(data)})
    save_artifact(folder, model, card)
    if with_onnx:
        export_onnx(model, (16, 16), folder / "model.onnx", batch=2)
    return folder


def test_bench_measures_every_runtime_and_writes_json(tmp_path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    art = _artifact(tmp_path / "art", data, with_onnx=True)
    plain = _artifact(tmp_path / "plain", data, with_onnx=False)
    report = bench([art, plain], data, runtimes=["torch", "onnx-fp32"], batch=4, threads=1,
                   warmup=1, iterations=5, out=tmp_path / "out", console=QUIET)
    assert report["path"] == str(tmp_path / "out" / "bench.json")
    written = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert written["results"] == report["results"] and written["settings"]["threads"] == 1
    rows = {(Path(r["artifact"]).name, r["runtime"]): r for r in report["results"]}
    assert rows[("plain", "onnx-fp32")] == {"artifact": str(plain), "runtime": "onnx-fp32",
                                            "skipped": "no model file for this runtime"}
    model = create_model("resnet8", 3)
    for key in (("art", "torch"), ("art", "onnx-fp32"), ("plain", "torch")):
        row = rows[key]
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["iterations"] == 5
        assert row["throughput"]["batch"] == 4 and row["throughput"]["images_per_s"] > 0
        assert row["threads"] == 1 and row["precision"] == "fp32"
        assert row["params"] == count_parameters(model)
        assert row["flops"] == count_flops(model, (16, 16))
        # no test split and a card naming this data: top-1 on the card's validation hold-out
        assert row["accuracy"]["split"] == "val" and row["accuracy"]["n"] > 0
        assert 0 <= row["accuracy"]["top1"] <= 1
    # an untrained net scores the same in both runtimes: same images, same network
    assert rows[("art", "torch")]["accuracy"] == rows[("art", "onnx-fp32")]["accuracy"]
    assert rows[("art", "torch")]["file"] == "model.safetensors"
    assert rows[("art", "onnx-fp32")]["size_bytes"] == (art / "model.onnx").stat().st_size
    assert rows[("art", "onnx-fp32")]["vs_onnx_fp32"] == {"latency_b1": 1.0, "throughput": 1.0}
    assert "vs_onnx_fp32" in rows[("art", "torch")]


def test_bench_refuses_bad_settings_before_timing(tmp_path) -> None:
    with pytest.raises(ConfigError, match="--runtime 'tensorrt'"):
        bench([tmp_path], runtimes=["tensorrt"], out=tmp_path / "out", console=QUIET)
    with pytest.raises(ConfigError, match="no artifacts"):
        bench([], out=tmp_path / "out", console=QUIET)
    assert not (tmp_path / "out").exists()
