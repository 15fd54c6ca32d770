"""Prometheus metrics of one app: requests by endpoint and status, latency, errors by kind,
queue depth and batch sizes. Each app has its own registry, so two apps never share counts."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .limits import ASGIApp, Message, Receive, Scope, Send

# Unknown paths share one label, so a scanner cannot grow the label set without bound.
ENDPOINTS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v1/predict", "/v1/explain"})
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("leanvision_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("leanvision_request_seconds", "Request latency in seconds",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("leanvision_errors", "Requests that failed, by kind",
                              ["kind"], registry=r)
        self.queue = Gauge("leanvision_queue_depth", "Images waiting for a batch", registry=r)
        self.queue.set_function(queue_depth)
        self.in_flight = Gauge("leanvision_in_flight_requests", "Requests being handled",
                               registry=r)
        self.batch_size = Histogram("leanvision_batch_size", "Images per network call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("leanvision_batch_seconds", "Seconds per network call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("leanvision_images", "Images classified", registry=r)
        self.connections_closed = Counter(
            "leanvision_connections_closed", "Connections closed before a request reached the "
            "app, by reason (idle, head_timeout, head_too_large)", ["reason"], registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.images.inc(size)

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def error_kind(status: int) -> str | None:
    return {400: "bad_request", 401: "unauthorised", 404: None, 405: None, 413: "too_large",
            415: "not_an_image", 422: "bad_image", 431: "too_large", 503: "unavailable",
            504: "timeout"}.get(status, "internal" if status >= 500 else None)


class MetricsMiddleware:
    """Outermost layer: counts every answer, including those the guards give."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = {"code": 500}
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.in_flight.dec()
            code = status["code"]
            self.metrics.requests.labels(endpoint=endpoint, status=str(code)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
            kind = error_kind(code)
            if kind is not None:
                self.metrics.error(kind)
