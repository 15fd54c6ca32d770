"""Limits on each connection, before a request reaches the app: how long a request head may
take to arrive, and how large it may grow while it does.

uvicorn times out only an idle keep-alive connection after a response; a connection that
opens and sends nothing, or an unfinished head, is held for ever, and httptools buffers a head
of any size. Its `limit_concurrency` counts open connections, so such sockets used to lock
every caller out with uvicorn's bare 503. `guarded_protocol` returns uvicorn's own httptools
protocol (the fast default) with one timer per connection and a byte count on the head; the
concurrency cap moved into the app (limits.Gate), where its 503 is counted in /metrics and
the health checks stay open. h11 caps the head itself (`h11_max_incomplete_event_size`), but
it has no head timer either and parses in Python, so it would cost throughput and still need
the timer written here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A request head this large is no client of an image API; nginx and Node use 8-16 KiB too.
MAX_HEAD_BYTES = 16_384
# More header lines than this is an attack or a broken proxy (Apache's LimitRequestFields).
MAX_HEADERS = 100


class GuardedHttpTools(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request head is not complete within
    `head_timeout_s` of the connection opening (or of the previous response), and answers 431
    to a head past MAX_HEAD_BYTES while it is still arriving. Set up by `guarded_protocol`."""

    head_timeout_s: float = 10.0
    on_refuse: Callable[[str], None] = staticmethod(lambda reason: None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self._head_timer is not None
        if waiting:
            self._head_bytes += len(data)
        super().data_received(data)
        # Counted after parsing, so body bytes that came in the same read as a complete head
        # do not count; the parser holds at most the cap plus one read of an unfinished head.
        unfinished = waiting and self._head_timer is not None
        if unfinished and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._refuse(431, "head_too_large", f"request head over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        idle = not self.pipeline  # else the next request's head has already arrived
        super().on_response_complete()
        if idle and not self.transport.is_closing():
            self._await_head()

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _stop_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes == 0:  # an idle socket: nothing was asked, so nothing to answer
            self.on_refuse("idle")
            self.transport.close()
            return
        self._refuse(408, "head_timeout", f"request head not complete within "
                                          f"{self.head_timeout_s:g} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self.on_refuse(reason)
        phrase = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = message.encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                             % (status, phrase, len(body), body))
        with contextlib.suppress(Exception):  # the peer may already be gone
            self.transport.close()


def guarded_protocol(head_timeout_s: float,
                     on_refuse: Callable[[str], None]) -> type[GuardedHttpTools]:
    """The protocol class for uvicorn.Config(http=...): a subclass per server, so two servers in
    one process keep their own timeout and counters."""
    return type("GuardedHttpTools", (GuardedHttpTools,), {
        "head_timeout_s": head_timeout_s, "on_refuse": staticmethod(on_refuse)})


def raise_open_file_limit() -> None:
    """Each held socket is a file descriptor; a soft limit of 1024 (common) would refuse
    connections long before memory or the app's own limits do, so use the hard limit."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
