"""Artifacts timed side by side under the protocol: each (artifact, runtime) contributes a
batch-1 latency and a batch-N throughput measure, and `protocol.interleave` runs all of them in
rotated rounds, so every contender meets the same machine.

The search's own re-timing (leanvision.search.retime.time_interleaved) rotates the same way but
only times batch-1 p50 of artifacts; benchmarks also compare throughput and plain callables
(a PyTorch loop as a tutorial writes it), so they go through `interleave` directly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from protocol import MIN_REPEATS, interleave, ratio


@dataclass(frozen=True)
class TimingSettings:
    repeats: int = MIN_REPEATS
    batch: int = 32
    warmup: int = 20  # batch-1 calls before each round's timed ones
    iterations: int = 200  # batch-1 calls per round; the round's figure is their p50
    batch_iterations: int = 20  # batch-N calls per round; the round's figure is images/s


def latency_measure(run: Callable[[np.ndarray], Any], x: np.ndarray,
                    settings: TimingSettings) -> Callable[[], float]:
    """One round of batch-1 timing: the p50 in ms of `settings.iterations` calls."""
    from leanvision.runtime.bench import latency_ms

    return lambda: latency_ms(run, x, settings.warmup, settings.iterations)["p50"]


def throughput_measure(run: Callable[[np.ndarray], Any], x: np.ndarray,
                       settings: TimingSettings) -> Callable[[], float]:
    """One round of batch-N timing: images/s over `settings.batch_iterations` calls."""
    from leanvision.runtime.bench import throughput

    return lambda: throughput(run, x, max(1, settings.warmup // 5), settings.batch_iterations)


def artifact_measures(pairs: dict[str, tuple[Path, str]], threads: int,
                      settings: TimingSettings) -> dict[str, Callable[[], float]]:
    """'<name>/b1' (ms) and '<name>/bN' (images/s) measures per named (artifact, runtime)."""
    from leanvision.runtime.predictor import Predictor

    measures: dict[str, Callable[[], float]] = {}
    for name, (folder, runtime) in pairs.items():
        predictor = Predictor.from_artifact(folder, runtime=runtime, threads=threads)
        one, many = random_inputs(predictor.input_size, settings.batch)
        predictor.run_normalised(one)  # torch.compile compiles on its first call: set-up
        predictor.run_normalised(many)
        measures[f"{name}/b1"] = latency_measure(predictor.run_normalised, one, settings)
        measures[f"{name}/b{settings.batch}"] = throughput_measure(predictor.run_normalised,
                                                                   many, settings)
    return measures


def random_inputs(size: tuple[int, int], batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    h, w = size
    return (rng.standard_normal((1, 3, h, w), dtype=np.float32),
            rng.standard_normal((batch, 3, h, w), dtype=np.float32))


def time_artifacts(pairs: dict[str, tuple[Path, str]], threads: int,
                   settings: TimingSettings = TimingSettings(),
                   extra: dict[str, Callable[[], float]] | None = None) -> dict[str, Any]:
    """{name: {"b1_ms": spread, "bN_img_s": spread}} for every pair, plus each `extra` measure
    as {name: spread}, all in the same interleaved rounds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        measures = {**artifact_measures(pairs, threads, settings), **(extra or {})}
        timed = interleave(measures, settings.repeats)
    finally:
        torch.set_num_threads(before)
    out: dict[str, Any] = {name: timed[name] for name in extra or {}}
    for name in pairs:
        out[name] = {"b1_ms": timed[f"{name}/b1"],
                     f"b{settings.batch}_img_s": timed[f"{name}/b{settings.batch}"]}
    return out


def speedup(timed: dict[str, Any], fast: str, slow: str, key: str = "b1_ms") -> dict[str, Any]:
    """How many times faster `fast` is than `slow` (> 1: faster), paired round by round: for a
    latency the ratio slow / fast, for images/s fast / slow."""
    a, b = _entry(timed, fast, key), _entry(timed, slow, key)
    return ratio(b, a) if key.endswith("_ms") else ratio(a, b)


def _entry(timed: dict[str, Any], name: str, key: str) -> dict[str, Any]:
    entry = timed[name]
    return entry if "median" in entry else entry[key]
