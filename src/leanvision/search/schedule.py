"""`optimize --time-budget`: which stages still fit, and how much time each training stage gets.

The budget is one wall-clock deadline for the trials (set in api.py after the base is trained,
with the time for the report and the chosen artifact kept aside). Before a stage runs:
- a stage whose kind ran before in this process (PTQ, say) is estimated from that run, scaled by
  the input's pixels, and skipped when it cannot finish in time;
- a training stage gets the time left, shared among the training stages its trial still has
  (after the estimated cost of a PTQ stage that follows), as its own --time-budget: it sizes
  its epochs to it from a measured step (training/budget.py) or refuses to start.
A stage that does not fit ends its trial as "not reached" (a pruned trial whose reason says so),
and the search's summary lists those trials."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna

from ..artifact import read_card
from .space import Pipeline

# Below this many seconds no stage is started: even a cached model's export and benchmark
# take some.
MIN_STAGE_S = 20.0
NOT_REACHED = "not reached"
# The most of the budget the base's training may take, and the time kept for the report and
# the chosen artifact after the last trial.
BASE_SHARE = 0.4
FINISH_RESERVE_S = 120.0


def base_minutes(time_budget: float | None) -> float | None:
    """The base's share of --time-budget: a photo base trained by LP-FT sizes its epochs to
    it; the rest goes to the search."""
    return None if time_budget is None else time_budget * BASE_SHARE


def finish_reserve_s(time_budget: float | None) -> float:
    """Seconds kept for after the trials: the front's report, the chosen artifact's export."""
    return 0.0 if time_budget is None else min(FINISH_RESERVE_S, 0.1 * time_budget * 60)


def training_stages(p: Pipeline) -> int:
    """How many stages of `p` train a network (each gets a share of the time left)."""
    return (bool(p.resolution) + (p.source != "base") + bool(p.prune_ratio)
            + (bool(p.prune_ratio) and p.recovery == "kd") + (p.quant == "qat"))


def kind_of(stage: str) -> str:
    """prune50 → prune, res160 → res, student-resnet8 → student."""
    return stage.rstrip("0123456789").split("-")[0]


class StageClock:
    """Per-process estimates of stage times and the deadline they are held to."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.seconds_per_pixel: dict[str, float] = {}

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.time()

    def estimate(self, stage: str, parent: Path) -> float | None:
        rate = self.seconds_per_pixel.get(kind_of(stage))
        return None if rate is None else rate * _pixels(parent)

    def allow(self, trial: optuna.Trial, stage: str, parent: Path, training_left: int,
              ptq_after: bool = False) -> dict[str, Any]:
        """{} or {"time_budget": minutes} for a stage about to run; raises TrialPruned when it
        cannot finish before the deadline."""
        left = self.left()
        if left is None:
            return {}
        if left < MIN_STAGE_S:
            self.out_of_time(trial, stage, f"{max(0.0, left):.0f} s of the time budget left")
        if not training_left:
            need = self.estimate(stage, parent)
            if need is not None and need > left:
                self.out_of_time(trial, stage, f"it took {need:.0f} s before (scaled to this "
                                 f"input), {left:.0f} s of the time budget left")
            return {}
        after = (self.estimate("ptq", parent) or 0.0) if ptq_after else 0.0
        share = (left - after) / training_left
        if share < MIN_STAGE_S:
            self.out_of_time(trial, stage, f"{left:.0f} s of the time budget left for "
                             f"{training_left} training stage(s)")
        return {"time_budget": share / 60}

    def record(self, stage: str, run: Any, parent: Path) -> None:
        if not run.cached:
            self.seconds_per_pixel[kind_of(stage)] = run.seconds / _pixels(parent)

    @staticmethod
    def out_of_time(trial: optuna.Trial, stage: str, why: str) -> None:
        reason = f"{NOT_REACHED}: the {stage} stage does not fit the time budget ({why})"
        trial.set_user_attr("pruned_reason", reason)
        trial.set_user_attr("not_reached", True)
        raise optuna.TrialPruned(reason)


def _pixels(folder: Path) -> float:
    h, w = read_card(folder)[1]["input"]["size"]
    return float(h * w)


def pruned_alike(p: Pipeline, hopeless: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A pruning found hopeless before that `p` cannot beat: `p` removes at least as large a
    share of the FLOPs at the same or a smaller input side (0: the base's own, the largest),
    so its pruned network fine-tunes from no better a start in no more time."""
    if p.source != "base" or not p.prune_ratio:
        return None

    def side(resolution: int) -> float:
        return resolution or float("inf")

    for h in hopeless:
        if h["ratio"] <= p.prune_ratio and side(p.resolution) <= side(h["resolution"]):
            return h
    return None

