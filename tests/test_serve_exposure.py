"""What the service shows to whom: the Host allow-list (DNS rebinding), the API description only
with --docs, /readyz's details only with the key, and one rule for the two key headers."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from test_serve import KEY, FakeRuntime, files, png

from leanvision.errors import ConfigError
from leanvision.serving import create_app
from leanvision.serving.limits import resolve_allowed_hosts

LOOPBACK = "http://127.0.0.1:8000"


def ready(client: TestClient, **kw) -> None:
    deadline = time.monotonic() + 10
    while client.get("/readyz", **kw).status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.01)


def test_loopback_serves_only_loopback_host_names():
    hosts = resolve_allowed_hosts("127.0.0.1", None)
    with TestClient(create_app(predictor=FakeRuntime(), allowed_hosts=hosts),
                    base_url=LOOPBACK) as client:
        for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000"):
            assert client.get("/metrics", headers={"host": host}).status_code == 200, host
        for host in ("evil.example:8000", "evil.example", "127.0.0.1.evil.example", "[::2]"):
            refused = client.get("/metrics", headers={"host": host})
            assert refused.status_code == 400, host
            assert "--allowed-hosts" in refused.json()["detail"]
        refused = client.post("/v1/predict", files=files(("a.png", png())),
                              headers={"host": "rebound.example"})
        assert refused.status_code == 400
        # probes may use any name: the health checks answer, and say nothing
        assert client.get("/healthz", headers={"host": "10.0.0.7:8000"}).status_code == 200
        assert 'status="400"' in client.get("/metrics").text  # counted


def test_allowed_hosts_are_resolved_from_the_bind_address():
    assert resolve_allowed_hosts("0.0.0.0", None) is None  # the API key guards instead
    assert resolve_allowed_hosts("::1", None) == ["localhost", "127.0.0.1", "[::1]"]
    assert resolve_allowed_hosts("0.0.0.0", " API.example.com, localhost") == [
        "api.example.com", "localhost"]
    with pytest.raises(ConfigError, match="--allowed-hosts is empty"):
        resolve_allowed_hosts("127.0.0.1", " , ")


def test_the_api_description_is_published_only_with_docs():
    with TestClient(create_app(predictor=FakeRuntime())) as client:
        assert client.get("/openapi.json").status_code == 404
        assert client.get("/docs").status_code == 404
    with TestClient(create_app(predictor=FakeRuntime(), docs=True, api_key=KEY)) as client:
        assert client.get("/openapi.json").status_code == 401  # behind the key, like the rest
        described = client.get("/openapi.json", headers={"X-API-Key": KEY})
        assert described.status_code == 200 and "/v1/predict" in described.json()["paths"]


def test_readyz_says_only_ready_or_not_without_the_key():
    with TestClient(create_app(predictor=FakeRuntime(), api_key=KEY)) as client:
        ready(client)
        assert client.get("/readyz").json() == {"status": "ready"}
        wrong = client.get("/readyz", headers={"X-API-Key": "w" * 24})
        assert wrong.json() == {"status": "ready"}
        told = client.get("/readyz", headers={"X-API-Key": KEY}).json()
        assert told["runtime"] == "fake" and told["input_size"] == [16, 16]
        client.app.state.gate.draining = True
        draining = client.get("/readyz")
        assert draining.status_code == 503 and draining.json() == {"status": "not ready"}
        told = client.get("/readyz", headers={"Authorization": f"Bearer {KEY}"})
        assert told.json() == {"status": "not ready", "detail": "shutting down"}
        client.app.state.gate.draining = False


def test_either_valid_key_header_is_enough():
    with TestClient(create_app(predictor=FakeRuntime(), api_key=KEY)) as client:
        upload = files(("a.png", png()))
        wrong = "w" * 24
        for headers, status in (
                ({"X-API-Key": KEY, "Authorization": f"Bearer {wrong}"}, 200),
                ({"X-API-Key": wrong, "Authorization": f"Bearer {KEY}"}, 200),
                ({"X-API-Key": KEY, "Authorization": "Basic dXNlcjpwdw=="}, 200),
                ({"X-API-Key": wrong, "Authorization": f"Bearer {wrong}"}, 401),
                ({"Authorization": f"Basic {KEY}"}, 401)):
            answer = client.post("/v1/predict", files=upload, headers=headers)
            assert answer.status_code == status, headers
