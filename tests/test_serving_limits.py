"""serving/limits.py, each guard driven directly as ASGI (no server, no model): what it lets
through, what it answers instead (status, body, headers), and that a refused request never
reaches the app."""

from __future__ import annotations

import asyncio
import json

import pytest

from leanvision.errors import ConfigError
from leanvision.serving import limits
from leanvision.serving.limits import (
    API_KEY_ENV,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    Gate,
    GateMiddleware,
    HeadLimitMiddleware,
    HostMiddleware,
    SecurityHeadersMiddleware,
    authorised,
    is_loopback,
    resolve_allowed_hosts,
    resolve_api_key,
)

KEY = "k" * 20


class App:
    """The protected app: records the requests that reach it and answers 200 'ok'."""

    def __init__(self, read_body: bool = False) -> None:
        self.calls: list[str] = []
        self.read_body = read_body
        self.body = b""

    async def __call__(self, scope, receive, send) -> None:
        self.calls.append(scope["path"])
        if self.read_body:
            while True:
                message = await receive()
                self.body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def call(app, path: str = "/v1/predict", headers=None, chunks=(b"",), kind: str = "http"):
    """Run one request through `app`; (status, headers dict, body bytes)."""
    return asyncio.run(acall(app, path, headers, chunks, kind))


async def acall(app, path: str = "/v1/predict", headers=None, chunks=(b"",),
                kind: str = "http"):
    scope = {"type": kind, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
             for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    if not sent:
        return None, {}, b""
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


def test_resolve_api_key(monkeypatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert resolve_api_key("127.0.0.1", None) is None
    assert resolve_api_key("0.0.0.0", KEY) == KEY
    assert resolve_api_key("127.0.0.1", "x" * 16) == "x" * 16  # the minimum length is enough
    with pytest.raises(ConfigError) as err:
        resolve_api_key("127.0.0.1", "x" * 15)
    assert str(err.value) == ("--api-key is 15 characters; use at least 16, e.g. the output of "
                              "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`")
    with pytest.raises(ConfigError) as err:
        resolve_api_key("0.0.0.0", None)
    assert str(err.value) == ("--host 0.0.0.0 is reachable from other machines, so an API key "
                              f"is required: pass --api-key KEY or set {API_KEY_ENV}, or bind "
                              "127.0.0.1 to serve this machine only")
    monkeypatch.setenv(API_KEY_ENV, "e" * 16)
    assert resolve_api_key("0.0.0.0", None) == "e" * 16
    assert resolve_api_key("0.0.0.0", KEY) == KEY  # the argument wins
    monkeypatch.setenv(API_KEY_ENV, "")
    assert resolve_api_key("127.0.0.1", None) is None  # an empty variable is no key


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("192.168.1.4", False), ("example.com", False),
    ("localhost.example.com", False)])
def test_is_loopback(host, loopback) -> None:
    assert is_loopback(host) is loopback


def test_authorised_by_either_header() -> None:
    key = KEY.encode()

    def scope(**headers):
        return {"headers": [(k.replace("_", "-").encode(), v.encode())
                            for k, v in headers.items()]}

    assert authorised(scope(), None)
    assert not authorised(scope(), key)
    assert authorised(scope(x_api_key=KEY), key)
    assert authorised(scope(authorization=f"Bearer {KEY}"), key)
    assert authorised(scope(authorization=f"bearer   {KEY}  "), key)
    assert not authorised(scope(authorization=KEY), key)  # no scheme
    assert not authorised(scope(authorization=f"Basic {KEY}"), key)
    assert not authorised(scope(x_api_key=KEY[:-1]), key)
    assert authorised(scope(x_api_key="wrong", authorization=f"Bearer {KEY}"), key)
    assert authorised(scope(x_api_key=KEY, authorization="Bearer wrong"), key)
    assert authorised({"headers": [(b"X-API-Key", KEY.encode())]}, key)  # any case
    assert not authorised({}, key)  # a scope without headers carries no key


def test_api_key_middleware() -> None:
    app = App()
    guarded = ApiKeyMiddleware(app, KEY)
    status, headers, body = call(guarded)
    assert status == 401 and app.calls == []
    assert headers["www-authenticate"] == 'Bearer realm="leanvision"'
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    assert json.loads(body) == {"detail": "missing or wrong API key; send the header "
                                          "'Authorization: Bearer KEY' or 'X-API-Key: KEY'"}
    assert call(guarded, headers={"x-api-key": KEY})[0] == 200
    for path in ("/healthz", "/readyz", "/"):  # open without the key
        assert call(guarded, path)[0] == 200
    assert call(guarded, kind="websocket")[0] == 200  # only http requests are checked
    assert call(ApiKeyMiddleware(App(), None))[0] == 200
    assert call(ApiKeyMiddleware(App(), ""))[0] == 200


def test_resolve_allowed_hosts() -> None:
    assert resolve_allowed_hosts("127.0.0.1", None) == ["localhost", "127.0.0.1", "[::1]"]
    assert resolve_allowed_hosts("0.0.0.0", None) is None
    assert resolve_allowed_hosts("0.0.0.0", " API.example.com, ,localhost") == [
        "api.example.com", "localhost"]
    with pytest.raises(ConfigError) as err:
        resolve_allowed_hosts("0.0.0.0", " , ")
    assert str(err.value) == ("--allowed-hosts is empty; name the host names clients use, e.g. "
                              "--allowed-hosts api.example.com,localhost")


@pytest.mark.parametrize(("host", "served"), [
    ("localhost", True), ("localhost:8000", True), ("LOCALHOST:8000", True),
    ("[::1]:8000", True), ("[::1]", True), ("127.0.0.1:1", True), ("evil.com", False),
    ("evil.com:8000", False), ("localhost.evil.com", False), ("::1", False), ("", False)])
def test_host_middleware(host, served) -> None:
    app = App()
    guarded = HostMiddleware(app, ["localhost", "127.0.0.1", "[::1]"])
    status, _, body = call(guarded, headers={"host": host} if host else {})
    assert (status == 200) is served and (app.calls == ["/v1/predict"]) is served
    if not served:
        assert status == 400 and json.loads(body) == {
            "detail": "this Host header is not served here; connect by a name the server was "
                      "started with (--allowed-hosts)"}
        assert call(guarded, "/healthz", headers={"host": host})[0] == 200
        assert call(guarded, kind="websocket", headers={"host": host})[0] == 200
    assert call(HostMiddleware(App(), None), headers={"host": "any"})[0] == 200


def test_a_bare_ipv6_host_is_not_split_at_a_colon() -> None:
    guarded = HostMiddleware(App(), ["::1", "example.com"])
    assert call(guarded, headers={"host": "::1"})[0] == 200
    assert call(guarded, headers={"host": "example.com:443"})[0] == 200


def test_body_cap_from_content_length() -> None:
    app = App(read_body=True)
    guarded = BodyLimitMiddleware(app, 1024)
    status, headers, body = call(guarded, headers={"content-length": "1025"})
    assert status == 413 and app.calls == [] and headers["connection"] == "close"
    assert "request body over the 0.000976562 MiB cap" in json.loads(body)["detail"]
    assert call(guarded, headers={"content-length": "1024"}, chunks=(b"x" * 1024,))[0] == 200
    assert app.body == b"x" * 1024


def test_body_cap_while_the_body_streams() -> None:
    app = App(read_body=True)
    guarded = BodyLimitMiddleware(app, 10)
    status, headers, body = call(guarded, chunks=(b"x" * 6, b"y" * 5, b"z" * 100))
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body) == {"detail": "request body over the 9.53674e-06 MiB cap; send "
                                          "smaller or fewer images (or raise --max-body-mb)"}
    assert app.body == b"x" * 6  # stopped at the chunk that passed the cap
    app.body = b""
    assert call(guarded, chunks=(b"x" * 6, b"y" * 4))[0] == 200 and app.body == b"x" * 6 + \
        b"y" * 4
    assert call(guarded, kind="websocket", headers={"content-length": "99"})[0] == 200


def test_gate_turns_work_away_past_its_limit_and_while_draining() -> None:
    gate = Gate(limit=1)
    seen: list[int] = []

    class Inner(App):
        async def __call__(self, scope, receive, send):
            seen.append(gate.in_flight)
            if scope["path"] == "/nested":  # a second request while this one is in flight
                seen.append((await acall(guarded))[0])
            await super().__call__(scope, receive, send)

    guarded = GateMiddleware(Inner(), gate)
    assert call(guarded)[0] == 200 and gate.in_flight == 0
    status, _, _ = call(guarded, "/nested")
    assert status == 200 and seen[-1] == 503 and seen[-2] == 1
    assert gate.in_flight == 0
    gate.draining = True
    status, headers, body = call(guarded)
    assert status == 503 and headers["retry-after"] == "5" and headers["connection"] == "close"
    assert json.loads(body) == {"detail": "shutting down; retry on another instance or after "
                                          "the restart"}
    assert call(guarded, "/healthz")[0] == 200
    assert call(GateMiddleware(App(), Gate()), "/x")[0] == 200  # no limit


def test_busy_gate_says_how_many_are_in_flight() -> None:
    gate = Gate(limit=2)
    gate.in_flight = 2
    status, headers, body = call(GateMiddleware(App(), gate))
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["detail"] == "busy: 2 requests in flight; retry shortly"
    gate.in_flight = 1
    assert call(GateMiddleware(App(), gate))[0] == 200 and gate.in_flight == 1


def test_head_limits() -> None:
    app = App()
    guarded = HeadLimitMiddleware(app, max_headers=3, max_bytes=40)
    assert call(guarded, headers={"a": "1", "b": "2", "c": "3"})[0] == 200
    status, headers, body = call(guarded, headers={"a": "1", "b": "2", "c": "3", "d": "4"})
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body)["detail"] == ("request headers over the cap (3 lines, 40 bytes); "
                                          "send fewer")
    assert call(guarded, headers={"k": "v" * 39})[0] == 200  # 40 bytes: at the cap
    assert call(guarded, headers={"k": "v" * 40})[0] == 431
    assert app.calls == ["/v1/predict", "/v1/predict"]


def test_security_headers() -> None:
    guarded = SecurityHeadersMiddleware(App())
    _, headers, body = call(guarded, "/")
    assert headers["x-content-type-options"] == "nosniff" and body == b"ok"
    assert headers["content-security-policy"].startswith("default-src 'none';")
    assert headers["content-type"] == "text/plain"
    _, headers, _ = call(guarded, "/v1/predict")
    assert headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in headers
    assert "x-content-type-options" not in call(guarded, kind="websocket")[1]


def test_send_json_writes_length_and_extra_headers() -> None:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(limits.send_json(send, 418, {"a": 1}, [(b"x", b"y")]))
    assert sent[0] == {"type": "http.response.start", "status": 418,
                       "headers": [(b"content-type", b"application/json"),
                                   (b"content-length", b"8"), (b"x", b"y")]}
    assert sent[1] == {"type": "http.response.body", "body": b'{"a": 1}'}


def test_a_reply_already_started_is_not_followed_by_a_413() -> None:
    """An app that answers before reading the whole body: once the cap is passed, the rest of
    its reply is dropped, and no second response start (a 413) is sent after its own."""

    async def answers_first(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.body", "body": b"late"})

    sent: list[dict] = []
    queue = [{"type": "http.request", "body": b"x" * 8, "more_body": True},
             {"type": "http.request", "body": b"x" * 8, "more_body": False}]

    async def receive():
        return queue.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(BodyLimitMiddleware(answers_first, 10)(
        {"type": "http", "path": "/", "headers": []}, receive, send))
    assert sent == [{"type": "http.response.start", "status": 200, "headers": []}]


def test_guards_accept_a_scope_or_reply_without_headers() -> None:
    async def bare(scope, receive, send):
        await send({"type": "http.response.start", "status": 204})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": "/"}
    asyncio.run(HeadLimitMiddleware(SecurityHeadersMiddleware(bare), 2, 10)(scope, receive,
                                                                          send))
    assert sent[0]["status"] == 204
    assert (b"x-content-type-options", b"nosniff") in sent[0]["headers"]
