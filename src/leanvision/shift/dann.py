"""DANN (Ganin & Lempitsky, 2015; Ganin et al., JMLR 2016): a domain classifier on the
penultimate features learns to tell source from target batches, and a gradient-reversal layer
makes the features unable to, while the labelled source batches keep them discriminative.

It runs inside the ordinary fit loop as its `criterion`: the loop forwards the source batch
(a hook on the classifier taps its input features), the criterion forwards a target batch of the
same size, and returns cross-entropy + the domain loss. The reversal weight ramps as
lambda_p = 2 / (1 + exp(-10 p)) - 1 over training progress p, as in the paper."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import normalize
from ..data.augment import random_shift_flip
from ..hardware import Hardware

DOMAIN_HIDDEN = 256
DOMAIN_LR = 1e-3
RAMP_GAMMA = 10.0


class GradReverse(torch.autograd.Function):
    """Identity forward; the gradient multiplied by -lambda on the way back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grl_lambda(progress: float, gamma: float = RAMP_GAMMA) -> float:
    """0 at the start (the domain classifier's early noise stays out of the features), -> 1."""
    return 2.0 / (1.0 + math.exp(-gamma * min(max(progress, 0.0), 1.0))) - 1.0


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final linear layer, whose input is the penultimate feature vector."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no linear classifier whose input features DANN could "
                         "align")
    return linears[-1]


class FeatureTap:
    """Keeps the input of `layer` from the latest forward pass (with its graph, in training)."""

    def __init__(self, layer: nn.Linear) -> None:
        self.features: torch.Tensor | None = None
        self.handle = layer.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.features = inputs[0].flatten(1)

    def take(self) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError("no features were tapped: the classifier did not run")
        return features

    def remove(self) -> None:
        self.handle.remove()


class DannCriterion:
    """criterion(logits, targets, inputs, indices) for the fit loop; see the module docstring."""

    def __init__(self, model: nn.Module, target: torch.Tensor, *, mean: list[float],
                 std: list[float], hw: Hardware, total_steps: int, augment: bool,
                 seed: int = 0, domain_weight: float = 1.0, label_smoothing: float = 0.0,
                 hidden: int = DOMAIN_HIDDEN) -> None:
        self.model, self.hw, self.mean, self.std = model, hw, mean, std
        layer = classifier_layer(model)
        self.tap = FeatureTap(layer)
        self.head = nn.Sequential(nn.Linear(layer.in_features, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 1)).to(hw.device)
        # Adam: invariant to the loss scale a GradScaler may have applied to these gradients.
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=DOMAIN_LR)
        self.target = target.to(hw.device) if hw.device.type == "cuda" else target
        self.total_steps, self.augment = max(1, total_steps), augment
        self.domain_weight, self.label_smoothing = domain_weight, label_smoothing
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.steps = 0
        self.domain_losses: list[float] = []
        self.domain_accuracy: list[float] = []

    def _step_head(self) -> None:
        # The loop's backward reached the head's parameters, but its optimizer only holds the
        # model's: step the head here, one call later, with those gradients.
        grads = [p.grad for p in self.head.parameters() if p.grad is not None]
        if grads and all(torch.isfinite(g).all() for g in grads):
            self.head_opt.step()
        self.head_opt.zero_grad(set_to_none=True)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor,
                 indices: torch.Tensor) -> torch.Tensor:
        self._step_head()
        source = self.tap.take()
        pick = torch.randint(len(self.target), (len(inputs),), generator=self.generator)
        batch = self.target[pick.to(self.target.device)].to(self.hw.device)
        if self.augment:
            batch = random_shift_flip(batch)
        x = normalize(batch, self.mean, self.std)
        if self.hw.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.hw.autocast():
            self.model(x)
        target_features = self.tap.take()
        lambd = grl_lambda(self.steps / self.total_steps)
        self.steps += 1
        features = torch.cat([source, target_features]).float()
        domain = self.head(GradReverse.apply(features, lambd)).squeeze(1)
        is_target = torch.cat([torch.zeros(len(source)), torch.ones(len(target_features))]).to(
            domain.device)
        domain_loss = F.binary_cross_entropy_with_logits(domain, is_target)
        self.domain_losses.append(float(domain_loss.detach()))
        self.domain_accuracy.append(float(((domain > 0).float() == is_target).float().mean()))
        task_loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return task_loss + self.domain_weight * domain_loss

    def close(self) -> dict[str, Any]:
        """Remove the hook; the domain classifier's last figures (0.5 accuracy: features that
        no longer tell the domains apart)."""
        self.tap.remove()
        tail = max(1, len(self.domain_losses) // 10)
        return {"steps": self.steps,
                "final_lambda": grl_lambda(self.steps / self.total_steps),
                "domain_loss_last10pct": _mean(self.domain_losses[-tail:]),
                "domain_accuracy_last10pct": _mean(self.domain_accuracy[-tail:])}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
