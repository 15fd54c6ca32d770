"""Lookahead averaging as in airbench (Jordan 2024): every few steps the weights move into an
exponential average of themselves and the average is copied back, with a decay that grows
as training ends (fast moves early, strong averaging late)."""

from __future__ import annotations

import torch

EVERY_N_STEPS = 5
START_EPOCH = 3
DECAY_BASE = 0.95
DECAY_POWER = 3.0


class Lookahead:
    def __init__(self, total_steps: int) -> None:
        self.total_steps = max(1, total_steps)
        self.average: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, model: torch.nn.Module, epoch: int, global_step: int) -> None:
        if epoch < START_EPOCH or global_step % EVERY_N_STEPS:
            return
        state = model.state_dict()
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in state.items()
                            if v.dtype.is_floating_point}
            return
        decay = DECAY_BASE**EVERY_N_STEPS * (global_step / self.total_steps) ** DECAY_POWER
        for name, avg in self.average.items():
            avg.lerp_(state[name], 1 - decay)
            state[name].copy_(avg)

    @torch.no_grad()
    def sync(self, model: torch.nn.Module) -> None:
        """Copy the average into the weights (at the end of every epoch)."""
        if self.average is None:
            return
        state = model.state_dict()
        for name, avg in self.average.items():
            state[name].copy_(avg)

    def state_dict(self) -> dict:
        return {"average": self.average}

    def load_state_dict(self, state: dict) -> None:
        self.average = state["average"]
