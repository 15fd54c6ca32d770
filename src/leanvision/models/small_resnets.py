"""Small ResNets for 32x32 inputs on a CPU, registered in timm's registry so that
`timm.create_model("resnet20")` and everything built on timm (param grouping, feature hooks,
stage freezing) treats them like any other timm model.

- resnet8 / resnet20 / resnet56: the CIFAR ResNets of He et al. 2016 (sec. 4.2): three stages of
  16/32/64 channels, n = (depth - 2) / 6 basic blocks per stage, a 1x1 conv + BN shortcut where
  the shape changes (option B), global average pool, linear.
- resnet9: the "ResNet-9" of the DAWNBench / airbench fast CIFAR recipes (Page 2018): prep conv 64,
  layer1 128 + residual, layer2 256, layer3 512 + residual, max-pools, global max pool, linear on
  scaled logits. `width` multiplies every channel count.

Normalisation: ImageNet mean/std. These nets are trained from scratch on the user's data, so the
statistics only need to centre natural images roughly (CIFAR-10's are within 0.03 of ImageNet's);
sharing timm's default keeps a dataset's preprocessing unchanged when the architecture changes.
"""

from __future__ import annotations

import torch
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._registry import _model_entrypoints, register_model
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SMALL_RESNETS = ("resnet8", "resnet20", "resnet56", "resnet9")


def _cfg(**kwargs) -> dict:
    # no url / hf_hub_id: there are no published weights, so timm never tries to fetch any
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,  # small images are resized whole, never centre-cropped
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
        "license": "apache-2.0",
        **kwargs,
    }


# timm's register_model reads the pretrained configs from this module-level name.
default_cfgs = generate_default_cfgs(
    {
        "resnet8": _cfg(),
        "resnet20": _cfg(),
        "resnet56": _cfg(),
        "resnet9": _cfg(pool_size=(4, 4)),
    }
)


class ConvBnAct(nn.Sequential):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()


class BasicBlock(nn.Module):
    """x -> conv-bn-relu -> conv-bn, + shortcut, relu (He et al. 2016)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(in_chs, out_chs, stride)
        self.conv2 = ConvBnAct(out_chs, out_chs, act=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class Residual(nn.Module):
    """ResNet-9's residual branch: x + (conv-bn-relu)^2 (x), no downsampling."""

    def __init__(self, chs: int) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(chs, chs)
        self.conv2 = ConvBnAct(chs, chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class _TimmHeadMixin:
    """The classifier half of timm's model API, shared by both families."""

    head: ClassifierHead
    num_classes: int
    num_features: int
    logit_scale: float = 1.0

    def group_matcher(self, coarse: bool = False) -> dict:
        # coarse: one group per stage; fine: one group per block inside a stage
        return {
            "stem": r"^stem",
            "blocks": r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)",
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # timm's training scripts call this; these nets are too small for it to pay off
        return None

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head(x, pre_logits=pre_logits)
        return x if pre_logits else x * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CifarResNet(_TimmHeadMixin, nn.Module):
    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem = ConvBnAct(in_chans, widths[0])
        stages, in_chs, self.feature_info = [], widths[0], []
        for i, out_chs in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [
                BasicBlock(in_chs if b == 0 else out_chs, out_chs, stride if b == 0 else 1)
                for b in range(blocks_per_stage)
            ]
            stages.append(nn.Sequential(*blocks))
            in_chs = out_chs
            self.feature_info.append(
                {"num_chs": out_chs, "reduction": 2**i, "module": f"stages.{i}"}
            )
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = in_chs
        self.head = ClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # [B, 64, H/4, W/4]


class ResNet9(_TimmHeadMixin, nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "max",
        width: float = 1.0,
        logit_scale: float = 0.125,
    ) -> None:
        super().__init__()
        # logit_scale=0.125 is the DAWNBench recipe's final Mul: it keeps early logits small so
        # the high learning rates of the fast schedule do not saturate the softmax.
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.logit_scale = logit_scale
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in (64, 128, 256, 512))
        self.stem = ConvBnAct(in_chans, c1)
        self.stages = nn.Sequential(
            nn.Sequential(ConvBnAct(c1, c2), nn.MaxPool2d(2), Residual(c2)),  # [B, c2, H/2, W/2]
            nn.Sequential(ConvBnAct(c2, c3), nn.MaxPool2d(2)),  # [B, c3, H/4, W/4]
            nn.Sequential(ConvBnAct(c3, c4), nn.MaxPool2d(2), Residual(c4)),  # [B, c4, H/8, W/8]
        )
        self.feature_info = [
            {"num_chs": c, "reduction": 2 ** (i + 1), "module": f"stages.{i}"}
            for i, c in enumerate((c2, c3, c4))
        ]
        self.num_features = self.head_hidden_size = c4
        self.head = ClassifierHead(c4, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _register(fn):
    """register_model, but a second import (importlib.reload, two module paths) is a no-op instead
    of timm's 'Overwriting ...' warning; a clash with a foreign model of the same name raises."""
    existing = _model_entrypoints.get(fn.__name__)
    if existing is None:
        return register_model(fn)
    if existing.__module__ != fn.__module__:
        raise RuntimeError(
            f"timm already has a model named {fn.__name__!r} (from {existing.__module__}); "
            "leanvision's small nets need a prefix to coexist with it"
        )
    return existing


def _create_cifar_resnet(variant: str, depth: int, pretrained: bool, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained, depth=depth, **kwargs)


@_register
def resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-8 for 32x32 inputs (1 block per stage, ~78k params)."""
    return _create_cifar_resnet("resnet8", 8, pretrained, **kwargs)


@_register
def resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for 32x32 inputs (3 blocks per stage, ~0.27M params)."""
    return _create_cifar_resnet("resnet20", 20, pretrained, **kwargs)


@_register
def resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for 32x32 inputs (9 blocks per stage, ~0.86M params)."""
    return _create_cifar_resnet("resnet56", 56, pretrained, **kwargs)


@_register
def resnet9(pretrained: bool = False, **kwargs) -> ResNet9:
    """DAWNBench-style ResNet-9 (~6.6M params at width=1) for the fast CIFAR recipe."""
    return build_model_with_cfg(ResNet9, "resnet9", pretrained, **kwargs)
