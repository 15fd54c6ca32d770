"""The FastAPI app: one artifact, loaded once at start, behind the guards of limits.py.

    GET  /            the page (drop an image, see the top classes and the Grad-CAM overlay)
    POST /v1/predict  multipart, field `file` (repeatable) -> top-k classes per image, JSON
    POST /v1/explain  multipart, one `file` -> the Grad-CAM overlay, PNG
    GET  /healthz     the process answers          GET /readyz   loaded and warmed up
    GET  /metrics     Prometheus text

No endpoint takes a model path or a URL: the only model ever loaded is the one named at start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..data import BadImageError
from ..errors import ConfigError
from .batching import Closed, DynamicBatcher, QueueFull
from .explain import CAM_CHOICES, Explainer
from .limits import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    Gate,
    GateMiddleware,
    SecurityHeadersMiddleware,
)
from .metrics import Metrics, MetricsMiddleware
from .page import page_html
from .uploads import Upload, UploadError, decode_upload, read_uploads

MAX_FILES = 64  # images in one predict request
log = logging.getLogger("leanvision.serving")
EXPLAIN_QUEUE = 4  # explanations waiting at most; each is a forward and a backward pass


class Runtime(Protocol):
    """What the app needs of a Predictor (tests pass slow or counting fakes)."""

    runtime: str
    input_size: tuple[int, int]

    @property
    def classes(self) -> list[str]: ...

    def logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray: ...


@dataclass
class ServeSettings:
    api_key: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue_size: int = 256
    timeout_s: float = 10.0
    max_body_mb: float = 20.0
    top_k: int = 5

    def __post_init__(self) -> None:
        for flag, value, low in (("--max-batch", self.max_batch, 1),
                                 ("--queue-size", self.queue_size, 1),
                                 ("--top-k", self.top_k, 1)):
            if value < low:
                raise ConfigError(f"{flag} {value} must be at least {low}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms {self.max_wait_ms} must be >= 0")
        if self.timeout_s <= 0 or self.max_body_mb <= 0:
            raise ConfigError(f"--timeout-s {self.timeout_s} and --max-body-mb "
                              f"{self.max_body_mb} must be positive")
        if self.queue_size < self.max_batch:
            raise ConfigError(f"--queue-size {self.queue_size} is below --max-batch "
                              f"{self.max_batch}, so a full batch could never form; raise it")


def create_app(artifact: str | os.PathLike | None = None, *, api_key: str | None = None,
               runtime: str = "auto", max_batch: int = 32, max_wait_ms: float = 5.0,
               queue_size: int = 256, timeout_s: float = 10.0, max_body_mb: float = 20.0,
               threads: int | None = None, top_k: int = 5, predictor: Runtime | None = None,
               explain: bool = True, spin: bool = False) -> FastAPI:
    """The app for the artifact folder `artifact`, loaded now (errors surface before binding).

    `api_key` is used as given (serve() reads $LEANVISION_API_KEY); `predictor` replaces the
    runtime the artifact would get (a test seam); `explain=False` skips loading the PyTorch
    model that /v1/explain needs (it then answers 501). `spin` lets ONNX Runtime's threads
    spin-wait between batches; off by default, since between two batches the same cores parse
    requests and decode images (bench/serve_load.py --spin off,on compares both)."""
    settings = ServeSettings(api_key=api_key, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             queue_size=queue_size, timeout_s=timeout_s,
                             max_body_mb=max_body_mb, top_k=top_k)
    if predictor is None:
        if artifact is None:
            raise ConfigError("no artifact given; pass the artifact folder to serve")
        from ..runtime.predictor import Predictor

        predictor = Predictor.from_artifact(artifact, runtime=runtime, threads=threads,
                                            spin=spin)
    explainer = Explainer.load(artifact) if explain and artifact is not None else None
    return _build(predictor, explainer, settings, name=_model_name(artifact, predictor))


def _model_name(artifact: str | os.PathLike | None, predictor: Runtime) -> str:
    folder = getattr(predictor, "folder", None) or artifact
    return Path(folder).name if folder is not None else "model"


def _build(predictor: Runtime, explainer: Explainer | None, settings: ServeSettings,
           name: str) -> FastAPI:
    gate = Gate()
    metrics = Metrics(lambda: batcher.depth)
    # Predict requests read or decoding, not yet queued: the batcher waits for them only.
    arriving = {"n": 0}
    batcher = DynamicBatcher(predictor.logits, max_batch=settings.max_batch,
                             max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size,
                             warmup=lambda: _warm_up(predictor, settings.max_batch),
                             on_batch=metrics.observe_batch, arriving=lambda: arriving["n"])
    # Decoding runs beside the network (PIL releases the GIL); two threads keep a core busy
    # while the other decodes, without crowding the runtime's own threads.
    decode_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="leanvision-decode")
    explain_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leanvision-explain")
    explaining = {"pending": 0}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        gate.draining = True
        await asyncio.get_running_loop().run_in_executor(None, batcher.close, settings.timeout_s)
        decode_pool.shutdown(wait=False, cancel_futures=True)
        explain_pool.shutdown(wait=False, cancel_futures=True)

    # FastAPI's OpenTelemetry hooks would export request data wherever OTEL_* variables
    # point; the service has its own /metrics, and sends nothing anywhere.
    app = FastAPI(title="leanvision", docs_url=None, redoc_url=None, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False,
                             "operation_spans": False, "auto_configure": False})
    app.state.batcher, app.state.gate, app.state.metrics = batcher, gate, metrics
    app.state.settings = settings
    # Added innermost first: a request meets metrics, the gate, the key check, the body cap.
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(settings.max_body_mb * 2**20))
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(GateMiddleware, gate=gate)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    classes = list(predictor.classes)
    size = tuple(predictor.input_size)
    with_text = hasattr(predictor, "encode_texts")  # a multimodal model takes a `text` field

    def busy() -> JSONResponse:
        return _error(503, f"busy: {batcher.depth} images are queued (--queue-size "
                           f"{settings.queue_size}); retry shortly", {"Retry-After": "1"})

    async def decode(uploads: list[Upload]) -> list[torch.Tensor | BadImageError]:
        def run() -> list[torch.Tensor | BadImageError]:
            out: list[torch.Tensor | BadImageError] = []
            for upload in uploads:
                try:
                    out.append(decode_upload(upload.data, size))
                except BadImageError as exc:
                    out.append(exc)
            return out

        return await asyncio.get_running_loop().run_in_executor(decode_pool, run)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html(name, explain=explainer is not None,
                                      with_text=with_text))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if gate.draining:
            return _error(503, "shutting down")
        if batcher.failure is not None:
            return _error(503, f"the model failed to warm up: {batcher.failure}")
        if not batcher.ready.is_set():
            return _error(503, "warming up", {"Retry-After": "1"})
        return JSONResponse({"status": "ready", "model": name, "runtime": predictor.runtime,
                             "classes": len(classes), "input_size": list(size)})

    @app.get("/metrics")
    async def metrics_text() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v1/predict")
    async def predict(request: Request, top_k: int | None = None) -> JSONResponse:
        if top_k is not None and top_k < 1:
            return _error(422, f"top_k {top_k} must be at least 1")
        # More classes than the model has is no error: there are only that many to list.
        top_k = min(top_k or settings.top_k, len(classes))
        if batcher.depth >= settings.queue_size:
            return busy()  # before reading a byte of the body
        futures: list = []
        try:
            async with asyncio.timeout(settings.timeout_s):
                arriving["n"] += 1
                try:
                    uploads = await read_uploads(request, MAX_FILES, accept_text=with_text)
                    decoded = await decode(uploads)
                    images = [d for d in decoded if isinstance(d, torch.Tensor)]
                    if images:
                        # Image + text models: ids for every image (no text: all padding,
                        # answered by the image branch), tokenized here, batched alongside.
                        extras = list(predictor.encode_texts(
                            [u.text for u, d in zip(uploads, decoded, strict=True)
                             if isinstance(d, torch.Tensor)])) if with_text else None
                        futures = batcher.submit(images, extras)
                finally:
                    # After submit (so the worker does not run a batch this request just
                    # missed), and on every path (so it does not wait for one that failed).
                    arriving["n"] -= 1
                    if arriving["n"] == 0:
                        batcher.nudge()
                if not images:
                    return _bad_images(uploads, decoded)
                rows = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except UploadError as exc:
            return _error(exc.status, exc.message)
        except QueueFull:
            return busy()
        except Closed:
            return _error(503, "shutting down", {"Retry-After": "5"})
        except TimeoutError:
            batcher.discard(futures)
            return _error(504, f"no answer within {settings.timeout_s:g} s (--timeout-s); the "
                               "server is overloaded or the upload too slow")
        except Exception as exc:  # the runtime failed on the batch: say so, keep serving
            log.exception("the model failed on a batch")
            return _error(500, f"the model failed on this batch ({type(exc).__name__}: "
                               f"{str(exc)[:200]}); see the server log")
        probs = torch.from_numpy(np.stack(rows)).float().softmax(1)
        results, row = [], 0
        for upload, item in zip(uploads, decoded, strict=True):
            if isinstance(item, BadImageError):
                results.append({"image": upload.name, "error": item.reason})
                continue
            values, indices = probs[row].topk(top_k)
            row += 1
            results.append({"image": upload.name,
                            "top": [{"class": classes[int(c)], "prob": float(v)}
                                    for v, c in zip(values, indices, strict=True)]})
            if with_text:
                results[-1]["used_text"] = bool(upload.text and upload.text.strip())
        return JSONResponse({"model": name, "runtime": predictor.runtime, "results": results})

    @app.post("/v1/explain")
    async def explain(request: Request, method: str = "gradcam",
                      target: str | None = None) -> Response:
        if explainer is None:
            return _error(501, "explanations are off for this server (no PyTorch weights "
                               "loaded); start it with the artifact's model.safetensors")
        if method not in CAM_CHOICES:
            return _error(422, f"method {method!r} must be one of {', '.join(CAM_CHOICES)}")
        if target is not None and target not in explainer.classes:
            return _error(422, f"unknown class {target[:60]!r}; the model's classes are "
                               f"{', '.join(explainer.classes[:20])}")
        if explaining["pending"] >= EXPLAIN_QUEUE:
            return _error(503, "busy explaining; retry shortly", {"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        explaining["pending"] += 1

        def decrement() -> None:
            explaining["pending"] -= 1

        def release(_job: object = None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to count
                loop.call_soon_threadsafe(decrement)

        job = None
        try:
            async with asyncio.timeout(settings.timeout_s):
                uploads = await read_uploads(request, 1)
                (item,) = await decode(uploads)
                if isinstance(item, BadImageError):
                    return _bad_images(uploads, [item])
                started = time.perf_counter()
                job = explain_pool.submit(explainer.overlay_png, item, target, method)
                # A timed-out explanation still holds its slot until the thread is done with
                # it, so timeouts cannot pile work up behind the single explain thread.
                job.add_done_callback(release)
                png, cls, prob = await asyncio.wrap_future(job)
        except UploadError as exc:
            return _error(exc.status, exc.message)
        except TimeoutError:
            return _error(504, f"no explanation within {settings.timeout_s:g} s (--timeout-s)")
        finally:
            if job is None:
                release()
        return Response(png, media_type="image/png", headers={
            "X-Leanvision-Class": quote(cls), "X-Leanvision-Prob": f"{prob:.6f}",
            "X-Leanvision-Method": method,
            "X-Leanvision-Seconds": f"{time.perf_counter() - started:.4f}"})

    return app


def _warm_up(predictor: Runtime, max_batch: int) -> None:
    """The first calls of a runtime allocate and pick kernels; pay for that before /readyz."""
    h, w = predictor.input_size
    for n in (1, max_batch):
        predictor.logits(np.zeros((n, 3, h, w), dtype=np.uint8))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _bad_images(uploads: list[Upload], decoded: list[Any]) -> JSONResponse:
    """415 when no file was an image at all, else 422 (images, but unusable); one message."""
    reasons = [(u.name, d.reason) for u, d in zip(uploads, decoded, strict=True)]
    status = 415 if all(r == "not an image" for _, r in reasons) else 422
    name, reason = reasons[0]
    more = f" ({len(reasons)} files, none usable)" if len(reasons) > 1 else ""
    return JSONResponse({"detail": f"{name}: {reason}{more}; send PNG, JPEG, WebP, BMP, TIFF "
                                   "or GIF images", "results": [
        {"image": n, "error": r} for n, r in reasons]}, status_code=status)
