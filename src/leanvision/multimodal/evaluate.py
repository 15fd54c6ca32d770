"""`evaluate` for fused artifacts: the same metrics as image models, on images with their text,
plus the accuracy of the fallback (the same images with the text withheld)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..artifact import Artifact, load, same_data, training_data
from ..data import ImageChecks, decode_images, normalize
from ..data.partition import select_split
from ..data.sources import ImageRecords
from ..errors import DatasetError
from ..evaluate import classification_metrics, model_cost, remap_labels
from ..hardware import choose_hardware
from ..tta import check_tta, tta_logits
from .config import MultimodalConfig
from .data import encode_rows, prepare_source
from .model import BLOCK, load_tokenizer
from .text import has_text


def card_config(card: dict[str, Any]) -> MultimodalConfig:
    return MultimodalConfig.from_dict(card[BLOCK]["config"])


@torch.no_grad()
def fused_logits(model: torch.nn.Module, images: torch.Tensor, text_ids: torch.Tensor,
                 mean: list[float], std: list[float], device: torch.device | str = "cpu",
                 batch_size: int = 256, tta: str | None = None) -> torch.Tensor:
    """fp32 logits [N, C] for uint8 images [N, 3, H, W] and their ids [N, L(, K)]."""
    model.eval()
    device = torch.device(device)
    model.to(device)
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device), mean, std)
        ids = text_ids[start:start + batch_size].to(device)
        out.append(tta_logits(lambda v, ids=ids: model(v, ids), x, tta).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def evaluate_multimodal(art: Artifact | str | Path, data: str | Path | None = None, *,
                        split: str = "auto", batch_size: int = 256,
                        skip_bad_images: bool = False, device: str = "auto",
                        tta: str | None = None) -> dict[str, Any]:
    """`leanvision.evaluate` of a fused artifact (it dispatches here)."""
    check_tta(tta)
    art = art if isinstance(art, Artifact) else load(art)
    config = art.card.get("config", {})
    data_spec = str(data) if data is not None else training_data(art.card)
    if not data_spec:
        raise DatasetError("the artifact's card does not name its training data; pass data=PATH")
    source, _ = prepare_source(data_spec, card_config(art.card))
    val_fraction = config.get("val_fraction", 0.1) if same_data(data, art.card) else 0.0
    split_name, records = select_split(source, split, val_fraction, config.get("seed", 0))
    records = remap_labels(records, source.classes, art.classes)
    return evaluate_records_multimodal(art, records, split_name, data_spec, batch_size=batch_size,
                                       skip_bad_images=skip_bad_images, device=device, tta=tta)


def evaluate_records_multimodal(art: Artifact, records: ImageRecords, split_name: str,
                                data_spec: str, *, batch_size: int = 256,
                                skip_bad_images: bool = False, device: str = "auto",
                                tta: str | None = None, fallback: bool = True,
                                ) -> dict[str, Any]:
    tta = check_tta(tta) or art.tta
    hw = choose_hardware(device, "fp32")
    decoded = decode_images(records, art.input_size, ImageChecks(), skip_bad=skip_bad_images)
    ids = encode_rows(load_tokenizer(art.path, art.card), records, decoded.kept)
    logits = fused_logits(art.model, decoded.images, ids, art.mean, art.std, hw.device,
                          batch_size, tta)
    metrics = classification_metrics(logits, decoded.labels, art.classes)
    with_text = int(has_text(ids).sum())
    result: dict[str, Any] = {
        "artifact": str(art.path), "data": data_spec, "split": split_name, "tta": tta,
        "skipped_images": len(decoded.bad), "metrics": metrics,
        "text": {"rows": len(ids), "with_text": with_text, "without_text": len(ids) - with_text},
    }
    if fallback and art.card[BLOCK]["fusion"]["kind"] != "text-only":
        # The same images with every text withheld: what a user without text gets.
        image_only = fused_logits(art.model, decoded.images, torch.zeros_like(ids), art.mean,
                                  art.std, hw.device, batch_size, tta)
        result["fallback"] = {"top1_without_text": float(
            (image_only.argmax(1) == decoded.labels).float().mean())}
    art.model.to("cpu")
    result["cost"] = model_cost(art.model, art.input_size, art.path) \
        if art.card[BLOCK]["fusion"]["kind"] != "text-only" else {"params": sum(
            p.numel() for p in art.model.parameters()), "flops": 0}
    return result
