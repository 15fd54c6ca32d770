"""The measurement protocol every benchmark follows (bench/README.md, "Protocol").

- `start_run()` stamps the code being measured when the run STARTS: the git commit, whether the
  tree had uncommitted changes, and a short hash of those changes (`git diff HEAD` plus the names
  and contents of untracked files under src/ and bench/). Edits made while a long run goes on
  cannot change what the record says was measured, and two dirty runs with the same diff_sha ran
  the same code.
- `interleave()` is the one way a benchmark compares timings: every contender is measured once
  per round, the order rotated each round (round r starts at contender r), so a change in the
  machine's load hits all of them; at least MIN_REPEATS rounds, reported as median, min, max and
  every repeat.
- A speed-up is quoted one way: `speedup_median_of_rounds`, the median of the per-round paired
  ratios, with `speedup_range_of_rounds`, their min and max (`ratio()`). `with_round_statistics()`
  adds the same keys to a record written before they existed, from the per-round figures it
  already holds (`python bench/protocol.py FILE...`); `common.write_result` applies it to every
  record, so a script that computes its own ratios still writes them.
- `Run.caveats` are the words a skeptic needs beside a figure ("untrained model", "accuracy guard
  off", "subset of 400 images"): written into the JSON and printed under every table.

Result files are not code: bench/results/ is left out of the dirty check, so a previous run's
uncommitted JSON does not mark the next run dirty."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MIN_REPEATS = 5
# Untracked files under these folders are code a run may import; elsewhere they are ignored.
UNTRACKED_CODE = ("src", "bench")
NOT_CODE = "bench/results"
# The one speed-up statistic: the median of the per-round paired ratios, and their [min, max].
SPEEDUP = "speedup_median_of_rounds"
SPEEDUP_RANGE = "speedup_range_of_rounds"
# Names under which records written by ratio() before SPEEDUP existed hold a ratio entry.
RATIO_NAME = re.compile(r"speed_?up|(^|_)vs(_|$)")


@dataclass(frozen=True)
class Revision:
    """The code a run measured. `commit` is None outside a git checkout."""

    commit: str | None
    dirty: bool = False
    diff_sha: str | None = None  # 12 hex digits of the uncommitted changes; None when clean
    changed: tuple[str, ...] = ()  # the files that differ from the commit

    @property
    def label(self) -> str:
        """'abc1234', or 'abc1234+dirty:<diff_sha>' when the tree had uncommitted changes."""
        if self.commit is None:
            return "unknown (not a git checkout)"
        return f"{self.commit}+dirty:{self.diff_sha}" if self.dirty else self.commit

    def as_json(self) -> dict[str, Any]:
        return {"git": self.label, "git_commit": self.commit, "dirty": self.dirty,
                "diff_sha": self.diff_sha, "changed_files": list(self.changed)}


def revision(repo: Path) -> Revision:
    """Stamp `repo` as it is now (see the module docstring for what counts as a change)."""
    commit = _git(repo, "rev-parse", "--short", "HEAD")
    if commit is None:
        return Revision(None)
    exclude = f":(exclude){NOT_CODE}"
    diff = _git(repo, "diff", "HEAD", "--binary", "--", ".", exclude, text=False) or b""
    changed = (_git(repo, "diff", "HEAD", "--name-only", "--", ".", exclude) or "").split()
    untracked = (_git(repo, "ls-files", "--others", "--exclude-standard", "--",
                      *UNTRACKED_CODE, exclude) or "").split()
    if not diff and not untracked:
        return Revision(commit.strip())
    digest = hashlib.sha256(diff)
    for name in sorted(untracked):  # names and contents: a new file is a change like any other
        digest.update(b"\0untracked\0" + name.encode() + b"\0")
        path = repo / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return Revision(commit.strip(), True, digest.hexdigest()[:12],
                    tuple(sorted({*changed, *untracked})))


def _git(repo: Path, *args: str, text: bool = True) -> Any:
    try:
        out = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                             text=text)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout


@dataclass
class Run:
    """One benchmark run: its revision and start time, stamped once, and its caveats."""

    revision: Revision
    started_utc: str
    caveats: list[str] = field(default_factory=list)

    def caveat(self, words: str) -> None:
        if words not in self.caveats:
            self.caveats.append(words)

    def title(self, title: str) -> str:
        """A table title that says when the measured tree was not a commit."""
        if self.revision.dirty:
            return f"{title} [UNCOMMITTED CHANGES]"
        return title

    def footer(self) -> str:
        lines = [f"revision {self.revision.label}, started {self.started_utc}"]
        if self.revision.dirty:
            lines.append("UNCOMMITTED CHANGES, not reproducible from a commit: " +
                         ", ".join(self.revision.changed[:6]) +
                         (" ..." if len(self.revision.changed) > 6 else ""))
        lines += [f"caveat: {c}" for c in self.caveats]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {**self.revision.as_json(), "started_utc": self.started_utc,
                "caveats": list(self.caveats)}


def start_run(repo: Path, caveats: list[str] | None = None) -> Run:
    """Call first thing in a benchmark's main(): the stamp is of the code that is about to run."""
    return Run(revision(repo), datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
               list(caveats or []))


def interleave(measures: dict[str, Callable[[], float]],
               repeats: int = MIN_REPEATS) -> dict[str, dict[str, Any]]:
    """Call every measure once per round, `repeats` rounds, round r starting at measure r (so
    with A and B: A B, B A, A B, ...). Each call returns one figure (ms, images/s, ...).
    Returns {name: {"median", "min", "max", "repeats"}} with the figures in round order."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats={repeats}: the protocol needs at least {MIN_REPEATS} "
                         "interleaved repeats for a median and a range")
    if not measures:
        raise ValueError("interleave() needs at least one measure")
    names = list(measures)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            figures[name].append(float(measures[name]()))
    return {name: spread(values) for name, values in figures.items()}


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value (rounded to 4 significant decimals for the JSON)."""
    if not values:
        raise ValueError("spread() of no values")
    return {"median": _round(statistics.median(values)), "min": _round(min(values)),
            "max": _round(max(values)), "repeats": [_round(v) for v in values]}


def ratio(top: dict[str, Any], bottom: dict[str, Any]) -> dict[str, Any]:
    """top / bottom for two interleave() entries, paired round by round (the two were measured
    in the same rounds). Quote SPEEDUP, the median of the per-round ratios, with SPEEDUP_RANGE
    (the same as `min` and `max`); `repeats` holds every per-round ratio. `ratio_of_medians` is
    top's median over bottom's, kept for reference; `median` is that same ratio of medians under
    its old name, kept only so that scripts reading it still run (it is not the median of
    `repeats`: do not quote it)."""
    per_round = paired_ratios(top["repeats"], bottom["repeats"])
    of_medians = _round(top["median"] / bottom["median"])
    return {**rounds_statistic(per_round), "ratio_of_medians": of_medians,
            "median": of_medians, "min": min(per_round), "max": max(per_round),
            "repeats": per_round}


def paired_ratios(top: list[float], bottom: list[float]) -> list[float]:
    """top[r] / bottom[r] for every round r, rounded as the JSON stores them."""
    return [_round(a / b) for a, b in zip(top, bottom, strict=True)]


def rounds_statistic(per_round: list[float]) -> dict[str, Any]:
    """{SPEEDUP: the median of the per-round ratios, SPEEDUP_RANGE: [their min, their max]}."""
    if not per_round:
        raise ValueError("rounds_statistic() of no rounds")
    return {SPEEDUP: _round(statistics.median(per_round)),
            SPEEDUP_RANGE: [_round(min(per_round)), _round(max(per_round))]}


def with_round_statistics(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of a result record with SPEEDUP and SPEEDUP_RANGE beside every speed-up whose
    rounds it stores; nothing it holds is changed, and a shape it does not know is left alone
    (it runs on every record written, so it must never lose a run). Three shapes hold rounds:
    ratio() entries (also given `ratio_of_medians`, the value their `median` holds),
    runtime_openvino's table (`speedup_over`: how many times faster this runtime is than each
    other) and optimize_photos' re-timing (`<figure>_rounds` beside its ratio of medians)."""
    out = copy.deepcopy(record)
    _add_to_ratio_entries(out, ())
    figures = out.get("figures")
    if isinstance(figures, dict):
        _add_to_runtime_table(figures.get("latency"))
        _add_to_photo_timing(figures)
    return out


def _rounds(values: Any) -> list[float] | None:
    """`values` if it is a non-empty list of positive numbers, else None."""
    if not isinstance(values, list) or not values:
        return None
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values)
    return values if ok else None


def _paired(top: Any, bottom: Any) -> dict[str, Any] | None:
    """rounds_statistic of top / bottom round by round, or None where they do not pair."""
    top, bottom = _rounds(top), _rounds(bottom)
    if top is None or bottom is None or len(top) != len(bottom):
        return None
    return rounds_statistic(paired_ratios(top, bottom))


def _add_to_ratio_entries(node: Any, path: tuple[str, ...]) -> None:
    if isinstance(node, list):
        for item in node:
            _add_to_ratio_entries(item, path)
    if not isinstance(node, dict):
        return
    per_round = _rounds(node.get("repeats"))
    if "median" in node and per_round and any(RATIO_NAME.search(str(p)) for p in path):
        node.setdefault("ratio_of_medians", node["median"])
        node.update(rounds_statistic(per_round))
    for key, value in node.items():
        _add_to_ratio_entries(value, (*path, key))


def _add_to_runtime_table(latency: Any) -> None:
    """{runtime: {batch: {"rounds_ms": [...]}}}, every runtime timed in the same rounds."""
    if not isinstance(latency, dict):
        return
    table = {name: batches for name, batches in latency.items() if isinstance(batches, dict)}
    for name, batches in table.items():
        for batch, entry in batches.items():
            if not isinstance(entry, dict):
                continue
            over = {other: _paired(table[other].get(batch, {}).get("rounds_ms"),
                                   entry.get("rounds_ms")) for other in table if other != name}
            over = {other: stat for other, stat in over.items() if stat}
            if over:
                entry["speedup_over"] = over


PHOTO_BASE = "base (torch fp32 eager)"


def _add_to_photo_timing(figures: dict[str, Any]) -> None:
    """optimize_photos: base, base INT8 and chosen re-timed in the same rounds (latency_ms_rounds);
    adds `speedup_vs_base_torch_rounds` and `speedup_vs_best_base_int8_rounds`."""
    timing, chosen = figures.get("timing"), figures.get("chosen")
    if not isinstance(timing, dict) or not isinstance(chosen, dict):
        return
    rounds = {name: entry.get("latency_ms_rounds") for name, entry in timing.items()
              if isinstance(entry, dict)}
    fast = rounds.get(f"chosen: {chosen.get('label')}")
    slow_names = {"speedup_vs_base_torch": PHOTO_BASE,
                  "speedup_vs_best_base_int8": figures.get("best_base_int8")}
    for key, slow_name in slow_names.items():
        stat = _paired(rounds.get(slow_name), fast)
        if stat and key in figures:
            figures[f"{key}_rounds"] = stat


def derive_file(path: Path) -> bool:
    """Add with_round_statistics()' keys to a result file in place, keeping its layout (indent,
    final newline). Returns whether the file changed."""
    text = path.read_text()
    record = json.loads(text)
    derived = with_round_statistics(record)
    if derived == record:
        return False
    second = text.split("\n", 2)[1] if "\n" in text else ""
    indent = len(second) - len(second.lstrip(" ")) or 2
    path.write_text(json.dumps(derived, indent=indent) + ("\n" if text.endswith("\n") else ""))
    return True


def _round(value: float) -> float:
    return round(float(value), 4)


if __name__ == "__main__":  # python bench/protocol.py bench/results/*.json
    for name in sys.argv[1:]:
        print(f"{name}: {'derived keys added' if derive_file(Path(name)) else 'unchanged'}")
