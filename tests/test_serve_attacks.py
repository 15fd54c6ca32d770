"""The service under attack, probed the way Triton's QA suite probes a server: a real
`leanvision serve` process on 127.0.0.1 (its own interpreter: a fork of a process that has run
torch can deadlock in OpenMP), serving a tiny ONNX model; raw sockets for what no client
library sends, and /metrics read before and after to check that every refusal was counted.

Every wait has a deadline and every loop a bound; the server is started with a 1 s head
timeout and a queue of 8 so that the limits are reached with few sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from test_serve import _free_port, files, make_artifact, metric, png
from test_serve_decoding import one_bit_png

pytestmark = pytest.mark.usefixtures("one_thread")
HEAD_TIMEOUT_S = 1.0
QUEUE = 8
IDLE_SOCKETS = 200  # far above the old limit (2 x queue + 32 connections), few enough to be fast


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, tuple[str, int], int]]:
    """(base URL, address, pid) of a running server; stopped with SIGTERM afterwards."""
    artifact = make_artifact(tmp_path_factory.mktemp("attacks") / "tiny")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "leanvision", "serve", str(artifact), "--port", str(port),
         "--queue-size", str(QUEUE), "--max-batch", str(QUEUE), "--threads", "1",
         "--no-explain", "--log-level", "warning", "--head-timeout-s", str(HEAD_TIMEOUT_S)],
        env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not _ready(base):
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
        yield base, ("127.0.0.1", port), proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _metrics(base: str) -> str:
    return httpx.get(f"{base}/metrics", timeout=10).text


def _read_until_closed(sock: socket.socket, within_s: float) -> bytes:
    """Everything the server sends until it closes the connection; fails after `within_s`."""
    sock.settimeout(within_s)
    deadline = time.monotonic() + within_s
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server kept the connection open for {within_s} s")


def test_a_slow_request_head_is_cut_off_with_408(server):
    base, address, _ = server
    before = metric(_metrics(base), "leanvision_connections_closed_total", reason="head_timeout")
    with socket.create_connection(address, timeout=10) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        sock.sendall(head)
        # One byte at a time keeps the connection busy but never finishes the head; bytes
        # arriving must not restart the clock.
        for _ in range(int(6 * HEAD_TIMEOUT_S / 0.2)):
            try:
                sock.sendall(b"a")
            except OSError:
                break
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            time.sleep(0.2)
        reply = _read_until_closed(sock, 10)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    after = metric(_metrics(base), "leanvision_connections_closed_total", reason="head_timeout")
    assert after == before + 1


def test_idle_sockets_above_every_limit_lock_nobody_out(server):
    base, address, _ = server
    socks = []
    try:
        for _ in range(IDLE_SOCKETS):
            socks.append(socket.create_connection(address, timeout=10))
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        answer = httpx.post(f"{base}/v1/predict", files=files(("a.png", png())), timeout=10)
        assert answer.status_code == 200, answer.text
        # ... and the server lets go of them itself, answering nothing to those that asked
        # nothing.
        assert _read_until_closed(socks[0], 10 * HEAD_TIMEOUT_S) == b""
    finally:
        for sock in socks:
            sock.close()
    idle = metric(_metrics(base), "leanvision_connections_closed_total", reason="idle")
    assert idle >= 1


def test_a_header_bomb_is_refused_at_the_cap(server):
    base, address, _ = server
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bomb: ")
        for _ in range(4096):  # up to 64 MiB; the server must stop reading long before
            try:
                sock.sendall(b"a" * 16384)
            except OSError:
                break
        reply = _read_until_closed(sock, 10)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    # Many short lines that arrive in one read: the app counts them and says so.
    many = httpx.get(f"{base}/healthz", headers={f"x-h{i}": "1" for i in range(150)}, timeout=5)
    assert many.status_code == 431 and "headers over the cap" in many.json()["detail"]
    assert metric(_metrics(base), "leanvision_requests_total", endpoint="/healthz",
                  status="431") >= 1


def test_a_burst_above_the_queue_gets_only_the_apps_own_answers(server):
    base, _, _ = server
    count = 10 * QUEUE
    body = files(*[(f"{i}.png", png((i * 40, 20, 90))) for i in range(QUEUE)])
    text = _metrics(base)
    before = {s: metric(text, "leanvision_requests_total", endpoint="/v1/predict", status=s)
              for s in ("200", "503")}
    start = threading.Barrier(count, timeout=30)

    def post(_: int) -> httpx.Response | Exception:
        start.wait()
        try:
            return httpx.post(f"{base}/v1/predict", files=body, timeout=30)
        except httpx.TransportError as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(post, range(count), timeout=60))
    failed = [a for a in answers if isinstance(a, Exception)]
    assert not failed, f"{len(failed)} connections failed, first: {failed[0]!r}"
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 503)
    assert all("detail" in a.json() for a in answers if a.status_code == 503)  # the app's own
    text = _metrics(base)
    counted = {s: metric(text, "leanvision_requests_total", endpoint="/v1/predict", status=s)
               - before[s] for s in ("200", "503")}
    assert counted == {"200": statuses.count(200), "503": statuses.count(503)}


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_decode_heavy_small_files_hold_up_nobody_and_leave_no_memory_behind(server):
    base, _, pid = server
    bomb = one_bit_png(6300)  # 40 MP in a few KB: passed training's cap, costs ~0.4 s
    refused = httpx.post(f"{base}/v1/predict", files=files(("b.png", bomb)), timeout=10)
    assert refused.status_code == 422 and "needs only 16x16 px" in refused.json()["detail"]
    heavy = one_bit_png(4000)  # 16 MP: at the serving cap, so the attacker's next best
    over = httpx.post(f"{base}/v1/predict", files=files(*[(f"{i}.png", heavy) for i in range(5)]),
                      timeout=10)
    assert over.status_code == 413 and "budget" in over.json()["detail"]
    rss_before = _rss_mb(pid)
    attack_files = files(*[(f"{i}.png", heavy) for i in range(2)])
    with ThreadPoolExecutor(6) as pool:
        attacks = [pool.submit(httpx.post, f"{base}/v1/predict", files=attack_files, timeout=30)
                   for _ in range(6)]
        ordinary = [httpx.post(f"{base}/v1/predict", files=files(("a.png", png())), timeout=30)
                    for _ in range(5)]
        # Ordinary requests pass the twelve heavy decodes, which go one at a time.
        attacks_left = sum(not a.done() for a in attacks)
        outcomes = [a.result(timeout=60).status_code for a in attacks]
    assert [o.status_code for o in ordinary] == [200] * 5
    assert attacks_left > 0
    assert set(outcomes) <= {200, 504}
    assert _rss_mb(pid) - rss_before < 50
