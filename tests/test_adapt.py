"""`leanvision adapt`: AdaBN re-estimates batch-norm statistics on the target and recovers a
shifted domain; DANN's gradient reversal and its stage; the adapted artifact reloads in a fresh
process; bad targets and models get one clear error and leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, make_image_folder
from PIL import Image
from typer.testing import CliRunner

import leanvision as lv
from leanvision.artifact import make_card, save_artifact
from leanvision.cli import app
from leanvision.data import normalize
from leanvision.errors import ConfigError, DatasetError
from leanvision.models import create_model
from leanvision.shift.adabn import adabn, batch_norm_layers
from leanvision.shift.dann import GradReverse, grl_lambda

pytestmark = pytest.mark.usefixtures("one_thread")


def shifted_copy(source: Path, out: Path, scale: float = 0.3, offset: float = 140) -> Path:
    """A labelled copy of `source` in another "domain": washed-out pixels (x * scale + offset)."""
    for path in sorted(source.rglob("*.png")):
        pixels = np.asarray(Image.open(path)).astype(np.float64)
        target = out / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels * scale + offset, 0, 255).astype(np.uint8)).save(target)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapt")
    data = make_image_folder(root / "data", per_class=12)
    torch.set_num_threads(1)
    lv.train(str(data), root / "base", **FAST)
    shifted = shifted_copy(make_image_folder(root / "fresh", per_class=12, seed=5),
                           root / "shifted")
    return {"root": root, "data": data, "base": root / "base", "shifted": shifted}


def test_adabn_sets_running_stats_to_the_target_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    images = (torch.rand(64, 3, 8, 8) * 80 + 150).to(torch.uint8)  # a bright "target"
    mean, std = [0.5] * 3, [0.25] * 3
    done = adabn(model, images, mean, std, batch_size=16)
    assert done == {"layers": 1, "images": 64, "batches": 4}
    with torch.no_grad():
        conv_out = model[0](normalize(images, mean, std))  # [N, 4, 6, 6]
    bn = model[1]
    assert torch.allclose(bn.running_mean, conv_out.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, conv_out.var((0, 2, 3)), rtol=0.05)
    assert bn.momentum == 0.1 and not model.training  # restored, eval mode
    for k, v in weights.items():  # nothing but the statistics moved
        assert torch.equal(model.state_dict()[k], v)


def test_adabn_recovers_a_shifted_domain_and_records_its_lineage(trained):
    before = lv.evaluate(trained["base"], trained["shifted"], split="all")["metrics"]["top1"]
    out = trained["root"] / "adabn"
    result = lv.adapt(trained["base"], trained["shifted"], out)
    after = lv.evaluate(out, trained["shifted"], split="all")["metrics"]["top1"]
    assert after > before + 0.2, (before, after)
    card = json.loads((out / "model.json").read_text())
    assert card["stage"] == "adapt" and card["parent"] == str(trained["base"])
    assert card["adapt"]["method"] == "adabn"
    assert card["adapt"]["target"] == str(trained["shifted"].resolve())
    assert card["adapt"]["images"] == 36 and card["adapt"]["adabn"]["layers"] > 0
    assert card["metrics"]["val"]["top1"] == result["metrics"]["val"]["top1"]
    # the parent's statistics are untouched on disk
    parent_bn = batch_norm_layers(lv.load(trained["base"]).model)[0][1]
    child_bn = batch_norm_layers(lv.load(out).model)[0][1]
    assert not torch.allclose(parent_bn.running_mean, child_bn.running_mean)


def test_adapted_artifact_reloads_identically_in_a_fresh_process(trained):
    out = trained["root"] / "adabn-reload"
    lv.adapt(trained["base"], trained["shifted"], out)
    x = torch.linspace(-2, 2, 2 * 3 * 32 * 32).view(2, 3, 32, 32)
    with torch.no_grad():
        here = lv.load(out).model(x).tolist()
    code = ("import json, torch, leanvision as lv\n"
            "x = torch.linspace(-2, 2, 2 * 3 * 32 * 32).view(2, 3, 32, 32)\n"
            f"m = lv.load({str(out)!r}).model\n"
            "with torch.no_grad(): print(json.dumps(m(x).tolist()))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.allclose(here, there, atol=1e-6)
    assert not list(out.glob("*.pt"))  # no pickle files beside the safetensors


def test_dann_trains_through_the_fit_loop_and_writes_an_artifact(trained):
    out = trained["root"] / "dann"
    result = lv.adapt(trained["base"], trained["shifted"], out, method="dann", epochs=2,
                      batch_size=8)
    card = json.loads((out / "model.json").read_text())
    assert card["stage"] == "adapt" and card["adapt"]["method"] == "dann"
    dann = card["adapt"]["dann"]
    assert dann["steps"] == 6 and 0.9 < dann["final_lambda"] <= 1.0
    assert card["adapt"]["adabn"]["layers"] > 0  # finished with the target's statistics
    assert (out / "metrics.jsonl").is_file() and card["training"]["epochs_run"] == 2
    assert result["metrics"]["val"]["top1"] >= 0.5
    reloaded = lv.load(out)
    assert reloaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.ones(3, requires_grad=True)
    GradReverse.apply(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))
    assert grl_lambda(0.0) == 0.0 and grl_lambda(1.0) == pytest.approx(1.0, abs=1e-4)
    assert grl_lambda(0.1) < grl_lambda(0.5) < grl_lambda(0.9)


def test_target_of_other_sizes_and_modes_is_converted_and_said(trained, tmp_path):
    target = tmp_path / "mixed"
    target.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):  # grey 40x24 and RGBA 50x50, flat in one folder
        Image.fromarray(rng.integers(0, 255, (24, 40), dtype=np.uint8), "L").save(
            target / f"g{i}.png")
        Image.fromarray(rng.integers(0, 255, (50, 50, 4), dtype=np.uint8), "RGBA").save(
            target / f"a{i}.png")
    result = lv.adapt(trained["base"], target, tmp_path / "out")
    notes = " ".join(result["adapt"]["notes"])
    assert "scaled and center-cropped to 32x32" in notes and "converted to RGB" in notes
    assert result["adapt"]["target_modes"] == {"L": 20, "RGBA": 20}


def test_empty_or_tiny_target_is_refused_and_nothing_written(trained, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no images.*at least 32"):
        lv.adapt(trained["base"], empty, tmp_path / "a")
    tiny = make_image_folder(tmp_path / "tiny", per_class=2)
    with pytest.raises(DatasetError, match="holds only 6 image.*at least 32"):
        lv.adapt(trained["base"], tiny, tmp_path / "b")
    with pytest.raises(DatasetError, match="does not exist"):
        lv.adapt(trained["base"], tmp_path / "missing", tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c"))
    with pytest.raises(ConfigError, match="--method 'coral'"):
        lv.adapt(trained["base"], trained["shifted"], tmp_path / "d", method="coral")
    with pytest.raises(ConfigError, match="AdaBN trains nothing"):
        lv.adapt(trained["base"], trained["shifted"], tmp_path / "e", epochs=3)


def test_model_without_batch_norm_names_dann(trained, tmp_path):
    model = create_model("test_vit", num_classes=3, img_size=16)
    card = make_card(arch="test_vit", arch_kwargs={"img_size": 16}, classes=["a", "b", "c"],
                     input_size=(16, 16), mean=[0.5] * 3, std=[0.5] * 3, stage="train")
    save_artifact(tmp_path / "vit", model, card)
    with pytest.raises(ConfigError, match="no batch-norm layers.*--method dann"):
        lv.adapt(tmp_path / "vit", trained["shifted"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapt_cli_error_is_one_line_with_nonzero_exit(trained, tmp_path):
    result = CliRunner().invoke(app, ["adapt", str(trained["base"]), "--target",
                                      str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    said = " ".join(result.output.split())  # rich wraps long lines
    assert said.startswith("DatasetError: target folder") and "does not exist" in said
    assert not (tmp_path / "o").exists()
