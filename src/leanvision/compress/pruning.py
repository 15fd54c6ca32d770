"""Pruning primitives over Torch-Pruning's dependency graph: structured channel removal to a FLOPs,
parameter or channel target, soft filter zeroing, and unstructured magnitude masks.

The stage driver (prune.py) decides when to call them; nothing here reads data or writes files."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from ..errors import ConfigError, ModelError

# Steps a FLOPs/parameter target is approached in: each removes 1/GRANULARITY of the layer cap,
# so the result lands within a fraction of a percent of the target.
GRANULARITY = 200
# Module types Torch-Pruning knows how to shrink; any other module holding its own parameters
# is left whole (with a warning naming it) instead of being cut inconsistently.
_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
             nn.GroupNorm, nn.PReLU, nn.Embedding)


@dataclass
class Cost:
    flops: float  # multiply-accumulates x 2
    params: int

    def fraction_of(self, base: Cost, target: str) -> float:
        return self.flops / base.flops if target == "flops" else self.params / base.params


def measure(model: nn.Module, example: torch.Tensor) -> Cost:
    macs, params = tp.utils.count_ops_and_params(model, example)
    return Cost(flops=2.0 * float(macs), params=int(params))


def build_importance(name: str) -> tp.importance.Importance:
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn":
        return tp.importance.BNScaleImportance()
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ConfigError(f"--importance '{name}' is unknown; choose l1, l2, bn or taylor")


def refuse_attention(model: nn.Module, arch: str) -> None:
    """Channel pruning cuts through attention's head reshape; Torch-Pruning needs a per-model
    head configuration there, so attention models are refused rather than broken."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, nn.MultiheadAttention) or kind.endswith("Attention"):
            raise ModelError(
                f"structured pruning of attention models is not supported ({arch} has {kind} at "
                f"'{name}'): its heads would be cut inconsistently. Use --method unstructured, "
                "or distill into a smaller model with `leanvision distill`")


def layers_to_keep(model: nn.Module) -> list[nn.Module]:
    """The classifier (its outputs are the classes) and every module Torch-Pruning cannot shrink
    consistently, each named in a warning."""
    keep: list[nn.Module] = []
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Module):
        keep.append(head)
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if (isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
                and not module.weight.requires_grad):
            # A frozen layer (airnet's whitening filters, set from the data) cannot re-learn
            # what losing channels takes away; cutting it left a pruned airnet_m at chance.
            warnings.warn(f"pruning skips '{name}' ({type(module).__name__}): its weights are "
                          "frozen, so fine-tuning could not make up for channels cut from it",
                          stacklevel=2)
            keep.append(module)
            continue
        if isinstance(module, _PRUNABLE) or not own:
            continue
        warnings.warn(f"pruning skips '{name}' ({type(module).__name__}): the dependency graph "
                      "cannot shrink it safely, so it and the channels coupled to it stay whole",
                      stacklevel=2)
        keep.append(module)
    return keep


def new_pruner(model: nn.Module, example: torch.Tensor, importance: str, *, ratio: float,
               global_scope: bool, max_layer_ratio: float, steps: int,
               round_to: int | None) -> tp.pruner.MetaPruner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller reported the skipped layers once already
        keep = layers_to_keep(model)
    return tp.pruner.MetaPruner(
        model, example, importance=build_importance(importance), global_pruning=global_scope,
        pruning_ratio=ratio, max_pruning_ratio=max_layer_ratio, iterative_steps=steps,
        ignored_layers=keep, round_to=round_to)


def prune_to(model: nn.Module, example: torch.Tensor, base: Cost, *, target: str, goal: float,
             importance: str, global_scope: bool, max_layer_ratio: float,
             round_to: int | None = None,
             gradients: Callable[[nn.Module], None] | None = None) -> Cost:
    """Remove channels until `target` ("flops"/"params") is at most `goal` x `base`, or, for
    target "channels", remove the fraction 1-goal of the channels in one step. `gradients(model)`
    fills .grad before each step (Taylor importance needs it)."""
    model.eval()
    if target == "channels":
        pruner = new_pruner(model, example, importance, ratio=1.0 - goal, global_scope=global_scope,
                            max_layer_ratio=max_layer_ratio, steps=1, round_to=round_to)
        _step(pruner, model, gradients)
        return measure(model, example)
    pruner = new_pruner(model, example, importance, ratio=max_layer_ratio,
                        global_scope=global_scope, max_layer_ratio=max_layer_ratio,
                        steps=GRANULARITY, round_to=round_to)
    cost = measure(model, example)
    for _ in range(GRANULARITY):
        if cost.fraction_of(base, target) <= goal:
            return cost
        _step(pruner, model, gradients)
        cost = measure(model, example)
    if cost.fraction_of(base, target) > goal + 1e-3:
        raise ConfigError(
            f"cannot bring {target} down to {goal:.0%} of the original without cutting more than "
            f"{max_layer_ratio:.0%} of some layer's channels (reached "
            f"{cost.fraction_of(base, target):.0%}); lower --ratio or raise --max-layer-ratio")
    return cost


def _step(pruner: tp.pruner.MetaPruner, model: nn.Module,
          gradients: Callable[[nn.Module], None] | None) -> None:
    if gradients is not None:
        model.zero_grad(set_to_none=True)
        gradients(model)
    pruner.step()


def zero_weakest_filters(model: nn.Module, example: torch.Tensor, ratio: float, importance: str,
                         global_scope: bool, max_layer_ratio: float,
                         round_to: int | None = None) -> int:
    """Soft filter pruning (He et al., 2018): zero the weakest filter groups but keep them, so
    they may grow back during the next epoch. Returns the number of channels zeroed."""
    pruner = new_pruner(model, example, importance, ratio=ratio, global_scope=global_scope,
                        max_layer_ratio=max_layer_ratio, steps=1, round_to=round_to)
    zeroed = 0
    with torch.no_grad():
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                module = dep.target.module
                if "out_channels" not in dep.handler.__name__ or not isinstance(module, _PRUNABLE):
                    continue
                index = torch.as_tensor(list(idxs), dtype=torch.long)
                for tensor in (getattr(module, "weight", None), getattr(module, "bias", None)):
                    if isinstance(tensor, torch.Tensor) and tensor.ndim >= 1:
                        tensor.index_fill_(0, index.to(tensor.device), 0.0)
                zeroed += len(index) if isinstance(module, nn.modules.conv._ConvNd) else 0
    return zeroed


def magnitude_masks(model: nn.Module, sparsity: float,
                    global_scope: bool) -> dict[str, torch.Tensor]:
    """Unstructured masks: the `sparsity` fraction of conv/linear weights with the smallest |w|
    (over the whole model, or within each layer) become zero. The classifier is kept dense."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    weights = {name: m.weight for name, m in model.named_modules()
               if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and m is not head}
    if global_scope:
        flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
        k = int(sparsity * flat.numel())
        threshold = flat.kthvalue(k).values if k > 0 else flat.min() - 1
        return {name: (w.detach().abs() > threshold) for name, w in weights.items()}
    masks = {}
    for name, w in weights.items():
        flat = w.detach().abs().flatten()
        k = int(sparsity * flat.numel())
        threshold = flat.kthvalue(k).values if k > 0 else flat.min() - 1
        masks[name] = w.detach().abs() > threshold
    return masks


def hold_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> Callable[[], None]:
    """Zero masked weights now and their gradients from here on (with zero gradients and
    decoupled decay, AdamW/SGD/EMA all keep them at exactly zero). Returns the undo function."""
    modules = dict(model.named_modules())
    handles = []
    for name, mask in masks.items():
        weight = modules[name].weight
        with torch.no_grad():
            weight.mul_(mask.to(weight.device, weight.dtype))
        keep = mask.to(weight.device)
        handles.append(weight.register_hook(lambda g, keep=keep: g * keep.to(g.dtype)))

    def release() -> None:
        for handle in handles:
            handle.remove()
        with torch.no_grad():  # make the zeros permanent whatever the optimizer did
            for name, mask in masks.items():
                weight = modules[name].weight
                weight.mul_(mask.to(weight.device, weight.dtype))

    return release


def sparsity_of(model: nn.Module) -> float:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    total = zeros = 0
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and m is not head:
            total += m.weight.numel()
            zeros += int((m.weight == 0).sum())
    return zeros / max(1, total)
