"""What every benchmark shares: finding and caching CIFAR-10, deterministic subsets, and a JSON
record that carries the recipe (version, git revision, time, hardware) beside the figures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from protocol import Run, interleave, ratio, revision, spread, start_run, with_round_statistics
from rich.console import Console
from rich.table import Table

import leanvision
from leanvision.hardware import describe_machine
from leanvision.io import write_json

__all__ = ["Run", "interleave", "ratio", "spread", "start_run"]  # the protocol, re-exported

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
CACHE = Path(os.environ.get("LEANVISION_BENCH_CACHE", "/tmp/leanvision-bench"))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
console = Console()


def die(message: str, code: int = 2) -> None:
    console.print(f"[bold red]bench:[/bold red] {message}", highlight=False)
    raise SystemExit(code)


def cifar10() -> Path:
    """The extracted CIFAR-10 folder (holding train/ and test/), extracting once if needed.

    $LEANVISION_CIFAR10 may name an extracted folder or the tarball; otherwise the shared copy
    at ../shared/data/cifar10-jpg.tar.gz (relative to the repository) is used."""
    given = os.environ.get("LEANVISION_CIFAR10")
    source = Path(given).expanduser() if given else DEFAULT_TARBALL
    if source.is_dir():
        for root in (source, source / "cifar10"):
            if (root / "train").is_dir():
                return root
        die(f"LEANVISION_CIFAR10={source} has no train/ folder; point it at the folder that "
            "holds train/ and test/, or at cifar10-jpg.tar.gz")
    if not source.is_file():
        origin = "LEANVISION_CIFAR10" if given else "the default location"
        die(f"CIFAR-10 not found at {source} ({origin}). Put cifar10-jpg.tar.gz in "
            "../shared/data/ or set LEANVISION_CIFAR10 to the tarball or an extracted folder.")
    return _extract_once(source, CACHE / "cifar10")


def _extract_once(tarball: Path, target: Path) -> Path:
    marker = target / ".complete"
    if marker.is_file() and marker.read_text() == _stamp(tarball):
        return target
    console.print(f"extracting {tarball} to {target} (once) ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        # GNU tar is several times faster than tarfile on 60k small files and refuses ../ names.
        subprocess.run(["tar", "xzf", str(tarball), "-C", str(staging)], check=True)
        inner = staging / "cifar10" if (staging / "cifar10" / "train").is_dir() else staging
        if not (inner / "train").is_dir():
            die(f"{tarball} holds no cifar10/train/ folder; is it the right archive?")
        (inner / ".complete").write_text(_stamp(tarball))
        # Swapped in by two renames, not removed and re-extracted in place: another bench may be
        # reading the old copy through symlinks (a holdout or subset folder), and removing 60k
        # files under it made its images vanish mid-run.
        if target.exists():
            retired = staging.with_name(f".retired-{target.name}-{os.getpid()}")
            target.rename(retired)
            inner.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            inner.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()} {st.st_size} {int(st.st_mtime)}"


def subset(root: Path, train_per_class: int, val_per_class: int = 0,
           include_test: bool = False) -> Path:
    """A folder of symlinks: the first `train_per_class` images of each class (sorted names) as
    train/, the next `val_per_class` as val/, and optionally the whole test/ split."""
    name = f"cifar10-{train_per_class}" + (f"-val{val_per_class}" if val_per_class else "") \
        + ("-test" if include_test else "")
    target = CACHE / name
    marker = target / ".complete"
    if marker.is_file() and marker.read_text() == str(root):
        return target
    if target.exists():
        shutil.rmtree(target)
    for cls in CLASSES:
        files = sorted((root / "train" / cls).iterdir())
        if len(files) < train_per_class + val_per_class:
            die(f"class {cls} has {len(files)} training images; asked for "
                f"{train_per_class} + {val_per_class}")
        link_files(files[:train_per_class], target / "train" / cls)
        link_files(files[train_per_class:train_per_class + val_per_class], target / "val" / cls)
        if include_test:
            link_files(sorted((root / "test" / cls).iterdir()), target / "test" / cls)
    marker.write_text(str(root))
    return target


def link_files(files: list[Path], folder: Path) -> None:
    """Symlink each of `files` into `folder` (made if needed); names already there are kept."""
    if not files:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        target = folder / f.name
        if not target.exists():  # a half-built folder from an interrupted run is completed
            target.symlink_to(f)


class CpuShare:
    """How much of the machine other processes used while a block ran: on a shared machine a
    timing is only meaningful when this is near 0, so every result records it.

        with CpuShare() as share: ...
        share.others  # fraction of all cores busy with other processes, 0..1"""

    def __enter__(self) -> CpuShare:
        self._busy, self._own, self._t = _machine_busy_seconds(), _own_cpu_seconds(), time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = max(time.time() - self._t, 1e-9)
        busy = _machine_busy_seconds() - self._busy
        own = _own_cpu_seconds() - self._own
        self.others = max(0.0, (busy - own) / (elapsed * (os.cpu_count() or 1)))


def _machine_busy_seconds() -> float:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    # This process and its finished children (DataLoader workers are joined by epoch end).
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def git_revision() -> str:
    """The tree as it is now: 'abc1234', or 'abc1234+dirty:<diff hash>' (protocol.revision)."""
    return revision(REPO).label


def begin(caveats: list[str] | None = None) -> Run:
    """start_run() for this repository: call first thing in main()."""
    run = start_run(REPO, caveats)
    if run.revision.dirty:
        console.print(f"[bold yellow]bench: the tree has uncommitted changes "
                      f"({', '.join(run.revision.changed[:6])}); the result will say "
                      f"{run.revision.label}[/bold yellow]", highlight=False)
    return run


def result_record(name: str, figures: dict[str, Any], config: dict[str, Any],
                  revision: str | Run | None = None) -> dict[str, Any]:
    """`revision`: the Run from begin() (or a git_revision() string) taken when the run started,
    the code that was measured; without it, the tree as it is when the record is written."""
    record = {
        "benchmark": name,
        "figures": figures,
        "config": config,
        "leanvision": leanvision.__version__,
        "git": revision.revision.label if isinstance(revision, Run) else
        revision or git_revision(),
        "time_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hardware": describe_machine(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if isinstance(revision, Run):
        record.update(revision.as_json())
    return record


def accuracy_interval(top1: float, images: int) -> list[float]:
    """The 95% Wilson score interval of an accuracy measured on `images` images: the spread a
    single run's top-1 carries from the draw of its test set alone."""
    from scipy.stats import binomtest

    ci = binomtest(round(top1 * images), images).proportion_ci(0.95, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def write_result(name: str, record: dict[str, Any]) -> Path:
    """Every record gets the one speed-up statistic beside each speed-up whose rounds it holds
    (protocol.with_round_statistics), whichever way its script computed its own ratios."""
    path = write_json(RESULTS / f"{name}.json", with_round_statistics(record))
    console.print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path


def print_table(title: str, columns: list[str], rows: list[list[Any]],
                run: Run | None = None) -> None:
    """With `run`: the title says when the tree was dirty; the revision and caveats go under it."""
    table = Table(title=run.title(title) if run else title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)
    if run:  # under the table, not as its caption: a narrow table would wrap every line
        console.print(run.footer(), highlight=False, markup=False, soft_wrap=True)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return "-" if value is None else str(value)


CLOTHING_TARBALL = REPO.parent / "shared" / "data" / "clothing-jpg.tar.gz"


def clothing() -> Path:
    """The extracted clothing photo set (train/ val/ test/, 400x533 JPEGs), extracted once;
    $LEANVISION_CLOTHING may name an extracted folder instead."""
    given = os.environ.get("LEANVISION_CLOTHING")
    if given:
        return Path(given).expanduser()
    if not CLOTHING_TARBALL.is_file():
        die(f"{CLOTHING_TARBALL} not found; set LEANVISION_CLOTHING to an extracted folder")
    target = CACHE / "clothing"
    marker = target / ".complete"
    if marker.is_file() and marker.read_text() == _stamp(CLOTHING_TARBALL):
        return target
    console.print(f"extracting {CLOTHING_TARBALL} to {target} (once) ...")
    CACHE.mkdir(parents=True, exist_ok=True)  # a fresh machine has no cache folder yet
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=CACHE))
    try:
        subprocess.run(["tar", "xzf", str(CLOTHING_TARBALL), "-C", str(staging)], check=True)
        if target.exists():
            shutil.rmtree(target)
        (staging / "clothing").rename(target)
        marker.write_text(_stamp(CLOTHING_TARBALL))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
