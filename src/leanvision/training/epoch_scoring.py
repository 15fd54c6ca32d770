"""Scoring each epoch's weights on validation, and choosing which weights a run keeps."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..data import DecodedImages, normalize
from ..hardware import Hardware, pixel_capped_batch
from ..tta import tta_logits


def prefer_final(best: dict[str, Any], best_state: dict[str, torch.Tensor],
                 last: dict[str, Any], n_val: int, candidates: dict[str, torch.nn.Module]
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor], str | None]:
    """The final epoch's weights unless an earlier epoch beat them on validation by more than
    the validation split's sampling noise (one binomial standard error of its top-1).

    A schedule anneals towards its last step, so the final weights are the run's intended
    result; an earlier epoch that looks better on a small split is mostly luck of the draw. On
    CIFAR-10 with 400 validation images (bench/few_labels.py) the best-by-validation epoch 18
    of 24 (81.5% val) scored 77.1% on the test set where the final weights (79.8% val) scored
    78.9%: 1.75 points of validation gap, under the 2.0-point standard error."""
    scores = {name: last.get(f"{val_prefix(name)}_top1") for name in candidates}
    scores = {name: v for name, v in scores.items() if v is not None and math.isfinite(v)}
    if not scores or best["epoch"] == last["epoch"]:
        return best, best_state, None
    source = max(scores, key=scores.get)
    final = scores[source]
    noise = math.sqrt(max(final * (1 - final), 1e-12) / max(1, n_val))
    if best["top1"] - final > noise:
        return best, best_state, None
    note = (f"kept the final epoch's weights ({final:.2%} val): epoch {best['epoch']}'s "
            f"{best['top1']:.2%} is within the validation noise (+-{noise:.2%} on {n_val} "
            "images)")
    return ({"top1": final, "epoch": last["epoch"], "source": source},
            cpu_state(candidates[source]), note)


def val_prefix(candidate: str) -> str:
    """The epoch record's key prefix for a scored net: "val" for the model, "ema_val" for EMA."""
    return "val" if candidate == "model" else "ema_val"


@torch.no_grad()
def quick_validate(model: torch.nn.Module, data: DecodedImages, mean: list[float],
                   std: list[float], hw: Hardware, batch: int = 500,
                   tta: str | None = None,
                   extra: torch.Tensor | None = None) -> tuple[float, float]:
    """Loss and top-1 under the training precision: a fast signal for checkpoint choice. The
    figures in the card come from evaluate(), in fp32, on the saved artifact."""
    was_training = model.training
    model.eval()
    batch = pixel_capped_batch(batch, data.images.shape[-2], data.images.shape[-1])
    loss_sum, correct = 0.0, 0
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
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    n = max(1, len(data.labels))
    return loss_sum / n, correct / n


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
