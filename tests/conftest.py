"""Shared fixtures: tiny labelled image folders made on the fly (no network, no shared data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Three visually distinct classes, so two epochs of a tiny net separate them.
CLASS_COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 50, 210)}


def make_image_folder(root: Path, per_class: int = 12, size: int = 16, seed: int = 0,
                      classes: dict[str, tuple[int, int, int]] | None = None) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in (classes or CLASS_COLOURS).items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, size=(size, size, 3))
            pixels = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def one_thread():
    """Tiny batches gain nothing from threads, and on a shared 2-core machine a second OpenMP
    thread can stall for whole time slices; use with pytest.mark.usefixtures("one_thread")."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The fastest settings that still exercise the whole loop (small net, few steps).
FAST = dict(model="resnet8", epochs=2, batch_size=8, progress=False, val_fraction=0.25)
