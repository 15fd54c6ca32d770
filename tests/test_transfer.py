"""Transfer on cached activations: the cut is exact, the probe head is the regression's, LP-FT
trains only the top, and a time budget is sized to or refused."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from rich.console import Console

import leanvision as lv
from leanvision.errors import ConfigError
from leanvision.models import create_model
from leanvision.models.finetune import plan_finetune
from leanvision.models.split import can_split, probe_split, split_model, splittable
from leanvision.training.config import TrainConfig
from leanvision.training.recipe import DataStats, resolve_recipe
from leanvision.training.transfer import fit_probe_head

PHOTO_SIDE = 97  # above the recipe's thumbnail size, not a round number, not square below


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_lower_then_top_is_the_whole_network(name):
    torch.manual_seed(0)
    model = create_model(name, 5).eval()
    x = torch.randn(2, 3, 71, 88)
    split = split_model(model, top_stages=2)
    with torch.no_grad():
        assert torch.allclose(split.top(split.lower(x)), model(x), atol=1e-5)
        probe = probe_split(model)
        assert torch.allclose(probe.top(probe.lower(x)), model(x), atol=1e-5)
    top_ids = {id(p) for p in split.top.parameters()}
    lower_ids = {id(p) for p in split.lower.parameters()}
    assert top_ids and lower_ids and not top_ids & lower_ids
    assert top_ids | lower_ids == {id(p) for p in model.parameters()}


def test_only_cuttable_networks_are_offered_lp_ft():
    assert splittable("efficientnet_lite0") and splittable("resnet18")
    assert not splittable("vit_tiny_patch16_224") and not splittable("no_such_net")
    assert not can_split(create_model("resnet20", 3))
    with pytest.raises(Exception, match="cannot be cut"):
        split_model(create_model("resnet20", 3))
    plan = dict(pretrained=True, images_per_class=300, epochs=4)
    assert plan_finetune("auto", cached_top=True, **plan) == "lp-ft"
    assert plan_finetune("auto", cached_top=False, **plan) == "lower-lr"
    assert plan_finetune("auto", cached_top=True, **{**plan, "pretrained": False}) == "full"


def test_recipe_sizes_lp_ft_by_image_steps_and_keeps_user_settings():
    cfg, notes = resolve_recipe(TrainConfig(data="x", pretrained=True),
                                DataStats(n_train=3000, num_classes=10, median_side=400))
    assert cfg.model == "efficientnet_lite0" and cfg.epochs == 4 and cfg.batch_size == 32
    small, _ = resolve_recipe(TrainConfig(data="x", pretrained=True),
                              DataStats(n_train=200, num_classes=4, median_side=400))
    assert small.epochs == 30  # few images: more passes, capped
    mine, _ = resolve_recipe(TrainConfig(data="x", pretrained=True, lr=0.01, epochs=2),
                             DataStats(n_train=3000, num_classes=10, median_side=400))
    assert mine.lr == 0.01 and mine.epochs == 2


def _probe_and_regression(feats: np.ndarray, labels: np.ndarray, num_classes: int):
    """(our folded head's probabilities, sklearn's on the same standardised features)."""
    from sklearn.linear_model import LogisticRegression

    split = probe_split(create_model("resnet18", num_classes))
    split.top.classifier = torch.nn.Linear(feats.shape[1], num_classes)
    fit_probe_head(split, feats, labels, num_classes=num_classes)
    with torch.no_grad():
        ours = split.top.classifier(torch.as_tensor(feats, dtype=torch.float32)).softmax(1)
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    theirs = LogisticRegression(C=0.03, max_iter=1000).fit((feats - mu) / sd, labels)
    return ours.numpy(), theirs.predict_proba((feats - mu) / sd)


def test_probe_head_equals_the_logistic_regression():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    feats = rng.normal(size=(90, 8)) * 3 + 5 + labels[:, None] * np.linspace(-1, 1, 8)
    ours, expected = _probe_and_regression(feats, labels, num_classes=4)
    assert np.allclose(ours[:, :3], expected, atol=1e-4)
    assert ours[:, 3].max() < 1e-6  # a class never seen in training is never predicted


@pytest.fixture
def photos(tmp_path):
    return make_image_folder(tmp_path / "photos", per_class=10, size=PHOTO_SIDE)


@pytest.mark.usefixtures("one_thread")
def test_lp_ft_trains_the_top_and_leaves_the_frozen_part_as_pretrained(photos, tmp_path):
    out = tmp_path / "run"
    log = Console(record=True, file=io.StringIO())  # not a terminal: one line per epoch
    summary = lv.train(photos, out, model="efficientnet_lite0", img_size=64, epochs=6,
                       batch_size=8, progress=False, val_fraction=0.3, console=log,
                       precision="fp32")  # bf16 kernels differ between CPUs; 9 val images
    epochs = [line.split()[1] for line in log.export_text().splitlines()
              if line.startswith("epoch ")]
    assert epochs == [f"{k}/6" for k in range(1, 7)]
    card = json.loads((out / "model.json").read_text())
    record = card["training"]
    assert record["finetune"] == "lp-ft" and record["epochs_run"] == 6
    assert 0.0 <= record["transfer"]["probe_val_top1"] <= 1.0
    assert "blocks.5" in record["transfer"]["cut"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    trained = lv.load(out).model.state_dict()
    pretrained = create_model("efficientnet_lite0", 3, pretrained=True).state_dict()
    # the lower part (stem, blocks 0-4, their batch-norm statistics included) is untouched;
    # the top (blocks 5-6, conv head) and the classifier moved
    assert all(torch.equal(trained[k], pretrained[k]) for k in trained
               if k.startswith(("conv_stem", "bn1", "blocks.0", "blocks.4")))
    assert not torch.equal(trained["blocks.6.0.conv_pw.weight"],
                           pretrained["blocks.6.0.conv_pw.weight"])
    assert summary["metrics"]["val"]["top1"] >= 0.9  # three flat colours


@pytest.mark.usefixtures("one_thread")
def test_probe_keeps_every_feature_weight(photos, tmp_path):
    out = tmp_path / "probe"
    lv.train(photos, out, model="efficientnet_lite0", img_size=64, finetune="probe",
             progress=False, val_fraction=0.3)
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["finetune"] == "probe" and card["training"]["epochs_run"] == 0
    trained = lv.load(out).model.state_dict()
    pretrained = create_model("efficientnet_lite0", 3, pretrained=True).state_dict()
    changed = {k for k in trained if not torch.equal(trained[k], pretrained[k])}
    assert changed == {"classifier.weight", "classifier.bias"}


@pytest.mark.usefixtures("one_thread")
def test_fine_tuning_that_ends_below_the_probe_keeps_the_probe(photos, tmp_path):
    out = tmp_path / "run"
    # a rate far too high wrecks the top in its few steps; the probe's head and features stay
    lv.train(photos, out, model="efficientnet_lite0", img_size=64, epochs=2, lr=0.5,
             progress=False, val_fraction=0.3)
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["best_epoch"] == 0
    assert any("kept the linear probe" in note for note in card["training"]["selection"])
    probe = card["training"]["transfer"]["probe_val_top1"]
    assert abs(card["metrics"]["val"]["top1"] - probe) < 0.12  # fp32 full images vs fp16 cache


def test_a_budget_too_small_for_the_frozen_pass_is_refused_before_any_work(photos, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"--time-budget 0.0001 minutes cannot fit.*pass "
                                          r"--time-budget \d+"):
        lv.train(photos, out, model="efficientnet_lite0", img_size=64, progress=False,
                 time_budget=0.0001)
    assert not (out / "model.json").exists() and not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("arch", ["efficientnet_lite1", "efficientnet_lite2"])
def test_packaged_lite_weights_load_tensor_for_tensor(arch):
    from leanvision.models.pretrained import packaged_weights_path

    path = packaged_weights_path(arch)
    if path is None:
        pytest.skip(f"{arch}'s weights package is not installed")
    shipped = list(torch.load(path, weights_only=True).values())
    model = create_model(arch, 1000, pretrained=True)
    ours = list(model.state_dict().values())
    assert len(shipped) == len(ours)
    assert all(torch.equal(a, b) for a, b in zip(shipped, ours, strict=True))


def test_epochs_are_sized_to_the_budget_from_the_measured_step(monkeypatch):
    from leanvision.hardware import choose_hardware
    from leanvision.training import transfer_run
    from leanvision.training.transfer import Cached

    monkeypatch.setattr(transfer_run, "_seconds_per_step", lambda *a: 0.5)
    train = Cached([torch.zeros(320, 4)], torch.zeros(320, dtype=torch.long))
    cfg = TrainConfig(data="x", epochs=8, batch_size=32)  # 10 steps of 0.5 s an epoch
    hw, quiet = choose_hardware("cpu"), Console(quiet=True)
    record: dict = {}
    assert transfer_run._fit_epochs(cfg, None, train, hw, None, record, quiet) is cfg
    assert transfer_run._fit_epochs(cfg, None, train, hw, 100.0, record, quiet) is cfg
    fewer = transfer_run._fit_epochs(cfg, None, train, hw, 31.0, record, quiet)
    assert fewer.epochs == 6 and "6 of the recipe's 8 epochs" in record["budget_note"]
    assert transfer_run._fit_epochs(cfg, None, train, hw, 4.0, record, quiet) is None
    assert "the probe is kept" in record["budget_note"]


def test_probe_head_with_two_classes_matches_the_binary_regression():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 25)
    feats = rng.normal(size=(50, 6)) + labels[:, None] * 0.8
    ours, expected = _probe_and_regression(feats, labels, num_classes=2)
    assert np.allclose(ours, expected, atol=1e-4)


@pytest.mark.usefixtures("one_thread")
def test_a_budget_that_cuts_nothing_leaves_lp_ft_unchanged(photos, tmp_path):
    # Timing the top's step runs its dropout: the seeded stream must not move.
    common = dict(model="efficientnet_lite0", img_size=64, epochs=2, batch_size=8,
                  progress=False, val_fraction=0.3)
    lv.train(photos, tmp_path / "plain", **common)
    lv.train(photos, tmp_path / "budget", time_budget=30, **common)
    card = json.loads((tmp_path / "budget" / "model.json").read_text())
    assert card["training"]["finetune"] == "lp-ft"
    plain = (tmp_path / "plain" / "model.safetensors").read_bytes()
    assert (tmp_path / "budget" / "model.safetensors").read_bytes() == plain

