"""Explanations of a fused model, per image and its text:
- the image branch: the usual maps (Grad-CAM, ..., LIME, SHAP) of explain(), computed with the
  text held fixed (the network seen is `WithText`: images -> fused logits for that text);
- the text: one attribution per token through captum's FeatureAblation (the drop in the class's
  probability when that token is removed; ids set to padding), exact and model-agnostic.
Written to OUT/<nnn>-<image>/ (the image maps) and OUT/explain.json (everything)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from ..artifact import Artifact
from ..errors import ConfigError
from ..io import write_json
from .model import BLOCK, load_tokenizer
from .text import clean_text, token_mask


class WithText(nn.Module):
    """The fused model with one text fixed: images [B, 3, H, W] -> logits [B, C]."""

    def __init__(self, model: nn.Module, text_ids: torch.Tensor) -> None:
        super().__init__()
        self.model, self.text_ids = model, text_ids  # ids [1, L(, K)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ids = self.text_ids.to(images.device).expand(images.shape[0], *self.text_ids.shape[1:])
        return self.model(images, ids)


def explain_multimodal(art: Artifact, images: Sequence[str | Path],
                       texts: Sequence[str | None] | None, *, out: str | Path | None = None,
                       console: Console | None = None, **settings: Any) -> dict[str, Any]:
    from ..explanations.api import explain

    console = console or Console(stderr=True)
    if art.card[BLOCK]["fusion"]["kind"] == "text-only":
        raise ConfigError("a text-only model has no image branch to explain; explain a fused "
                          "model (early, late or attention)")
    texts = list(texts or [])
    if len(texts) > len(images):
        raise ConfigError(f"{len(texts)} texts for {len(images)} images; give at most one "
                          "text per image, in order")
    texts += [None] * (len(images) - len(texts))
    tokenizer = load_tokenizer(art.path, art.card)
    out_dir = Path(out) if out is not None else art.path / "explain" / \
        datetime.now().strftime("%Y%m%d-%H%M%S")
    records = []
    for i, (image, text) in enumerate(zip(images, texts, strict=True)):
        encoded = tokenizer.encode([clean_text(text)])
        # eval(): a fresh module is in training mode, and explain() restores the mode it found,
        # which would leave batch norm updating its statistics on the next forward pass.
        art.model.eval()
        # With its text fixed the model reads images only, so its card loses the block that
        # marks the image + text kind: explain() takes it down its own image path.
        image_card = {k: v for k, v in art.card.items() if k != BLOCK}
        wrapped = Artifact(path=art.path, card=image_card,
                           model=WithText(art.model, encoded.ids).eval())
        sub = out_dir / f"{i:03d}-{Path(image).stem}"
        result = explain(wrapped, [image], out=sub, console=Console(quiet=True), **settings)
        record = result["images"][0]
        cls = art.classes.index(record["explanations"][0]["class"])
        record.update(text=text or "", folder=str(sub),
                      tokens=token_attributions(art, image, encoded, cls)
                      if encoded.tokens[0] else [])
        records.append(record)
    summary = {"artifact": str(art.path), "method": settings.get("method", "gradcam"),
               "text_attribution": "feature ablation per token (captum), probability drop",
               "images": records}
    path = write_json(out_dir / "explain.json", summary)
    for r in records:
        top = sorted(r["tokens"], key=lambda t: -t["attribution"])[:5]
        words = ", ".join(f"{t['token']} {t['attribution']:+.3f}" for t in top) or "(no text)"
        console.print(f"{r['name']}: {r['predicted']['class']} {r['predicted']['prob']:.3f}; "
                      f"text: {words}", highlight=False)
    return {**summary, "path": str(path), "out": str(out_dir)}


def token_attributions(art: Artifact, image: str | Path, encoded,  # noqa: ANN001
                       cls: int) -> list[dict[str, Any]]:
    """[{"token", "attribution"}] in text order: the probability of `cls` with every token
    minus with that token removed (ids set to padding); positive: the token supports the
    class. For WordPiece, [CLS] and [SEP] are left out of the list."""
    from captum.attr import FeatureAblation

    from ..data import normalize
    from ..data.images import decode_resized

    x = normalize(decode_resized(image, art.input_size), art.mean, art.std)[None]
    ids = encoded.ids  # [1, L] or [1, L, K]
    positions = torch.arange(ids.shape[1]).view(1, -1, *([1] * (ids.ndim - 2))).expand_as(ids)

    def probability(batch_ids: torch.Tensor) -> torch.Tensor:
        images = x.expand(batch_ids.shape[0], -1, -1, -1)
        return art.model(images, batch_ids).float().softmax(1)

    art.model.eval()
    with torch.no_grad():
        attr = FeatureAblation(probability).attribute(ids, baselines=0, target=int(cls),
                                                      feature_mask=positions.contiguous())
    per_token = attr.reshape(1, ids.shape[1], -1)[0, :, 0]  # one value per position
    present = token_mask(ids)[0]
    out = []
    for pos, token in enumerate(encoded.tokens[0]):
        if bool(present[pos]) and token not in ("[CLS]", "[SEP]"):
            out.append({"token": token, "attribution": round(float(per_token[pos]), 6)})
    return out
