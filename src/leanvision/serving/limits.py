"""What keeps the service standing: who may call it (API key), how much a caller may send (body
cap, enforced while the body streams in) and when it stops taking work (draining on SIGTERM).

Each guard is a plain ASGI middleware, so it acts before FastAPI parses or buffers anything."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_KEY_ENV = "LEANVISION_API_KEY"
MIN_KEY_LENGTH = 16
# Health checks come from orchestrators that hold no key; without it they reveal nothing about
# the model (/readyz gives its details only to a caller with the key).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# The page is static HTML with no data in it; the browser cannot attach a header to a plain
# navigation, so it asks for the key itself and sends it on every API call.
PAGE_PATHS = frozenset({"/"})


def resolve_api_key(host: str, api_key: str | None) -> str | None:
    """The key to require (the argument, else $LEANVISION_API_KEY), or None on loopback.

    Binding a non-loopback address without a key would expose the model to the network
    unauthenticated, so it is refused."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    if key is not None and len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"--api-key is {len(key)} characters; use at least {MIN_KEY_LENGTH}, "
                          "e.g. the output of `python -c 'import secrets; "
                          "print(secrets.token_urlsafe(24))'`")
    if key is None and not is_loopback(host):
        raise ConfigError(f"--host {host} is reachable from other machines, so an API key is "
                          f"required: pass --api-key KEY or set {API_KEY_ENV}, or bind "
                          "127.0.0.1 to serve this machine only")
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


def authorised(scope: Scope, key: bytes | None) -> bool:
    """Whether the request carries the key, as `X-API-Key: KEY` or `Authorization: Bearer KEY`
    (always true when no key is set).

    One rule: either header, if valid, is enough, whatever the other holds. A gateway or client
    library may add an Authorization header of its own beside the X-API-Key the caller set (or
    the reverse); letting a foreign header hide a valid key would refuse honest callers, and
    trying both tells an attacker nothing, since each comparison takes the same time wherever
    the first differing byte is (compare_digest)."""
    if key is None:
        return True
    given = [_header(scope, b"x-api-key")]
    bearer = _header(scope, b"authorization")
    if bearer is not None and bearer[:7].lower() == b"bearer ":
        given.append(bearer[7:].strip())
    return any(g is not None and hmac.compare_digest(g, key) for g in given)


class ApiKeyMiddleware:
    """401 unless the request is `authorised` (see there for the rule on the two headers)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS | PAGE_PATHS:
            return await self.app(scope, receive, send)
        if authorised(scope, self.key):
            return await self.app(scope, receive, send)
        await send_json(send, 401, {"detail": "missing or wrong API key; send the header "
                                              "'Authorization: Bearer KEY' or 'X-API-Key: KEY'"},
                        [(b"www-authenticate", b'Bearer realm="leanvision"')])


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def resolve_allowed_hosts(host: str, allowed_hosts: str | None) -> list[str] | None:
    """The Host header names to accept: the comma-separated `allowed_hosts`; by default the
    loopback names when bound to loopback (else None: any Host, the API key guards)."""
    if allowed_hosts is not None:
        names = [n.strip().lower() for n in allowed_hosts.split(",") if n.strip()]
        if not names:
            raise ConfigError("--allowed-hosts is empty; name the host names clients use, "
                              "e.g. --allowed-hosts api.example.com,localhost")
        return names
    return list(LOOPBACK_NAMES) if is_loopback(host) else None


class HostMiddleware:
    """400 unless the Host header (port aside) is one of `allowed`. A web page can make a
    browser send requests to 127.0.0.1 under its own domain name (DNS rebinding); the Host
    header then names that domain, so a loopback server without a key is not readable from the
    web. The health checks stay open: they reveal nothing and probes may use any name.
    Starlette's TrustedHostMiddleware would do, but splits [::1]:8000 at the first colon."""

    def __init__(self, app: ASGIApp, allowed: list[str] | None) -> None:
        self.app = app
        self.allowed = frozenset(allowed) if allowed is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.allowed is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS
                or _host_name(_header(scope, b"host")) in self.allowed):
            return await self.app(scope, receive, send)
        await send_json(send, 400, {"detail": "this Host header is not served here; connect "
                                              "by a name the server was started with "
                                              "(--allowed-hosts)"})


def _host_name(value: bytes | None) -> str:
    text = (value or b"").decode("latin-1").strip().lower()
    if text.startswith("["):  # [v6 address]:port
        return text[: text.find("]") + 1]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 once a request body passes `max_bytes`: at once from Content-Length, else (chunked
    uploads) as soon as the streamed bytes pass the cap, without reading any further."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = {"detail": f"request body over the {self.max_bytes / 2**20:g} MiB cap; send "
                               "smaller or fewer images (or raise --max-body-mb)"}
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_json(send, 413, too_large, [(b"connection", b"close")])
        state = {"seen": 0, "over": False, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["over"] = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                return  # the app's reply to the aborted read is replaced by the 413 below
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if state["over"] and not state["started"]:
            await send_json(send, 413, too_large, [(b"connection", b"close")])


class Gate:
    """Counts requests in flight; past `limit` of them, or once draining (SIGTERM), new ones
    are turned away with 503. The health checks pass the gate: they cost nothing and an
    orchestrator must see the process answer while the queue is full."""

    def __init__(self, limit: int | None = None) -> None:
        self.in_flight = 0
        self.limit = limit
        self.draining = False


class GateMiddleware:
    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app, self.gate = app, gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.gate.draining:
            return await send_json(send, 503, {"detail": "shutting down; retry on another "
                                                         "instance or after the restart"},
                                   [(b"retry-after", b"5"), (b"connection", b"close")])
        if self.gate.limit is not None and self.gate.in_flight >= self.gate.limit:
            return await send_json(send, 503, {"detail": f"busy: {self.gate.in_flight} requests "
                                                         "in flight; retry shortly"},
                                   [(b"retry-after", b"1")])
        self.gate.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.in_flight -= 1


class HeadLimitMiddleware:
    """431 for a request with more than `max_headers` header lines or more than `max_bytes` of
    them. connections.py stops a head that grows past the cap while it arrives; this catches
    one that arrived whole in a single read, and the count."""

    def __init__(self, app: ASGIApp, max_headers: int, max_bytes: int) -> None:
        self.app, self.max_headers, self.max_bytes = app, max_headers, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", [])
        if scope["type"] == "http" and (len(headers) > self.max_headers or sum(
                len(k) + len(v) for k, v in headers) > self.max_bytes):
            return await send_json(send, 431, {"detail": f"request headers over the cap "
                                                         f"({self.max_headers} lines, "
                                                         f"{self.max_bytes} bytes); send fewer"},
                                   [(b"connection", b"close")])
        await self.app(scope, receive, send)


class SecurityHeadersMiddleware:
    """nosniff everywhere, and a page that may load nothing from anywhere but this server."""

    PAGE_POLICY = (b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                   b"img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; "
                   b"frame-ancestors 'none'; base-uri 'none'")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if scope["path"] in PAGE_PATHS:
                    headers.append((b"content-security-policy", self.PAGE_POLICY))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
