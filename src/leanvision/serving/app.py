"""The FastAPI app: one artifact, loaded once at start, behind the guards of limits.py.

    GET  /            the page (drop an image, see the top classes and the Grad-CAM overlay)
    POST /v1/predict  multipart, field `file` (repeatable) -> top-k classes per image, JSON
    POST /v1/explain  multipart, one `file` -> the Grad-CAM overlay, PNG
    GET  /healthz     the process answers          GET /readyz   loaded and warmed up
    GET  /metrics     Prometheus text

No endpoint takes a model path or a URL: the only model ever loaded is the one named at start."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from fastapi import FastAPI

from ..errors import ConfigError
from ..setting import setting
from .connections import MAX_HEAD_BYTES, MAX_HEADERS
from .explain import Explainer
from .limits import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    GateMiddleware,
    HeadLimitMiddleware,
    HostMiddleware,
    SecurityHeadersMiddleware,
)
from .metrics import MetricsMiddleware
from .routes import add_routes
from .service import Service


class Runtime(Protocol):
    """What the app needs of a Predictor (tests pass slow or counting fakes)."""

    runtime: str
    input_size: tuple[int, int]

    @property
    def classes(self) -> list[str]: ...

    def logits(self, batch: np.ndarray | torch.Tensor) -> np.ndarray: ...


@dataclass
class ServeSettings:
    api_key: str | None = setting(None, "Required key (or LEANVISION_API_KEY); sent as "
                                  "'Authorization: Bearer KEY' or 'X-API-Key'.")
    max_batch: int = setting(32, "Largest dynamic batch.")
    max_wait_ms: float = setting(5.0, "Longest wait to fill a batch.")
    queue_size: int = setting(256, "Images waiting beyond this get 503.")
    timeout_s: float = setting(10.0, "Per-request timeout (504).")
    max_body_mb: float = setting(20.0, "Request bodies above this get 413.")
    top_k: int = setting(5, "Default classes per image.")
    max_image_mp: float = setting(16.0, "Images above this many megapixels get 422, judged from "
                                  "their header (training's cap is 40; the model needs only its "
                                  "input size).")
    max_request_mp: float = setting(64.0, "Megapixels of all the images of one request together "
                                    "(after JPEG draft decoding); above it 413.")

    def __post_init__(self) -> None:
        for flag, value, low in (("--max-batch", self.max_batch, 1),
                                 ("--queue-size", self.queue_size, 1),
                                 ("--top-k", self.top_k, 1)):
            if value < low:
                raise ConfigError(f"{flag} {value} must be at least {low}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"--max-wait-ms {self.max_wait_ms} must be >= 0")
        for flag, value in (("--timeout-s", self.timeout_s), ("--max-body-mb", self.max_body_mb),
                            ("--max-image-mp", self.max_image_mp)):
            if value <= 0:
                raise ConfigError(f"{flag} {value} must be positive")
        if self.max_request_mp < self.max_image_mp:
            raise ConfigError(f"--max-request-mp {self.max_request_mp} is below --max-image-mp "
                              f"{self.max_image_mp}, so the largest allowed image could never "
                              "be sent; raise it")
        if self.queue_size < self.max_batch:
            raise ConfigError(f"--queue-size {self.queue_size} is below --max-batch "
                              f"{self.max_batch}, so a full batch could never form; raise it")


def create_app(artifact: str | os.PathLike | None = None, *, api_key: str | None = None,
               runtime: str = "auto", max_batch: int = 32, max_wait_ms: float = 5.0,
               queue_size: int = 256, timeout_s: float = 10.0, max_body_mb: float = 20.0,
               threads: int | None = None, top_k: int = 5, predictor: Runtime | None = None,
               explain: bool = True, spin: bool = False, max_image_mp: float = 16.0,
               max_request_mp: float = 64.0, allowed_hosts: list[str] | None = None,
               docs: bool = False) -> FastAPI:
    """The app for the artifact folder `artifact`, loaded now (errors surface before binding).

    `api_key` is used as given (serve() reads $LEANVISION_API_KEY); `predictor` replaces the
    runtime the artifact would get (a test seam); `explain=False` skips loading the PyTorch
    model that /v1/explain needs (it then answers 501). `spin` lets ONNX Runtime's threads
    spin-wait between batches; off by default, since between two batches the same cores parse
    requests and decode images (bench/serve_load.py --spin off,on compares both).
    `allowed_hosts`: the Host names served (None: any; serve() defaults to the loopback names
    on loopback); `docs` publishes /openapi.json and /docs."""
    settings = ServeSettings(api_key=api_key, max_batch=max_batch, max_wait_ms=max_wait_ms,
                             queue_size=queue_size, timeout_s=timeout_s,
                             max_body_mb=max_body_mb, top_k=top_k, max_image_mp=max_image_mp,
                             max_request_mp=max_request_mp)
    if predictor is None:
        if artifact is None:
            raise ConfigError("no artifact given; pass the artifact folder to serve")
        from ..runtime.predictor import Predictor

        predictor = Predictor.from_artifact(artifact, runtime=runtime, threads=threads,
                                            spin=spin)
    explainer = Explainer.load(artifact) if explain and artifact is not None else None
    app = _build(predictor, explainer, settings, name=_model_name(artifact, predictor),
                 docs=docs)
    # Outside the key check and the gate, inside the counters: a refused Host is counted.
    app.add_middleware(HostMiddleware, allowed=allowed_hosts)
    app.add_middleware(HeadLimitMiddleware, max_headers=MAX_HEADERS, max_bytes=MAX_HEAD_BYTES)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def _model_name(artifact: str | os.PathLike | None, predictor: Runtime) -> str:
    folder = getattr(predictor, "folder", None) or artifact
    return Path(folder).name if folder is not None else "model"


def _build(predictor: Runtime, explainer: Explainer | None, settings: ServeSettings,
           name: str, docs: bool) -> FastAPI:
    """The app with its routes and inner guards; create_app adds the outer layers."""
    service = Service.start(predictor, explainer, settings, name,
                            warmup=lambda: _warm_up(predictor, settings.max_batch))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        yield
        await service.close()

    # FastAPI's OpenTelemetry hooks would export request data wherever OTEL_* variables
    # point; the service has its own /metrics, and sends nothing anywhere.
    # The API's description is published only when asked for (--docs).
    app = FastAPI(title="leanvision", docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False,
                             "operation_spans": False, "auto_configure": False})
    app.state.service = service
    app.state.batcher, app.state.gate = service.batcher, service.gate
    app.state.metrics, app.state.settings = service.metrics, settings
    # Added innermost first: a request meets metrics, the head limits, the Host check (these
    # three added by create_app), the gate, the key check, the body cap.
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(settings.max_body_mb * 2**20))
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(GateMiddleware, gate=service.gate)
    add_routes(app)
    return app


def _warm_up(predictor: Runtime, max_batch: int) -> None:
    """The first calls of a runtime allocate and pick kernels; pay for that before /readyz."""
    h, w = predictor.input_size
    for n in (1, max_batch):
        predictor.logits(np.zeros((n, 3, h, w), dtype=np.uint8))
