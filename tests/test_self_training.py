"""Self-training with a teacher (`train --unlabeled DIR --pseudo-labels teacher`): the teacher's
confident labels join the training set, students are trained round after round, and a teacher
that cannot serve is refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FAST, make_image_folder
from test_semi import flat_unlabeled

import leanvision as lv
from leanvision.artifact import Artifact
from leanvision.data.unlabeled import load_unlabeled
from leanvision.errors import ConfigError, DatasetError
from leanvision.hardware import choose_hardware
from leanvision.training.semi.self_training import pseudo_label, select_confident

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pseudo_label_gives_the_teachers_class_and_confidence():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    with torch.no_grad():  # class 1 for bright images, class 0 for dark ones
        model[1].weight.zero_()
        model[1].weight[1].fill_(0.5)
        model[1].bias.zero_()
    card = {"classes": ["a", "b"], "num_classes": 2,
            "input": {"size": [4, 4], "mean": [0.5] * 3, "std": [0.5] * 3}}
    teacher = Artifact(path=None, card=card, model=model)
    images = torch.stack([torch.full((3, 4, 4), v, dtype=torch.uint8) for v in (0, 128, 255)])
    labels, confidence = pseudo_label(teacher, images, choose_hardware("cpu", "fp32", False))
    assert labels.tolist() == [0, 1, 1]
    x = (torch.tensor([0, 128, 255]) / 255 - 0.5) / 0.5  # normalised; 48 inputs of weight 0.5
    expected = torch.stack([torch.zeros(3), 24 * x], 1).softmax(1).max(1).values.numpy()
    assert confidence == pytest.approx(expected, abs=2e-3)


def test_select_confident_keeps_each_classs_most_confident_share_above_the_floor():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    confidence = np.array([0.9, 0.5, 0.7, 0.6, 0.4, 0.8, 0.3])
    assert select_confident(labels, confidence, 0.5, 0.0, 3).tolist() == [0, 2, 5]
    # class 2's one image rounds to none at half; at a share of 1 the floor decides
    assert select_confident(labels, confidence, 1.0, 0.55, 3).tolist() == [0, 2, 3, 5]
    assert select_confident(labels, confidence, 1.0, 0.95, 3).tolist() == []


def test_self_training_trains_a_teacher_then_students_on_its_labels(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    unlabeled = flat_unlabeled(tmp_path / "unlabeled", 24)
    summary = lv.train(data, tmp_path / "run", unlabeled=unlabeled, pseudo_labels="teacher",
                       teacher_epochs=3, rounds=2, threshold=0.4, pseudo_share=1.0, **FAST)
    run = tmp_path / "run"
    card = json.loads((run / "model.json").read_text())
    block = card["semi_supervised"]
    assert block["method"] == "self-training" and block["images"] == 24
    assert block["threshold"] == 0.4 and block["pseudo_share"] == 1.0
    assert block["student_augment"] == "strong"
    teacher_dir, round1_dir = run / "self-training" / "teacher", run / "self-training" / "round1"
    assert [r["teacher"] for r in block["rounds"]] == [str(teacher_dir), str(round1_dir)]
    assert card["stage"] == "self-training" and card["parent"] == str(round1_dir)
    assert json.loads((round1_dir / "model.json").read_text())["parent"] == str(teacher_dir)
    assert lv.load(teacher_dir).card["config"]["epochs"] == 3
    assert card["config"]["augment"] == "strong"

    # Round 1's pseudo-labels are the teacher's confident predictions, no more, no fewer.
    teacher = lv.load(teacher_dir)
    images = load_unlabeled(unlabeled, teacher.input_size, min_images=1).images
    labels, confidence = pseudo_label(teacher, images, choose_hardware("cpu", "fp32", False))
    counts = np.bincount(labels[confidence >= 0.4], minlength=3)
    first = block["rounds"][0]
    assert list(first["per_class"].values()) == counts.tolist()
    assert first["pseudo_labelled"] == int(counts.sum()) > 0
    # The student trained on labelled + pseudo-labelled images, validated on labelled ones only.
    assert summary["metrics"]["train"]["n"] == 18 + block["rounds"][1]["pseudo_labelled"]
    assert summary["metrics"]["val"]["n"] == teacher.card["metrics"]["val"]["n"] == 6
    assert lv.load(run).model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_a_given_teacher_is_used_and_an_unusable_one_refused_before_writing(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    unlabeled = flat_unlabeled(tmp_path / "unlabeled", 20)
    teacher = lv.train(data, tmp_path / "teacher", **FAST)["artifact"]
    lv.train(data, tmp_path / "run", unlabeled=unlabeled, pseudo_labels="teacher",
             teacher=teacher, rounds=1, threshold=0.4, **FAST)
    block = json.loads((tmp_path / "run" / "model.json").read_text())["semi_supervised"]
    assert [r["teacher"] for r in block["rounds"]] == [str(teacher)]
    assert not (tmp_path / "run" / "self-training").exists()

    other = make_image_folder(tmp_path / "other", per_class=8,
                              classes={"x": (10, 10, 10), "y": (200, 200, 200)})
    with pytest.raises(ConfigError, match=r"--teacher .* classes \['blue', 'green', 'red'\], "
                                          r"the data has \['x', 'y'\]"):
        lv.train(other, tmp_path / "run2", unlabeled=unlabeled, pseudo_labels="teacher",
                 teacher=teacher, **FAST)
    with pytest.raises(ConfigError, match="labels none of the 20 unlabelled images with "
                                          "confidence >= 1; lower --threshold"):
        lv.train(data, tmp_path / "run2", unlabeled=unlabeled, pseudo_labels="teacher",
                 teacher=teacher, threshold=1.0, **FAST)
    assert not (tmp_path / "run2").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="--unlabeled folder .* holds no images"):
        lv.train(data, tmp_path / "run2", unlabeled=tmp_path / "empty", pseudo_labels="teacher",
                 **FAST)
    assert not (tmp_path / "run2").exists()  # refused before the teacher was trained
    with pytest.raises(ConfigError, match="--rounds 0 is out of range"):
        lv.train(data, tmp_path / "run2", unlabeled=unlabeled, pseudo_labels="teacher",
                 rounds=0, **FAST)


def test_cli_self_training_flags_reach_the_run(tmp_path):
    from test_cli import FAST_FLAGS, run_json

    data = make_image_folder(tmp_path / "data", per_class=8)
    unlabeled = flat_unlabeled(tmp_path / "unlabeled", 20)
    teacher = lv.train(data, tmp_path / "teacher", **FAST)["artifact"]
    summary = run_json("train", str(data), "--out", str(tmp_path / "run"), *FAST_FLAGS,
                       "--unlabeled", str(unlabeled), "--pseudo-labels", "teacher",
                       "--teacher", str(teacher), "--rounds", "1", "--pseudo-share", "0.5")
    block = json.loads((tmp_path / "run" / "model.json").read_text())["semi_supervised"]
    assert summary["ok"] and block["pseudo_share"] == 0.5 and len(block["rounds"]) == 1
    # half of each predicted class, rounded: never more than half the folder plus one per class
    assert 0 < block["rounds"][0]["pseudo_labelled"] <= 10 + 3


def test_unlabeled_defaults_to_self_training_and_refuses_the_other_methods_settings(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    unlabeled = flat_unlabeled(tmp_path / "unlabeled", 20)
    # FixMatch's mu would be ignored by the default method: refused with the fix, nothing written
    with pytest.raises(ConfigError, match=r"--mu applies to FixMatch \(--pseudo-labels "
                                          r"epoch\|step\), not to --pseudo-labels teacher: "
                                          r"drop --mu or pass --pseudo-labels epoch"):
        lv.train(data, tmp_path / "run", unlabeled=unlabeled, mu=2, **FAST)
    with pytest.raises(ConfigError, match=r"--pseudo-share applies to self-training .* not to "
                                          r"--pseudo-labels step: .* --pseudo-labels teacher"):
        lv.train(data, tmp_path / "run", unlabeled=unlabeled, pseudo_labels="step",
                 pseudo_share=0.3, **FAST)
    assert not (tmp_path / "run").exists()
    # without --unlabeled neither family's settings are read, so neither is refused
    assert lv.TrainConfig(mu=2, rounds=3).pseudo_labels == "teacher"
