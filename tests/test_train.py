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


# The torch class each --optimizer builds, and whether it carries momentum.
OPTIMIZER_CLASSES = {
    "sgd": (torch.optim.SGD, False), "momentum": (torch.optim.SGD, True),
    "adagrad": (torch.optim.Adagrad, False), "rmsprop": (torch.optim.RMSprop, True),
    "adadelta": (torch.optim.Adadelta, False), "adam": (torch.optim.Adam, False),
    "adamw": (torch.optim.AdamW, False),
}


def _record_optimizer_and_rates(monkeypatch) -> tuple[list, list[float]]:
    """The optimizer the fit loop builds, and the learning rate each batch ran at."""
    made: list[torch.optim.Optimizer] = []
    rates: list[float] = []
    real_build, real_controller = loop_module.build_optimizer, loop_module.LRController

    def build(*args, **kwargs):
        made.append(real_build(*args, **kwargs))
        return made[-1]

    class Recording(real_controller):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            rates.append(made[-1].param_groups[0]["lr"])  # the first batch's rate

        def step_batch(self) -> None:
            super().step_batch()
            rates.append(made[-1].param_groups[0]["lr"])

    monkeypatch.setattr(loop_module, "build_optimizer", build)
    monkeypatch.setattr(loop_module, "LRController", Recording)
    return made, rates


@pytest.mark.parametrize("optimizer,schedule", [
    ("sgd", "step"), ("momentum", "onecycle"), ("adagrad", "plateau"), ("rmsprop", "constant"),
    ("adadelta", "cosine"), ("adam", "onecycle"), ("adamw", "plateau"),
])
def test_every_optimizer_and_schedule_trains(tiny_folder, tmp_path, monkeypatch, optimizer,
                                             schedule):
    made, rates = _record_optimizer_and_rates(monkeypatch)
    summary = lv.train(tiny_folder, tmp_path / "run", **dict(
        FAST, optimizer=optimizer, schedule=schedule, epochs=2, ema=False, grad_clip=1.0,
        l1=1e-5, dropout=0.1, warmup_epochs=0.5))
    assert summary["training"]["epochs_run"] == 2
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    lr, gamma = card["config"]["lr"], card["config"]["gamma"]
    # the optimizer named is the one that ran, and it took steps
    (opt,) = made
    cls, with_momentum = OPTIMIZER_CLASSES[optimizer]
    assert type(opt) is cls
    if cls is torch.optim.SGD:
        assert (opt.defaults["momentum"] > 0) == with_momentum
    # the rate follows the schedule named
    rates = rates[:-1]  # the last entry is the rate after the final batch
    per_epoch = len(rates) // 2
    warmup = round(0.5 * per_epoch)
    assert len(rates) == 2 * per_epoch and per_epoch >= 2
    close = lambda a, b: abs(a - b) <= 1e-6 * max(abs(b), 1e-12)  # noqa: E731
    assert close(max(rates), lr) or schedule == "onecycle" and max(rates) <= lr * (1 + 1e-6)
    if schedule == "step":  # full rate until one epoch after warm-up, then gamma times it
        drop = warmup + per_epoch  # StepLR counts its epoch from the end of warm-up
        assert close(rates[drop - 1], lr) and close(rates[drop], lr * gamma)
        assert all(close(r, lr * gamma) for r in rates[drop:])
    elif schedule == "onecycle":  # up from lr/25 to a peak inside the run, then far below
        peak = rates.index(max(rates))
        assert 0 < peak < len(rates) - 1 and max(rates) > 0.9 * lr
        assert rates[0] < lr / 10 and rates[-1] < rates[0]
    elif schedule == "cosine":  # warm-up to lr, then falling at every step
        after = rates[warmup:]
        assert close(after[0], lr)
        assert all(b < a for a, b in zip(after, after[1:], strict=False))
        assert rates[-1] < 0.5 * lr
    else:  # constant, and plateau (no plateau within 2 epochs): warm-up, then flat at lr
        assert rates[0] < lr / 10
        assert all(close(r, lr) for r in rates[warmup:])


def test_user_settings_are_never_rewritten(tiny_folder, tmp_path):
    lv.train(tiny_folder, tmp_path / "run", **dict(FAST, lr=0.0123, optimizer="adam"))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["lr"] == 0.0123 and config["config"]["optimizer"] == "adam"
    assert not any(note.startswith(("lr ", "optimizer ")) for note in config["recipe_notes"])


def test_balanced_sampler_and_class_weights(tmp_path, monkeypatch):
    """red has 20 images, the other classes 4 each: `loss` weights the rare classes up in the
    loss the loop computes, `sampler` draws them more often than their share of the data."""
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=4)
    make_image_folder(tmp_path / "data", per_class=20, classes={"red": (200, 30, 30)})
    labels: list[torch.Tensor] = []
    drawn: list[torch.Tensor] = []
    loss_weights: list[torch.Tensor | None] = []
    real_epoch, real_order = loop_module._train_epoch, loop_module.epoch_order
    real_cross_entropy = torch.nn.functional.cross_entropy

    def train_epoch(run, batches, *args, **kwargs):
        labels.append(batches.labels.cpu())
        return real_epoch(run, batches, *args, **kwargs)

    def epoch_order(*args, **kwargs):
        drawn.append(real_order(*args, **kwargs).cpu())
        return drawn[-1]

    def cross_entropy(*args, weight=None, **kwargs):
        loss_weights.append(None if weight is None else weight.detach().cpu())
        return real_cross_entropy(*args, weight=weight, **kwargs)

    monkeypatch.setattr(loop_module, "_train_epoch", train_epoch)
    monkeypatch.setattr(loop_module, "epoch_order", epoch_order)
    monkeypatch.setattr(loop_module.F, "cross_entropy", cross_entropy)
    for balance in ("loss", "sampler"):
        for record in (labels, drawn, loss_weights):
            record.clear()
        summary = lv.train(data, tmp_path / balance, **dict(FAST, balance=balance))
        assert summary["training"]["epochs_run"] == 2
        red = json.loads((tmp_path / balance / "model.json").read_text())["classes"].index("red")
        rare = labels[0] != red
        assert 0 < rare.float().mean() < 0.5  # red is the majority of the training split
        if balance == "loss":
            weights = [w for w in loss_weights if w is not None]
            assert weights, "the loss never received class weights"
            others = [c for c in range(len(weights[0])) if c != red]
            assert all(w[c] > 1.5 * w[red] for w in weights for c in others)
        else:
            assert all(w is None for w in loss_weights)
            share_in_data = rare.float().mean().item()
            share_drawn = rare[torch.cat(drawn)].float().mean().item()
            assert share_drawn > share_in_data + 0.2, (share_drawn, share_in_data)


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
