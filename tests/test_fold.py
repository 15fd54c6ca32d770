"""Batch-norm folding: same outputs, smaller graph, and a folded artifact reloads exactly."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from leanvision.artifact import load, make_card, save_artifact
from leanvision.errors import ModelError
from leanvision.models import create_model
from leanvision.models.fold import find_conv_bn_pairs, fold_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")


def _with_trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh BN layers are identities; give them statistics so folding really changes weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _assert_same(before: torch.Tensor, after: torch.Tensor) -> None:
    torch.testing.assert_close(after, before, rtol=1e-5,
                               atol=1e-5 * float(before.abs().max()) + 1e-7)


MODELS = [("resnet8", 32, False), ("resnet20", 32, False), ("airnet_s", 32, False),
          ("resnet18", 64, True), ("efficientnet_lite0", 64, True)]


@pytest.mark.parametrize(("name", "size", "from_timm"), MODELS)
def test_fold_keeps_eval_outputs(name: str, size: int, from_timm: bool) -> None:
    torch.manual_seed(0)
    model = (timm.create_model(name, pretrained=False, num_classes=5) if from_timm
             else create_model(name, 5))
    model = _with_trained_statistics(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        before = model(x)
    bn_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    pairs = fold_batchnorm(model)
    with torch.no_grad():
        after = model(x)
    _assert_same(before, after)
    assert pairs
    bn_after = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert bn_after == bn_before - len(pairs)
    if name != "airnet_s":  # AirNet's first BN of each group follows a max-pool, not a conv
        assert bn_after == 0
    for conv_name, _ in pairs:
        assert model.get_submodule(conv_name).bias is not None


def test_batchnorm_act_keeps_its_activation() -> None:
    model = _with_trained_statistics(timm.create_model("efficientnet_lite0", pretrained=False,
                                                       num_classes=3))
    act_type = type(model.bn1.act)
    fold_batchnorm(model)
    assert isinstance(model.bn1, act_type)  # conv_stem's BatchNormAct2d became its ReLU6


def test_structure_only_fold_matches_the_folded_state() -> None:
    folded = _with_trained_statistics(create_model("resnet8", 3))
    pairs = fold_batchnorm(folded)
    fresh = create_model("resnet8", 3)
    assert fold_batchnorm(fresh, pairs=pairs, statistics=False) == pairs
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in folded.state_dict().items()}


def test_folded_artifact_reloads_exactly(tmp_path) -> None:
    model = _with_trained_statistics(create_model("resnet8", 3))
    pairs = fold_batchnorm(model)
    card = make_card(arch="resnet8", arch_kwargs={}, classes=["a", "b", "c"],
                     input_size=(32, 32), mean=[0.5] * 3, std=[0.25] * 3, stage="quantize",
                     transforms=[{"kind": "fold_bn", "pairs": [list(p) for p in pairs]}])
    save_artifact(tmp_path / "art", model, card)
    art = load(tmp_path / "art")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(art.model(x), model(x))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in art.model.modules())


def test_wrong_pairs_and_untraceable_models_are_refused() -> None:
    model = create_model("resnet8", 3)
    with pytest.raises(ModelError, match="expected a Conv2d and a BatchNorm2d"):
        fold_batchnorm(model, pairs=[("stem.bn", "stem.conv")])

    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(ModelError, match="could not trace DataDependent"):
        find_conv_bn_pairs(DataDependent())


def test_shared_convolution_output_is_not_folded() -> None:
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # the raw conv output is used too: folding would change it

    assert find_conv_bn_pairs(Branching()) == []
