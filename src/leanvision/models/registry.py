"""One factory over timm's registry (which also holds our small nets): `create_model`."""

from __future__ import annotations

import difflib
import os
from typing import Any

import timm
from timm.models import get_pretrained_cfg, split_model_name_tag
from torch import nn

from leanvision.errors import ModelError
from leanvision.models import small_resnets
from leanvision.models.pretrained import load_pretrained

# A short list to start from: our CPU-sized nets first, then timm models that fine-tune well on
# small data sets, from the smallest up.
RECOMMENDED_MODELS: tuple[str, ...] = (
    *small_resnets.SMALL_RESNETS,
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "efficientnet_lite0",
    "resnet18",
    "resnet50",
    "deit_tiny_patch16_224",
    "vit_tiny_patch16_224",
)


def list_models(pattern: str = "*") -> list[str]:
    """Names in timm's registry (ours included) matching a shell-style `pattern`."""
    return timm.list_models(pattern)


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool | str | os.PathLike = False,
    *,
    drop_rate: float | None = None,
    img_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build `name` (a timm name, optionally `name.tag`) with a fresh `num_classes` head.

    timm is never asked for weights (it would download them); `pretrained=True` loads local
    weights through `load_pretrained`, a path loads that file. `img_size` reaches the model only
    where the architecture fixes its input size (ViT, DeiT, ...); for the others it is recorded in
    `model.pretrained_cfg["input_size"]` so that preprocessing follows the size trained at.
    What loading did ("classifier re-initialised for 10 classes") is in `model.pretrained_notes`.
    """
    arch = _check_name(name)
    # Dropping None mirrors timm's factory: an unset option never overrides a model default.
    model_kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if drop_rate is not None:
        model_kwargs["drop_rate"] = drop_rate
    if img_size is not None:
        if img_size <= 0:
            raise ModelError(f"img_size must be a positive number of pixels, got {img_size}")
        cfg = get_pretrained_cfg(name) or get_pretrained_cfg(arch)
        in_chans = model_kwargs.get("in_chans", 3)
        overlay = dict(model_kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay["input_size"] = (in_chans, img_size, img_size)
        model_kwargs["pretrained_cfg_overlay"] = overlay
        if cfg is not None and cfg.fixed_input_size:
            model_kwargs["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **model_kwargs)
    except TypeError as e:
        raise ModelError(
            f"model {name!r} does not accept these options ({e}); remove them or choose another "
            "model"
        ) from e
    model.pretrained_notes = []
    if pretrained is not False and pretrained is not None:
        model.pretrained_notes = load_pretrained(model, name, pretrained)
    return model


def model_preprocessing(model_or_name: nn.Module | str) -> dict[str, Any]:
    """The input a model expects: {"input_size": [H, W], "mean": [3], "std": [3],
    "interpolation": str}, read from timm's pretrained config (a built model's own config wins,
    so a model made with `img_size=` reports that size)."""
    if isinstance(model_or_name, str):
        _check_name(model_or_name)
        cfg_obj = get_pretrained_cfg(model_or_name) or get_pretrained_cfg(
            split_model_name_tag(model_or_name)[0]
        )
        cfg = cfg_obj.to_dict() if cfg_obj is not None else {}
        label = model_or_name
    else:
        cfg = dict(getattr(model_or_name, "pretrained_cfg", None) or {})
        label = type(model_or_name).__name__
    if not cfg.get("input_size") or not cfg.get("mean") or not cfg.get("std"):
        raise ModelError(
            f"{label} carries no preprocessing record (input_size/mean/std); build it with "
            "leanvision.models.create_model or give the sizes explicitly"
        )
    return {
        "input_size": [int(v) for v in cfg["input_size"][-2:]],
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": str(cfg.get("interpolation") or "bilinear"),
    }


def _check_name(name: str) -> str:
    """Return the architecture part of `name` or raise a ModelError with close matches."""
    arch, tag = split_model_name_tag(name)
    if timm.is_model(arch):
        if not tag or _known_tag(name):
            return arch
        tags = [n for n in timm.list_models(arch, pretrained=True) if n.startswith(arch + ".")]
        hint = f"; known tags: {', '.join(tags[:6])}" if tags else ""
        raise ModelError(f"model {arch!r} has no weights tag {tag!r}{hint}")
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    # equal scores come out in reverse alphabetical order; alphabetical reads better
    close.sort(key=lambda n: (-difflib.SequenceMatcher(None, arch, n).ratio(), n))
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else "; see `leanvision.list_models()` for the names"
    )
    raise ModelError(f"unknown model {name!r}{hint}")


def _known_tag(name: str) -> bool:
    try:
        return get_pretrained_cfg(name, allow_unregistered=False) is not None
    except RuntimeError:  # timm's answer to an invalid tag
        return False


def print_names(console, names: list[str]) -> None:
    """What `leanvision models` prints: one name a line."""
    console.print("\n".join(names), highlight=False)
