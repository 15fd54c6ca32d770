"""Batch-norm folding: a BatchNorm2d right after a convolution becomes part of that convolution's
weights and bias, so inference (and quantisation) sees one layer instead of two.

    conv(x) -> bn  ==  conv'(x)   with  w' = w * g / sqrt(var + eps),
                                         b' = (b - mean) * g / sqrt(var + eps) + beta

The pairs are found on a torch.fx trace of the model; a card records them (transform
"fold_bn") so the folded structure is rebuilt at load time without the statistics."""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..errors import ModelError


def _foldable_convs() -> tuple[type, ...]:
    # Only convolutions whose forward uses self.weight as is: a weight-standardising subclass
    # (timm's StdConv2d) would rescale the folded weight and break the identity above.
    from timm.layers import Conv2dSame

    return nn.Conv2d, Conv2dSame


class _PairTracer(fx.Tracer):
    """Keeps every conv and batch norm (also timm's BatchNormAct2d) as one call, so the graph
    shows which module consumes a convolution's output."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Conv2d):
            return True
        return super().is_leaf_module(m, qualname)


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv_name, bn_name) for every Conv2d whose output feeds only a BatchNorm2d."""
    try:
        graph = _PairTracer().trace(model)
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError on proxies, ...)
        raise ModelError(f"could not trace {type(model).__name__} with torch.fx to find conv + "
                         f"batch-norm pairs ({type(exc).__name__}: {exc}); pass the (conv, bn) "
                         "pairs explicitly") from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    convs = _foldable_convs()
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) not in convs:
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn_name = users[0].target
        bn = modules[bn_name]
        # A module called twice (weight sharing) would fold one use into the other.
        if (isinstance(bn, nn.BatchNorm2d) and calls[node.target] == 1 and calls[bn_name] == 1
                and len(users[0].args) == 1 and bn.track_running_stats):
            pairs.append((str(node.target), str(bn_name)))
    return pairs


def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]] | None = None,
                   statistics: bool = True) -> list[tuple[str, str]]:
    """Fold each (conv, bn) pair into the conv, in place; returns the pairs folded.

    `pairs=None` finds them on an fx trace. `statistics=True` folds the batch norm's eval-mode
    affine map (running statistics, weight, bias, eps) into the conv; `statistics=False` only
    changes the structure (the conv gains a bias, the batch norm becomes its activation or an
    Identity), which is what loading a folded artifact needs before its weights arrive."""
    pairs = find_conv_bn_pairs(model) if pairs is None else [tuple(p) for p in pairs]
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules.get(conv_name), modules.get(bn_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise ModelError(f"cannot fold '{bn_name}' into '{conv_name}': expected a Conv2d and "
                             f"a BatchNorm2d, found {type(conv).__name__} and "
                             f"{type(bn).__name__}; the pairs belong to another architecture")
        if statistics:
            _fold_statistics(conv, bn)
        elif conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype,
                                                 device=conv.weight.device))
        _replace(model, bn_name, _after_norm(bn))
    return [(c, b) for c, b in pairs]


@torch.no_grad()
def _fold_statistics(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise ModelError(f"{type(bn).__name__} keeps no running statistics, so it has no fixed "
                         "eval-mode map to fold; leave it out of the pairs")
    bias_trains = bn.bias.requires_grad if bn.bias is not None else conv.weight.requires_grad
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                        bn.eps, bn.weight, bn.bias)
    conv.weight = weight
    conv.bias = nn.Parameter(bias.data, requires_grad=bias_trains)


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of a folded batch norm: timm's BatchNormAct2d keeps its dropout + activation."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None))
            if m is not None and not isinstance(m, nn.Identity)]
    if not rest:
        return nn.Identity()
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
