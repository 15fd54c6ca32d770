"""The HTML report: one self-contained page with every section, variant rows with lineage, speed,
Pareto charts and explanations; clear errors for folders that are not runs or artifacts."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, PNG_SIGNATURE, make_image_folder

import leanvision
from leanvision.compress import prune
from leanvision.errors import ArtifactError, ConfigError, DatasetError
from leanvision.reports import report
from leanvision.reports.collect import reliability
from leanvision.reports.plots import pareto_front

pytestmark = pytest.mark.usefixtures("one_thread")
SECTIONS = ("variants", "training", "confusion", "calibration", "robustness", "explanations")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    data = make_image_folder(root / "data", per_class=12)
    torch.set_num_threads(1)
    leanvision.train(str(data), root / "base", **FAST)
    prune(root / "base", out=root / "pruned", ratio=0.5, finetune_epochs=0, check=False,
          batch_size=8, progress=False)
    return {"root": root, "data": data, "base": root / "base", "pruned": root / "pruned"}


@pytest.fixture(scope="module")
def built(runs) -> dict:
    torch.set_num_threads(1)
    # Only the child is named: its parent comes in through the card's lineage.
    result = report([runs["pruned"]], runs["root"] / "out", explain_images=2)
    return {**result, "html": Path(result["path"]).read_text(encoding="utf-8")}


def _data_uris(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


def test_report_is_one_self_contained_file_with_every_section(built, runs):
    path = Path(built["path"])
    assert path == runs["root"] / "out" / "report.html"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]
    page = built["html"]
    assert built["sections"] == list(SECTIONS)
    for section in SECTIONS:
        assert f'<section id="{section}"><h2>' in page
        assert f'href="#{section}"' in page  # the table of contents links to it
    # nothing fetched: no remote or relative src/href, no scripts, stylesheets or fonts
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    sources = _data_uris(page)
    assert len(sources) >= 8  # curves, Pareto, confusion, calibration, 2 x 2 overlays (+parent)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert "max-width:1100px" in page and "img{max-width:100%" in page


def test_variants_table_has_the_child_and_its_parent_with_speed_and_pareto(built, runs):
    rows = {r["name"]: r for r in built["variants"]}
    assert set(rows) == {"pruned", "base"}
    child, parent = rows["pruned"], rows["base"]
    assert (child["stage"], child["parent"], child["given"]) == ("prune", "base", True)
    assert (parent["stage"], parent["parent"], parent["given"]) == ("train", None, False)
    for name, row in rows.items():
        card = json.loads((runs[name] / "model.json").read_text())
        assert row["val_top1"] == card["metrics"]["val"]["top1"]
        assert (row["params"], row["flops"]) == (card["metrics"]["params"],
                                                 card["metrics"]["flops"])
        assert row["size_bytes"] == (runs[name] / "model.safetensors").stat().st_size
        assert row["runtime"] == "torch" and row["latency_ms_p50"] > 0 and row["throughput"] > 0
    assert child["params"] < parent["params"] and child["size_bytes"] < parent["size_bytes"]
    # the smaller model is on the size front whatever its accuracy; the more accurate one too
    assert child["pareto_size"]
    assert parent["pareto_size"] == (parent["accuracy"] > child["accuracy"])
    page = built["html"]
    assert '<div id="pareto">' in page and "Pareto-optimal" in page
    # readable names (the pipeline), numbered as the chart's points, the folder in a tooltip
    assert (child["label"], parent["label"]) == ("resnet8 · prune 50% · FP32", "resnet8 · FP32")
    assert re.search(r'<td class="text">1</td><td class="text" title="[^"]*/pruned">'
                     r"resnet8 · prune 50% · FP32</td><td class=\"text\">prune</td>"
                     r'<td class="text" title="base">resnet8 · FP32</td>', page)
    assert "resnet8 · FP32 (parent)" in page


def test_training_confusion_calibration_and_gallery_are_filled(built):
    page = built["html"]
    assert "resnet8 · FP32 · train · 2 epoch(s)" in page  # the parent's run holds metrics.jsonl
    # the child was pruned without fine-tuning, so its card holds no confusion matrix: the
    # report recomputes it, and the probabilities give the reliability diagram
    assert "Confusion matrix recomputed on the val split" in page
    assert "<th>precision %</th>" in page or "precision %" in page
    assert re.search(r"ECE \d\.\d{4} over 15 bins", page)
    # gallery: two images per variant; the child's figures pair its map with its parent's
    gallery = page.split('<section id="explanations">', 1)[1]
    assert "Drift from the parent" in gallery
    assert len(re.findall(r'<div class="pair"><img[^>]*><img', gallery)) == 2
    assert len(re.findall(r"drift IoU \d\.\d\d", gallery)) == 2
    assert "Target layer:" in gallery and "Mean faithfulness" in gallery


def test_cards_confusion_is_used_and_missing_speed_is_a_note(runs, tmp_path):
    result = report(runs["base"], tmp_path / "base.html", measure=False, explain_images=0)
    assert result["path"] == str(tmp_path / "base.html")
    page = Path(result["path"]).read_text(encoding="utf-8")
    assert "Confusion matrix from the card, val split" in page
    assert "Not measured (measure=False)" in page
    assert "No gallery: explain_images=0." in page
    assert result["variants"][0]["latency_ms_p50"] is None
    assert "Accuracy against latency: no latency figures" in page
    # Columns empty for every variant are left out, each with the reason.
    assert "<th>test top-1</th>" not in page and "<th>int8 top-1</th>" not in page
    assert "<th>runtime</th>" not in page and "<th>val top-1</th>" in page
    assert "test top-1: the data has no test split" in page
    assert "int8 top-1: no variant is quantized" in page
    assert "runtime, p50 ms (b1), img/s (bN): Not measured (measure=False)" in page


def test_bench_file_and_a_quantized_child(runs, tmp_path):
    """A quantized artifact is compared by what it ships: INT8 accuracy, size and runtime."""
    q = tmp_path / "q"
    shutil.copytree(runs["base"], q, ignore=shutil.ignore_patterns("metrics.jsonl", "*.pt"))
    card = json.loads((q / "model.json").read_text())
    card.update(stage="quantize", parent=str(runs["base"]))
    card["metrics"]["int8"] = {"val": {"n": 9, "top1": 0.5}, "size_bytes": 1234}
    (q / "model.json").write_text(json.dumps(card))
    (q / "model.int8.onnx").write_bytes(b"not run: the timings come from the bench file")
    bench_rows = [{"artifact": str(q), "runtime": "torch", "latency_ms": {"p50": 9.0},
                   "throughput": {"batch": 16, "images_per_s": 10.0}},
                  {"artifact": str(q), "runtime": "onnx-int8", "latency_ms": {"p50": 0.5},
                   "throughput": {"batch": 16, "images_per_s": 900.0}},
                  {"artifact": str(runs["base"]), "runtime": "torch",
                   "latency_ms": {"p50": 1.5}, "throughput": {"batch": 16, "images_per_s": 300.0}},
                  {"artifact": str(runs["base"]), "runtime": "onnx-int8",
                   "skipped": "no model file for this runtime"}]
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"results": bench_rows}))
    result = report([q], tmp_path / "out", bench=bench, explain_images=0)
    rows = {r["name"]: r for r in result["variants"]}
    assert (rows["q"]["runtime"], rows["q"]["latency_ms_p50"]) == ("onnx-int8", 0.5)
    assert (rows["q"]["int8_top1"], rows["q"]["accuracy"], rows["q"]["size_bytes"]) == \
        (0.5, 0.5, 1234)
    assert (rows["base"]["runtime"], rows["base"]["latency_ms_p50"]) == ("torch", 1.5)
    assert rows["q"]["pareto_latency"] and rows["q"]["pareto_size"]
    page = Path(result["path"]).read_text(encoding="utf-8")
    assert f"Latency and throughput from {bench}" in page and "img/s (b16)" in page
    assert "figures of the FP32 PyTorch weights" in page


def test_missing_data_and_a_run_without_artifact_become_notes(runs, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(runs["base"], moved, ignore=shutil.ignore_patterns("*.pt"))
    card = json.loads((moved / "model.json").read_text())
    card["config"]["data"] = str(tmp_path / "gone")
    (moved / "model.json").write_text(json.dumps(card))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs["base"] / "metrics.jsonl", unfinished)
    result = report([moved, unfinished], tmp_path / "out", measure=False, explain_images=2)
    page = Path(result["path"]).read_text(encoding="utf-8")
    assert [r["name"] for r in result["variants"]] == ["moved"]
    assert "Calibration not available" in page and "is not there" in page
    assert "No gallery: it needs images" in page
    assert "Confusion matrix from the card" in page  # what the card holds is still shown
    assert "unfinished · run (no artifact) · 2 epoch(s)" in page


def test_bad_inputs_name_the_path_and_the_fix(runs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ArtifactError, match=r"'.*nowhere' does not exist; pass a training run"):
        report([tmp_path / "nowhere"], out)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(ArtifactError, match=r"junk' is not a leanvision run or artifact: it "
                                            r"holds neither model.json nor metrics.jsonl"):
        report([tmp_path / "junk"], out)
    with pytest.raises(ArtifactError, match=r"notes.txt' is a file"):
        report([tmp_path / "junk" / "notes.txt"], out)
    bare = tmp_path / "bare"
    shutil.copytree(runs["base"], bare, ignore=shutil.ignore_patterns("metrics.jsonl", "*.pt"))
    card = json.loads((bare / "model.json").read_text())
    card["metrics"] = {}
    (bare / "model.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"bare' has no metrics to report: there is no "
                                            r"metrics.jsonl .* records no accuracy"):
        report([bare], out)
    with pytest.raises(ConfigError, match="unknown explanation method 'gradcan'"):
        report([runs["base"]], out, explain_method="gradcan")
    with pytest.raises(ConfigError, match="no runs or artifacts given"):
        report([], out)
    with pytest.raises(ConfigError, match=r"bench file .* could not be read"):
        report([runs["base"]], out, bench=tmp_path / "junk" / "notes.txt", explain_images=0)
    with pytest.raises(DatasetError, match="does not exist"):
        report([runs["base"]], out, data=tmp_path / "no-data")
    assert not out.exists()  # nothing written for bad input


def test_pareto_front_and_reliability_bins():
    # (cost, accuracy): the third is beaten by the first; equal points both stay on the front
    assert pareto_front([(1, 0.9), (2, 0.95), (3, 0.8), (1, 0.9)]) == [True, True, False, True]
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.55, 0.45], [0.3, 0.7]])
    bins = reliability(probs, np.array([0, 1, 0, 1]), bins=10)
    assert sum(bins["count"]) == 4
    assert bins["count"][9] == 1 and bins["accuracy"][9] == 1.0  # 0.95, right
    assert bins["count"][8] == 1 and bins["accuracy"][8] == 0.0  # 0.9, wrong
    assert bins["count"][5] == 1 and bins["count"][6] == 1
    assert np.isnan(bins["confidence"][0])


def test_paired_intervals_from_pareto_json_become_error_bars(runs, tmp_path):
    pareto = tmp_path / "pareto.json"
    pareto.write_text(json.dumps({"front": [{"artifact": str(runs["pruned"]), "paired": {
        "drop_points": 1.0, "interval95_points": [-2.0, 5.0]}}], "chosen": None}))
    result = report([runs["pruned"]], tmp_path / "out", measure=False, explain_images=0,
                    pareto=pareto)
    rows = {r["name"]: r for r in result["variants"]}
    assert rows["pruned"]["paired"]["interval95_points"] == [-2.0, 5.0]
    assert rows["base"]["paired"] is None
    page = Path(result["path"]).read_text(encoding="utf-8")
    assert "Bars: the 95% interval of each variant&#x27;s paired drop" in page
    pareto.write_text("{")
    with pytest.raises(ConfigError, match="pareto file .* could not be read"):
        report([runs["pruned"]], tmp_path / "again", measure=False, pareto=pareto)
    assert not (tmp_path / "again").exists()
