"""`leanvision serve ARTIFACT`: the app of app.py on uvicorn, with a graceful SIGTERM.

Shutdown, step by step: the first SIGTERM (or Ctrl-C) turns the gate to draining, so new
requests get 503 and /readyz fails (a load balancer stops sending); requests in flight finish;
once none is left (or timeout_s + DRAIN_SLACK_S has passed) uvicorn closes its sockets and the
batcher finishes its queue. A second Ctrl-C quits at once."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from types import FrameType

import uvicorn
from fastapi import FastAPI

from ..errors import ConfigError
from ..setting import setting
from .app import ServeSettings, create_app
from .connections import guarded_protocol, raise_open_file_limit
from .limits import Gate, resolve_allowed_hosts, resolve_api_key

DRAIN_SLACK_S = 5.0


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose exit signal drains the app before the sockets close."""

    def __init__(self, config: uvicorn.Config, gate: Gate, drain_s: float) -> None:
        super().__init__(config)
        self.gate, self.drain_s = gate, drain_s
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_deadline is None:
            # Only flags here: a signal handler must not touch the event loop.
            self.gate.draining = True
            self._drain_deadline = time.monotonic() + self.drain_s
            return  # not re-raised after shutdown: serve() returns, the caller exits normally
        super().handle_exit(sig, frame)  # a second signal: stop now

    async def on_tick(self, counter: int) -> bool:
        draining = self._drain_deadline is not None and not self.should_exit
        if draining and (self.gate.in_flight == 0 or time.monotonic() > self._drain_deadline):
            self.should_exit = True
        return await super().on_tick(counter)


def run_app(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000,
            log_level: str = "info", head_timeout_s: float = 10.0) -> None:
    """Run `app` (from create_app) until SIGTERM / Ctrl-C, draining as described above.

    No uvicorn `limit_concurrency`: it counts open sockets, idle ones included, and answers
    past it with a bare 503 the app never sees. The app's Gate caps requests instead, and
    connections.py closes sockets that do not send a request head in `head_timeout_s`."""
    if head_timeout_s <= 0:
        raise ConfigError(f"--head-timeout-s {head_timeout_s} must be positive")
    settings = app.state.settings
    raise_open_file_limit()
    metrics = app.state.metrics
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, server_header=False,
        proxy_headers=False, timeout_graceful_shutdown=int(DRAIN_SLACK_S),
        http=guarded_protocol(head_timeout_s, lambda reason: metrics.connections_closed.labels(
            reason=reason).inc()))
    DrainingServer(config, app.state.gate, settings.timeout_s + DRAIN_SLACK_S).run()


@dataclass
class ServeOptions(ServeSettings):
    """serve's settings with their help (`leanvision serve` draws its options from here)."""

    host: str = setting("127.0.0.1", "Address to bind; anything but loopback needs an API key.")
    port: int = setting(8000, "Port to listen on.")
    runtime: str = setting("auto", "auto (the card's recommendation), onnx-int8, onnx-fp32 or "
                           "torch.")
    threads: int | None = setting(None, "Inference threads (default: physical cores).")
    explain: bool = setting(True, "Serve /v1/explain (Grad-CAM) too.")
    log_level: str = setting("info", "uvicorn's log level.")
    allowed_hosts: str | None = setting(None, "Host header names served, comma-separated "
                                        "(default: localhost, 127.0.0.1 and [::1] when bound to "
                                        "loopback, so web pages cannot reach it by DNS "
                                        "rebinding; any otherwise, the API key guards).")
    docs: bool = setting(False, "Publish /openapi.json and /docs (behind the key, if any).")
    head_timeout_s: float = setting(10.0, "Close a connection that has not sent a complete "
                                    "request head this many seconds after opening (or after "
                                    "its previous answer).")
    spin: bool = setting(False, "Let ONNX Runtime's threads spin-wait between batches (off: the "
                         "cores parse and decode requests meanwhile; bench/serve_load.py --spin "
                         "off,on measures both).")


def serve(artifact: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, runtime: str = "auto", max_batch: int = 32,
          max_wait_ms: float = 5.0, queue_size: int = 256, timeout_s: float = 10.0,
          max_body_mb: float = 20.0, threads: int | None = None, top_k: int = 5,
          explain: bool = True, log_level: str = "info", spin: bool = False,
          head_timeout_s: float = 10.0, max_image_mp: float = 16.0,
          max_request_mp: float = 64.0, allowed_hosts: str | None = None,
          docs: bool = False) -> None:
    """Serve the artifact folder over HTTP until SIGTERM / Ctrl-C.

    Binds 127.0.0.1 unless told otherwise; any other address needs an API key (`api_key` or
    $LEANVISION_API_KEY), which every endpoint but /healthz and /readyz then requires."""
    key = resolve_api_key(host, api_key)
    hosts = resolve_allowed_hosts(host, allowed_hosts)
    app = create_app(artifact, api_key=key, runtime=runtime, max_batch=max_batch,
                     max_wait_ms=max_wait_ms, queue_size=queue_size, timeout_s=timeout_s,
                     max_body_mb=max_body_mb, threads=threads, top_k=top_k, explain=explain,
                     spin=spin, max_image_mp=max_image_mp, max_request_mp=max_request_mp,
                     allowed_hosts=hosts, docs=docs)
    run_app(app, host=host, port=port, log_level=log_level, head_timeout_s=head_timeout_s)


__all__ = ["DrainingServer", "create_app", "run_app", "serve"]
