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
- `Run.caveats` are the words a skeptic needs beside a figure ("untrained model", "accuracy guard
  off", "subset of 400 images"): written into the JSON and printed under every table.

Result files are not code: bench/results/ is left out of the dirty check, so a previous run's
uncommitted JSON does not mark the next run dirty."""

from __future__ import annotations

import hashlib
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MIN_REPEATS = 5
# Untracked files under these folders are code a run may import; elsewhere they are ignored.
UNTRACKED_CODE = ("src", "bench")
NOT_CODE = "bench/results"


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
    """top / bottom for two interleave() entries: the ratio of the medians, and the min and max
    of the per-round ratios (the two were measured in the same rounds)."""
    per_round = [a / b for a, b in zip(top["repeats"], bottom["repeats"], strict=True)]
    return {"median": _round(top["median"] / bottom["median"]),
            "min": _round(min(per_round)), "max": _round(max(per_round)),
            "repeats": [_round(v) for v in per_round]}


def _round(value: float) -> float:
    return round(float(value), 4)
