"""Corruptions (CIFAR-10-C families) and `leanvision robustness`: severities that hurt more as
they rise, seeded reproducibility, the JSON it writes and the report section that reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FAST, make_image_folder
from typer.testing import CliRunner

import leanvision as lv
from leanvision.cli import app
from leanvision.errors import ConfigError
from leanvision.shift.corruptions import FAMILIES, check_families, check_severities, corrupt

pytestmark = pytest.mark.usefixtures("one_thread")


def structured_images(n: int = 4, size: int = 32) -> torch.Tensor:
    """Mid-grey images with a gradient and detail at periods that align with no pixel grid:
    room to brighten, and detail for blur, JPEG and pixelation to lose."""
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                          torch.arange(size, dtype=torch.float32), indexing="ij")
    images = []
    for i in range(n):
        detail = 35 * torch.sin(x / (1.3 + 0.2 * i)) * torch.cos(y / 1.7) + 25 * torch.sin(
            (x + 2 * y) / 2.9)
        base = 70 + 100 * x / size + detail
        images.append(torch.stack([base, base.flip(-1), 255 - base]))
    return torch.stack(images).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_higher_severity_changes_the_image_more(family):
    x = structured_images()
    change = [float((corrupt(x, family, s).float() - x.float()).abs().mean())
              for s in (1, 3, 5)]
    assert change[0] > 0
    assert change[0] < change[1] < change[2], (family, change)
    out = corrupt(x, family, 3)
    assert out.dtype == torch.uint8 and out.shape == x.shape


def test_corruptions_are_seeded():
    x = structured_images()
    a = corrupt(x, "gaussian_noise", 3, seed=1)
    assert torch.equal(a, corrupt(x, "gaussian_noise", 3, seed=1))
    assert not torch.equal(a, corrupt(x, "gaussian_noise", 3, seed=2))
    # deterministic families do not depend on the seed at all
    assert torch.equal(corrupt(x, "jpeg_compression", 3, seed=1),
                       corrupt(x, "jpeg_compression", 3, seed=2))


def test_names_and_severities_are_checked():
    assert check_families("noise,jpeg") == ("gaussian_noise", "jpeg_compression")
    assert check_families(None) == FAMILIES
    with pytest.raises(ConfigError, match="did you mean gaussian_blur"):
        check_families("gausian_blur")
    with pytest.raises(ConfigError, match="among 1..5"):
        check_severities("0,6")
    assert check_severities("5,1,3,3") == (1, 3, 5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("robust")
    data = make_image_folder(root / "data", per_class=12)
    torch.set_num_threads(1)
    lv.train(str(data), root / "base", **FAST)
    return {"root": root, "data": data, "base": root / "base"}


def test_robustness_writes_json_beside_the_artifact(trained):
    record = lv.robustness(trained["base"], severities="1,5",
                           families=["contrast", "gaussian_noise"])
    path = trained["base"] / "robustness.json"
    assert Path(record["json"]) == path
    saved = json.loads(path.read_text())
    assert not list(trained["base"].glob(".robustness.json.*"))  # no temporary file left
    assert saved["split"] == "val" and saved["n"] == 9
    assert list(saved["families"]) == ["gaussian_noise", "contrast"]
    # the clean figure is evaluate()'s: the same images through the same inference path
    clean = lv.evaluate(trained["base"])["metrics"]["top1"]
    assert saved["clean_top1"] == pytest.approx(clean)
    for row in saved["families"].values():
        assert set(row["top1"]) == {"1", "5"}
        assert row["mean_top1"] == pytest.approx(sum(row["top1"].values()) / 2)
        assert row["drop"] == pytest.approx(saved["clean_top1"] - row["mean_top1"])
    means = [row["mean_top1"] for row in saved["families"].values()]
    assert saved["mean_corruption_top1"] == pytest.approx(sum(means) / 2)
    # colour is all these classes differ by: contrast 0.15 must cost accuracy
    assert saved["families"]["contrast"]["top1"]["5"] < saved["clean_top1"]


def test_robustness_cli_out_and_errors(trained, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["robustness", str(trained["base"]), "--families", "blur",
                                 "--severities", "3", "--out", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["ok"] and summary["json"] == str(tmp_path / "r" / "robustness.json")
    assert (tmp_path / "r" / "robustness.json").is_file()
    bad = runner.invoke(app, ["robustness", str(trained["base"]), "--families", "fog"])
    assert bad.exit_code == 2 and "unknown corruption 'fog'" in bad.output


def test_report_shows_robustness_per_variant(trained, tmp_path):
    from leanvision.reports import report

    lv.robustness(trained["base"], severities="3", families="contrast", out=None)
    child = tmp_path / "adapted"
    lv.adapt(trained["base"], trained["data"], child)
    lv.robustness(child, severities="3", families="contrast")
    page = Path(report([child], tmp_path / "rep", measure=False, explain_images=0)["path"])
    section = page.read_text().split('<section id="robustness">', 1)[1].split("</section>")[0]
    assert "mCA %" in section and "Δ drop vs parent" in section
    assert "adapted" in section and "base" in section  # both the variant and its parent


def test_robustness_runs_the_runtime_the_artifact_ships(trained, tmp_path):
    exported = tmp_path / "exported"
    shutil.copytree(trained["base"], exported, ignore=shutil.ignore_patterns("robustness.json"))
    lv.export(exported)
    kwargs = dict(severities="5", families="contrast", out=tmp_path)
    onnx = lv.robustness(exported, **kwargs)  # auto: the ONNX model the folder now holds
    eager = lv.robustness(exported, runtime="torch", **kwargs)
    assert onnx["runtime"] == "onnx-fp32" and eager["runtime"] == "torch"
    assert onnx["clean_top1"] == pytest.approx(eager["clean_top1"])
    # fp32 ONNX and eager PyTorch may differ in the last bits: at most one of 9 images flips
    assert onnx["families"]["contrast"]["top1"]["5"] == pytest.approx(
        eager["families"]["contrast"]["top1"]["5"], abs=1 / 9 + 1e-6)
