"""Distillation: the KD and DKD losses, and the distill stage end to end on tiny folders."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, make_image_folder

import leanvision as lv
from leanvision.compress.distill import (
    DistillConfig,
    DistillCriterion,
    Preprocess,
    cache_teacher_logits,
    distill,
    run_teacher,
    teacher_input,
)
from leanvision.data import normalize
from leanvision.errors import ConfigError, ModelError
from leanvision.hardware import choose_hardware
from leanvision.training.losses import dkd_loss, dkd_terms, kd_loss

STUDENT_FAST = {k: v for k, v in FAST.items() if k != "model"}


# --- losses ---------------------------------------------------------------------------------

def test_kd_is_zero_when_student_matches_teacher():
    logits = torch.randn(5, 4)
    targets = torch.tensor([0, 1, 2, 3, 0])
    assert kd_loss(logits, logits.clone(), targets, temperature=4.0, alpha=1.0).item() == \
        pytest.approx(0.0, abs=1e-6)
    # with alpha < 1 only the label term is left
    ce = F.cross_entropy(logits, targets)
    assert kd_loss(logits, logits, targets, 4.0, 0.5).item() == pytest.approx(0.5 * ce.item(),
                                                                              rel=1e-5)


def test_kd_gradient_moves_student_toward_teacher():
    torch.manual_seed(0)
    teacher = torch.randn(8, 5) * 3
    student = torch.randn(8, 5, requires_grad=True)
    targets = torch.zeros(8, dtype=torch.long)

    def divergence(s: torch.Tensor) -> float:
        return F.kl_div(F.log_softmax(s / 4, 1), F.softmax(teacher / 4, 1),
                        reduction="batchmean").item()

    before = divergence(student.detach())
    kd_loss(student, teacher, targets, temperature=4.0, alpha=1.0).backward()
    after = divergence(student.detach() - 0.5 * student.grad)
    assert after < before
    # the soft-target gradient is T * (p_student - p_teacher) / B (Hinton's T^2 scaling)
    expected = 4.0 * (F.softmax(student.detach() / 4, 1) - F.softmax(teacher / 4, 1)) / 8
    assert torch.allclose(student.grad, expected, atol=1e-6)


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_dkd_matches_a_hand_computation():
    s, t, target, temp = [1.0, 2.0, 0.5], [3.0, 0.5, -1.0], 0, 2.0
    ps, pt = _softmax([v / temp for v in s]), _softmax([v / temp for v in t])
    tckd = _kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]]) * temp ** 2
    nckd = _kl(_softmax([t[1] / temp, t[2] / temp]), _softmax([s[1] / temp, s[2] / temp]))
    nckd *= temp ** 2
    ce = -math.log(_softmax(s)[0])

    st, tt = torch.tensor([s], dtype=torch.float64), torch.tensor([t], dtype=torch.float64)
    y = torch.tensor([target])
    got_tckd, got_nckd = dkd_terms(st, tt, y, temp)
    assert got_tckd.item() == pytest.approx(tckd, rel=1e-9)
    assert got_nckd.item() == pytest.approx(nckd, rel=1e-9)
    loss = dkd_loss(st, tt, y, alpha=1.0, beta=8.0, temperature=temp)
    assert loss.item() == pytest.approx(ce + tckd + 8.0 * nckd, rel=1e-9)
    # plain KD decomposes as TCKD + (1 - p_t) * NCKD (the paper's equation 7)
    kd = _kl(pt, ps) * temp ** 2
    assert kd == pytest.approx(tckd + (1 - pt[0]) * nckd, rel=1e-9)
    half = dkd_loss(st, tt, y, alpha=1.0, beta=8.0, temperature=temp, warmup=0.5)
    assert half.item() == pytest.approx(ce + 0.5 * (tckd + 8.0 * nckd), rel=1e-9)


def test_losses_accept_soft_targets():
    torch.manual_seed(1)
    s, t = torch.randn(6, 3), torch.randn(6, 3)
    hard = torch.tensor([0, 1, 2, 2, 1, 0])
    one_hot = F.one_hot(hard, 3).float()
    assert torch.allclose(kd_loss(s, t, one_hot, 4.0, 0.7), kd_loss(s, t, hard, 4.0, 0.7))
    mixed = 0.7 * one_hot + 0.3 * one_hot.roll(1, 0)
    assert torch.isfinite(kd_loss(s, t, mixed, 4.0, 0.7, label_smoothing=0.1))
    # DKD splits at one class: the argmax of the mixed label
    assert torch.allclose(dkd_loss(s, t, mixed, 1.0, 8.0, 4.0), dkd_loss(s, t, hard, 1.0, 8.0, 4.0))


def test_dkd_criterion_warms_up_over_steps():
    torch.manual_seed(2)
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    hw = choose_hardware("cpu", "fp32")
    pre = Preprocess((8, 8), (0.5,) * 3, (0.25,) * 3)
    idx = torch.arange(4)
    crit = DistillCriterion(torch.nn.Identity(), DistillConfig(loss="dkd"), student=pre,
                            teacher_pre=pre, hw=hw, warmup_steps=4, cache=t)
    losses = [crit(s, y, torch.zeros(4, 3, 8, 8), idx).item() for _ in range(5)]
    for step, got in enumerate(losses, start=1):
        want = dkd_loss(s, t, y, 1.0, 8.0, 4.0, warmup=min(1.0, step / 4))
        assert got == pytest.approx(want.item(), rel=1e-6)
    assert crit.teacher_batches == 0  # every step read the cache


def test_config_errors_name_the_flag():
    for kwargs, flag in [({"temperature": 0}, "--temperature"), ({"alpha": 1.5}, "--alpha"),
                         ({"loss": "crd"}, "--loss"), ({"dkd_beta": -1}, "--dkd-beta"),
                         ({"cache_teacher": "sometimes"}, "--cache-teacher")]:
        with pytest.raises(ConfigError, match=flag):
            DistillConfig(**kwargs)


def test_teacher_input_resizes_and_renormalises():
    student = Preprocess((16, 16), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    teacher = Preprocess((32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.full((2, 3, 16, 16), 0.8)
    x = (pixels - 0.5) / 0.5
    assert teacher_input(x, student, student) is x
    out = teacher_input(x, student, teacher)
    assert out.shape == (2, 3, 32, 32)
    want = (0.8 - torch.tensor(teacher.mean)) / torch.tensor(teacher.std)
    assert torch.allclose(out[0, :, 5, 7], want, atol=1e-5)


# --- the stage end to end ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny folder and a teacher trained on it, shared by the stage tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill")
    data = make_image_folder(root / "data")
    lv.train(data, root / "teacher", **FAST)
    yield {"root": root, "data": data, "teacher": root / "teacher"}
    torch.set_num_threads(before)


def test_distill_writes_a_reloadable_artifact_with_lineage(trained, tmp_path):
    out = tmp_path / "student"
    # a smaller input than the teacher's 32 px: the teacher gets resized batches
    summary = distill(trained["data"], trained["teacher"], "resnet8", out, augment="none",
                      img_size=24, **STUDENT_FAST)

    art = lv.load(out)
    assert art.classes == ["blue", "green", "red"] and art.input_size == (24, 24)
    assert art.model(torch.zeros(2, 3, 24, 24)).shape == (2, 3)
    card = json.loads((out / "model.json").read_text())
    assert card["stage"] == "distill" and card["parent"] == str(trained["teacher"])
    block = card["distill"]
    assert block["teacher"] == str(trained["teacher"]) and block["loss"] == "kd"
    assert block["temperature"] == 4.0 and block["alpha"] == 0.9
    teacher_card = json.loads((trained["teacher"] / "model.json").read_text())
    assert block["teacher_top1"] == teacher_card["metrics"]["val"]["top1"]
    # identity augmentation: one teacher pass over the training set, none during training
    assert block["teacher_cached"] is True
    assert summary["distill"]["teacher_batches"] == 0
    assert summary["distill"]["teacher_input_adapted"] is True
    assert 0.0 <= summary["distill"]["teacher_train_top1"] <= 1.0
    assert summary["stage"] == "distill" and "val" in summary["metrics"]
    # the student against the teacher, image by image on the same validation images
    against = block["vs_teacher"]
    assert against["images"] == card["metrics"]["val"]["n"]
    assert against["drop_points"] == pytest.approx(
        100 * (block["teacher_top1"] - card["metrics"]["val"]["top1"]), abs=1e-3)
    assert "95% interval" in block["vs_teacher_text"] and "vs_start" not in block
    assert summary["distill"]["vs_teacher"] == against


def test_augmentation_runs_the_teacher_per_batch(trained, tmp_path):
    summary = distill(trained["data"], trained["teacher"], "resnet8", tmp_path / "s",
                      loss="dkd", augment="light", **STUDENT_FAST)
    assert summary["distill"]["teacher_cached"] is False
    # 27 training images at batch 8: 3 steps per epoch, 2 epochs
    assert summary["distill"]["teacher_batches"] == 6
    card = json.loads((tmp_path / "s" / "model.json").read_text())
    assert card["distill"]["loss"] == "dkd" and card["distill"]["dkd_beta"] == 8.0
    with pytest.raises(ConfigError, match="--cache-teacher always"):
        distill(trained["data"], trained["teacher"], "resnet8", tmp_path / "t",
                cache_teacher="always", augment="light", **STUDENT_FAST)
    assert not (tmp_path / "t").exists()


def test_cached_logits_equal_per_batch_logits(trained):
    teacher = lv.load(trained["teacher"])
    hw = choose_hardware("cpu", "fp32")
    student, teacher_pre = Preprocess((24, 24), tuple(teacher.mean), tuple(teacher.std)), \
        Preprocess.of(teacher)
    images = torch.randint(0, 256, (10, 3, 24, 24), dtype=torch.uint8)
    cached = cache_teacher_logits(teacher.model, images, student, teacher_pre, hw, batch=4)
    x = normalize(images[3:7], student.mean, student.std)
    assert torch.allclose(cached[3:7], run_teacher(teacher.model, x, student, teacher_pre, hw),
                          atol=1e-5)


def test_teacher_with_other_classes_is_refused_before_writing(trained, tmp_path):
    other = make_image_folder(tmp_path / "other", per_class=4,
                              classes={"red": (200, 30, 30), "yellow": (220, 220, 40)})
    out = tmp_path / "student"
    with pytest.raises(ConfigError) as err:
        distill(other, trained["teacher"], "resnet8", out, **STUDENT_FAST)
    message = str(err.value)
    assert "'yellow'" in message and "'blue'" in message and "--teacher" in message
    assert not out.exists()


def test_unknown_student_name_is_refused_before_writing(trained, tmp_path):
    out = tmp_path / "student"
    with pytest.raises(ModelError, match="resnet8"):  # a close match is suggested
        distill(trained["data"], trained["teacher"], "resnet88x", out, **STUDENT_FAST)
    assert not out.exists()


def _pruned_copy(src, dst):
    """`src` with half the filters of its first block's inner conv cut, recorded as a card
    transform the way the prune stage records one."""
    from leanvision.artifact import save_artifact
    from leanvision.models.surgery import structure_diff

    art = lv.load(src)
    model, keep = art.model, slice(0, 8)
    block = model.stages[0][0]
    conv1, bn, conv2 = block.conv1.conv, block.conv1.bn, block.conv2.conv
    conv1.weight = torch.nn.Parameter(conv1.weight.data[keep].clone())
    conv1.out_channels = 8
    bn.weight = torch.nn.Parameter(bn.weight.data[keep].clone())
    bn.bias = torch.nn.Parameter(bn.bias.data[keep].clone())
    bn.running_mean, bn.running_var = bn.running_mean[keep].clone(), bn.running_var[keep].clone()
    bn.num_features = 8
    conv2.weight = torch.nn.Parameter(conv2.weight.data[:, keep].clone())
    conv2.in_channels = 8
    fresh = lv.create_model(art.card["arch"], art.num_classes)
    transforms = [{"kind": "structure", "modules": structure_diff(fresh, model)}]
    save_artifact(dst, model, {**art.card, "stage": "prune", "transforms": transforms})
    return dst, transforms


def test_pruned_student_artifact_keeps_its_structure(trained, tmp_path):
    student_dir, transforms = _pruned_copy(trained["teacher"], tmp_path / "pruned")
    out = tmp_path / "student"
    summary = distill(trained["data"], trained["teacher"], student_dir, out, augment="none",
                      **STUDENT_FAST)
    card = json.loads((out / "model.json").read_text())
    assert card["stage"] == "distill" and card["parent"] == str(student_dir)
    assert card["arch"] == "resnet8" and card["distill"]["student"] == str(student_dir)
    assert card["transforms"] == transforms
    assert summary["distill"]["teacher_input_adapted"] is False
    # a student artifact is also compared with itself before distillation
    start = card["distill"]["vs_start"]
    assert start["images"] == card["distill"]["vs_teacher"]["images"]
    assert "lost" in start and "gained" in start
    art = lv.load(out)
    assert art.model.stages[0][0].conv1.conv.out_channels == 8
    assert art.model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    teacher_params = sum(p.numel() for p in lv.load(trained["teacher"]).model.parameters())
    assert card["metrics"]["params"] < teacher_params
    with pytest.raises(ConfigError, match="--img-size"):
        distill(trained["data"], trained["teacher"], student_dir, tmp_path / "x", img_size=24,
                **STUDENT_FAST)
    assert not (tmp_path / "x").exists()
