"""Model kinds: what an artifact's network reads (images; images with text; later others).

The core stages (load, train, evaluate, predict, export, explain) ask this registry for the card's
kind and call its hooks; they never test for a kind themselves. A hook left None means the
stage's own image path serves the kind, so the image kind, the default, has no hooks at all.
A plugin package registers its kind when it is imported (leanvision.multimodal does so from its
__init__); the registry imports the packages named in PLUGINS on its first lookup, so this module
sits low in the layers, imports no stage, and `import leanvision` pays for no plugin. Hooks are
plain callables that import their heavy modules on first use."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ArtifactError

IMAGE = "image"


@dataclass(frozen=True)
class Kind:
    name: str
    # The card block that marks an artifact of this kind (cards name no kind explicitly yet).
    card_block: str | None = None
    # The error after "FOLDER " in a stage that only knows image networks (prune, distill,
    # quantize, ...), `{verb}` standing for the stage; None: those stages accept the kind.
    image_stage_refusal: str | None = None
    # build(card, num_classes) -> nn.Module, the untrained network the card describes
    build: Callable[..., Any] | None = None
    # claim_training(settings, resume) -> (claimed, settings): whether a train() call is this
    # kind's (its settings, or the run a resume names), and the settings to pass on; a kind
    # that does not claim the call removes its own (unset) settings.
    claim_training: Callable[..., tuple[bool, dict[str, Any]]] | None = None
    # train(data, out, *, resume, console, on_epoch_end, nproc, port, track, track_uri,
    #       **settings) -> run summary
    train: Callable[..., dict[str, Any]] | None = None
    # evaluate(art, data, *, split, batch_size, skip_bad_images, device, tta) -> metrics
    evaluate: Callable[..., dict[str, Any]] | None = None
    # predictor(path, runtime, threads, device, spin) -> a Predictor-like object whose
    # predict_images also takes `texts`
    predictor: Callable[..., Any] | None = None
    # export(art, onnx_path, *, batch, opset) -> export_onnx's result record
    export: Callable[..., dict[str, Any]] | None = None
    # export_inputs(card) -> extra fields of the card's "exports" record (further inputs)
    export_inputs: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # explain(art, images, texts, *, out, console, method, target, ...) -> explain.json record
    explain: Callable[..., dict[str, Any]] | None = None


_KINDS: dict[str, Kind] = {IMAGE: Kind(IMAGE)}
# Packages that register kinds, imported by name on the registry's first use (a name, not an
# import: they sit above every stage that asks the registry).
PLUGINS = ["leanvision.multimodal"]
_loaded = False


def _load_plugins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True  # first: a plugin's own register() call comes back here
        for name in PLUGINS:
            importlib.import_module(name)


def register(kind: Kind) -> None:
    """Add a kind; registering a name twice is refused (two plugins claiming one kind would
    otherwise depend on import order)."""
    _load_plugins()
    if kind.name in _KINDS and _KINDS[kind.name] != kind:
        raise ValueError(f"model kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind


def registered() -> list[str]:
    _load_plugins()
    return sorted(_KINDS)


def get_kind(name: str) -> Kind:
    _load_plugins()
    if name not in _KINDS:
        hint = difflib.get_close_matches(name, list(_KINDS), n=1)
        raise ArtifactError(f"unknown model kind {name!r}" + (f" (did you mean {hint[0]!r}?)"
                            if hint else "") + f"; this leanvision knows "
                            f"{', '.join(registered())}: upgrade leanvision or install the "
                            "package that provides the kind")
    return _KINDS[name]


def kind_of(card: dict[str, Any]) -> Kind:
    """The kind of the artifact a card describes: its "kind" field, else the kind whose block
    the card holds, else image."""
    _load_plugins()
    if "kind" in card:
        return get_kind(card["kind"])
    for kind in _KINDS.values():
        if kind.card_block is not None and kind.card_block in card:
            return kind
    return _KINDS[IMAGE]


def training_kind(settings: dict[str, Any], resume: Any) -> tuple[Kind, dict[str, Any]]:
    """The kind a train() call is for and the settings to train it with."""
    _load_plugins()
    for kind in list(_KINDS.values()):
        if kind.claim_training is not None:
            claimed, settings = kind.claim_training(settings, resume)
            if claimed:
                return kind, settings
    return _KINDS[IMAGE], settings
