"""One stage scaffold: what every stage (prune, distill, quantize, resize, adapt, robustness)
does around its own logic, written once. Open the parent artifact and refuse kinds the stage
does not know; find the data from the card and check its classes; name, check and claim the
output folder; write the new card with its lineage. Tracking is the `tracking.tracked`
decorator, the multi-process relaunch `training.distributed.relaunch`.

Each stage keeps its own error wording (tests and users quote it), so the checks that differ
in their message take it as an argument instead of rewording it."""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..artifact import (
    CARD_FILE,
    Artifact,
    load,
    make_card,
    require_image_only,
    training_data,
)
from ..data import DataSource, load_data
from ..errors import ConfigError
from ..io import run_folder
from ..training.checkpoint import CHECKPOINT_FILE


def open_parent(artifact: str | Path | Artifact, verb: str) -> Artifact:
    """The artifact a stage starts from (a folder, or one already loaded), refused unless it is
    an image network: the stages only know those."""
    art = artifact if isinstance(artifact, Artifact) else load(artifact)
    require_image_only(art.card, art.path, verb)
    return art


def data_of(art: Artifact, data: str | Path | None, missing: str | None) -> str | None:
    """`data` when given, else the data the parent's card says it was trained on. `missing`:
    the error when neither names any (None: the stage can go without)."""
    spec = str(data) if data is not None else training_data(art.card)
    if not spec and missing is not None:
        raise ConfigError(missing)
    return spec or None


def matching_data(data_spec: str, art: Artifact,
                  mismatch: Callable[[list[str]], str] | None = None) -> DataSource:
    """The data, refused unless it holds exactly the parent's classes in the parent's order.
    `mismatch(data classes)`: the stage's own error message (default: check_classes')."""
    source = load_data(data_spec)
    if mismatch is None:
        check_classes(source.classes, art.classes, data_spec)
    elif list(source.classes) != art.classes:
        raise ConfigError(mismatch(list(source.classes)))
    return source


def check_classes(data_classes: list[str], model_classes: list[str], data_spec: str) -> None:
    """ConfigError unless the data holds exactly the model's classes, in the model's order."""
    if list(data_classes) == list(model_classes):
        return
    missing = [c for c in model_classes if c not in data_classes]
    extra = [c for c in data_classes if c not in model_classes]
    detail = "; ".join(part for part in (
        f"missing from the data: {', '.join(missing[:5])}" if missing else "",
        f"unknown to the model: {', '.join(extra[:5])}" if extra else "",
        "same names in another order" if not missing and not extra else "") if part)
    raise ConfigError(f"the classes of {data_spec} do not match the model's ({detail}); "
                      "pass --data with the data the model was trained on")


# ---- the output folder ------------------------------------------------------------------------


def default_out(verb: str, name: str) -> Path:
    """runs/<verb>/<name>-<time stamp>: outputs go under runs/ (DESIGN.md, conventions)."""
    return run_folder(verb, name)


def safe_name(text: str) -> str:
    """A data spec or model name as a folder-name part (no separators, no spaces)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def check_fresh(out_dir: Path, *, run: bool = False) -> None:
    """Refuse an --out that already holds an artifact; `run`: a stage that trains also refuses
    a training checkpoint there (it would be overwritten, not resumed)."""
    if (out_dir / CARD_FILE).exists() or (run and (out_dir / CHECKPOINT_FILE).exists()):
        raise ConfigError(f"{out_dir} already holds {'a run' if run else 'an artifact'}; "
                          "choose another --out")


def claim(out_dir: Path) -> bool:
    """Refuse a folder that holds anything; True when this call creates it (see release)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"--out {out_dir} is a file; choose a folder")
        if (out_dir / CARD_FILE).exists() or (out_dir / CHECKPOINT_FILE).exists():
            raise ConfigError(f"{out_dir} already holds an artifact; choose another --out")
        if any(out_dir.iterdir()):
            raise ConfigError(f"{out_dir} is not empty; choose a new or empty --out folder")
        return False
    return True


def release(out_dir: Path, created: bool) -> None:
    """Remove what this call wrote after a failure (the folder if it made it, else its
    contents), so a failed stage leaves no half artifact behind."""
    if not out_dir.exists():
        return
    if created:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for child in out_dir.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# ---- the new artifact -------------------------------------------------------------------------


def child_card(parent: Artifact, stage: str, *, config: dict[str, Any],
               metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card of an artifact that keeps its parent's network and preprocessing (architecture,
    classes, input, TTA, structural transforms) with this stage's lineage: stage and parent.
    Stages that train write theirs through train_on(stage=..., parent=...) instead."""
    return make_card(arch=parent.card["arch"],
                     arch_kwargs=copy.deepcopy(parent.card.get("arch_kwargs", {})),
                     classes=parent.classes, input_size=parent.input_size, mean=parent.mean,
                     std=parent.std, stage=stage, parent=str(parent.path), config=config,
                     metrics=metrics,
                     interpolation=parent.card["input"].get("interpolation", "bilinear"),
                     tta=parent.tta, transforms=copy.deepcopy(parent.card.get("transforms", [])))
