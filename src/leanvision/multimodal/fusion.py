"""The fused classifier: an image network and a text encoder, joined one of three ways.

    images [B, 3, H, W] ──► image net ──► feature map [B, Ci, h, w] ──► image logits [B, C]
                                               │ pooled [B, Fi]                 │ (fallback)
    text ids [B, L(, K)] ─► text encoder ─► tokens [B, L, Dt], pooled [B, Dt]   │
                                               ▼                                ▼
      early:     MLP(concat(pooled image, pooled text))          ──► fused ──► where(has text,
      late:      w_image * image logits + w_text * text logits                 fused, image)
      attention: image tokens attend to text tokens (+ a learned null token), pooled, MLP

A row without text (all ids 0) takes the image logits, in PyTorch and in the exported ONNX
graph alike: missing text falls back to the image branch instead of failing. `forward(images)`
without text ids is the image branch alone (CAM layer search and FLOP counts use it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .text import has_text


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to text tokens (keys/values); a learned null token is
    always present, so an image can attend to "nothing" and a text-less row stays finite."""

    def __init__(self, image_dim: int, text_dim: int, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(image_dim, dim)
        self.k = nn.Linear(text_dim, dim)
        self.v = nn.Linear(text_dim, dim)
        self.null_k = nn.Parameter(torch.zeros(1, 1, dim))
        self.null_v = nn.Parameter(torch.zeros(1, 1, dim))
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        # explanations set keep_weights to read last_weights [B, heads, hw, 1 + L]; off by
        # default, so export and training never store a tensor on the module
        self.keep_weights = False
        self.last_weights: torch.Tensor | None = None

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = image_tokens.shape
        q = self.q(image_tokens)  # [B, hw, d]
        k = torch.cat([self.null_k.expand(b, -1, -1), self.k(text_tokens)], 1)  # [B, 1+L, d]
        v = torch.cat([self.null_v.expand(b, -1, -1), self.v(text_tokens)], 1)
        keep = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)  # [B, 1+L]
        d = q.shape[-1] // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, T, d] -> [B, heads, T, d/heads]
            return t.view(b, t.shape[1], self.heads, d).transpose(1, 2)

        scores = split(q) @ split(k).transpose(-1, -2) / d ** 0.5  # [B, heads, hw, 1+L]
        scores = scores.masked_fill(~keep[:, None, None, :], -1e9)
        weights = scores.softmax(-1)
        if self.keep_weights:
            self.last_weights = weights.detach()
        attended = (weights @ split(v)).transpose(1, 2).reshape(b, n, -1)  # [B, hw, d]
        return self.norm(q + self.out(attended))


class FusedClassifier(nn.Module):
    def __init__(self, image: nn.Module | None, text: nn.Module, num_classes: int, *,
                 fusion: str, fusion_dim: int = 128, heads: int = 4,
                 text_dropout: float = 0.15, late_weight: float | None = None) -> None:
        super().__init__()
        self.fusion, self.text_dropout = fusion, float(text_dropout)
        self.image, self.text = image, text
        text_dim = text.dim
        self.text_norm = nn.LayerNorm(text_dim)
        image_dim = int(image.num_features) if image is not None else 0
        if image is not None:
            self.image_norm = nn.LayerNorm(image_dim)
        if fusion == "early":
            self.head = _mlp(image_dim + text_dim, fusion_dim, num_classes)
        elif fusion == "late":
            self.text_head = nn.Linear(text_dim, num_classes)
            # Learned weights start at 1: the sum of the two branches' logits. A fixed
            # late_weight is stored as a buffer, so the card's kwargs rebuild it exactly.
            self.image_weight = nn.Parameter(torch.ones(()))
            if late_weight is None:
                self.text_weight = nn.Parameter(torch.ones(()))
            else:
                self.register_buffer("text_weight", torch.tensor(float(late_weight)))
        elif fusion == "attention":
            self.cross = CrossAttention(image_dim, text_dim, fusion_dim, heads)
            self.head = _mlp(fusion_dim + image_dim, fusion_dim, num_classes)
        elif fusion == "text-only":
            self.head = _mlp(text_dim, fusion_dim, num_classes)
        else:
            raise ValueError(f"unknown fusion {fusion!r}")
        self.last_image_logits: torch.Tensor | None = None  # training: the auxiliary loss

    # --- the loop's hooks, passed to the image network (AirNet's whitening, ...) ---------------
    def init_from_data(self, images: torch.Tensor) -> None:
        if self.image is not None and hasattr(self.image, "init_from_data"):
            self.image.init_from_data(images)

    def epoch_start(self, epoch: int) -> None:
        if self.image is not None and hasattr(self.image, "epoch_start"):
            self.image.epoch_start(epoch)

    def forward(self, images: torch.Tensor, text_ids: torch.Tensor | None = None,
                ) -> torch.Tensor:
        """logits [B, C]; text_ids None: the image branch alone."""
        fmap = image_logits = None
        if self.image is not None:
            fmap = self.image.forward_features(images)  # [B, Ci, h, w]
            image_logits = self.image.forward_head(fmap)  # [B, C]
        if text_ids is None:
            if image_logits is None:
                raise ValueError("a text-only model needs text ids")
            return image_logits
        present = has_text(text_ids)  # [B]
        if self.training and self.text_dropout > 0 and image_logits is not None:
            # Hide the text of a random share of rows: the fused path must not lean on text
            # alone, and the fallback (image logits) is trained on the rows it will serve.
            present = present & (torch.rand(present.shape, device="cpu")
                                 >= self.text_dropout).to(present.device)
        fused = self._fuse(fmap, image_logits, *self.text(text_ids))
        if image_logits is None:
            return fused
        if self.training:
            self.last_image_logits = image_logits
        return torch.where(present[:, None], fused, image_logits.to(fused.dtype))

    def _fuse(self, fmap: torch.Tensor | None, image_logits: torch.Tensor | None,
              tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        text_vec = self.text_norm(pooled)
        if self.fusion == "text-only":
            return self.head(text_vec)
        if self.fusion == "late":
            return self.image_weight * image_logits + self.text_weight * self.text_head(text_vec)
        image_vec = self.image_norm(self.image.forward_head(fmap, pre_logits=True))
        if self.fusion == "early":
            return self.head(torch.cat([image_vec, text_vec], 1))
        image_tokens = fmap.flatten(2).transpose(1, 2)  # [B, hw, Ci]
        attended = self.cross(image_tokens, tokens, mask).mean(1)  # [B, d]
        return self.head(torch.cat([attended, image_vec], 1))


def _mlp(d_in: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(0.1),
                         nn.Linear(hidden, out))


def aux_criterion(model: FusedClassifier, label_smoothing: float, aux_weight: float,
                  class_weights: torch.Tensor | None = None):
    """The loop's criterion(logits, targets, inputs, indices): cross-entropy of the fused
    logits plus `aux_weight` x that of the image branch alone (kept good as the fallback)."""

    def criterion(logits: torch.Tensor, targets: torch.Tensor, _inputs: torch.Tensor,
                  _indices: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets, weight=class_weights,
                               label_smoothing=label_smoothing)
        image_logits = model.last_image_logits
        if aux_weight > 0 and image_logits is not None:
            loss = loss + aux_weight * F.cross_entropy(
                image_logits.float(), targets, weight=class_weights,
                label_smoothing=label_smoothing)
        model.last_image_logits = None
        return loss

    return criterion
