"""Structural edits a card records, so a changed network (pruned channels, folded batch norm)
is rebuilt from its architecture name plus a few JSON facts, never from a pickle.

A card's `transforms` is a list applied in order to the freshly created model, before its
safetensors weights are loaded:

    {"kind": "structure", "modules": {"layer1.0.conv1": {"out_channels": 8}, ...}}
    {"kind": "fold_bn", "pairs": [["conv1", "bn1"], ...]}

`structure` is what Torch-Pruning changes: plain module attributes (channel counts, head
counts, shapes). The tensors themselves take the shapes stored in the weights file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ArtifactError

_PLAIN = (int, float, bool, str)


def structure_diff(reference: nn.Module, model: nn.Module) -> dict[str, dict[str, Any]]:
    """The plain attributes of `model`'s modules that differ from `reference` (same architecture,
    before the edit), as JSON-ready values: what `apply_structure` needs to redo the edit."""
    ref_modules = dict(reference.named_modules())
    diff: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        ref = ref_modules.get(name)
        if ref is None or type(ref) is not type(module):
            raise ArtifactError(f"module '{name}' was replaced or added; only attribute changes "
                                "(channel or head counts) can be recorded")
        ref_vars = vars(ref)
        changed = {attr: _jsonable(value) for attr, value in vars(module).items()
                   if not attr.startswith("_") and attr != "training" and _is_plain(value)
                   and ref_vars.get(attr) != value}
        if changed:
            diff[name] = changed
    return diff


def apply_structure(model: nn.Module, modules: dict[str, dict[str, Any]]) -> None:
    found = dict(model.named_modules())
    for name, attrs in modules.items():
        if name not in found:
            raise ArtifactError(f"the card changes module '{name}', which this architecture "
                                "does not have; the card belongs to another model")
        module = found[name]
        for attr, value in attrs.items():
            current = getattr(module, attr, None)
            setattr(module, attr, tuple(value) if isinstance(current, tuple) else value)


def fit_tensors_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every parameter and buffer the shape it has in `state` (empty values: the weights
    are loaded next). Only called for cards whose transforms changed the structure."""
    for key, saved in state.items():
        owner_name, _, leaf = key.rpartition(".")
        try:
            owner = model.get_submodule(owner_name)
        except AttributeError:
            continue  # load_state_strict names it as unexpected, with the whole picture
        for table in (owner._parameters, owner._buffers):
            current = table.get(leaf)
            if current is None or current.shape == saved.shape:
                continue
            fresh = torch.empty(saved.shape, dtype=current.dtype, device=current.device)
            table[leaf] = (nn.Parameter(fresh, requires_grad=current.requires_grad)
                           if isinstance(current, nn.Parameter) else fresh)


def apply_transforms(model: nn.Module, transforms: list[dict[str, Any]],
                     state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Redo a card's transforms on a fresh model; with `state`, also shape the tensors for it."""
    for transform in transforms:
        kind = transform.get("kind")
        if kind not in TRANSFORMS:
            raise ArtifactError(f"unknown transform '{kind}' in the card (known: "
                                f"{', '.join(sorted(TRANSFORMS))}); upgrade leanvision")
        TRANSFORMS[kind](model, transform)
    if state is not None and transforms:
        fit_tensors_to(model, state)
    return model


def _apply_structure_transform(model: nn.Module, transform: dict[str, Any]) -> None:
    apply_structure(model, transform["modules"])


def _apply_fold_bn(model: nn.Module, transform: dict[str, Any]) -> None:
    from .fold import fold_batchnorm  # only BN-folded cards need it

    fold_batchnorm(model, pairs=[tuple(p) for p in transform["pairs"]], statistics=False)


TRANSFORMS: dict[str, Callable[[nn.Module, dict[str, Any]], None]] = {
    "structure": _apply_structure_transform,
    "fold_bn": _apply_fold_bn,
}


def _is_plain(value: Any) -> bool:
    if isinstance(value, _PLAIN) or value is None:
        return True
    return isinstance(value, tuple | list) and all(isinstance(v, _PLAIN) for v in value)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
