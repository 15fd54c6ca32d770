"""Cut a pretrained network into a frozen lower part and a trainable top, for LP-FT on cached
activations: the lower part runs once over the images, the top trains on what it produced.

A model family plugs in by registering a splitter for its class; a network without one still
gets a linear probe (timm's `forward_features` / `forward_head(pre_logits=True)`), but not the
cached top-block fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from leanvision.errors import ModelError


@dataclass
class SplitNet:
    """`lower(x)` -> activations (no parameters train there); `top.features(a)` -> pooled
    pre-logits; `top.classifier` -> logits. `top` shares its modules with the whole model, so
    training it trains the model."""

    lower: nn.Module
    top: TopPart
    where: str  # where the cut is, for the card and the printed plan


class TopPart(nn.Module):
    def __init__(self, body: nn.Module, classifier: nn.Module, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.body, self.classifier, self.drop_rate = body, classifier, drop_rate

    def features(self, activations: torch.Tensor) -> torch.Tensor:
        return self.body(activations)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        pooled = self.features(activations)
        pooled = nn.functional.dropout(pooled, self.drop_rate, self.training)
        return self.classifier(pooled)


Splitter = Callable[[nn.Module, int], SplitNet]
_SPLITTERS: dict[type, Splitter] = {}


def register_splitter(model_class: type) -> Callable[[Splitter], Splitter]:
    def add(fn: Splitter) -> Splitter:
        if model_class in _SPLITTERS:
            raise ValueError(f"a splitter for {model_class.__name__} is already registered")
        _SPLITTERS[model_class] = fn
        return fn

    return add


def can_split(model: nn.Module) -> bool:
    return _find(model) is not None


def split_model(model: nn.Module, top_stages: int = 2) -> SplitNet:
    """The model cut below its last `top_stages` stages (stage = a timm feature stage)."""
    fn = _find(model)
    if fn is None:
        raise ModelError(f"{type(model).__name__} cannot be cut into a frozen lower part and a "
                         "trainable top; use --finetune probe, lower-lr or full")
    return fn(model, top_stages)


def probe_split(model: nn.Module) -> SplitNet:
    """Everything but the classifier below the cut: a linear probe for any timm network."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise ModelError(f"{type(model).__name__} has no forward_features/forward_head; "
                         "use --finetune full or lower-lr")
    return SplitNet(lower=_Features(model), top=TopPart(nn.Identity(), model.get_classifier()),
                    where="before the classifier")


class _Features(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _find(model: nn.Module) -> Splitter | None:
    for cls in type(model).__mro__:
        if cls in _SPLITTERS:
            return _SPLITTERS[cls]
    return None


def _stages(count: int, top_stages: int, name: str) -> int:
    if not 1 <= top_stages < count:
        raise ModelError(f"{name} has {count} stages; the trainable top can hold 1 to "
                         f"{count - 1} of them, not {top_stages}")
    return count - top_stages


def _efficientnet(model: nn.Module, top_stages: int) -> SplitNet:
    # timm's EfficientNet class also builds MobileNetV2, MnasNet and the Lite variants.
    cut = _stages(len(model.blocks), top_stages, type(model).__name__)
    lower = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:cut])
    body = nn.Sequential(*model.blocks[cut:], model.conv_head, model.bn2, model.global_pool)
    return SplitNet(lower, TopPart(body, model.classifier, model.drop_rate),
                    f"blocks.{cut} (last {top_stages} of {len(model.blocks)} stages train)")


def _resnet(model: nn.Module, top_stages: int) -> SplitNet:
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    cut = _stages(len(layers), top_stages, type(model).__name__)
    lower = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool, *layers[:cut])
    body = nn.Sequential(*layers[cut:], model.global_pool)
    return SplitNet(lower, TopPart(body, model.fc, model.drop_rate),
                    f"layer{cut + 1} (last {top_stages} of 4 stages train)")


def _register_timm() -> None:
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet

    register_splitter(EfficientNet)(_efficientnet)
    register_splitter(ResNet)(_resnet)


_register_timm()


def splittable(name: str) -> bool:
    """Whether the named timm network can be cut for LP-FT (built on the meta device: free)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception:  # noqa: BLE001 - an unknown or odd name is simply not splittable here
        return False
    return can_split(model)
