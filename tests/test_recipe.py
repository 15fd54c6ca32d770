"""The default recipe and transfer learning through `train`."""

from __future__ import annotations

import json

import torch
from conftest import FAST, make_image_folder
from safetensors.torch import load_file

import leanvision as lv
from leanvision.training.config import TrainConfig
from leanvision.training.recipe import DataStats, resolve_recipe


def test_small_images_get_a_small_cnn_from_scratch():
    cfg, notes = resolve_recipe(TrainConfig(), DataStats(n_train=1617, num_classes=10,
                                                          median_side=8))
    assert cfg.model == "resnet20" and cfg.pretrained is False
    assert cfg.optimizer == "adamw" and cfg.batch_size == 128 and cfg.lr == 5e-3
    assert 15 <= cfg.epochs <= 100
    assert any(n.startswith("model = resnet20") for n in notes)


def test_large_images_fine_tune_the_shipped_pretrained_net():
    cfg, _ = resolve_recipe(TrainConfig(), DataStats(n_train=400, num_classes=4,
                                                      median_side=300))
    assert cfg.model == "efficientnet_lite0" and cfg.pretrained is True
    # photos on a network that can be cut: the LP-FT settings (training/transfer.py)
    assert cfg.optimizer == "adamw" and cfg.lr == 3e-4 and cfg.batch_size == 32
    assert cfg.epochs <= 30


def test_recipe_scales_with_data_size():
    tiny, _ = resolve_recipe(TrainConfig(), DataStats(n_train=60, num_classes=3, median_side=32))
    big, _ = resolve_recipe(TrainConfig(), DataStats(n_train=45_000, num_classes=10,
                                                     median_side=32))
    assert tiny.batch_size < big.batch_size
    assert tiny.epochs > big.epochs


def test_set_values_are_kept():
    cfg, notes = resolve_recipe(TrainConfig(model="resnet56", epochs=3, lr=0.05),
                                DataStats(n_train=1000, num_classes=10, median_side=32))
    assert (cfg.model, cfg.epochs, cfg.lr) == ("resnet56", 3, 0.05)
    assert not any(n.startswith(("model ", "epochs ", "lr ")) for n in notes)


def test_probe_then_unfreeze_on_shipped_efficientnet_weights(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6)
    out = tmp_path / "run"
    lv.train(data, out, model="efficientnet_lite0", pretrained=True, img_size=32, epochs=1,
             batch_size=8, progress=False, val_fraction=0.25, finetune="probe")
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["finetune"] == "probe"
    assert card["arch_kwargs"] == {"img_size": 32}
    trained = load_file(out / "model.safetensors")
    reference = lv.create_model("efficientnet_lite0", 3, pretrained=True).state_dict()
    # The backbone, batch-norm statistics included, is untouched; only the head learned.
    assert torch.equal(trained["conv_stem.weight"], reference["conv_stem.weight"])
    assert torch.equal(trained["bn1.running_mean"], reference["bn1.running_mean"])
    assert not torch.equal(trained["classifier.weight"], reference["classifier.weight"])
    assert lv.load(out).input_size == (32, 32)


def test_auto_finetune_with_few_images_probes_first(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6)
    summary = lv.train(data, tmp_path / "run", model="mobilenetv3_small_100", pretrained=False,
                       img_size=32, epochs=2, batch_size=8, progress=False, val_fraction=0.25)
    assert summary["training"]["finetune"] == "full"  # nothing to protect in random weights


def test_pretrained_from_a_file_reinitialises_a_different_head(tiny_folder, tmp_path):
    first = lv.train(tiny_folder, tmp_path / "first", **FAST)
    two_classes = make_image_folder(tmp_path / "two", per_class=8,
                                    classes={"red": (200, 30, 30), "blue": (40, 50, 210)})
    weights = tmp_path / "first" / "model.safetensors"
    summary = lv.train(two_classes, tmp_path / "second", **dict(
        FAST, pretrained=str(weights), finetune="probe"))
    assert summary["classes"] == 2 and first["classes"] == 3
    a = load_file(weights)
    b = load_file(tmp_path / "second" / "model.safetensors")
    assert torch.equal(a["stem.conv.weight"], b["stem.conv.weight"])
    assert b["head.fc.weight"].shape[0] == 2
