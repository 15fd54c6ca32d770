"""Semi-supervised training (`train --unlabeled`, FixMatch): the thresholded consistency loss,
a run on tiny folders that records what it did, and a clear refusal of an unusable folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, make_image_folder
from PIL import Image

import leanvision as lv
from leanvision.errors import ConfigError, DatasetError
from leanvision.hardware import choose_hardware
from leanvision.training.semi.fixmatch import FixMatchCriterion

pytestmark = pytest.mark.usefixtures("one_thread")


def flat_unlabeled(folder: Path, count: int, seed: int = 1) -> Path:
    """Images of the tiny classes without their class folders."""
    labelled = make_image_folder(folder.parent / f"{folder.name}-src", per_class=count // 3 + 1,
                                 seed=seed)
    folder.mkdir(parents=True)
    for i, path in enumerate(sorted(labelled.rglob("*.png"))[:count]):
        Image.open(path).save(folder / f"u{i:03d}.png")
    return folder


def _criterion(model, threshold: float, pseudo_labels: str = "step",
               labelled_per_epoch: int | None = None, thresholds: str = "fixed"
               ) -> FixMatchCriterion:
    unlabeled = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))
    return FixMatchCriterion(model, unlabeled, num_classes=3, mean=[0.5] * 3, std=[0.5] * 3,
                             hw=choose_hardware("cpu", "fp32", False), mu=2,
                             threshold=threshold, lambda_u=1.0, pseudo_labels=pseudo_labels,
                             labelled_per_epoch=labelled_per_epoch, thresholds=thresholds)


def test_epoch_pool_holds_the_confident_images_and_trains_only_them():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    crit = _criterion(model, threshold=0.9, pseudo_labels="epoch")
    with torch.no_grad():  # class 1 is certain for images brighter than average, else unsure
        model[1].weight.zero_()
        model[1].weight[1].fill_(0.6)
        model[1].bias.zero_()
    x = (crit.unlabeled.float() / 255 - 0.5) / 0.5
    expected = (model(x).softmax(1).max(1).values >= 0.9).nonzero().flatten()
    assert 0 < len(expected) < 20
    state = torch.get_rng_state()
    model.train()
    crit.set_epoch(1)
    assert model.training and torch.equal(torch.get_rng_state(), state)  # no draws, mode kept
    assert torch.equal(crit.pool, expected) and (crit.pool_labels == 1).all()
    assert crit.pool_shares == [len(expected) / 20]

    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(len(inp[0])))
    logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    loss = crit(logits, targets, torch.zeros(5, 3, 8, 8), torch.arange(5))
    draws = round(2 * 5 * len(expected) / 20)  # mu * B * the share FixMatch's mask lets through
    assert seen == [draws]
    supervised = torch.nn.functional.cross_entropy(logits, targets)
    assert loss.item() > supervised.item()
    assert crit.record()["pool_share_by_epoch"] == crit.pool_shares

    never = _criterion(model, threshold=1.0, pseudo_labels="epoch")
    seen.clear()
    never.set_epoch(1)
    assert never(logits, targets, torch.zeros(5, 3, 8, 8), torch.arange(5)).item() == \
        pytest.approx(supervised.item(), rel=1e-6)
    assert seen == [len(crit.unlabeled)]  # the labelling pass only: nothing to train


def test_epoch_labelling_moves_a_window_of_mu_images_per_labelled_one():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([9.0, 0.0, 0.0]))  # every image confidently class 0
    crit = _criterion(model, threshold=0.9, pseudo_labels="epoch", labelled_per_epoch=3)
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(len(inp[0])))
    windows = []
    for epoch in (0, 1, 3):
        crit.set_epoch(epoch)
        windows.append(crit.pool.tolist())
    # The first epoch is supervised only (no labelling pass): an untrained net's labels are
    # noise. Then mu 2 x 3 labelled images a window, not the whole folder of 20.
    assert seen == [6, 6]
    assert windows == [[], [6, 7, 8, 9, 10, 11], [18, 19, 0, 1, 2, 3]]
    assert crit.pool_shares == [0.0, 1.0, 1.0]


def test_flex_thresholds_are_lower_for_classes_the_model_has_learnt_less():
    crit = _criterion(torch.nn.Identity(), threshold=0.9, thresholds="flex")
    confidence = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.6, 0.7, 0.3])
    label = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    # confident: class 0 three, class 1 one, class 2 none; 3 unconfident images
    # b = [1, 1/3, 0] -> 0.9 * b / (2 - b) = [0.9, 0.18, 0], floored at 0.5
    assert crit.class_thresholds(confidence, label).tolist() == pytest.approx([0.9, 0.5, 0.5])
    # Nothing confident yet: no bar is lowered (a fresh model's labels are noise).
    assert crit.class_thresholds(torch.tensor([0.4, 0.8]), torch.tensor([0, 1])).tolist() == \
        pytest.approx([0.9, 0.9, 0.9])


def test_only_confident_pseudo_labels_count():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([8.0, 0.0, 0.0]))  # confident: class 0 everywhere
    logits, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    supervised = torch.nn.functional.cross_entropy(logits, targets)
    never = _criterion(model, threshold=1.0)
    assert never(logits, targets, torch.zeros(4, 3, 8, 8), torch.arange(4)).item() == \
        pytest.approx(supervised.item(), rel=1e-5)
    assert never.mask_rates == [0.0]
    confident = _criterion(model, threshold=0.9)
    loss = confident(logits, targets, torch.zeros(4, 3, 8, 8), torch.arange(4))
    assert confident.mask_rates[0] > 0.5 and loss.item() > supervised.item()
    assert confident.record()["steps"] == 1


def test_unlabeled_draws_replay_by_epoch_and_step():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    seen = []
    model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].clone()))
    for _ in range(2):
        crit = _criterion(model, threshold=0.9)
        crit.set_epoch(3)
        torch.manual_seed(1)  # the loop restores torch's generator on resume
        crit(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.zeros(4, 3, 8, 8),
             torch.arange(4))
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])


def test_train_with_unlabeled_folder_records_fixmatch(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    unlabeled = flat_unlabeled(tmp_path / "unlabeled", 24)
    # Paths, as a Python caller passes them: the config must still be written as JSON.
    summary = lv.train(data, tmp_path / "run", unlabeled=unlabeled, pseudo_labels="epoch", mu=2,
                       threshold=0.5, **FAST)
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    semi = card["semi_supervised"]
    assert semi["method"] == "fixmatch" and semi["images"] == 24 and semi["mu"] == 2
    assert semi["pseudo_labels"] == "epoch" and semi["labelled_by"] == "ema"
    assert semi["thresholds"] == "fixed" and len(semi["class_thresholds_last_epoch"][0]) == 3
    assert card["config"]["label_smoothing"] == 0.0  # smoothing would cap the confidence
    assert len(semi["pool_share_by_epoch"]) == summary["training"]["epochs_run"]
    assert semi["unlabeled"] == str(unlabeled.resolve())
    assert semi["steps"] == summary["training"]["epochs_run"] * 2  # 18 train images, batch 8
    assert 0.0 <= semi["mask_rate_last10pct"] <= 1.0
    assert card["config"]["unlabeled"] == str(unlabeled)
    assert lv.load(tmp_path / "run").model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_unusable_unlabeled_folder_is_refused_before_writing(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="--unlabeled folder .* holds no images.*at least 16"):
        lv.train(str(data), tmp_path / "run", unlabeled=str(tmp_path / "empty"), **FAST)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"--threshold 0.95 is out of reach: --label-smoothing "
                                          r"0.1 .* 0.933 .*3 classes"):
        lv.train(str(data), tmp_path / "run", unlabeled=str(flat_unlabeled(tmp_path / "u", 20)),
                 pseudo_labels="epoch", label_smoothing=0.1, threshold=0.95, **FAST)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="--threshold 1.5 is out of range"):
        lv.train(str(data), tmp_path / "run", unlabeled=str(tmp_path / "empty"), threshold=1.5,
                 **FAST)
