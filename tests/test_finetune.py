import pytest
import torch

from leanvision.errors import ConfigError
from leanvision.models import (
    FINETUNE_STRATEGIES,
    count_parameters,
    create_model,
    describe_finetune,
    freeze_norm_stats,
    param_groups,
    plan_finetune,
    unfreeze,
    unfreeze_epoch,
)

torch.set_num_threads(1)


def _trainable(model) -> int:
    return count_parameters(model, trainable_only=True)


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _grouped(groups) -> int:
    return sum(p.numel() for g in groups for p in g["params"])


def test_auto_resolves_by_pretraining_and_data_size():
    assert FINETUNE_STRATEGIES == ("full", "probe", "lp-ft", "freeze", "lower-lr", "auto")
    plan = dict(images_per_class=10, epochs=20)
    assert plan_finetune("auto", pretrained=False, **plan) == "full"
    assert plan_finetune("auto", pretrained=True, **plan) == "probe-then-lower-lr"
    assert plan_finetune("auto", pretrained=True, images_per_class=500, epochs=20) == "lower-lr"
    assert plan_finetune("auto", pretrained=True, images_per_class=10, epochs=1) == "probe"
    assert plan_finetune("freeze", pretrained=False, **plan) == "freeze"  # never rewritten
    with pytest.raises(ConfigError, match="unknown fine-tuning strategy 'linear'; choose one of"):
        plan_finetune("linear", pretrained=True, **plan)
    assert unfreeze_epoch("probe-then-lower-lr", 20) == 4
    assert unfreeze_epoch("probe-then-lower-lr", 2) == 1
    assert unfreeze_epoch("lower-lr", 20) is None


def test_probe_trains_only_the_head_and_keeps_backbone_statistics():
    torch.manual_seed(0)
    model = create_model("resnet20", 3)
    groups = param_groups(model, "probe", lr=0.1, weight_decay=5e-4)
    head = model.get_classifier()
    assert _trainable(model) == _numel(head) == 64 * 3 + 3
    assert _grouped(groups) == _numel(head)
    assert {g["lr"] for g in groups} == {0.1}

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(groups, momentum=0.9)
    model.train()
    freeze_norm_stats(model)
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == {"head.fc.weight", "head.fc.bias"}

    plan = describe_finetune(model, "probe-then-lower-lr", epochs=10)
    assert (plan.frozen_params, plan.trainable_params) == (count_parameters(model) - 195, 195)
    assert plan.unfreeze_at_epoch == 2
    unfreeze(model)
    assert _trainable(model) == count_parameters(model)


def test_freeze_stages_freezes_stem_and_first_stages():
    model = create_model("resnet20", 3)
    groups = param_groups(model, "freeze", lr=0.05, weight_decay=1e-4, freeze_stages=2)
    frozen = _numel(model.stem) + _numel(model.stages[0]) + _numel(model.stages[1])
    assert _trainable(model) == count_parameters(model) - frozen
    assert _grouped(groups) == _numel(model.stages[2]) + _numel(model.head)
    assert all(not p.requires_grad for p in model.stages[1].parameters())
    assert all(p.requires_grad for p in model.stages[2].parameters())
    param_groups(model, "freeze", lr=0.05, weight_decay=1e-4, freeze_stages=0)
    assert _trainable(model) == count_parameters(model)
    with pytest.raises(ConfigError, match="freeze_stages=3 but CifarResNet has 2 stages"):
        param_groups(model, "freeze", lr=0.05, weight_decay=1e-4, freeze_stages=3)


def test_lower_lr_and_full_learning_rates_and_weight_decay():
    model = create_model("resnet8", 3)
    groups = param_groups(model, "lower-lr", lr=0.2, weight_decay=5e-4, backbone_lr_scale=0.25)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert by_name["backbone"]["lr"] == pytest.approx(0.05)
    assert by_name["head"]["lr"] == by_name["head_no_decay"]["lr"] == 0.2
    assert _trainable(model) == count_parameters(model) == _grouped(groups)
    for g in groups:
        one_d = all(p.ndim == 1 for p in g["params"])
        assert g["weight_decay"] == (0.0 if one_d else 5e-4)
        assert one_d or all(p.ndim > 1 for p in g["params"])

    param_groups(model, "probe", lr=0.2, weight_decay=5e-4)
    full = param_groups(model, "full", lr=0.2, weight_decay=5e-4)
    assert _trainable(model) == count_parameters(model) == _grouped(full)  # probe undone
    assert {g["lr"] for g in full} == {0.2}
    assert {g["weight_decay"] for g in full} == {0.0, 5e-4}
    with pytest.raises(ConfigError, match="resolve 'auto' with plan_finetune"):
        param_groups(model, "auto", lr=0.2, weight_decay=5e-4)


@pytest.mark.parametrize(
    "name", ["mobilenetv3_small_100", "efficientnet_lite0", "resnet18", "deit_tiny_patch16_224"]
)
def test_strategies_on_timm_models(name):
    model = create_model(name, 3, img_size=32)
    total = count_parameters(model)
    head = _numel(model.get_classifier())
    param_groups(model, "probe", lr=1e-3, weight_decay=0.05)
    assert _trainable(model) == head
    groups = param_groups(model, "freeze", lr=1e-3, weight_decay=0.05, freeze_stages=2)
    assert head < _trainable(model) < total
    assert all(p.requires_grad for p in model.get_classifier().parameters())
    assert _grouped(groups) == _trainable(model)
    groups = param_groups(model, "lower-lr", lr=1e-3, weight_decay=0.05)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for n, p in model.named_parameters():
        if p.ndim <= 1:
            assert id(p) in no_decay, n
    if hasattr(model, "pos_embed"):
        assert id(model.pos_embed) in no_decay  # timm's no_weight_decay() is honoured
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert model.get_classifier().weight.grad is not None
