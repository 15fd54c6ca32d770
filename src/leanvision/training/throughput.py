"""Throughput measured like a skeptic, for `--time-budget`.

One timed batch is one draw from a noisy machine: another process, a frequency change or kernels
built on first use can make it many times slower than the work that follows. So a rate is
measured in rounds of the real work until two consecutive rounds agree, and the work itself is
watched while it runs: a budget is refused only when a stable measurement (the fastest rate the
machine has shown, not its slowest moment) proves the work cannot fit."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BudgetError

# Two consecutive rounds within this fraction of each other count as a stable measurement.
AGREEMENT = 0.15
MAX_ROUNDS = 8
# A probe is a small part of any budget: it stops after this long, stable or not.
MAX_PROBE_SECONDS = 20.0


@dataclass
class Rate:
    """Seconds per item: `planning` for sizing work (the agreeing rounds' mean, or the median of
    the rounds when none agreed), `fastest` for refusing it (the best the machine has shown)."""

    rounds: list[float]
    stable: bool

    @property
    def planning(self) -> float:
        if self.stable:
            return (self.rounds[-1] + self.rounds[-2]) / 2
        return statistics.median(self.rounds)

    @property
    def fastest(self) -> float:
        return min(self.rounds)

    def record(self) -> dict:
        return {"seconds_per_item_rounds": [round(r, 6) for r in self.rounds],
                "stable": self.stable}


def agree(a: float, b: float, tolerance: float = AGREEMENT) -> bool:
    return abs(a - b) <= tolerance * max(a, b, 1e-12)


def measure_rate(run_round: Callable[[], int], *, max_rounds: int = MAX_ROUNDS,
                 max_seconds: float = MAX_PROBE_SECONDS,
                 clock: Callable[[], float] = time.perf_counter) -> Rate:
    """Call `run_round` (one round of the real work, returning how many items it did) once to
    warm up, then until two consecutive timed rounds agree, `max_rounds` are timed, or
    `max_seconds` have passed (at least two rounds are always timed)."""
    run_round()
    began = clock()
    rounds: list[float] = []
    while True:
        t0 = clock()
        items = run_round()
        rounds.append((clock() - t0) / max(1, items))
        if len(rounds) >= 2 and agree(rounds[-1], rounds[-2]):
            return Rate(rounds, stable=True)
        if len(rounds) >= max_rounds or (len(rounds) >= 2 and clock() - began > max_seconds):
            return Rate(rounds, stable=False)


@dataclass
class PassWatch:
    """Watches a long pass (`advance(k)` after each batch of k items) and says when its rate,
    measured on the real work, proves it cannot end before `deadline` (a `clock()` value).

    The proof needs a share of the pass done and two rates that both overrun: the whole
    elapsed rate and the rate of the latest stretch. A slow start (kernels built late) is
    forgiven once the pass speeds up; a machine that is slow throughout is not."""

    total: int
    deadline: float | None
    clock: Callable[[], float] = time.perf_counter
    min_share: float = 0.1
    min_seconds: float = 5.0
    started: float = field(init=False)
    done: int = field(init=False, default=0)
    marks: list[tuple[float, int]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.marks = [(self.started, 0)]

    def advance(self, k: int) -> None:
        self.done += k
        self.marks.append((self.clock(), self.done))

    def rates(self) -> tuple[float, float] | None:
        """(whole pass, latest stretch) seconds per item, once enough is done to judge."""
        now, done = self.marks[-1]
        if done < self.min_share * self.total or now - self.started < self.min_seconds:
            return None
        whole = (now - self.started) / done
        # the latest stretch: the most recent marks covering at least a third of what is done
        for t, d in reversed(self.marks[:-1]):
            if done - d >= done / 3:
                return whole, (now - t) / max(1, done - d)
        return whole, whole

    def cannot_finish(self) -> float | None:
        """The projected end of the pass (seconds from now) when even its faster rate
        overruns the deadline; None while it may still fit."""
        if self.deadline is None:
            return None
        rates = self.rates()
        if rates is None:
            return None
        now = self.marks[-1][0]
        left = (self.total - self.done) * min(rates)
        return left if now + left > self.deadline else None

    def record(self) -> dict:
        rates = self.rates()
        return {} if rates is None else {"whole_s_per_item": round(rates[0], 6),
                                         "latest_s_per_item": round(rates[1], 6)}


def budget_refusal(minutes: float, what: str, need_s: float, detail: str) -> BudgetError:
    """The refusal of a `--time-budget` of `minutes` that cannot hold `what` (`need_s` seconds
    measured): `details` carry the figures, so that a caller which gave this run a share of its
    own budget (optimize's base) can quote the budget its user typed instead."""
    suggested = math.ceil(need_s / 60 * 1.5)
    return BudgetError(f"--time-budget {minutes:g} minutes cannot fit {what}: {detail}; pass "
                       f"--time-budget {suggested} or more, or use fewer images",
                       details={"budget_minutes": minutes, "what": what, "detail": detail,
                                "needs_minutes": round(need_s / 60, 2),
                                "suggested_minutes": suggested})


def next_epoch_overruns(deadline: float | None, history: list[dict], done: int, epochs: int,
                        clock: Callable[[], float] = time.perf_counter) -> str | None:
    """Why training stops after `done` of `epochs` epochs: the next one, at the slowest epoch
    time measured so far, would end after `deadline`; None to go on. The epochs were planned
    from a probe; this keeps the plan honest when the machine turns out slower."""
    if deadline is None or done >= epochs or not history:
        return None
    epoch_s = max(r.get("epoch_seconds", 0.0) for r in history[-3:])
    if clock() + epoch_s <= deadline:
        return None
    return (f"time budget: stopped after epoch {done} of {epochs} (an epoch takes about "
            f"{epoch_s:.0f} s here, more than the budget has left)")
