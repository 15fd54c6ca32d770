"""Model artifacts: a folder with `model.safetensors` (weights, no pickle) and `model.json`
(the card: architecture, classes, preprocessing, lineage, resolved config and metrics).

Anything that can be given a model accepts such a folder (or its model.json)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._version import __version__
from .errors import ArtifactError, DatasetError, ModelError
from .io import write_atomic, write_json
from .kinds import kind_of

CARD_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
# The training data's path relative to the artifact folder, beside config.data (as given, relative
# to where training ran): a verb run from another folder finds the data through it.
DATA_FROM_ARTIFACT = "data_from_artifact"


@dataclass
class Artifact:
    path: Path
    card: dict[str, Any]
    model: torch.nn.Module

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def num_classes(self) -> int:
        return int(self.card["num_classes"])

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.card["input"]["size"]
        return int(h), int(w)

    @property
    def mean(self) -> list[float]:
        return list(self.card["input"]["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.card["input"]["std"])

    @property
    def tta(self) -> str:
        """Test-time augmentation the model was validated with (part of its inference)."""
        return self.card.get("inference", {}).get("tta", "none")


def make_card(*, arch: str, arch_kwargs: dict, classes: list[str], input_size: tuple[int, int],
              mean: list[float], std: list[float], stage: str, parent: str | None = None,
              config: dict | None = None, metrics: dict | None = None,
              interpolation: str = "bilinear", tta: str = "none",
              transforms: list[dict] | None = None) -> dict[str, Any]:
    """The card of an artifact. `transforms` (structural edits such as pruning) are redone, in
    order, on the freshly created architecture before the weights are loaded."""
    return {
        "format": CARD_FORMAT,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "num_classes": len(classes),
        "classes": list(classes),
        "input": {"size": list(input_size), "mean": list(mean), "std": list(std),
                  "interpolation": interpolation, "resize": "shorter-side+center-crop"},
        "inference": {"tta": tta},
        "transforms": list(transforms or []),
        "stage": stage,
        "parent": parent,
        "config": config or {},
        "metrics": metrics or {},
        "leanvision": __version__,
        "git": git_revision(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save_weights(model: torch.nn.Module, path: str | Path) -> Path:
    # clone().contiguous(): safetensors refuses shared or strided storage.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def save_artifact(folder: str | Path, model: torch.nn.Module, card: dict[str, Any]) -> Path:
    """Write weights then card; the card is written last so a folder with a card is complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / WEIGHTS_FILE)
    write_json(folder / CARD_FILE, with_data_location(card, folder))
    return folder


def _local_path(spec: Any) -> bool:
    return isinstance(spec, str) and bool(spec) and ":" not in spec.split("/")[0]


def with_data_location(card: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The card with its training data's path relative to `folder` (when it is a path here)."""
    spec = card.get("config", {}).get("data")
    if not _local_path(spec) or not Path(spec).exists():
        return card
    return {**card, DATA_FROM_ARTIFACT: os.path.relpath(Path(spec).resolve(), folder.resolve())}


def _locate_data(card: dict[str, Any], folder: Path) -> dict[str, Any]:
    """config.data made to work from any folder: found from the artifact folder first (the
    data the model was trained on, even where this folder holds another of the same name),
    else as given (a card written before the relative path was kept)."""
    config, moved = card.get("config") or {}, card.get(DATA_FROM_ARTIFACT)
    spec = config.get("data")
    if not _local_path(spec) or not moved:
        return card
    found = (folder / moved).resolve()
    return {**card, "config": {**config, "data": str(found)}} if found.exists() else card


def training_data(card: dict[str, Any]) -> str | None:
    """The data the card says the model was trained on (located by read_card); a DatasetError
    that asks for `data=` when it is a path no longer there."""
    spec = card.get("config", {}).get("data")
    if _local_path(spec) and not Path(spec).exists():
        raise DatasetError(f"the data this model was trained on, {spec!r}, is not there (looked "
                           "from this folder and from the artifact's); pass where it is now as "
                           "data=PATH")
    return spec or None


def skip_bad_choice(card: dict[str, Any], explicit: bool | None) -> bool:
    """Whether a verb that reads data leaves out unreadable images: as asked, else as the
    model's training did (so the data it trained on is accepted as it was then)."""
    if explicit is not None:
        return explicit
    return bool(card.get("config", {}).get("skip_bad_images", False))


def same_data(data: str | Path | None, card: dict[str, Any]) -> bool:
    """Whether `data` (None: the card's own) names the data the card was trained on, however
    the path is spelt; the card's validation hold-out is then recreated, not the whole set."""
    spec = card.get("config", {}).get("data")
    if data is None or str(data) == spec:
        return True
    if _local_path(str(data)) and _local_path(spec) and Path(spec).exists():
        return Path(data).resolve() == Path(spec).resolve()
    return False


def read_card(path: str | Path) -> tuple[Path, dict[str, Any]]:
    folder = _artifact_folder(path)
    card_path = folder / CARD_FILE
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{card_path} is not valid JSON ({exc.msg}); re-create the artifact "
                            "with `leanvision train`") from None
    missing = [k for k in ("format", "arch", "classes", "input") if k not in card]
    if missing:
        raise ArtifactError(f"{card_path} lacks {', '.join(missing)}; it is not a leanvision "
                            "model card")
    if card["format"] > CARD_FORMAT:
        raise ArtifactError(f"{card_path} has card format {card['format']}, newer than this "
                            f"leanvision ({__version__}) reads; upgrade leanvision")
    return folder, _locate_data(card, folder)


def load(path: str | Path, device: str | torch.device = "cpu") -> Artifact:
    """Load an artifact folder into an eval-mode model, without unpickling anything."""
    from .models import create_model  # models import nothing from here; keep start-up light

    folder, card = read_card(path)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{folder} has a card but no {WEIGHTS_FILE}; the artifact is "
                            "incomplete: re-run the stage that made it")
    build = kind_of(card).build  # a kind with other inputs (text, ...) builds its own network
    try:
        if build is not None:
            model = build(card, num_classes=len(card["classes"]))
        else:
            model = create_model(card["arch"], num_classes=len(card["classes"]),
                                 **card.get("arch_kwargs", {}))
    except ModelError as exc:
        raise ArtifactError(f"{folder}: {exc}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{weights} could not be read ({exc}); the file is damaged: re-run "
                            "the stage that made it") from None
    transforms = card.get("transforms", [])
    if transforms:
        from .models.surgery import apply_transforms

        apply_transforms(model, transforms, state)
    load_state_strict(model, state, source=str(weights))
    model.eval().to(device)
    return Artifact(path=folder, card=card, model=model)


def require_image_only(card: dict[str, Any], folder: str | Path, verb: str) -> None:
    """Refuse a model of another kind (image + text, ...) in a stage that only knows image
    networks."""
    refusal = kind_of(card).image_stage_refusal
    if refusal is not None:
        raise ArtifactError(f"{folder} {refusal.format(verb=verb)}")


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, refusing any missing, unexpected or mis-shaped tensor with one message."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or misshaped:
        parts = []
        if misshaped:
            k = misshaped[0]
            parts.append(f"{len(misshaped)} tensors differ in shape (first: {k} "
                         f"{tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise ArtifactError(f"{source} does not fit the architecture in its card: "
                            + "; ".join(parts)
                            + ". The weights are for another architecture or class count.")
    model.load_state_dict(state, strict=True)


def _artifact_folder(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"artifact '{path}' does not exist; pass a folder written by "
                            "`leanvision train` (it holds model.json and model.safetensors)")
    if p.is_file():
        if p.name in (CARD_FILE, WEIGHTS_FILE):
            return p.parent
        raise ArtifactError(f"'{path}' is a file; pass the artifact folder that holds "
                            f"{CARD_FILE} and {WEIGHTS_FILE}")
    if not (p / CARD_FILE).is_file():
        raise ArtifactError(f"'{path}' has no {CARD_FILE}; it is not a leanvision artifact "
                            "(train one with `leanvision train DATA --out DIR`)")
    return p


def git_revision() -> str | None:
    """The git revision of the leanvision source tree, when it runs from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
