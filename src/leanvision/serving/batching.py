"""Dynamic batching: images from concurrent requests are collected (up to `max_batch`, or until
the oldest has waited `max_wait_ms`) and run as one network call in a single worker thread.

    request ─┐                                   ┌─► future (logits row) ─► request
    request ─┼─► bounded queue ─► worker thread ─┼─► future               ─► request
    request ─┘      (QueueFull past queue_size)  └─► ...

One call on a batch of 32 costs far less than 32 calls on one image, so under load throughput
approaches the runtime's own batch throughput. The wait is only worth it while more work is
on its way: `arriving()` (requests being read or decoded) lets a lone request go at once.
The worker is the only thread that touches the runtime: ONNX Runtime sessions and torch models
are then never called concurrently, and their thread pools are not oversubscribed."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

Runner = Callable[[torch.Tensor], np.ndarray]  # uint8 [N, 3, H, W] -> logits [N, C]


class QueueFull(Exception):
    """More images are waiting than the queue holds; the caller should answer 503."""


class Closed(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class _Item:
    image: torch.Tensor  # uint8 [3, H, W]
    extra: torch.Tensor | None = None  # a second input of the same row (text ids), if any
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    def __init__(self, run: Runner, *, max_batch: int = 32, max_wait_ms: float = 5.0,
                 queue_size: int = 256, warmup: Callable[[], None] | None = None,
                 on_batch: Callable[[int, float], None] | None = None,
                 arriving: Callable[[], int] | None = None) -> None:
        self.run, self.max_batch, self.queue_size = run, max_batch, queue_size
        self.max_wait = max_wait_ms / 1000.0
        self._warmup, self._on_batch, self._arriving = warmup, on_batch, arriving
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.ready = threading.Event()
        self.failure: str | None = None  # why warm-up failed, if it did
        self._thread = threading.Thread(target=self._work, name="leanvision-batcher",
                                        daemon=True)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def oldest_wait(self) -> float:
        """Seconds the oldest queued image has waited (0 with none queued)."""
        queue = self._queue
        try:
            return time.monotonic() - queue[0].enqueued
        except IndexError:  # emptied meanwhile by the worker
            return 0.0

    def start(self) -> None:
        self._thread.start()

    def submit(self, images: list[torch.Tensor],
               extras: list[torch.Tensor] | None = None) -> list[Future]:
        """One future per image, resolving to its logits row [C]; all or none are queued.
        `extras` (image + text models): one tensor per image, stacked and passed to the
        runner as its second argument."""
        with self._cond:
            if self._closed:
                raise Closed
            if len(self._queue) + len(images) > self.queue_size:
                raise QueueFull
            items = [_Item(image, extras[i] if extras is not None else None)
                     for i, image in enumerate(images)]
            self._queue.extend(items)
            self._cond.notify()
        return [item.future for item in items]

    def nudge(self) -> None:
        """Wake the worker: a request it may be waiting for will not come after all."""
        with self._cond:
            self._cond.notify()

    def discard(self, futures: list[Future]) -> None:
        """Drop a caller's images that have not started (its request timed out or left)."""
        wanted = {id(f) for f in futures}
        with self._cond:
            keep = [item for item in self._queue if id(item.future) not in wanted]
            self._queue.clear()
            self._queue.extend(keep)
        for f in futures:
            f.cancel()

    def close(self, timeout: float | None = None) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the worker thread ------------------------------------------------------------------

    def _work(self) -> None:
        try:
            if self._warmup is not None:
                self._warmup()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz, not raised into a void
            self.failure = f"{type(exc).__name__}: {exc}"
        else:
            self.ready.set()
        while True:
            items = self._next_batch()
            if items is None:
                return
            self._run(items)

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None  # closed and drained
            # The oldest image sets the deadline: one that already waited through the previous
            # batch goes at once instead of waiting max_wait again.
            deadline = self._queue[0].enqueued + self.max_wait
            while len(self._queue) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._arriving is not None and self._arriving() == 0):
                    break
                self._cond.wait(remaining)
            count = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def _run(self, items: list[_Item]) -> None:
        items = [item for item in items if item.future.set_running_or_notify_cancel()]
        if not items:
            return
        started = time.perf_counter()
        try:
            if self.failure is not None:
                raise RuntimeError(f"the model failed to warm up ({self.failure})")
            batch = torch.stack([item.image for item in items])
            if items[0].extra is not None:  # one server holds one model: all or none have it
                logits = np.asarray(self.run(batch, torch.stack([i.extra for i in items])))
            else:
                logits = np.asarray(self.run(batch))
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error
            for item in items:
                item.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(items), time.perf_counter() - started)
        for item, row in zip(items, logits, strict=True):
            item.future.set_result(row)
