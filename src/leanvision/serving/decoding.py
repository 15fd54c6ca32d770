"""Decoding uploads on a budget: every request's files are sized from their headers first
(a pixel budget per request besides the cap per image), then decoded one task per file, so a
request whose deadline has passed stops costing CPU at its next file.

Files that decode to many pixels (a large PNG; a JPEG after draft mode is small) go to their
own one-thread lane: a flood of them waits behind itself, not in front of ordinary requests,
which keep the other lane. After such a decode the freed heap is handed back to the system."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import io
import itertools
import platform
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..data import BadImageError, ImageChecks
from ..data.images import draft
from .uploads import Upload, UploadError, decode_upload

# Above this many decoded pixels a file takes the heavy lane (a 2000x2000 PNG, not a photo
# from a phone: a JPEG is decoded in draft mode near the model's size).
HEAVY_PIXELS = 4_000_000


class Lane:
    """A thread pool that knows how long its oldest waiting task has waited."""

    def __init__(self, threads: int, name: str) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._ids = itertools.count()
        self._waiting: dict[int, float] = {}

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        key = next(self._ids)
        self._waiting[key] = time.monotonic()

        def run() -> Any:
            self._waiting.pop(key, None)
            return fn(*args)

        future = self.pool.submit(run)
        future.add_done_callback(lambda _: self._waiting.pop(key, None))  # cancelled too
        return future

    def oldest_wait(self) -> float:
        waiting = list(self._waiting.values())  # a copy: the workers remove entries
        return time.monotonic() - min(waiting) if waiting else 0.0

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Decoder:
    size: tuple[int, int]  # the model's input (H, W)
    max_image_pixels: int
    max_request_pixels: int
    # Two light threads keep a core busy while the other decodes, without crowding the
    # runtime's own threads (PIL releases the GIL while it decodes).
    light: Lane = field(default_factory=lambda: Lane(2, "leanvision-decode"))
    heavy: Lane = field(default_factory=lambda: Lane(1, "leanvision-decode-heavy"))

    @property
    def checks(self) -> ImageChecks:
        return ImageChecks(max_pixels=self.max_image_pixels)

    async def decode(self, uploads: list[Upload],
                     deadline: float) -> list[torch.Tensor | BadImageError]:
        """One uint8 [3, H, W] or BadImageError per upload; UploadError(413) past the budget,
        TimeoutError once `deadline` (time.monotonic) has passed."""
        # Sized here, on the event loop: reading a header is cheaper than a trip to a thread.
        costs = [decode_cost(u.data, self.size, self.max_image_pixels) for u in uploads]
        total = sum(costs)
        if total > self.max_request_pixels:
            h, w = self.size
            raise UploadError(413, f"{len(uploads)} images of {total / 1e6:.3g} MP in all, over "
                                   f"the {self.max_request_pixels / 1e6:.3g} MP budget of one "
                                   f"request (--max-request-mp); the model needs only {h}x{w} "
                                   "px, so send them smaller or in several requests")
        futures = [(self.heavy if cost > HEAVY_PIXELS else self.light).submit(
            self._decode_one, upload, cost, deadline) for upload, cost in zip(uploads, costs,
                                                                              strict=True)]
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        finally:
            for future in futures:  # a request that failed or timed out leaves nothing queued
                future.cancel()

    def _decode_one(self, upload: Upload, cost: int,
                    deadline: float) -> torch.Tensor | BadImageError:
        if time.monotonic() > deadline:
            raise TimeoutError  # the request is gone; do not spend a decode on it
        try:
            return decode_upload(upload.data, self.size, self.checks)
        except BadImageError as exc:
            return exc
        finally:
            if cost > HEAVY_PIXELS:
                release_memory()

    def shutdown(self) -> None:
        self.light.shutdown()
        self.heavy.shutdown()


def decode_cost(data: bytes, size: tuple[int, int], max_pixels: int) -> int:
    """Pixels the decoder will produce for `data` (after JPEG draft mode), read from the header;
    0 for what will not be decoded at all (not an image, or over the per-image cap)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size[0] * image.size[1] > max_pixels:
                return 0
            draft(image, size)
            return image.size[0] * image.size[1]
    except Exception:  # noqa: BLE001 - the decode itself reports what is wrong with the file
        return 0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """glibc keeps freed heap pages for reuse (and after large frees raises its threshold for
    using mmap), so the memory of one large decode would stay with the process; trim it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
