"""Text in, token ids out: cleaning, and the two tokenizers behind one small interface.

Both use Hugging Face `tokenizers` (the Rust library behind transformers' fast tokenizers):
- HashedTokenizer: BERT's normaliser (Unicode clean-up, lowercase, accents stripped) and
  pre-tokenizer (whitespace and punctuation), then each word becomes a row of hashed features
  (the word, the bigram ending at it, its character n-grams; fastText's recipe), so no vocabulary
  is stored: ids [L, K] per text, 0 = padding.
- WordPieceTokenizer: all-MiniLM-L6-v2's own tokenizer.json: ids [L] per text, [CLS] ... [SEP],
  0 = [PAD].

An empty text (nothing left after cleaning) is all zeros: the model reads that as "no text" and
answers from the image branch."""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

SEPARATOR = " | "  # between the text columns of one row
MAX_CHAR_FEATURES = 14  # character n-grams kept per word (long words are cut)
_SPACES = re.compile(r"\s+")


def clean_text(text: str | None) -> str:
    """NFKC-normalised, control characters dropped, whitespace collapsed; None -> ""."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", str(text))
    text = "".join(ch if unicodedata.category(ch)[0] != "C" or ch in "\t\n" else " "
                   for ch in text)
    return _SPACES.sub(" ", text).strip()


def join_columns(values: Sequence[str | None]) -> str:
    """One text of a row's text columns (empty columns are left out)."""
    parts = [clean_text(v) for v in values]
    return SEPARATOR.join(p for p in parts if p)


@dataclass
class Encoded:
    ids: torch.Tensor  # int64 [B, L] or [B, L, K]; 0 = padding
    tokens: list[list[str]]  # the text of each non-padding position, per row


def _bert_normaliser():
    from tokenizers import normalizers, pre_tokenizers

    return (normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                       strip_accents=True, lowercase=True),
            pre_tokenizers.BertPreTokenizer())


def _require_tokenizers() -> None:
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        raise ConfigError("text columns need the `tokenizers` package; install the extra: "
                          "pip install 'leanvision[multimodal]'") from None


class HashedTokenizer:
    """Words -> rows of hashed n-gram ids; the settings are the whole state (no vocabulary)."""

    kind = "hashed"

    def __init__(self, max_tokens: int, buckets: int, word_ngrams: int,
                 char_ngrams: Sequence[int]) -> None:
        _require_tokenizers()
        self.max_tokens, self.buckets = int(max_tokens), int(buckets)
        self.word_ngrams, self.char_ngrams = int(word_ngrams), tuple(int(n) for n in char_ngrams)
        self.features = 1 + (self.word_ngrams - 1) + MAX_CHAR_FEATURES  # K
        self._normaliser, self._pre = _bert_normaliser()

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_tokens": self.max_tokens, "buckets": self.buckets,
                "word_ngrams": self.word_ngrams, "char_ngrams": list(self.char_ngrams),
                "hash": "crc32", "normaliser": "bert-uncased", "pre_tokenizer": "bert"}

    def words(self, text: str) -> list[str]:
        pieces = self._pre.pre_tokenize_str(self._normaliser.normalize_str(text))
        # Bare punctuation carries little for a bag of n-grams and would crowd out words.
        return [w for w, _ in pieces if any(ch.isalnum() for ch in w)][:self.max_tokens]

    def _hash(self, feature: str) -> int:
        # crc32, not hash(): Python salts str hashes per process, and ids must be stable.
        return 1 + zlib.crc32(feature.encode("utf-8")) % (self.buckets - 1)

    def encode(self, texts: Sequence[str]) -> Encoded:
        ids = torch.zeros(len(texts), self.max_tokens, self.features, dtype=torch.int64)
        tokens = []
        for row, text in enumerate(texts):
            words = self.words(text)
            tokens.append(words)
            for i, word in enumerate(words):
                feats = [f"w:{word}"]
                for n in range(2, self.word_ngrams + 1):
                    if i - n + 1 >= 0:
                        feats.append(f"{n}:" + " ".join(words[i - n + 1:i + 1]))
                padded = f"<{word}>"
                chars = [f"c:{padded[j:j + n]}" for n in self.char_ngrams
                         for j in range(len(padded) - n + 1)]
                feats.extend(chars[:MAX_CHAR_FEATURES])
                ids[row, i, :len(feats)] = torch.tensor([self._hash(f) for f in feats])
        return Encoded(ids, tokens)


class WordPieceTokenizer:
    """A tokenizer.json (all-MiniLM-L6-v2's WordPiece), truncated and padded to max_tokens."""

    kind = "wordpiece"

    def __init__(self, path: str | Path, max_tokens: int) -> None:
        _require_tokenizers()
        from tokenizers import Tokenizer

        self.path, self.max_tokens = Path(path), int(max_tokens)
        self._tok = Tokenizer.from_file(str(self.path))
        self._tok.enable_truncation(max_length=self.max_tokens)
        self._tok.no_padding()

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_tokens": self.max_tokens, "file": "tokenizer.json",
                "lowercase": True, "pad_id": 0}

    def encode(self, texts: Sequence[str]) -> Encoded:
        ids = torch.zeros(len(texts), self.max_tokens, dtype=torch.int64)
        tokens: list[list[str]] = []
        for row, text in enumerate(texts):
            if not text:
                tokens.append([])  # all [PAD]: "no text", not "[CLS] [SEP]"
                continue
            enc = self._tok.encode(text)
            ids[row, :len(enc.ids)] = torch.tensor(enc.ids, dtype=torch.int64)
            tokens.append(list(enc.tokens))
        return Encoded(ids, tokens)


Tokenizer = HashedTokenizer | WordPieceTokenizer


def tokenizer_from_settings(settings: dict[str, Any], folder: Path | None) -> Tokenizer:
    """The tokenizer a card describes; a WordPiece file is read from the artifact `folder`."""
    if settings["kind"] == "hashed":
        return HashedTokenizer(settings["max_tokens"], settings["buckets"],
                               settings["word_ngrams"], settings["char_ngrams"])
    if folder is None:
        raise ConfigError("a WordPiece tokenizer needs the folder holding its tokenizer.json")
    return WordPieceTokenizer(folder / settings["file"], settings["max_tokens"])


def has_text(ids: torch.Tensor) -> torch.Tensor:
    """bool [B]: rows with at least one token."""
    return ids.reshape(ids.shape[0], -1).ne(0).any(1)


def token_mask(ids: torch.Tensor) -> torch.Tensor:
    """bool [B, L]: positions holding a token."""
    return ids.ne(0) if ids.ndim == 2 else ids.ne(0).any(-1)
