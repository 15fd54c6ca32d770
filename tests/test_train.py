"""The fit loop end to end on tiny generated folders: files, metrics, resume, guards."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST
from safetensors.torch import load_file

import leanvision as lv
from leanvision.errors import ConfigError, LeanvisionError
from leanvision.training import loop as loop_module
from leanvision.training.checkpoint import load_checkpoint


def test_train_writes_a_complete_artifact(tiny_folder, tmp_path):
    out = tmp_path / "run"
    summary = lv.train(tiny_folder, out, **FAST)

    for name in ("model.safetensors", "model.json", "metrics.jsonl", "checkpoint.pt",
                 "config.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
    card = json.loads((out / "model.json").read_text())
    assert card["arch"] == "resnet8"
    assert card["classes"] == ["blue", "green", "red"]
    assert card["stage"] == "train" and card["parent"] is None
    assert card["input"]["size"] == [32, 32]
    assert card["config"]["epochs"] == 2 and card["config"]["optimizer"] == "adamw"
    metrics = card["metrics"]
    assert set(metrics) >= {"train", "val", "params", "flops", "size_bytes", "fit"}
    assert metrics["val"]["n"] == 9  # 25% of 12 per class, stratified
    assert len(metrics["val"]["confusion"]) == 3
    assert 0.0 <= metrics["val"]["ece"] <= 1.0
    assert summary["metrics"]["val"]["top1"] == metrics["val"]["top1"]
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert {"train_loss", "val_top1", "ema_val_top1", "lr", "data_wait_fraction"} <= set(epochs[0])


def test_training_learns_separable_classes(tmp_path):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=24)
    summary = lv.train(data, tmp_path / "run", model="resnet8", epochs=6, batch_size=16,
                       progress=False, val_fraction=0.25)
    assert summary["metrics"]["val"]["top1"] >= 0.9
    assert summary["metrics"]["fit"]["verdict"] in ("good fit", "overfitting", "underfitting")


@pytest.mark.parametrize("settings,kill_after", [
    (dict(FAST, epochs=4, augment="strong", mixup=0.2), 1),
    # the fast recipe: lookahead (active from epoch 4), triangle schedule, whitening, TTA
    (dict(FAST, model="airnet_s", recipe="fast", epochs=6), 3),
], ids=["standard", "fast"])
def test_resume_after_kill_gives_identical_weights(tiny_folder, tmp_path, monkeypatch,
                                                   settings, kill_after):
    lv.train(tiny_folder, tmp_path / "straight", **settings)

    real_save = loop_module.save_checkpoint

    def save_then_die(folder, state):
        real_save(folder, state)
        if state["epoch"] == kill_after:  # 0-based: the process "dies" right after it
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        lv.train(tiny_folder, tmp_path / "killed", **settings)
    assert not (tmp_path / "killed" / "model.json").exists()
    monkeypatch.setattr(loop_module, "save_checkpoint", real_save)
    lv.train(resume=tmp_path / "killed", progress=False)

    a = load_checkpoint(tmp_path / "straight")
    b = load_checkpoint(tmp_path / "killed")
    assert a["epoch"] == b["epoch"] == settings["epochs"] - 1
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    wa = load_file(tmp_path / "straight" / "model.safetensors")
    wb = load_file(tmp_path / "killed" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_changed_settings(tiny_folder, tmp_path):
    lv.train(tiny_folder, tmp_path / "run", **FAST)
    with pytest.raises(ConfigError, match="only --epochs may change"):
        lv.train(resume=tmp_path / "run", lr=0.5)
    with pytest.raises(ConfigError, match="fewer than"):
        lv.train(resume=tmp_path / "run", epochs=1)


def test_existing_run_folder_is_not_overwritten(tiny_folder, tmp_path):
    lv.train(tiny_folder, tmp_path / "run", **FAST)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        lv.train(tiny_folder, tmp_path / "run", **FAST)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_divergence_keeps_last_good_weights(tiny_folder, tmp_path, monkeypatch):
    real_ce = loop_module.F.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, target, **kw):
        loss = real_ce(logits, target, **kw)
        if kw.get("reduction") != "sum":  # only the training loss, not validation
            calls["n"] += 1
            if calls["n"] > 6:  # epoch 1 has 3 steps, so epoch 3 diverges
                return loss * float("nan")
        return loss

    monkeypatch.setattr(loop_module.F, "cross_entropy", poisoned)
    summary = lv.train(tiny_folder, tmp_path / "run", **dict(FAST, epochs=4))
    assert "loss became nan" in summary["training"]["stopped"]
    assert summary["training"]["epochs_run"] == 2
    state = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(t.float()).all() for t in state.values())


def test_divergence_in_first_epoch_is_a_clear_error(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(loop_module.F, "cross_entropy",
                        lambda logits, target, **kw: logits.sum() * float("nan"))
    with pytest.raises(LeanvisionError, match="Lower --lr"):
        lv.train(tiny_folder, tmp_path / "run", **FAST)


@pytest.mark.parametrize("optimizer,schedule", [
    ("sgd", "step"), ("momentum", "onecycle"), ("adagrad", "plateau"), ("rmsprop", "constant"),
    ("adadelta", "cosine"), ("adam", "onecycle"), ("adamw", "plateau"),
])
def test_every_optimizer_and_schedule_trains(tiny_folder, tmp_path, optimizer, schedule):
    summary = lv.train(tiny_folder, tmp_path / "run", **dict(
        FAST, optimizer=optimizer, schedule=schedule, epochs=2, ema=False, grad_clip=1.0,
        l1=1e-5, dropout=0.1, warmup_epochs=0.5))
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["config"]["optimizer"] == optimizer and card["config"]["schedule"] == schedule
    assert summary["training"]["epochs_run"] == 2


def test_user_settings_are_never_rewritten(tiny_folder, tmp_path):
    lv.train(tiny_folder, tmp_path / "run", **dict(FAST, lr=0.0123, optimizer="adam"))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["lr"] == 0.0123 and config["config"]["optimizer"] == "adam"
    assert not any(note.startswith(("lr ", "optimizer ")) for note in config["recipe_notes"])


def test_balanced_sampler_and_class_weights(tmp_path):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=4)
    make_image_folder(tmp_path / "data", per_class=20, classes={"red": (200, 30, 30)})
    for balance in ("loss", "sampler"):
        summary = lv.train(data, tmp_path / balance, **dict(FAST, balance=balance))
        assert summary["training"]["epochs_run"] == 2


def test_early_stopping_stops(tiny_folder, tmp_path):
    summary = lv.train(tiny_folder, tmp_path / "run",
                       **dict(FAST, epochs=30, early_stop=1, lr=1e-6, optimizer="sgd"))
    assert summary["training"]["epochs_run"] < 30
    assert "early stop" in summary["training"]["stopped"]


def test_config_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--optimizer 'adamm'.*did you mean 'adam'"):
        lv.TrainConfig(optimizer="adamm")
    with pytest.raises(ConfigError, match="--lr -1"):
        lv.TrainConfig(lr=-1)
    with pytest.raises(ConfigError, match="unknown training setting 'epoch'.*'epochs'"):
        lv.TrainConfig.from_dict({"epoch": 3})
