"""Images with text: CSV rows holding an image path, one or more text columns and a label.

    train(DATA.csv, text_columns=[...], fusion=..., text_encoder=...)   (through kind.py)
      data.py      text columns, empty-text policy, ids aligned with decoded images
      text.py      cleaning, hashed n-gram and WordPiece tokenizers
      encoders.py  hashed n-gram encoder (from scratch), all-MiniLM-L6-v2 (pretrained)
      fusion.py    early / late / cross-attention fusion, fallback to the image branch
      model.py     the card's "multimodal" block and the network it rebuilds
      kind.py      the hooks it registers in leanvision.kinds (load, train, evaluate, ...)
      evaluate.py, predictor.py, export.py, explain.py   the stages on fused artifacts
      compare.py   compare_fusions: image-only, text-only and each fusion, one budget

Heavy modules are imported on first use, so `import leanvision` stays light."""

from __future__ import annotations

import importlib
from typing import Any

from ..kinds import register
from .kind import KIND

# The core reaches this package only through the registry (leanvision.kinds), never by name.
register(KIND)

# config.py imports the training package's config, so even the settings' names load lazily.
_LAZY = {"compare_fusions": "compare", "train_multimodal": "train",
         "evaluate_multimodal": "evaluate", "FusedPredictor": "predictor",
         "EMPTY_TEXT": "config", "FUSIONS": "config", "TEXT_ENCODERS": "config",
         "MultimodalConfig": "config"}

__all__ = ["EMPTY_TEXT", "FUSIONS", "TEXT_ENCODERS", "FusedPredictor", "MultimodalConfig",
           "compare_fusions", "evaluate_multimodal", "train_multimodal"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'leanvision.multimodal' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
