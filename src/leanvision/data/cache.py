"""Decode every image once into uint8 tensors; this is also the pre-training scan for bad files.

Two cache levels, both keyed by what the pixels depend on (paths, file sizes and mtimes or the
array bytes, the output size, the checks):
- in-process: the same data decoded twice in one process (cv folds, eval after train) is free;
- on disk: a memory-mapped .npy under cache_dir (or, when the data would not fit the memory
  budget, under ~/.cache/leanvision/decoded), reused by the next run.
Returned tensors are shared with the cache: treat them as read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from ..io import atomic_path, write_json
from .images import BadImageError, ImageChecks, decode_resized
from .sources import ImageRecords

_FORMAT = 2  # bump when the decoded pixels of the same input would change
_MEMORY_ENTRIES = 4
_SHOW_BAD = 10
_CHUNK = 32
DEFAULT_MEMORY_FRACTION = 0.25


@dataclass
class DecodedImages:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    kept: np.ndarray  # int64 [N]: indices into the records that decoded
    bad: list[tuple[str, str]] = field(default_factory=list)  # (describe(i), reason)

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class _Decoded:
    """What the cache holds: independent of labels and of the skip-bad policy."""

    images: torch.Tensor
    kept: np.ndarray
    bad_index: np.ndarray
    bad_reason: list[str]
    on_disk: bool


_memory: OrderedDict[str, _Decoded] = OrderedDict()
_memory_lock = threading.Lock()
# What the user is doing, for "Pass skip_bad_images=True to <verb> without them": set by each verb's
# API function (decoding_for), read wherever the scan happens to run, however deep.
_verb: ContextVar[str | None] = ContextVar("leanvision_decoding_for", default=None)


@contextmanager
def decoding_for(verb: str) -> Iterator[None]:
    """Name `verb` ("quantize", "evaluate", ...) in the scan's message within the block, or
    the function it decorates. The outermost one wins: optimize's quantize stage says
    "optimize", because that is the command the user ran and the flag is passed to."""
    token = _verb.set(_verb.get() or verb)
    try:
        yield
    finally:
        _verb.reset(token)


def decode_images(records: ImageRecords, size: tuple[int, int],
                  checks: ImageChecks = ImageChecks(), *, skip_bad: bool = False,
                  cache_dir: str | Path | None = None, progress: bool = False,
                  workers: int | None = None, memory_budget: int | None = None,
                  verb: str | None = None) -> DecodedImages:
    """Decode all records to uint8 [N, 3, H, W] at `size` = (H, W), collecting every failure.

    memory_budget (bytes; default 25% of RAM): above it the pixels go to a memory-mapped file.
    verb: what the message about bad files says the flag lets the user do (default: the verb
    set by decoding_for, else "train").
    """
    n = len(records)
    if n == 0:
        raise DatasetError("there are no images to decode; check the data path")
    size = (int(size[0]), int(size[1]))
    key = _cache_key(records, size, checks)
    with _memory_lock:
        entry = _memory.get(key)
        if entry is not None:
            _memory.move_to_end(key)
    if entry is None:
        budget = default_memory_budget() if memory_budget is None else int(memory_budget)
        nbytes = n * 3 * size[0] * size[1]
        folder = cache_dir if cache_dir is not None else (
            default_cache_dir() if nbytes > budget else None)
        if folder is None:
            entry = _decode_in_memory(records, size, checks, progress, workers)
        else:
            entry = _decode_to_file(records, size, checks, progress, workers, Path(folder), key)
        _remember(key, entry, budget)
    return _apply_policy(entry, records, skip_bad, verb or _verb.get() or "train")


def clear_decode_cache() -> None:
    """Forget the in-process cache (files on disk stay)."""
    with _memory_lock:
        _memory.clear()


def default_memory_budget() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * 1024**3  # platforms without sysconf: assume a modest 8 GiB
    return int(total * DEFAULT_MEMORY_FRACTION)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "leanvision" / "decoded"


# ---- policy -----------------------------------------------------------------------------------


def _apply_policy(entry: _Decoded, records: ImageRecords, skip_bad: bool,
                  verb: str) -> DecodedImages:
    n = len(records)
    bad = [(records.describe(int(i)), r) for i, r in zip(entry.bad_index, entry.bad_reason,
                                                          strict=True)]
    if bad and (not skip_bad or len(entry.kept) == 0):
        listing, whole = _bad_listing(bad)
        details = {"bad_images": [{"file": name, "reason": why} for name, why in bad],
                   "bad_images_list": str(whole) if whole else None}
        if len(entry.kept) == 0:
            raise DatasetError(f"none of the {n} images could be decoded, so there is nothing "
                               f"to train on; check the data path and files:\n{listing}",
                               details)
        raise DatasetError(f"{len(bad)} of {n} images could not be decoded. Pass "
                           f"skip_bad_images=True to {verb} without them, or fix or remove "
                           f"them:\n{listing}", details)
    labels = torch.from_numpy(records.labels[entry.kept].astype(np.int64))
    return DecodedImages(entry.images, labels, entry.kept.copy(), bad)


def _bad_listing(bad: list[tuple[str, str]]) -> tuple[str, Path | None]:
    """The first files and reasons for the message; when there are more, the whole list goes to
    a file (one "file<TAB>reason" line each, under the cache folder, named by its content) that
    the message names."""
    shown = "\n".join(f"  {name}: {reason}" for name, reason in bad[:_SHOW_BAD])
    if len(bad) <= _SHOW_BAD:
        return shown, None
    text = "".join(f"{name}\t{reason}\n" for name, reason in bad)
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    path = default_cache_dir().parent / "bad-images" / f"{digest}.tsv"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return (f"{shown}\n  ... and {len(bad) - _SHOW_BAD} more; all {len(bad)} are listed in "
            f"{path}"), path


def _remember(key: str, entry: _Decoded, budget: int) -> None:
    with _memory_lock:
        _memory[key] = entry
        _memory.move_to_end(key)

        def in_ram() -> int:
            return sum(e.images.nbytes for e in _memory.values() if not e.on_disk)

        # Memory-mapped entries cost only page cache, so only in-RAM ones count to the budget.
        while len(_memory) > 1 and (len(_memory) > _MEMORY_ENTRIES or in_ram() > budget):
            _memory.popitem(last=False)


# ---- keys -------------------------------------------------------------------------------------


def _cache_key(records: ImageRecords, size: tuple[int, int], checks: ImageChecks) -> str:
    digest = hashlib.blake2b(digest_size=20)
    digest.update(repr((_FORMAT, size, checks.min_side, checks.max_pixels, len(records))).encode())
    for item in records.items:
        if isinstance(item, np.ndarray):
            digest.update(repr((item.shape, item.dtype.str)).encode())
            digest.update(np.ascontiguousarray(item).data)
        else:
            path = os.path.abspath(item)
            try:
                st = os.stat(path)
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            digest.update(f"\0{path}\0{stamp}".encode())
    return digest.hexdigest()


# ---- decoding ---------------------------------------------------------------------------------


def _decode_in_memory(records: ImageRecords, size: tuple[int, int], checks: ImageChecks,
                      progress: bool, workers: int | None) -> _Decoded:
    images = torch.empty((len(records), 3, *size), dtype=torch.uint8)
    kept, bad_index, bad_reason = _decode_into(images.numpy(), records, size, checks, progress,
                                               workers)
    return _Decoded(images[: len(kept)], kept, bad_index, bad_reason, on_disk=False)


def _decode_to_file(records: ImageRecords, size: tuple[int, int], checks: ImageChecks,
                    progress: bool, workers: int | None, folder: Path, key: str) -> _Decoded:
    shape = (len(records), 3, *size)
    npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
    reused = _load_file(npy, meta, shape)
    if reused is not None:
        return reused
    with atomic_path(npy) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        kept, bad_index, bad_reason = _decode_into(array, records, size, checks, progress,
                                                   workers)
        array.flush()
        del array
    # The .json is written last: its presence marks the .npy as complete and consistent.
    write_json(meta, {"format": _FORMAT, "shape": list(shape), "kept": kept.tolist(),
                      "bad_index": bad_index.tolist(), "bad_reason": bad_reason})
    loaded = _load_file(npy, meta, shape)
    if loaded is None:
        raise DatasetError(f"the decoded-image cache {npy} could not be read back; delete it and "
                           "check the disk")
    return loaded


def _load_file(npy: Path, meta: Path, shape: tuple[int, ...]) -> _Decoded | None:
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        # Copy-on-write mapping: torch gets a writable view, and no write reaches the file.
        array = np.load(npy, mmap_mode="c")
    except (OSError, ValueError):
        return None
    if info.get("format") != _FORMAT or tuple(array.shape) != shape or array.dtype != np.uint8:
        return None
    kept = np.asarray(info["kept"], dtype=np.int64)
    images = torch.from_numpy(array)[: len(kept)]
    return _Decoded(images, kept, np.asarray(info["bad_index"], dtype=np.int64),
                    list(info["bad_reason"]), on_disk=True)


def _decode_into(out: np.ndarray, records: ImageRecords, size: tuple[int, int],
                 checks: ImageChecks, progress: bool,
                 workers: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fill out[i] for every good record, then pack the good rows to the front."""

    h, w = size
    fits = min(h, w) >= checks.min_side and h * w <= checks.max_pixels

    def decode_one(i: int) -> str | None:
        item = records.items[i]
        if fits and isinstance(item, np.ndarray) and item.shape == (h, w, 3) \
                and item.dtype == np.uint8:
            out[i] = item.transpose(2, 0, 1)  # built-in arrays already at size: no PIL trip
            return None
        try:
            out[i] = decode_resized(item, size, checks).numpy()
        except BadImageError as exc:
            return exc.reason
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - the scan reports every failure, not just the first
            return f"could not be decoded ({type(exc).__name__}: {exc})"
        return None

    n = len(records)
    # PIL releases the GIL while decoding and resizing, so threads scale without pickling.
    count = workers if workers is not None else min(8, os.cpu_count() or 1)
    # Chunks keep per-task overhead (a future each) small next to an 8x8 array's decode.
    chunks = [range(start, min(start + _CHUNK, n)) for start in range(0, n, _CHUNK)]
    reasons: list[str | None] = []
    with _progress_bar(progress, n) as advance, ThreadPoolExecutor(max(1, count)) as pool:
        for part in pool.map(lambda chunk: [decode_one(i) for i in chunk], chunks):
            reasons.extend(part)
            advance(len(part))
    kept = np.asarray([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
    bad_index = np.asarray([i for i, r in enumerate(reasons) if r is not None], dtype=np.int64)
    for j, i in enumerate(kept):
        if i != j:  # kept is increasing, so row i is never overwritten before it is moved
            out[j] = out[i]
    return kept, bad_index, [r for r in reasons if r is not None]


class _progress_bar:  # noqa: N801 - used like a function in a with statement
    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self._progress = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda count: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(TextColumn("decoding images"), BarColumn(),
                                  MofNCompleteColumn(), TimeRemainingColumn())
        self._progress.start()
        task = self._progress.add_task("decode", total=self.total)
        return lambda count: self._progress.advance(task, count)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
