"""Before the choice: the fastest candidates that meet the accuracy and size budgets are timed
again, side by side, in interleaved rounds.

Each trial's latency was measured once, minutes apart from the others', under whatever else the
machine was doing then; candidates a few per cent apart can swap places between two such
timings. Timing the shortlist in rounds (every candidate once per round, the order rotated)
exposes them to the same conditions, and the median of the rounds is what the choice uses. The
rounds' range says whether timing can tell two candidates apart at all: where it cannot,
`constraints.choose` prefers the one doing fewer multiply-adds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from ..hardware import physical_cores
from .constraints import Candidate, Constraints, misses

# The shortlist: candidates within this fraction of the fastest eligible one's latency, at most
# MAX_SHORTLIST of them. Single timings on a shared machine wander by a few per cent.
SHORTLIST_MARGIN = 0.15
MAX_SHORTLIST = 4


@dataclass(frozen=True)
class RetimeSettings:
    rounds: int = 5
    iterations: int = 50  # batch-1 calls per candidate per round; the round's figure is their p50
    warmup: int = 5


def shortlist(candidates: list[Candidate], base_val: float,
              cons: Constraints) -> list[Candidate]:
    """The fastest candidates (one per artifact and runtime) that meet every constraint but
    latency, which the re-timing itself decides."""
    eligible: dict[tuple[str, str], Candidate] = {}
    for c in sorted(candidates, key=lambda c: c.latency_ms):
        if not set(misses(c, base_val, cons)) - {"max_latency_ms"}:
            eligible.setdefault((c.artifact, c.runtime), c)
    ranked = list(eligible.values())
    if not ranked:
        return []
    limit = ranked[0].latency_ms * (1 + SHORTLIST_MARGIN)
    return [c for c in ranked if c.latency_ms <= limit][:MAX_SHORTLIST]


def retime(candidates: list[Candidate], base_val: float, cons: Constraints,
           threads: int | None, console: Console,
           settings: RetimeSettings = RetimeSettings()) -> list[dict[str, Any]]:
    """Re-time the shortlist in interleaved rounds and give every candidate of the same
    artifact and runtime the median (`latency_ms`) and range (`latency_range`). Returns one
    record per re-timed candidate; none when fewer than two are close enough to compare."""
    listed = shortlist(candidates, base_val, cons)
    if len(listed) < 2:
        return []
    console.print(f"re-timing the {len(listed)} fastest candidates within budget side by side "
                  f"({settings.rounds} interleaved rounds)")
    rounds = time_interleaved([(Path(c.artifact), c.runtime) for c in listed],
                              threads or physical_cores(), settings)
    records = []
    for c, figures in zip(listed, rounds, strict=True):
        median = round(statistics.median(figures), 4)
        spread = (round(min(figures), 4), round(max(figures), 4))
        records.append({"label": c.label, "artifact": c.artifact, "runtime": c.runtime,
                        "search_latency_ms": c.latency_ms, "rounds_ms": figures,
                        "latency_ms": median, "range_ms": list(spread)})
        for same in candidates:
            if (same.artifact, same.runtime) == (c.artifact, c.runtime):
                same.latency_ms, same.latency_range = median, spread
    return records


def time_interleaved(models: list[tuple[Path, str]], threads: int,
                     settings: RetimeSettings) -> list[list[float]]:
    """Per model, its batch-1 p50 in each round; in round r the order starts at model r."""
    import torch

    from ..runtime.bench import latency_ms
    from ..runtime.predictor import Predictor

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs, inputs = [], []
        for folder, runtime in models:
            predictor = Predictor.from_artifact(folder, runtime=runtime, threads=threads)
            h, w = predictor.input_size
            x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
            predictor.run_normalised(x)
            runs.append(predictor.run_normalised)
            inputs.append(x)
        figures: list[list[float]] = [[] for _ in models]
        for r in range(settings.rounds):
            for k in range(len(models)):
                i = (r + k) % len(models)
                timed = latency_ms(runs[i], inputs[i], settings.warmup, settings.iterations)
                figures[i].append(timed["p50"])
        return figures
    finally:
        torch.set_num_threads(before)
