"""explain: CAMs and LIME / SHAP write overlays and maps, faithfulness is deterministic and
meaningful, drift compares a model with its parent, bad input fails before anything is written."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, PNG_SIGNATURE, make_image_folder
from rich.console import Console
from torch import nn

import leanvision as lv
from leanvision.artifact import make_card, save_artifact
from leanvision.errors import ConfigError, DatasetError
from leanvision.explanations import (
    METHODS,
    deletion_insertion,
    explain,
    explanation_drift,
    find_target_layer,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FEW_SAMPLES = dict(samples=50)


def _quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet8 trained for two epochs on a tiny colour folder, and two of its images."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("explain")
    data = make_image_folder(root / "data", per_class=8)
    lv.train(data, root / "model", console=_quiet(), **FAST)
    yield {"root": root, "model": root / "model",
           "images": [data / "red" / "000.png", data / "blue" / "001.png"]}
    torch.set_num_threads(before)


def _read(result: dict) -> dict:
    return json.loads(Path(result["path"]).read_text(encoding="utf-8"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_overlays_maps_and_a_record(trained, tmp_path, method):
    out = tmp_path / "out"
    result = explain(trained["model"], trained["images"], method=method, out=out,
                     console=_quiet(), **FEW_SAMPLES)
    record = _read(result)
    assert record["method"] == method
    assert record["target_layer"] == ("stages.2.0" if "cam" in method else None)
    assert record["input_size"] == [32, 32]
    assert [r["name"] for r in record["images"]] == ["000.png", "001.png"]
    for rec in record["images"]:
        (e,) = rec["explanations"]  # the predicted class only, by default
        assert e["class"] == rec["predicted"]["class"]
        assert 0 < e["prob"] <= 1 and e["prob"] == rec["predicted"]["prob"]
        assert (out / e["overlay"]).read_bytes().startswith(PNG_SIGNATURE)
        saliency = np.load(out / e["map"])
        assert saliency.shape == (32, 32) and saliency.dtype == np.float32
        assert saliency.min() >= 0 and saliency.max() <= 1 and saliency.max() > 0
        f = e["faithfulness"]
        assert 0 <= f["deletion"] <= 1 and 0 <= f["insertion"] <= 1
        assert f["score"] == pytest.approx(f["insertion"] - f["deletion"], abs=1e-5)
        assert e["drift"] is None and e["parent"] is None
    assert record["faithfulness_metric"]["name"] == "deletion-insertion"
    assert record["drift"] is None


def test_explaining_leaves_model_and_random_state_as_they_were(trained, tmp_path):
    art = lv.load(trained["model"])
    first = next(art.model.parameters())
    first.grad = torch.ones_like(first)
    rng = torch.get_rng_state()
    for method in ("gradcam", "lime"):
        explain(art, trained["images"][:1], method=method, out=tmp_path / method,
                console=_quiet(), **FEW_SAMPLES)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not art.model.training
    assert all(p.requires_grad for p in art.model.parameters())
    assert torch.equal(first.grad, torch.ones_like(first))
    assert all(p.grad is None for p in list(art.model.parameters())[1:])


def test_lime_and_faithfulness_are_deterministic(trained, tmp_path):
    runs = [explain(trained["model"], trained["images"], method="lime", out=tmp_path / str(i),
                    console=_quiet(), **FEW_SAMPLES) for i in range(2)]
    a, b = (r["images"][1]["explanations"][0] for r in runs)
    assert a["faithfulness"] == b["faithfulness"]
    np.testing.assert_array_equal(np.load(tmp_path / "0" / a["map"]),
                                  np.load(tmp_path / "1" / b["map"]))


def test_target_all_and_by_name(trained, tmp_path):
    every = explain(trained["model"], trained["images"][:1], target="all", out=tmp_path / "all",
                    console=_quiet())
    assert [e["class"] for e in every["images"][0]["explanations"]] == ["blue", "green", "red"]
    assert len({e["overlay"] for e in every["images"][0]["explanations"]}) == 3
    named = explain(trained["model"], trained["images"][:1], target=["green"],
                    out=tmp_path / "named", console=_quiet())
    assert [e["class"] for e in named["images"][0]["explanations"]] == ["green"]
    with pytest.raises(ConfigError, match="did you mean green"):
        explain(trained["model"], trained["images"][:1], target="gren", out=tmp_path / "bad",
                console=_quiet())
    assert not (tmp_path / "bad").exists()


def test_a_file_that_is_not_an_image_fails_before_anything_is_written(trained, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not pixels")
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="notes.png: not an image"):
        explain(trained["model"], [trained["images"][0], text], out=out, console=_quiet())
    assert not out.exists()


def test_unknown_method_is_refused_with_the_known_ones(trained, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"gradcam\+\+.*scorecam.*lime.*shap"):
        explain(trained["model"], trained["images"], method="gradcan", out=out)
    assert not out.exists()


def test_drift_of_a_model_with_itself_is_perfect(trained, tmp_path):
    result = explain(trained["model"], trained["images"], parent=trained["model"],
                     out=tmp_path / "out", console=_quiet())
    assert result["drift"]["mean"] == {"iou": 1.0, "rank_correlation": 1.0}
    e = result["images"][0]["explanations"][0]
    assert e["drift"] == {"iou": 1.0, "rank_correlation": 1.0}
    assert (tmp_path / "out" / e["parent"]["map"]).is_file()
    assert e["parent"]["overlay"].startswith("parent/")


def _pruned_copy(src, dst):
    """`src` with half the filters of its last block's inner conv cut (a card transform, as
    the prune stage records it), the card naming `src` as its parent."""
    from leanvision.models.surgery import structure_diff

    art = lv.load(src)
    model, keep = art.model, slice(0, 32)
    block = model.stages[2][0]
    conv1, bn, conv2 = block.conv1.conv, block.conv1.bn, block.conv2.conv
    conv1.weight = nn.Parameter(conv1.weight.data[keep].clone())
    conv1.out_channels = 32
    bn.weight, bn.bias = nn.Parameter(bn.weight.data[keep]), nn.Parameter(bn.bias.data[keep])
    bn.running_mean, bn.running_var = bn.running_mean[keep].clone(), bn.running_var[keep].clone()
    bn.num_features = 32
    conv2.weight = nn.Parameter(conv2.weight.data[:, keep].clone())
    conv2.in_channels = 32
    fresh = lv.create_model(art.card["arch"], art.num_classes)
    transforms = [{"kind": "structure", "modules": structure_diff(fresh, model)}]
    save_artifact(dst, model, {**art.card, "stage": "prune", "parent": str(src),
                               "transforms": transforms})
    return dst


def test_drift_of_a_pruned_copy_with_its_parent(trained, tmp_path):
    pruned = _pruned_copy(trained["model"], tmp_path / "pruned")
    result = explain(pruned, trained["images"], method="gradcam", parent="auto",
                     out=tmp_path / "out", console=_quiet())
    assert result["parent"]["artifact"] == str(trained["model"])
    assert result["target_layer"] == result["parent"]["target_layer"] == "stages.2.0"
    mean = result["drift"]["mean"]
    assert 0 <= mean["iou"] <= 1 and -1 <= mean["rank_correlation"] <= 1
    assert mean["iou"] < 1 or mean["rank_correlation"] < 1
    assert _read(result)["drift"] == result["drift"]


def test_parent_auto_without_a_parent_notes_why(trained, tmp_path):
    alone = tmp_path / "alone"
    shutil.copytree(trained["model"], alone)
    result = explain(alone, trained["images"][:1], parent="auto", out=tmp_path / "out",
                     console=_quiet())
    assert result["drift"] is None
    assert "names no parent" in result["parent"]["note"]


def test_explanation_drift_on_maps_of_different_sizes():
    rng = np.random.default_rng(0)
    a = rng.random((16, 16)).astype(np.float32)
    same = explanation_drift([a], [a])
    assert same["per_image"][0] == {"iou": 1.0, "rank_correlation": 1.0}
    upscaled = np.kron(a, np.ones((2, 2), np.float32))  # [32, 32], same picture
    close = explanation_drift([a], [upscaled])["per_image"][0]
    assert close["rank_correlation"] > 0.8
    inverse = explanation_drift([a, a], [1 - a, a])
    assert inverse["per_image"][0]["iou"] == 0.0
    assert inverse["per_image"][0]["rank_correlation"] == -1.0
    assert inverse["mean"]["rank_correlation"] == 0.0
    constant = explanation_drift([a], [np.zeros_like(a)])["per_image"][0]
    assert constant["rank_correlation"] is None
    with pytest.raises(ConfigError, match="top_fraction"):
        explanation_drift([a], [a], top_fraction=0)


class _TopLeftModel(nn.Module):
    """Class 0's logit is the mean of the top-left quadrant's first channel; class 1's is 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        score = x[:, 0, : h // 2, : w // 2].mean((1, 2))
        return torch.stack([score, torch.full_like(score, 2.0)], 1)


def test_faithfulness_prefers_the_map_that_points_at_the_evidence():
    x = torch.full((3, 16, 16), 10.0)
    right = np.zeros((16, 16), np.float32)
    right[:8, :8] = 1
    model = _TopLeftModel()
    good = deletion_insertion(model, x, right, target=0)
    bad = deletion_insertion(model, x, 1 - right, target=0)
    assert good["deletion"] < bad["deletion"] and good["insertion"] > bad["insertion"]
    assert good["score"] > 0.5 > 0 > bad["score"]
    assert deletion_insertion(model, x, right, target=0) == good


def _vit_artifact(folder):
    kwargs = {"img_size": 32, "patch_size": 4, "depth": 2}
    model = lv.create_model("vit_tiny_patch16_224", 3, **kwargs)
    card = make_card(arch="vit_tiny_patch16_224", arch_kwargs=kwargs,
                     classes=["blue", "green", "red"], input_size=(32, 32),
                     mean=[0.5] * 3, std=[0.5] * 3, stage="train")
    return save_artifact(folder, model, card)


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_a_vit_gets_a_map_over_its_patch_grid(trained, tmp_path, method):
    folder = _vit_artifact(tmp_path / "vit")
    result = explain(folder, trained["images"][:1], method=method, out=tmp_path / "out",
                     faithfulness=False, console=_quiet())
    assert result["target_layer"] == "blocks.1.norm1"
    e = result["images"][0]["explanations"][0]
    assert np.load(tmp_path / "out" / e["map"]).shape == (32, 32)
    assert e["faithfulness"] is None and result["faithfulness"] is None


@pytest.mark.parametrize(("name", "size", "layer"), [
    ("resnet8", 32, "stages.2.0"), ("airnet_s", 32, "stages.2"),
    ("resnet18", 32, "layer3.1"),  # layer4 is 1x1 at 32 px: nothing to localise there
])
def test_target_layer_is_the_last_spatial_block(name, size, layer):
    model = lv.create_model(name, 3).eval()
    assert find_target_layer(model, (size, size)).name == layer


def test_target_layer_survives_batch_norm_folding():
    from leanvision.models.fold import fold_batchnorm

    model = lv.create_model("resnet8", 3).eval()
    assert fold_batchnorm(model)
    assert find_target_layer(model, (32, 32)).name == "stages.2.0"
