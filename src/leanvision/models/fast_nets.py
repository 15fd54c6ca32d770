"""AirNet: the network of Keller Jordan's airbench CIFAR-10 speed runs (2024), rewritten for
leanvision and registered in timm's registry.

    whiten 2x2 conv (frozen, set from the data's patch covariance) → GELU
    3 x [conv3x3 → maxpool 2 → BN → GELU → conv3x3 → BN → GELU]   widths w1, w2, w3
    maxpool 3 → linear (no bias) → x 1/9

What makes it fast to train: the first layer whitens 2x2 patches (so the rest sees decorrelated
inputs from step one), convolutions start as identity maps (dirac), batch norms have a frozen
unit scale and a fast-moving running average, and there are no residual branches to pay for.

- airnet_s: widths 64/128/128 (airbench93's net, less than half the FLOPs)
- airnet_m: widths 64/256/256 (airbench94's net; the fast recipe's default)

Two hooks let the training loop use the data without knowing the net:
`init_from_data(images)` sets the whitening filters before the first step, and
`epoch_start(epoch)` trains the whitening bias for the first epochs only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from .small_resnets import IMAGENET_MEAN, IMAGENET_STD, _register

FAST_NETS = ("airnet_s", "airnet_m")
WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4  # keeps near-zero eigenvalues of the patch covariance from exploding
WHITEN_BIAS_EPOCHS = 3  # after this, the whitening bias is frozen too
WHITEN_SAMPLE = 5000  # images whose patches estimate the covariance
BN_MOMENTUM = 0.4  # torch convention; airbench's 0.6 "momentum" of the running average
LOGIT_SCALE = 1 / 9


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 10, "input_size": (3, 32, 32), "pool_size": (1, 1), "crop_pct": 1.0,
        "interpolation": "bilinear", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        "first_conv": "whiten", "classifier": "head", "license": "apache-2.0", **kwargs,
    }


default_cfgs = generate_default_cfgs({"airnet_s": _cfg(), "airnet_m": _cfg()})


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm with a fixed unit scale: only the shift learns (the scale is redundant with
    the next conv and only slows the fast schedule down)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-12, momentum=BN_MOMENTUM)
        self.weight.requires_grad_(False)


def _identity_conv(in_chs: int, out_chs: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
    with torch.no_grad():
        # An implicit residual: the first in_chs filters pass their input channel through.
        nn.init.dirac_(conv.weight[: min(in_chs, out_chs)])
    return conv


class ConvGroup(nn.Module):
    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv1 = _identity_conv(in_chs, out_chs)
        self.norm1 = FrozenScaleBatchNorm(out_chs)
        self.conv2 = _identity_conv(out_chs, out_chs)
        self.norm2 = FrozenScaleBatchNorm(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    def __init__(self, widths: tuple[int, int, int] = (64, 256, 256), num_classes: int = 10,
                 in_chans: int = 3, drop_rate: float = 0.0, **_: object) -> None:
        super().__init__()
        whiten_width = 2 * in_chans * WHITEN_KERNEL**2  # each filter and its negative
        self.whiten = nn.Conv2d(in_chans, whiten_width, WHITEN_KERNEL, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        chans = [whiten_width, *widths]
        self.stages = nn.Sequential(*(ConvGroup(a, b) for a, b in zip(chans, chans[1:],
                                                                       strict=False)))
        self.num_features = widths[-1]
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.head = nn.Linear(widths[-1], num_classes, bias=False) if num_classes else (
            nn.Identity())

    # --- the two training hooks ----------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from normalised float images [N, C, H, W]: the
        eigenvectors of the 2x2 patch covariance, scaled to unit variance, and their negatives."""
        x = images[:WHITEN_SAMPLE].float()
        c, k = x.shape[1], WHITEN_KERNEL
        patches = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1,
                                                                                     c * k * k)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + WHITEN_EPS)[:, None]).flip(0)
        filters = filters.reshape(c * k * k, c, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def epoch_start(self, epoch: int) -> None:
        self.whiten.bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)

    # --- timm's model API ------------------------------------------------------------------
    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^whiten", "blocks": r"^stages\.(\d+)"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        return None

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = (nn.Linear(self.num_features, num_classes, bias=False) if num_classes
                     else nn.Identity())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(F.gelu(self.whiten(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # Global max pool: on 32 px inputs the map is 3x3 here, and max beats mean for this net.
        x = torch.amax(x, dim=(2, 3))
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x) * LOGIT_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@_register
def airnet_s(pretrained: bool = False, **kwargs) -> AirNet:
    """airbench93's net: widths 64/128/128 (~0.6M params)."""
    return build_model_with_cfg(AirNet, "airnet_s", pretrained, widths=(64, 128, 128),
                                **kwargs)


@_register
def airnet_m(pretrained: bool = False, **kwargs) -> AirNet:
    """airbench94's net: widths 64/256/256 (~2M params)."""
    return build_model_with_cfg(AirNet, "airnet_m", pretrained, widths=(64, 256, 256),
                                **kwargs)
