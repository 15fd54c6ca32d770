"""The fast (airbench-style) recipe's parts: AirNet's hooks, lookahead, the triangle schedule,
test-time augmentation, and the recipe's choice and settings."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_image_folder

import leanvision as lv
from leanvision.models.finetune import param_groups
from leanvision.training.config import TrainConfig
from leanvision.training.lookahead import Lookahead
from leanvision.training.optim import LRController
from leanvision.training.recipe import DataStats, resolve_recipe
from leanvision.tta import tta_logits


def test_whitening_init_decorrelates_patches():
    torch.manual_seed(0)
    model = lv.create_model("airnet_s", 10)
    # Strongly correlated channels: the whitening layer must undo that.
    base = torch.randn(64, 1, 32, 32)
    images = torch.cat([base, base + 0.1 * torch.randn_like(base), -base], dim=1)
    model.init_from_data(images)
    out = torch.nn.functional.conv2d(images, model.whiten.weight[:12])
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = flat @ flat.T / flat.shape[1]
    off_diagonal = cov - torch.diag(torch.diag(cov))
    assert off_diagonal.abs().max() < 0.05
    big = torch.diag(cov)[torch.diag(cov) > 0.5]
    assert len(big) >= 3 and torch.allclose(big, torch.ones_like(big), atol=0.1)


def test_airnet_keeps_its_frozen_parameters_under_full_finetune():
    model = lv.create_model("airnet_s", 10)
    built_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "whiten.weight" in built_frozen and "stages.0.norm1.weight" in built_frozen
    groups = param_groups(model, "full", lr=0.1, weight_decay=1e-3, keep_frozen=built_frozen)
    trainable = {id(p) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert all(id(named[n]) not in trainable and not named[n].requires_grad
               for n in built_frozen)
    model.epoch_start(0)
    assert model.whiten.bias.requires_grad
    model.epoch_start(3)
    assert not model.whiten.bias.requires_grad


def test_lookahead_averages_and_copies_back():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    look = Lookahead(total_steps=100)
    look.step(model, epoch=0, global_step=5)  # before the start epoch: nothing
    assert look.average is None
    look.step(model, epoch=3, global_step=5)  # first call: snapshot
    with torch.no_grad():
        model.weight.fill_(1.0)
    look.step(model, epoch=3, global_step=7)  # not a multiple of 5: nothing
    assert torch.all(model.weight == 1.0)
    look.step(model, epoch=3, global_step=50)
    decay = 0.95**5 * 0.5**3
    assert torch.allclose(model.weight, torch.full_like(model.weight, 1 - decay))
    assert torch.equal(look.average["weight"], model.weight)


def test_triangle_schedule_shape():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    ctl = LRController(opt, "triangle", epochs=10, steps_per_epoch=10, warmup_epochs=0)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(99):
        opt.step()
        ctl.step_batch()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.2)
    assert max(lrs) == pytest.approx(1.0, abs=0.01)
    assert lrs.index(max(lrs)) in range(21, 25)
    assert lrs[-1] == pytest.approx(0.07, abs=0.01)


def test_tta_modes_average_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.LazyLinear(5)).eval()
    x = torch.randn(2, 3, 8, 8)
    plain = tta_logits(model, x, "none")
    flip = tta_logits(model, x, "flip")
    assert torch.allclose(flip, (model(x) + model(x.flip(-1))) / 2)
    both = tta_logits(model, x, "flip-translate")
    assert both.shape == plain.shape and not torch.allclose(both, flip)
    symmetric = x + x.flip(-1)  # a mirror-symmetric image: flip TTA changes nothing
    assert torch.allclose(tta_logits(model, symmetric, "flip"), model(symmetric), atol=1e-6)


def test_fast_recipe_is_chosen_for_cifar_sized_data_only():
    cifar = DataStats(n_train=45_000, num_classes=10, median_side=32)
    cfg, notes = resolve_recipe(TrainConfig(), cifar)
    assert cfg.recipe == "fast" and cfg.model == "airnet_m" and cfg.batch_size == 512
    assert cfg.epochs == 15  # 1261 steps at 87 steps per epoch, rounded up
    assert cfg.schedule == "triangle" and cfg.lookahead and not cfg.ema
    assert cfg.tta == "flip-translate" and cfg.label_smoothing == 0.2
    assert cfg.lr == pytest.approx(0.75)  # airbench's 1.5 per 1024 examples, at batch 512
    assert notes[0] == "recipe = fast (chosen from the data)"
    digits = DataStats(n_train=1617, num_classes=10, median_side=8)
    assert resolve_recipe(TrainConfig(), digits)[0].recipe == "standard"
    chosen, _ = resolve_recipe(TrainConfig(model="resnet20"), cifar)
    assert chosen.recipe == "standard"
    own_optimizer, _ = resolve_recipe(TrainConfig(optimizer="adam"), cifar)
    assert own_optimizer.recipe == "standard" and own_optimizer.momentum == 0.9
    forced, _ = resolve_recipe(TrainConfig(recipe="fast", batch_size=256), digits)
    assert forced.batch_size == 256 and forced.lr == pytest.approx(1.5 / 4)


def test_fast_recipe_trains_and_eval_reproduces_tta(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=16)
    out = tmp_path / "run"
    summary = lv.train(data, out, recipe="fast", model="airnet_s", epochs=4, batch_size=16,
                       progress=False, val_fraction=0.25)
    card = json.loads((out / "model.json").read_text())
    assert card["arch"] == "airnet_s" and card["inference"]["tta"] == "flip-translate"
    assert card["config"]["lookahead"] is True
    result = lv.evaluate(out, split="val")
    assert result["metrics"]["top1"] == pytest.approx(summary["metrics"]["val"]["top1"])
    assert result["metrics"]["loss"] == pytest.approx(summary["metrics"]["val"]["loss"],
                                                      abs=1e-5)
    state = lv.load(out).model.state_dict()
    assert state["whiten.weight"].abs().sum() > 0  # set from the data, not left at init


def test_norm_lr_scale_applies_to_norm_layers_only():
    from leanvision.training.param_setup import scale_norm_lr

    model = lv.create_model("airnet_s", 10)
    groups = scale_norm_lr(model, param_groups(model, "full", lr=1.0, weight_decay=0.0), 64.0)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(model.stages[0].norm1.bias)] == 64.0
    assert lr_of[id(model.whiten.bias)] == 1.0  # a bias, but not a norm layer's
    assert lr_of[id(model.head.weight)] == 1.0
