"""Stages of a candidate pipeline, each run at most once: a cache keyed by the hash of (parent
artifact identity, stage name, stage config).

A stage writes an ordinary artifact folder, `stages/<name>-<key>/`, and then `stage.json` (the
marker: a folder with it is finished). Any later trial, in this process, another worker or a
resumed run, that asks for the same stage on the same parent reuses the folder in milliseconds.
A folder without the marker is the remains of an interrupted run and is rebuilt.

Two workers never build one stage together: the builder holds `<folder>.lock` (host, pid); the
other waits for the marker. A lock whose process is gone (same host) or that is older than
STALE_LOCK_S (another host) is broken, so a killed worker never blocks the search.

Identity chains through keys: a stage's identity is its key, so a child's key depends on the
recipe that made its parent, not on the parent's bytes (retraining after an interruption gives
slightly different weights but the same keys). An artifact from outside (--base) is identified
by the SHA-256 of its weights."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..artifact import CARD_FILE, WEIGHTS_FILE
from ..errors import ConfigError
from ..io import write_json

MARKER = "stage.json"
STALE_LOCK_S = 12 * 3600  # a lock from another host is trusted this long
POLL_S = 0.5
# Training leftovers and cache bookkeeping (measurements, per-image validation predictions)
# that a copied or shipped artifact does not need.
NOT_SHIPPED = (MARKER, "measure-*", "checkpoint.pt", "best.safetensors", "steps", "*.lock")
QUIET = Console(quiet=True)


@dataclass
class StageRun:
    """What a trial records about one stage it used."""

    name: str
    key: str
    folder: Path
    cached: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "folder": str(self.folder),
                "cached": self.cached, "seconds": round(self.seconds, 2)}


def stage_key(parent_id: str, name: str, config: dict[str, Any]) -> str:
    blob = json.dumps([parent_id, name, config], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def artifact_identity(folder: str | Path) -> str:
    """The stage key of a folder this cache made, else the hash of the artifact's weights."""
    folder = Path(folder)
    marker = folder / MARKER
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))["key"]
    digest = hashlib.sha256()
    with open(folder / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:32]


def is_finished(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / CARD_FILE).is_file()


def host_id() -> str:
    """This machine: its name and boot id (containers or clones may share a host name; a pid
    is only meaningful on the machine, and boot, that issued it)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def worker_id() -> str:
    return f"{host_id()}:{os.getpid()}"


class StageCache:
    """Runs stages into `root/<name>-<key>/` once; reuses finished folders."""

    def __init__(self, root: Path, on_run: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.on_run = on_run  # told the stage name each time a stage really runs (not cached)

    def folder(self, label: str, key: str) -> Path:
        return self.root / f"{label}-{key[:12]}"

    def run(self, name: str, parent_id: str, config: dict[str, Any],
            build: Callable[[Path], Any], folder: Path | None = None) -> StageRun:
        """`build(folder)` writes the artifact; the marker is written after it returns."""
        key = stage_key(parent_id, name, config)
        folder = folder or self.folder(name, key)
        started = time.perf_counter()
        if is_finished(folder):
            _check_same(folder, key, name)
            return StageRun(name, key, folder, True, time.perf_counter() - started)
        with FolderLock(folder.with_name(folder.name + ".lock"),
                        ready=lambda: is_finished(folder)) as lock:
            if lock.ready:  # another worker finished it while we waited
                return StageRun(name, key, folder, True, time.perf_counter() - started)
            if folder.exists():  # the remains of an interrupted run
                shutil.rmtree(folder)
            if self.on_run is not None:
                self.on_run(name)
            build(folder)
            seconds = time.perf_counter() - started
            write_json(folder / MARKER, {"key": key, "stage": name, "parent": parent_id,
                                         "config": config, "seconds": round(seconds, 2),
                                         "worker": worker_id(),
                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return StageRun(name, key, folder, False, seconds)


def _check_same(folder: Path, key: str, name: str) -> None:
    """A named folder (OUT/base) must hold the stage asked for, not one with other settings."""
    found = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("key")
    if found != key:
        raise ConfigError(f"{folder} holds a {name} stage made with other settings (or other "
                          f"data); choose another --out, or pass --base {folder} to use it")


class FolderLock:
    """An exclusive lock file; waits while a live holder builds, unless `ready()` turns true."""

    def __init__(self, path: Path, ready: Callable[[], bool] = lambda: False) -> None:
        self.path, self._ready, self.ready, self._held = Path(path), ready, False, False

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            if self._ready():
                self.ready = True
                return self
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _stale(self.path):
                    _unlink(self.path)
                    continue
                time.sleep(POLL_S)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": host_id(), "pid": os.getpid(),
                           "time": time.time()}, f)
            self._held = True
            self.ready = self._ready()
            return self

    def __exit__(self, *exc: object) -> None:
        if self._held:
            _unlink(self.path)
            self._held = False


def _stale(path: Path) -> bool:
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, json.JSONDecodeError):
        # Written between create and dump by a live process, or torn by a crash: judge by age.
        return _age(path) > 60
    if owner.get("host") == host_id():
        return not pid_alive(int(owner.get("pid", -1)))
    return time.time() - float(owner.get("time", 0)) > STALE_LOCK_S


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


# ---- the stages ---------------------------------------------------------------------------------
# Each takes its parent folder and writes a complete artifact into `folder`, quietly (the search
# prints one line per stage). `settings` are TrainConfig fields shared by every fine-tune.

def train_base(data: str, folder: Path, settings: dict[str, Any]) -> None:
    from ..training import train

    train(data, folder, console=QUIET, **{"progress": False, **settings})


def resize_stage(parent: Path, data: str, folder: Path, *, size: int, epochs: int,
                 settings: dict[str, Any]) -> None:
    from ..compress import resize

    resize(parent, data, folder, size=size, epochs=epochs, console=QUIET,
           **{"progress": False, **settings})


def prune_stage(parent: Path, data: str, folder: Path, *, ratio: float, epochs: int,
                settings: dict[str, Any]) -> None:
    from ..compress import prune

    # check=False: the export and the fresh load of the benchmark that follows check the same
    # things, and a fresh-process reload per candidate costs seconds.
    prune(parent, data, folder, ratio=ratio, target="flops", method="structured",
          importance="l2", scope="auto", steps=1, finetune_epochs=epochs, round_to=8,
          check=False, console=QUIET, **{"progress": False, **settings})


def distill_stage(teacher: Path, student: str | Path, data: str, folder: Path, *,
                  epochs: int, split: dict[str, Any], settings: dict[str, Any],
                  gentle: bool) -> None:
    """KD from the base; `gentle` (a trained student such as a pruned net) fine-tunes at a
    small rate instead of the recipe's rate from scratch."""
    from ..compress import distill

    extra: dict[str, Any] = {"optimizer": "adamw", "lr": 1e-3, "warmup_epochs": 0.0} \
        if gentle else {}
    distill(data, teacher, student, folder, loss="kd", console=QUIET,
            **{"progress": False, "epochs": epochs, **split, **extra, **settings})


def ptq_stage(parent: Path, data: str, folder: Path, *, max_drop: float,
              calibration_images: int, timing_runs: int, threads: int | None,
              skip_bad_images: bool = False, backend: str = "onnxruntime",
              accept: str | None = None) -> None:
    from ..compress import quantize

    quantize(parent, data, folder, method="ptq", max_drop=max_drop, accept=accept,
             calibration_images=calibration_images, timing_runs=timing_runs, threads=threads,
             skip_bad_images=skip_bad_images, backend=backend, console=QUIET)


def qat_stage(parent: Path, data: str, folder: Path, *, epochs: int, calibration_images: int,
              settings: dict[str, Any]) -> None:
    from ..compress import quantize

    quantize(parent, data, folder, method="qat", epochs=epochs,
             calibration_images=calibration_images, console=QUIET,
             **{"progress": False, **settings})


def copy_artifact(source: Path, folder: Path) -> None:
    """The artifact files of `source` (card, weights, ONNX), without training leftovers."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns(*NOT_SHIPPED))


def ensure_onnx(folder: Path) -> None:
    """model.onnx in a finished stage folder (parity-checked export), made once."""
    if (folder / "model.onnx").is_file():
        return
    from ..runtime.stage import export

    with FolderLock(folder.with_name(folder.name + ".onnx.lock"),
                    ready=lambda: (folder / "model.onnx").is_file()) as lock:
        if not lock.ready:
            export(folder)
