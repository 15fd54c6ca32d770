"""`leanvision.resize`: the same classifier at another input resolution.

A 224 px mobile network served at 160 px costs about half the compute, and its accuracy
often barely moves once its weights have seen that size. The new artifact's card carries the
new input size, so evaluation, export, serving and the benchmark all read it.

Two ways to get there, chosen from how the parent was trained:
- **top only**: a parent trained by the transfer path (a linear probe or LP-FT) still has its
  pretrained frozen part, so it continues with its own resolved recipe on cached activations at
  the new size: the frozen part runs once, at (new / old)^2 of its cost at the old size, and
  only the top trains, starting from the parent's weights (its own accuracy at the new size is
  the candidate to beat, as the linear probe is in training). The top is one stage deeper than
  the parent's: a new size moves the statistics of every stage's input, and one more stage
  adapting to them recovers more of the parent's validation accuracy than the recipe's own
  depth (bench/resize_stages.py measures it; its results were never committed, so this depth
  has no stored measurement yet).
- **fine-tune**: any other parent continues from its own weights at the new size for a few
  epochs at a gentle rate (AdamW 1e-3, no warm-up), as a pruned network is fine-tuned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from ..artifact import Artifact
from ..data import decoding_for
from ..errors import ConfigError
from ..training.api import StartModel, train_on
from ..training.config import TrainConfig
from ..training.transfer import TOP_STAGES
from .stage import data_of, matching_data, open_parent

# Settings of the parent's training that describe its recipe, not its run: the top-only path
# copies them so that only the input size differs.
NOT_COPIED = ("data", "img_size", "progress", "cache_dir", "time_budget", "workers")
GENTLE = {"optimizer": "adamw", "lr": 1e-3, "warmup_epochs": 0.0}
MIN_SIDE = 8  # as TrainConfig.img_size


@decoding_for("resize")
def resize(artifact: str | Path | Artifact, data: str | Path | None = None,
           out: str | Path | None = None, *, size: int, epochs: int | None = None,
           time_budget: float | None = None, top_stages: int | None = None,
           console: Console | None = None, **settings: Any) -> dict[str, Any]:
    """Write ARTIFACT's classifier at `size` x `size` px input into OUT.

    `data`: the data it was trained on (default: the card's). `epochs`: fine-tuning epochs for a
    parent that is not re-fitted (default 2). `time_budget` (minutes): the run sizes its epochs
    to it. `top_stages`: how many of the last stages train on cached activations when the
    parent is re-fitted (default: one more than the transfer recipe's).
    `settings`: TrainConfig fields that override the parent's recipe.
    Returns the training summary of the new artifact."""
    art = open_parent(artifact, "resize")
    if not MIN_SIDE <= int(size) <= 4096:
        raise ConfigError(f"--size {size} must lie between {MIN_SIDE} and 4096 pixels")
    if top_stages is not None and top_stages < 1:
        raise ConfigError(f"--top-stages {top_stages} must be at least 1 (the last stage)")
    config = dict(art.card.get("config", {}))
    data_spec = data_of(art, data, f"{art.path} does not name its data; pass DATA")
    source = matching_data(data_spec, art)
    out_dir = Path(out) if out is not None else art.path.parent / f"{art.path.name}-{size}px"
    console = console or Console(stderr=True)
    start = StartModel.from_artifact(art)
    start.input_size = (int(size), int(size))
    if refits(art.card):
        start.transfer = True
        start.top_stages = top_stages or TOP_STAGES + 1
        recipe = {k: v for k, v in config.items() if k not in NOT_COPIED}
        cfg = TrainConfig.from_dict({**recipe, **settings, "data": data_spec,
                                     "time_budget": time_budget})
        return train_on(source, cfg, out_dir, console=console, start=start, stage="resize",
                        parent=str(art.path))
    keep = {k: config[k] for k in ("val_fraction", "seed", "skip_bad_images", "tta", "balance")
            if k in config}
    cfg = TrainConfig.from_dict({**keep, "model": art.card["arch"], "epochs": epochs or 2,
                                 **GENTLE, **settings, "data": data_spec,
                                 "time_budget": time_budget})
    return train_on(source, cfg, out_dir, console=console, start=start, stage="resize",
                    parent=str(art.path))


def refits(card: dict[str, Any]) -> bool:
    """Whether a parent continues on the cached transfer path: trained by it from pretrained
    weights (its frozen part is still the pretrained one), by train or an earlier resize."""
    return bool(card.get("training", {}).get("transfer")) and card.get("stage") in (
        "train", "resize")
