"""The multimodal settings: which text, how it is encoded, how it meets the image. One dataclass,
validated on creation, saved in the artifact card (so `leanvision.load` rebuilds the network)."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError
from ..setting import setting
from ..training.config import reject_unknown

FUSIONS = ("early", "late", "attention", "text-only")
TEXT_ENCODERS = ("hashed", "minilm")
EMPTY_TEXT = ("keep", "drop", "error")


@dataclass
class MultimodalConfig:
    # CSV columns joined into one text per row
    text_columns: list[str] | None = setting(None, "CSV text columns read with each image "
                                             "(comma-separated): an image + text model.")
    # early: concatenated features; late: weighted logits; attention: image tokens attend to
    # text tokens; text-only: a baseline without the image
    fusion: str = setting("early", "early (default), late, attention or text-only.")
    # hashed n-grams trained here, or pretrained all-MiniLM-L6-v2
    text_encoder: str = setting("hashed", "hashed (default; trained here) or minilm "
                                "(pretrained, offline).")
    # None: fine-tune the hashed encoder (it starts random), keep MiniLM frozen (a few thousand
    # captions would mostly blur what 1B sentence pairs taught it, at 10x the step cost)
    text_finetune: bool | None = setting(None, "Train the text encoder (default: hashed yes, "
                                         "minilm no).")
    # ids per text after tokenization (longer texts are cut)
    max_tokens: int = setting(32, "Tokens per text (32).")
    empty_text: str = setting("keep", "Rows without text: keep (image branch), drop (counted) "
                              "or error.")
    fusion_dim: int = 128  # width of the fused representation / attention
    attention_heads: int = 4
    # Fraction of training rows whose text is hidden, so the fused path does not lean on text
    # alone and the model has seen "no text" (the fallback) during training.
    text_dropout: float = 0.15
    aux_weight: float = 0.5  # weight of the image-only head's loss: the fallback stays good
    # hashed encoder: embedding rows; 65k rows x 64 = 4.2M weights (17 MB), and a few thousand
    # distinct n-grams (short captions, titles, tags) rarely collide in them
    hash_buckets: int = 2**16
    hash_dim: int = 64  # hashed encoder: embedding width
    char_ngrams: tuple[int, ...] = (3, 4)  # hashed encoder: character n-grams (typos, morphology)
    word_ngrams: int = 2  # hashed encoder: word 1..n-grams
    late_weight: float | None = None  # late fusion: text logits weight; None = learned
    text_lr_scale: float = 0.1  # a fine-tuned MiniLM learns at this fraction of the rate

    def __post_init__(self) -> None:
        if isinstance(self.text_columns, str):
            self.text_columns = [c.strip() for c in self.text_columns.split(",") if c.strip()]
        if not self.text_columns:
            raise ConfigError("--text-columns names no column; pass the CSV's text columns, "
                              "e.g. --text-columns title,tags")
        self.text_columns = list(self.text_columns)
        self.char_ngrams = tuple(int(n) for n in self.char_ngrams)
        _one_of("fusion", self.fusion, FUSIONS)
        _one_of("text_encoder", self.text_encoder, TEXT_ENCODERS)
        _one_of("empty_text", self.empty_text, EMPTY_TEXT)
        for name, low, high in (("max_tokens", 4, 512), ("fusion_dim", 8, 4096),
                                ("attention_heads", 1, 64), ("hash_buckets", 1024, 2**24),
                                ("hash_dim", 8, 1024), ("word_ngrams", 1, 4)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"--{name.replace('_', '-')} {value} is out of range; use "
                                  f"{low}..{high}")
        for name, high in (("text_dropout", 0.9), ("aux_weight", 10.0), ("text_lr_scale", 1.0)):
            if not 0.0 <= getattr(self, name) <= high:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} is out of "
                                  f"range; use 0..{high:g}")
        if self.fusion_dim % self.attention_heads:
            raise ConfigError(f"--fusion-dim {self.fusion_dim} must be a multiple of "
                              f"--attention-heads {self.attention_heads}")
        if self.text_encoder == "minilm" and self.max_tokens > 256:
            raise ConfigError("--max-tokens above 256: all-MiniLM-L6-v2 was trained on at most "
                              "256 tokens; use 256 or fewer")

    @property
    def finetune_text(self) -> bool:
        return self.text_finetune if self.text_finetune is not None else \
            self.text_encoder == "hashed"

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["char_ngrams"] = list(self.char_ngrams)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MultimodalConfig:
        reject_unknown(values, {f.name for f in fields(cls)}, "multimodal setting")
        return cls(**values)


def split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(multimodal settings, the rest) of one keyword dict; None values of ours are dropped so
    the dataclass defaults apply."""
    names = {f.name for f in fields(MultimodalConfig)}
    ours = {k: v for k, v in settings.items() if k in names and v is not None}
    rest = {k: v for k, v in settings.items() if k not in names}
    return ours, rest


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not supported{suggestion}; "
                          f"choose one of: {', '.join(allowed)}")
