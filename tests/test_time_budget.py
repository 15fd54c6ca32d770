"""--time-budget for whole-network training: epochs sized from a measured step, a budget that
cannot hold one epoch refused before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

import leanvision as lv
from leanvision.errors import ConfigError
from leanvision.hardware import choose_hardware
from leanvision.models import create_model
from leanvision.training import budget
from leanvision.training.throughput import Rate


def test_timing_a_step_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = create_model("resnet8", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hw = choose_hardware("cpu", "fp32", False)
    rate = budget.seconds_per_train_image(model, (16, 16), 4, hw, 3)
    assert rate.planning > 0 and rate.fastest <= rate.planning and len(rate.rounds) >= 2
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_budget_cuts_epochs_and_says_so(tiny_folder, tmp_path, monkeypatch):
    # A fixed measured speed makes the sizing deterministic: 1 s per image, 28 train and
    # 8 validation images (3 classes x 12, 20% held out).
    monkeypatch.setattr(budget, "seconds_per_train_image", lambda *a, **k: Rate([1.0, 1.0], True))
    epoch_s = budget.EPOCH_MARGIN * 1.0 * (28 + budget.VAL_SHARE_OF_STEP * 8)
    minutes = 2.5 * epoch_s / 60 / (1 - budget.FINAL_SHARE)  # room for two epochs
    out = tmp_path / "run"
    lv.train(tiny_folder, out, model="resnet8", epochs=6, val_fraction=0.2, progress=False,
             time_budget=minutes)
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["epochs_run"] == 2
    assert card["config"]["epochs"] == 2
    assert "2 of the recipe's 6 epochs fit" in card["training"]["time_budget"]["budget_note"]


def test_a_budget_below_one_epoch_is_refused_before_writing(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "seconds_per_train_image", lambda *a, **k: Rate([60.0, 60.0], True))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"cannot fit one training epoch.*pass --time-budget "
                                          r"\d+"):
        lv.train(tiny_folder, out, model="resnet8", epochs=3, progress=False, time_budget=1)
    assert not (out / "model.json").exists() and not (out / "config.json").exists()


def test_a_budget_that_holds_every_epoch_changes_nothing(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "seconds_per_train_image", lambda *a, **k: Rate([1e-4, 1e-4], True))
    out = tmp_path / "run"
    lv.train(tiny_folder, out, model="resnet8", epochs=3, progress=False, time_budget=10)
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["epochs_run"] == 3
    assert "budget_note" not in card["training"]["time_budget"]


def test_a_budget_that_cuts_nothing_leaves_the_weights_unchanged(tiny_folder, tmp_path):
    # The timing step runs dropout and draws random images: the seeded stream must not move.
    common = dict(model="resnet8", epochs=2, dropout=0.3, progress=False)
    lv.train(tiny_folder, tmp_path / "plain", **common)
    lv.train(tiny_folder, tmp_path / "budget", time_budget=30, **common)
    plain = (tmp_path / "plain" / "model.safetensors").read_bytes()
    assert (tmp_path / "budget" / "model.safetensors").read_bytes() == plain
