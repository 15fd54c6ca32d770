"""Per-epoch checkpoints for exact resume.

Everything that decides the next step is saved: model, optimizer, LR controller, grad scaler,
EMA, RNG states and the epoch. The data order is a pure function of (seed, epoch), so it needs no
state. Only tensors and plain containers go in, so loading works with weights_only=True."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError
from ..io import write_atomic

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    payload = dict(state, version=CHECKPOINT_VERSION)
    # JSON strings keep the config free of types weights_only refuses.
    payload["config"] = json.dumps(payload["config"])
    return write_atomic(folder / CHECKPOINT_FILE, lambda tmp: torch.save(payload, tmp))


def find_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    candidate = p / CHECKPOINT_FILE if p.is_dir() else p
    if not candidate.is_file():
        raise ArtifactError(f"no checkpoint at '{path}'; --resume takes a training run folder "
                            f"that holds {CHECKPOINT_FILE} (or the file itself)")
    return candidate


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    file = find_checkpoint(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: one message, no traceback
        raise ArtifactError(f"{file} could not be read as a leanvision checkpoint "
                            f"({type(exc).__name__}: {str(exc)[:200]}); it is damaged or was "
                            "not written by leanvision") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ArtifactError(f"{file} is not a leanvision checkpoint of version "
                            f"{CHECKPOINT_VERSION}")
    state["config"] = json.loads(state["config"])
    return state
