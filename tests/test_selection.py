"""Which epoch's weights a run keeps: the final ones unless the paired comparison with an
earlier epoch, image by image on validation, shows them surely worse (95% interval above 0)."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import FAST
from safetensors.torch import load_file

import leanvision as lv
from leanvision.training import loop as loop_module
from leanvision.training.epoch_scoring import prefer_final


def _nets():
    torch.manual_seed(0)
    return {"model": torch.nn.Linear(2, 2), "ema": torch.nn.Linear(2, 2)}


EARLIER = {"weight": torch.full((2, 2), 7.0), "bias": torch.zeros(2)}


def _predictions(n: int, lost: int, gained: int, both_wrong: int = 0):
    """(labels, the earlier weights' predictions, the final's) on `n` images: the final loses
    `lost` images the earlier got right and gains `gained` it got wrong."""
    labels = np.zeros(n, dtype=np.int64)
    earlier, final = labels.copy(), labels.copy()
    final[:lost] = 1
    earlier[lost:lost + gained] = 1
    earlier[lost + gained:lost + gained + both_wrong] = 1
    final[lost + gained:lost + gained + both_wrong] = 1
    return labels, earlier, final


def _predict(earlier, final):
    def predict(net):  # the earlier epoch's weights are the only ones full of sevens
        return earlier if torch.all(net.weight == 7.0) else final
    return predict


def test_final_epoch_wins_a_gap_inside_the_noise():
    nets = _nets()
    # 400 images: the earlier epoch right on 326 (81.5%), the final on 319 (79.75%).
    labels, earlier, final = _predictions(400, lost=18, gained=11, both_wrong=63)
    best = {"top1": 0.815, "epoch": 18, "source": "model"}
    last = {"epoch": 24, "val_top1": 0.7975, "ema_val_top1": 0.70}
    chosen, state, note = prefer_final(best, EARLIER, last, nets, _predict(earlier, final),
                                       labels)
    assert chosen == {"top1": 0.7975, "epoch": 24, "source": "model"}
    assert torch.equal(state["weight"], nets["model"].weight)
    assert "epoch 18" in note and "within the validation noise" in note
    assert "18 images lost, 11 gained" in note and "95% interval" in note


def test_earlier_epoch_kept_when_surely_better():
    best = {"top1": 0.90, "epoch": 3, "source": "model"}
    last = {"epoch": 10, "val_top1": 0.85, "ema_val_top1": 0.84}
    # 5 points on 400 images, 25 lost and 5 gained: the final weights are surely worse.
    labels, earlier, final = _predictions(400, lost=25, gained=5)
    chosen, state, note = prefer_final(best, EARLIER, last, _nets(), _predict(earlier, final),
                                       labels)
    assert (chosen, state) == (best, EARLIER)
    assert note.startswith("kept epoch 3's weights") and "25 images lost, 5 gained" in note
    # The same share on 40 images (3 lost, 1 gained) is noise.
    labels, earlier, final = _predictions(40, lost=3, gained=1)
    chosen, _, note = prefer_final(best, EARLIER, last, _nets(), _predict(earlier, final),
                                   labels)
    assert chosen["epoch"] == 10 and "within the validation noise" in note


def test_paired_decision_is_tighter_than_two_accuracies():
    # A 1.5-point gap on 400 images is inside the final accuracy's standard error (1.6
    # points), but 6 images lost and none gained is not luck: the paired comparison keeps
    # the earlier weights.
    best = {"top1": 0.90, "epoch": 5, "source": "model"}
    last = {"epoch": 8, "val_top1": 0.885}
    labels, earlier, final = _predictions(400, lost=6, gained=0, both_wrong=40)
    chosen, _, _ = prefer_final(best, EARLIER, last, {"model": _nets()["model"]},
                                _predict(earlier, final), labels)
    assert chosen["epoch"] == 5


def test_the_better_final_candidate_is_taken():
    nets = _nets()
    best = {"top1": 0.80, "epoch": 1, "source": "model"}
    last = {"epoch": 2, "val_top1": 0.70, "ema_val_top1": 0.78}
    labels, earlier, final = _predictions(100, lost=3, gained=1, both_wrong=18)
    chosen, state, _ = prefer_final(best, EARLIER, last, nets, _predict(earlier, final), labels)
    assert chosen["source"] == "ema"
    assert torch.equal(state["weight"], nets["ema"].weight)


def _scripted_validation(monkeypatch, scores):
    calls = iter(scores)

    def fake(net, *args, **kwargs):
        return 1.0, next(calls)

    monkeypatch.setattr(loop_module, "quick_validate", fake)


def _scripted_predictions(monkeypatch, final_wrong: int):
    """The earlier weights right on every validation image, the final wrong on the first
    `final_wrong` (prefer_final scores the earlier weights first)."""
    calls = iter(["earlier", "final"])

    def fake(net, data, *args, **kwargs):
        labels = data.labels.cpu().numpy().copy()
        if next(calls) == "final":
            labels[:final_wrong] = (labels[:final_wrong] + 1) % 3
        return labels

    monkeypatch.setattr(loop_module, "val_predictions", fake)


def _final_weights(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def test_run_keeps_final_weights_within_noise(tiny_folder, tmp_path, monkeypatch):
    # (model, ema) per epoch; 9 validation images: a standard error of about 12 points.
    _scripted_validation(monkeypatch, [0.9, 0.1, 0.85, 0.1])
    _scripted_predictions(monkeypatch, final_wrong=1)
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
    _scripted_predictions(monkeypatch, final_wrong=9)
    out = tmp_path / "run"
    summary = lv.train(tiny_folder, out, **FAST)
    assert summary["training"]["best_epoch"] == 1
    assert summary["training"]["selection"][0].startswith("kept epoch 1's weights")
    kept = load_file(out / "model.safetensors")
    final = _final_weights(out)
    assert not all(torch.equal(kept[k], final[k]) for k in kept)
