"""What a running server holds: the model behind its batcher, the pools that decode and
explain, the gate and the counters. One object per app, created at start; the routes read it
from `request.app.state.service`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from fastapi.responses import JSONResponse

from ..data import BadImageError
from .batching import DynamicBatcher
from .decoding import Decoder
from .explain import Explainer
from .limits import Gate
from .metrics import Metrics
from .uploads import Upload

if TYPE_CHECKING:
    from .app import Runtime, ServeSettings


@dataclass
class Service:
    predictor: Runtime
    explainer: Explainer | None
    settings: ServeSettings
    name: str
    batcher: DynamicBatcher
    gate: Gate
    metrics: Metrics
    decoder: Decoder
    explain_pool: ThreadPoolExecutor
    arriving: int = 0  # predict requests reading or decoding, not yet queued
    explaining: int = 0  # explanations running or waiting

    @classmethod
    def start(cls, predictor: Runtime, explainer: Explainer | None, settings: ServeSettings,
              name: str, warmup: Callable[[], None]) -> Service:
        # The lambdas run only once the server is up, after both names below are bound.
        metrics = Metrics(lambda: batcher.depth)
        batcher = DynamicBatcher(predictor.logits, max_batch=settings.max_batch,
                                 max_wait_ms=settings.max_wait_ms,
                                 queue_size=settings.queue_size, warmup=warmup,
                                 on_batch=metrics.observe_batch,
                                 # the batcher waits for requests that are still arriving only
                                 arriving=lambda: service.arriving)
        decoder = Decoder(tuple(predictor.input_size), int(settings.max_image_mp * 1e6),
                          int(settings.max_request_mp * 1e6))
        service = cls(predictor, explainer, settings, name, batcher,
                      Gate(limit=in_flight_limit(settings.queue_size)), metrics, decoder,
                      ThreadPoolExecutor(max_workers=1, thread_name_prefix="leanvision-explain"))
        return service

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.predictor.input_size)

    @property
    def with_text(self) -> bool:
        """A multimodal model takes a `text` field beside each image."""
        return hasattr(self.predictor, "encode_texts")

    async def close(self) -> None:
        self.gate.draining = True
        await asyncio.get_running_loop().run_in_executor(None, self.batcher.close,
                                                         self.settings.timeout_s)
        self.decoder.shutdown()
        self.explain_pool.shutdown(wait=False, cancel_futures=True)

    def busy(self) -> JSONResponse:
        return error(503, f"busy: {self.batcher.depth} images are queued (--queue-size "
                          f"{self.settings.queue_size}); retry shortly", {"Retry-After": "1"})

    async def decode(self, uploads: list[Upload],
                     deadline: float) -> list[torch.Tensor | BadImageError]:
        return await self.decoder.decode(uploads, deadline)

    def lagging(self) -> bool:
        """Ordinary work (light decodes, the batch queue) waits over half the deadline: new
        requests would likely time out. Heavy decodes wait in their own lane and do not count,
        so a flood of them cannot take the service out of a load balancer's rotation."""
        limit = self.settings.timeout_s / 2
        return self.decoder.light.oldest_wait() > limit or self.batcher.oldest_wait() > limit


def in_flight_limit(queue_size: int) -> int:
    """Requests handled at once. Above the queue's own size, so under a burst the queue fills
    first and answers 503 itself; the rest is room for requests still sending their bodies.
    It bounds the memory those bodies hold (each up to --max-body-mb)."""
    return queue_size * 2 + 32


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def bad_images(uploads: list[Upload], decoded: list[Any]) -> JSONResponse:
    """415 when no file was an image at all, else 422 (images, but unusable); one message."""
    reasons = [(u.name, d.reason) for u, d in zip(uploads, decoded, strict=True)]
    status = 415 if all(r == "not an image" for _, r in reasons) else 422
    name, reason = reasons[0]
    more = f" ({len(reasons)} files, none usable)" if len(reasons) > 1 else ""
    return JSONResponse({"detail": f"{name}: {reason}{more}; send PNG, JPEG, WebP, BMP, TIFF "
                                   "or GIF images", "results": [
        {"image": n, "error": r} for n, r in reasons]}, status_code=status)
