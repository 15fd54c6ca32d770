"""Class activation maps through pytorch-grad-cam, with the target layer found automatically.

CNNs: the last module whose output is still a spatial map [N, C, h, w] (h * w > 1), i.e. the
last block before global pooling. It is found by watching one forward pass rather than by
names, so pruned, BN-folded and third-party (timm) networks need no table of layer names.
ViTs (timm vit / deit): blocks[-1].norm1, with the token sequence reshaped to the patch grid."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ModelError

CAM_METHODS = ("gradcam", "gradcam++", "scorecam")
# ScoreCAM runs one forward pass per channel of the target layer; this many at a time.
SCORECAM_BATCH = 64


@dataclass
class TargetLayer:
    name: str
    module: nn.Module
    # tokens [N, T, C] -> maps [N, C, h, w]; None for layers that already give maps.
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def find_target_layer(model: nn.Module, input_size: tuple[int, int]) -> TargetLayer:
    """The layer whose activations a CAM weighs, for a CNN or a timm ViT."""
    vit = _vit_target(model, input_size)
    if vit is not None:
        return vit
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []

    def record(name: str) -> Callable:
        def hook(module: nn.Module, _inputs: tuple, output: object) -> None:
            spatial = isinstance(output, torch.Tensor) and output.ndim == 4
            if spatial and output.shape[-2:].numel() > 1:
                seen.append((name, module, output))
        return hook

    named = [(n, m) for n, m in model.named_modules() if n]
    handles = [m.register_forward_hook(record(n)) for n, m in named]
    try:
        with torch.no_grad(), frozen(model):
            param = next(model.parameters(), None)
            model(torch.zeros(1, 3, *input_size, device=param.device if param is not None
                              else "cpu"))
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ModelError(f"{type(model).__name__} has no spatial feature map for a CAM at input "
                         f"size {input_size[0]}x{input_size[1]}; use --method lime or shap")
    # Forward hooks fire when a module finishes, so inner modules come before the blocks that
    # contain them; of those returning the last map, the innermost container is the "block"
    # (a leaf there is usually an in-place activation of that block).
    last = seen[-1][2]
    same = [(n, m) for n, m, out in seen if out is last]
    name, module = next(((n, m) for n, m in same if next(m.children(), None) is not None),
                        same[0])
    return TargetLayer(name=name, module=module)


def _vit_target(model: nn.Module, input_size: tuple[int, int]) -> TargetLayer | None:
    blocks = getattr(model, "blocks", None)
    patch_embed = getattr(model, "patch_embed", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList) or patch_embed is None or \
            not len(blocks) or not hasattr(blocks[-1], "norm1"):
        return None
    ph, pw = _pair(getattr(patch_embed, "patch_size", None)) or (16, 16)
    grid = (input_size[0] // ph, input_size[1] // pw)
    prefix = int(getattr(model, "num_prefix_tokens", 1))

    def tokens_to_maps(tokens: torch.Tensor) -> torch.Tensor:
        # [N, prefix + h*w, C] -> [N, C, h, w]: class/register tokens have no place on the grid
        patches = tokens[:, prefix:, :]
        n, t, c = patches.shape
        h, w = grid if grid[0] * grid[1] == t else _square_grid(t)
        return patches.reshape(n, h, w, c).permute(0, 3, 1, 2)

    return TargetLayer(name=f"blocks.{len(blocks) - 1}.norm1", module=blocks[-1].norm1,
                       reshape_transform=tokens_to_maps)


def _pair(value: object) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, tuple | list) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def _square_grid(tokens: int) -> tuple[int, int]:
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise ModelError(f"cannot lay {tokens} ViT patch tokens on a grid; use --method lime")
    return side, side


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no parameter gradients; training flag, requires_grad and .grad restored after.

    CAMs need gradients with respect to activations only; freezing the weights keeps backward
    from filling (and the CAM library from zeroing) the caller's parameter gradients."""
    was_training = model.training
    params = list(model.parameters())
    saved = [(p.requires_grad, p.grad) for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, (req, grad) in zip(params, saved, strict=True):
            p.requires_grad_(req)
            p.grad = grad
        model.train(was_training)


def cam_maps(model: nn.Module, x: torch.Tensor, classes: list[int], method: str,
             layer: TargetLayer) -> np.ndarray:
    """float32 [N, H, W] in [0, 1] for normalised images x [N, 3, H, W], one class per image."""
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    kinds = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM}
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with frozen(model), torch.enable_grad(), _quiet_scorecam():
        cam = kinds[method](model=model, target_layers=[layer.module],
                            reshape_transform=layer.reshape_transform)
        cam.batch_size = SCORECAM_BATCH
        try:
            # With frozen weights only the input can carry the graph to the target layer.
            inputs = x.detach().clone().requires_grad_(method != "scorecam")
            maps = cam(input_tensor=inputs, targets=targets)
        finally:
            cam.activations_and_grads.release()
    return np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)


class _NoBar:
    @staticmethod
    def tqdm(iterable, *args, **kwargs):
        return iterable


@contextlib.contextmanager
def _quiet_scorecam() -> Iterator[None]:
    """ScoreCAM draws a tqdm bar per image on stderr; silence it for the call only."""
    from pytorch_grad_cam import score_cam

    before = score_cam.tqdm
    score_cam.tqdm = _NoBar
    try:
        yield
    finally:
        score_cam.tqdm = before
