"""Scoring each epoch's weights on validation, and choosing which weights a run keeps."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DecodedImages, normalize
from ..hardware import Hardware, pixel_capped_batch
from ..paired import compare
from ..tta import tta_logits
from . import distributed


def prefer_final(best: dict[str, Any], best_state: dict[str, torch.Tensor],
                 last: dict[str, Any], candidates: dict[str, torch.nn.Module],
                 predict: Callable[[torch.nn.Module], np.ndarray], labels: np.ndarray
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor], str | None]:
    """The final epoch's weights unless the paired comparison (leanvision.paired) of the final
    weights with the best-scoring earlier epoch's, image by image on validation, shows the
    final ones surely worse: the 95% interval of their drop lies above zero. `predict(net)`:
    the net's predicted classes for the validation images whose classes are `labels`.

    A schedule anneals towards its last step, so the final weights are the run's intended
    result; an earlier epoch that looks better on a small split is mostly luck of the draw,
    and luck picked among every epoch (the best of many draws), hence the 95% level rather
    than --accept's default 80%. How far held-out data supports it (bench/README.md,
    "Validation decides, test reports"): on the fast recipe the final epoch was also the best
    on validation in all four runs of bench/recipe_validation.py, so the rule costs nothing
    there; on the noisy few-labels curve of bench/few_labels_validation.py it chose twice in
    four runs: once the final weights scored higher on 2,000 held-out images, once the
    best-by-validation epoch did, both within the noise. Returns the note that says which
    weights were kept and the comparison behind it (None when the final epoch was the best)."""
    scores = {name: last.get(f"{val_prefix(name)}_top1") for name in candidates}
    scores = {name: v for name, v in scores.items() if v is not None and math.isfinite(v)}
    if not scores or best["epoch"] == last["epoch"]:
        return best, best_state, None
    source = max(scores, key=scores.get)
    final_net = candidates[source]
    earlier = copy.deepcopy(final_net)  # model and EMA share one architecture
    earlier.load_state_dict(best_state)
    labels = np.asarray(labels)
    before, after = predict(earlier), predict(final_net)
    drop = compare(before == labels, after == labels, before, after)
    final = float(np.mean(after == labels))
    if drop.interval95[0] > 0:
        return best, best_state, (
            f"kept epoch {best['epoch']}'s weights ({best['top1']:.2%} val): the final "
            f"epoch's ({final:.2%}) {drop.describe()} is more than the validation noise")
    note = (f"kept the final epoch's weights ({final:.2%} val): epoch {best['epoch']}'s "
            f"{best['top1']:.2%} is within the validation noise; the final's "
            f"{drop.describe()}")
    return ({"top1": final, "epoch": last["epoch"], "source": source},
            cpu_state(final_net), note)


def final_or_best(best: dict[str, Any], best_state: dict[str, torch.Tensor],
                  last: dict[str, Any], candidates: dict[str, torch.nn.Module],
                  predict: Callable[[torch.nn.Module], np.ndarray], labels: np.ndarray
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor], str | None]:
    """prefer_final, the same on every process: rank 0 decides and the others follow, since
    one prediction flipped between two GPUs must not split the choice."""
    w = distributed.world()
    if w.size == 1:
        return prefer_final(best, best_state, last, candidates, predict, labels)
    decided = None
    if w.main:
        chosen, _, note = prefer_final(best, best_state, last, candidates, predict, labels)
        decided = (chosen, note)
    chosen, note = distributed.share(decided, w)
    if chosen == best:
        return chosen, best_state, note
    return chosen, cpu_state(candidates[chosen["source"]]), note


def val_prefix(candidate: str) -> str:
    """The epoch record's key prefix for a scored net: "val" for the model, "ema_val" for EMA."""
    return "val" if candidate == "model" else "ema_val"


def _val_logits(model: torch.nn.Module, data: DecodedImages, mean: list[float],
                std: list[float], hw: Hardware, batch: int, tta: str | None,
                extra: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, labels) of `data` batch by batch, under the training precision."""
    batch = pixel_capped_batch(batch, data.images.shape[-2], data.images.shape[-1])
    for start in range(0, len(data.labels), batch):
        x = data.images[start:start + batch].to(hw.device)
        y = data.labels[start:start + batch].to(hw.device)
        x = normalize(x, mean, std)
        if hw.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        network = model
        if extra is not None:  # the second input rides along unchanged through the TTA views
            rows = extra[start:start + batch].to(hw.device)

            def network(v: torch.Tensor, rows: torch.Tensor = rows) -> torch.Tensor:
                return model(v, rows)
        with hw.autocast():
            logits = tta_logits(network, x, tta)
        yield logits, y


@torch.no_grad()
def quick_validate(model: torch.nn.Module, data: DecodedImages, mean: list[float],
                   std: list[float], hw: Hardware, batch: int = 500,
                   tta: str | None = None,
                   extra: torch.Tensor | None = None) -> tuple[float, float]:
    """Loss and top-1 under the training precision: a fast signal for checkpoint choice. The
    figures in the card come from evaluate(), in fp32, on the saved artifact."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for logits, y in _val_logits(model, data, mean, std, hw, batch, tta, extra):
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    n = max(1, len(data.labels))
    return loss_sum / n, correct / n


@torch.no_grad()
def val_predictions(model: torch.nn.Module, data: DecodedImages, mean: list[float],
                    std: list[float], hw: Hardware, batch: int = 500, tta: str | None = None,
                    extra: torch.Tensor | None = None) -> np.ndarray:
    """The predicted class of every image of `data`, scored as quick_validate scores them:
    what prefer_final compares two weight sets on."""
    was_training = model.training
    model.eval()
    predicted = [logits.argmax(1).cpu() for logits, _ in
                 _val_logits(model, data, mean, std, hw, batch, tta, extra)]
    model.train(was_training)
    return torch.cat(predicted).numpy() if predicted else np.zeros(0, np.int64)


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
