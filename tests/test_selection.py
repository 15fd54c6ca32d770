"""Which epoch's weights a run keeps: the final ones unless an earlier epoch beat them on
validation by more than the split's sampling noise."""

from __future__ import annotations

import json

import torch
from conftest import FAST
from safetensors.torch import load_file

import leanvision as lv
from leanvision.training import loop as loop_module
from leanvision.training.loop import prefer_final


def _nets():
    torch.manual_seed(0)
    return {"model": torch.nn.Linear(2, 2), "ema": torch.nn.Linear(2, 2)}


def test_final_epoch_wins_a_gap_inside_the_noise():
    nets = _nets()
    best = {"top1": 0.815, "epoch": 18, "source": "model"}
    last = {"epoch": 24, "val_top1": 0.7975, "ema_val_top1": 0.70}
    chosen, state, note = prefer_final(best, {"w": torch.zeros(1)}, last, 400, nets)
    assert chosen == {"top1": 0.7975, "epoch": 24, "source": "model"}
    assert torch.equal(state["weight"], nets["model"].weight)
    assert "epoch 18" in note and "400 images" in note


def test_earlier_epoch_kept_when_clearly_better():
    best = {"top1": 0.90, "epoch": 3, "source": "model"}
    last = {"epoch": 10, "val_top1": 0.85, "ema_val_top1": 0.84}
    kept = {"w": torch.ones(1)}
    # 5 points on 400 images is 2.8 standard errors: a real difference.
    assert prefer_final(best, kept, last, 400, _nets()) == (best, kept, None)
    # The same gap on 40 images is noise.
    assert prefer_final(best, kept, last, 40, _nets())[0]["epoch"] == 10


def test_the_better_final_candidate_is_taken():
    nets = _nets()
    best = {"top1": 0.80, "epoch": 1, "source": "model"}
    last = {"epoch": 2, "val_top1": 0.70, "ema_val_top1": 0.78}
    chosen, state, _ = prefer_final(best, {}, last, 100, nets)
    assert chosen["source"] == "ema"
    assert torch.equal(state["weight"], nets["ema"].weight)


def _scripted_validation(monkeypatch, scores):
    calls = iter(scores)

    def fake(net, *args, **kwargs):
        return 1.0, next(calls)

    monkeypatch.setattr(loop_module, "quick_validate", fake)


def _final_weights(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def test_run_keeps_final_weights_within_noise(tiny_folder, tmp_path, monkeypatch):
    # (model, ema) per epoch; 9 validation images: a standard error of about 12 points.
    _scripted_validation(monkeypatch, [0.9, 0.1, 0.85, 0.1])
    out = tmp_path / "run"
    summary = lv.train(tiny_folder, out, **FAST)
    assert summary["training"]["best_epoch"] == 2
    assert "within the validation noise" in summary["training"]["selection"][0]
    kept = load_file(out / "model.safetensors")
    final = _final_weights(out)
    assert all(torch.equal(kept[k], final[k]) for k in kept)
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["selection"] == summary["training"]["selection"]


def test_run_keeps_a_clearly_better_earlier_epoch(tiny_folder, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.9, 0.1, 0.2, 0.1])
    out = tmp_path / "run"
    summary = lv.train(tiny_folder, out, **FAST)
    # no selection rule overrode epoch 1; the only note may be the scripted score's precision
    rules = [s for s in summary["training"]["selection"] if "while training and" not in s]
    assert summary["training"]["best_epoch"] == 1 and rules == []
    kept = load_file(out / "model.safetensors")
    final = _final_weights(out)
    assert not all(torch.equal(kept[k], final[k]) for k in kept)
