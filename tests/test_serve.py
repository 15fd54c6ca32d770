"""The HTTP service: answers equal to the Predictor's for every image mode, dynamic batching,
the API key, the body and pixel caps, the bounded queue, timeouts and a graceful SIGTERM.

Concurrency tests run a real uvicorn server (in a thread, or for SIGTERM in a subprocess) with a
fake runtime whose speed the test controls; the model tests use a tiny untrained resnet8 served
through ONNX Runtime, as `serve` would pick for an exported artifact."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import os
import re
import select
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from conftest import PNG_SIGNATURE
from fastapi.testclient import TestClient
from PIL import Image

from leanvision.artifact import make_card, save_artifact
from leanvision.errors import ConfigError
from leanvision.models import create_model
from leanvision.runtime.export import export_onnx
from leanvision.runtime.predictor import Predictor
from leanvision.serving import create_app, run_app, serve
from leanvision.serving.limits import BodyLimitMiddleware, resolve_api_key

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["red", "green", "blue"]
KEY = "k" * 24


# --- helpers ----------------------------------------------------------------------------------

def make_artifact(folder: Path, onnx: bool = True) -> Path:
    """An untrained resnet8 on 16x16 inputs (the tests are about serving, not accuracy)."""
    torch.manual_seed(0)
    model = create_model("resnet8", len(CLASSES)).eval()
    card = make_card(arch="resnet8", arch_kwargs={}, classes=CLASSES, input_size=(16, 16),
                     mean=[0.5] * 3, std=[0.25] * 3, stage="train")
    save_artifact(folder, model, card)
    if onnx:
        export_onnx(model, (16, 16), folder / "model.onnx", batch=2)
    return folder


def png(colour=(200, 30, 30), size=(20, 20), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def files(*items: tuple[str, bytes]) -> list:
    return [("file", (name, data, "application/octet-stream")) for name, data in items]


class FakeRuntime:
    """Logits = each image's mean R, G, B: the answer depends on the caller's own image.
    `delay` per network call; `gate` (an Event) holds every call until set."""

    runtime = "fake"
    input_size = (16, 16)

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay, self.gate, self.batches, self.calls = delay, gate, [], 0

    @property
    def classes(self) -> list[str]:
        return list(CLASSES)

    def logits(self, batch) -> np.ndarray:
        batch = torch.as_tensor(batch)
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        self.batches.append(len(batch))
        return batch.float().mean(dim=(2, 3)).numpy() / 10.0


@contextmanager
def running_server(app) -> Iterator[str]:
    """uvicorn on a free loopback port in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def wait_ready(base: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{base}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.02)


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{wanted}}}" if labels else "")) + r" ([0-9.e+-]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_artifact(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def model_client(artifact) -> Iterator[TestClient]:
    with TestClient(create_app(artifact, threads=1)) as client:
        yield client


# --- answers -----------------------------------------------------------------------------------

def _mode_images(folder: Path) -> list[Path]:
    """One file per awkward kind: CMYK JPEG, 16-bit PNG, palette with transparency, EXIF-rotated
    JPEG, RGBA, greyscale, and a plain RGB picture."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
    made = []

    def save(name: str, image: Image.Image, **kw) -> None:
        image.save(folder / name, **kw)
        made.append(folder / name)

    save("rgb.png", rgb)
    save("cmyk.jpg", rgb.convert("CMYK"), quality=95)
    save("sixteen.png", Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16)))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette.png", palette, transparency=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the decoded picture must be turned upright
    save("rotated.jpg", rgb, exif=exif, quality=95)
    save("rgba.png", rgb.convert("RGBA"))
    save("grey.png", rgb.convert("L"))
    return made


def test_predict_matches_the_predictor_for_every_image_mode(artifact, model_client, tmp_path):
    paths = _mode_images(tmp_path)
    response = model_client.post("/v1/predict?top_k=3",
                                 files=files(*[(p.name, p.read_bytes()) for p in paths]))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["runtime"] == "onnx-fp32" and answer["model"] == "tiny"
    expected = Predictor.from_artifact(artifact, threads=1).predict_images(paths, top_k=3)
    for served, wanted, path in zip(answer["results"], expected, paths, strict=True):
        assert served["image"] == path.name
        assert [t["class"] for t in served["top"]] == [t["class"] for t in wanted["top"]]
        np.testing.assert_allclose([t["prob"] for t in served["top"]],
                                   [t["prob"] for t in wanted["top"]], rtol=1e-5, atol=1e-6)
    # the EXIF-rotated file really was turned: it differs from the same pixels unrotated
    plain = model_client.post("/v1/predict", files=files(("p.jpg", _jpeg_of(paths[0]))))
    rotated = answer["results"][4]["top"]
    assert plain.json()["results"][0]["top"] != rotated


def _jpeg_of(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_bad_uploads_get_clear_4xx_answers(model_client):
    good = png()
    truncated = good[: len(good) // 2]
    cases = [
        (files(("notes.txt", b"hello, not an image")), 415, "not an image"),
        (files(("cut.png", truncated)), 422, "truncated"),
        (files(("tiny.png", png(size=(4, 4)))), 422, "too small"),
        (files(("empty.png", b"")), 422, "empty"),
        ([("image", ("a.png", good, "image/png"))], 400, "field named 'file'"),
    ]
    for payload, status, words in cases:
        response = model_client.post("/v1/predict", files=payload)
        assert response.status_code == status, (words, response.text)
        assert words in response.json()["detail"]
    not_multipart = model_client.post("/v1/predict", content=good,
                                      headers={"content-type": "image/png"})
    assert not_multipart.status_code == 415 and "multipart" in not_multipart.json()["detail"]
    # one bad file among good ones: the good ones still get their answers
    mixed = model_client.post("/v1/predict", files=files(("a.png", good), ("b.txt", b"x" * 9)))
    assert mixed.status_code == 200
    first, second = mixed.json()["results"]
    assert first["top"] and second == {"image": "b.txt", "error": "not an image"}


def _bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels, all black: a few tens of KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" * (1 + side // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(packer.compress(block) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _post_bomb_and_measure(bomb: bytes, conn) -> None:
    """In a forked child: post the bomb, send back (status, detail, seconds, MB of RSS rise).

    The rise is from this process's own RSS just before the request, not a lifetime peak: the
    peak-RSS mark is reset where Linux allows it (clear_refs), and a sampler thread reads the
    current RSS every millisecond besides (decoding 400 MB takes far longer than that)."""
    with TestClient(create_app(predictor=SlowRuntime())) as client:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            hwm_reset = True
        except OSError:
            hwm_reset = False
        baseline = _rss_kib()
        peak, done = [baseline], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_kib())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        response = client.post("/v1/predict", files=files(("bomb.png", bomb)))
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join(5)
        top = max(peak[0], _rss_kib("VmHWM") if hwm_reset else 0, _rss_kib())
        conn.send((response.status_code, response.json().get("detail", ""), elapsed,
                   (top - baseline) / 1024))
    conn.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_decompression_bomb_is_refused_fast_with_flat_memory():
    bomb = _bomb_png()
    assert len(bomb) < 200_000
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_post_bomb_and_measure, args=(bomb, send))
    child.start()
    try:
        assert receive.poll(60), "the child never answered"
        status, detail, elapsed, rise_mb = receive.recv()
    finally:
        child.join(20)
        if child.is_alive():
            child.kill()
            child.join()
    assert rise_mb < 50  # decoding would need 400 MB
    assert status == 422
    assert "too large (400 MP; cap 16 MP)" in detail
    assert elapsed < 1.0


def test_explain_returns_a_grad_cam_png(model_client):
    response = model_client.post("/v1/explain", files=files(("a.png", png())))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE)
    overlay = Image.open(io.BytesIO(response.content))
    assert min(overlay.size) >= 128 and overlay.mode == "RGB"
    assert response.headers["x-leanvision-class"] in CLASSES
    targeted = model_client.post("/v1/explain?target=blue", files=files(("a.png", png())))
    assert targeted.headers["x-leanvision-class"] == "blue"
    assert model_client.post("/v1/explain?target=purple",
                             files=files(("a.png", png()))).status_code == 422
    assert model_client.post("/v1/explain?method=scorecam",
                             files=files(("a.png", png()))).status_code == 422


def test_health_ready_metrics_page_and_no_model_loading_endpoint(model_client):
    assert model_client.get("/healthz").json() == {"status": "ok"}
    ready = model_client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["runtime"] == "onnx-fp32"
    model_client.post("/v1/predict", files=files(("a.png", png())))
    model_client.post("/v1/predict", files=files(("a.txt", b"nope")))
    text = model_client.get("/metrics").text
    assert metric(text, "leanvision_requests_total", endpoint="/v1/predict", status="200") >= 1
    assert metric(text, "leanvision_errors_total", kind="not_an_image") >= 1
    assert metric(text, "leanvision_batch_size_count") >= 1
    assert "leanvision_queue_depth 0.0" in text
    assert "leanvision_request_seconds_bucket" in text
    page = model_client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert "const WITH_TEXT = false;" in page.text  # the text box stays hidden
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # nothing from elsewhere
    # Every route is fixed; none has a path parameter or a field that names a model or URL.
    routes = {(r.path, tuple(sorted(r.methods))) for r in model_client.app.routes
              if getattr(r, "include_in_schema", True) and r.path != "/openapi.json"}
    assert routes == {("/healthz", ("GET",)), ("/readyz", ("GET",)), ("/metrics", ("GET",)),
                      ("/v1/predict", ("POST",)), ("/v1/explain", ("POST",))}
    assert model_client.post("/v1/predict?model=/etc/passwd&artifact=http://x",
                             files=files(("a.png", png()))).json()["model"] == "tiny"


# --- limits -------------------------------------------------------------------------------------

def test_non_loopback_bind_needs_an_api_key(artifact, monkeypatch):
    monkeypatch.delenv("LEANVISION_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="--host 0.0.0.0 .* pass --api-key KEY or set "
                                          "LEANVISION_API_KEY"):
        serve(artifact, host="0.0.0.0")
    assert resolve_api_key("127.0.0.1", None) is None
    assert resolve_api_key("::1", None) is None
    with pytest.raises(ConfigError, match="at least 16"):
        resolve_api_key("0.0.0.0", "short")
    monkeypatch.setenv("LEANVISION_API_KEY", KEY)
    assert resolve_api_key("0.0.0.0", None) == KEY


def test_api_key_guards_every_endpoint_but_health():
    with TestClient(create_app(predictor=FakeRuntime(), api_key=KEY)) as client:
        upload = files(("a.png", png()))
        assert client.get("/healthz").status_code == 200
        deadline = time.monotonic() + 10  # readyz needs no key either, warming up or ready
        while (ready := client.get("/readyz")).status_code != 200:
            assert ready.status_code == 503, ready.text
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.01)
        for headers in ({}, {"X-API-Key": "wrong" * 5}, {"Authorization": f"Basic {KEY}"},
                        {"Authorization": f"Bearer {KEY}x"}):
            assert client.post("/v1/predict", files=upload, headers=headers).status_code == 401
            assert client.get("/metrics", headers=headers).status_code == 401
            assert client.post("/v1/explain", files=upload, headers=headers).status_code == 401
        for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
            assert client.post("/v1/predict", files=upload, headers=headers).status_code == 200
            assert client.get("/metrics", headers=headers).status_code == 200
        # a server started without the PyTorch model says so instead of loading anything
        explained = client.post("/v1/explain", files=upload, headers={"X-API-Key": KEY})
        assert explained.status_code == 501 and "explanations are off" in explained.text
        # the page is static and holds no data; it asks for the key and sends it itself
        assert client.get("/").status_code == 200


def test_body_cap_from_content_length():
    with TestClient(create_app(predictor=FakeRuntime(), max_body_mb=0.01)) as client:
        response = client.post("/v1/predict", files=files(("a.bin", b"\0" * 20_000)))
        assert response.status_code == 413 and "MiB cap" in response.json()["detail"]


def test_body_cap_stops_reading_a_chunked_stream():
    """Without Content-Length the middleware counts streamed bytes and stops at the cap: a
    client that would send forever is answered 413 after cap + one chunk."""
    pulled = {"n": 0}

    async def endless_receive():
        pulled["n"] += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def app(scope, receive, send):
        while True:
            await receive()

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/v1/predict", "headers": [
        (b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimitMiddleware(app, max_bytes=10_000)(scope, endless_receive, send))
    assert pulled["n"] == 11
    assert sent[0]["status"] == 413


def test_body_cap_on_a_real_server_before_the_upload_ends():
    app = create_app(predictor=FakeRuntime(), max_body_mb=1)
    with running_server(app) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
            part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"'
                    b"\r\n\r\n")
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            chunk = b"x" * 65536
            for _ in range(20):  # 1.25 MiB, and the terminating chunk never comes
                if select.select([sock], [], [], 0)[0]:
                    break  # answered already: sending on would race the server's close
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except (BrokenPipeError, ConnectionResetError):
                    break  # closed after its answer, which is still there to read
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 413")


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer():
    runtime = FakeRuntime(delay=0.05)
    app = create_app(predictor=runtime, max_batch=8, max_wait_ms=30)
    colours = [(10 * i, 250 - 20 * i, 40 + 15 * i) for i in range(10)]
    with running_server(app) as base:
        wait_ready(base)

        def ask(colour):
            response = httpx.post(f"{base}/v1/predict", files=files(("c.png", png(colour))),
                                  timeout=10)
            return response.json()["results"][0]["top"]

        with ThreadPoolExecutor(len(colours)) as pool:
            answers = list(pool.map(ask, colours))
        text = httpx.get(f"{base}/metrics").text
    for colour, top in zip(colours, answers, strict=True):
        logits = torch.tensor(colour, dtype=torch.float32) / 10.0
        probs = logits.softmax(0)
        assert top[0]["class"] == CLASSES[int(probs.argmax())]
        assert top[0]["prob"] == pytest.approx(float(probs.max()), rel=1e-5)
    served = runtime.batches[2:]  # after the two warm-up calls
    assert sum(served) == len(colours) and max(served) > 1
    count = metric(text, "leanvision_batch_size_count")
    assert count == len(served) and metric(text, "leanvision_batch_size_sum") / count > 1


def test_full_queue_answers_503_at_once_and_slow_runs_504():
    hold = threading.Event()
    hold.set()  # let the warm-up through
    runtime = FakeRuntime(gate=hold)
    app = create_app(predictor=runtime, max_batch=1, queue_size=2, max_wait_ms=0,
                     timeout_s=5)
    with running_server(app) as base, ThreadPoolExecutor(3) as pool:
        wait_ready(base)
        hold.clear()
        post = lambda: httpx.post(f"{base}/v1/predict", files=files(("a.png", png())),  # noqa: E731
                                  timeout=10)
        first = pool.submit(post)
        deadline = time.monotonic() + 5
        while runtime.calls < 3:  # two warm-up calls, then the first image, held
            assert time.monotonic() < deadline
            time.sleep(0.01)
        queued = [pool.submit(post), pool.submit(post)]
        while app.state.batcher.depth < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.perf_counter()
        refused = post()
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert time.perf_counter() - started < 0.5
        assert "leanvision_queue_depth 2.0" in httpx.get(f"{base}/metrics").text
        hold.set()
        assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]
    slow = FakeRuntime(delay=0.0, gate=threading.Event())
    with TestClient(create_app(predictor=slow, timeout_s=0.2)) as client:
        slow.gate.set()
        client.get("/readyz")
        slow.delay = 1.0
        started = time.perf_counter()
        response = client.post("/v1/predict", files=files(("a.png", png())))
        assert response.status_code == 504 and "--timeout-s" in response.json()["detail"]
        assert time.perf_counter() - started < 0.9


def test_readyz_waits_for_warm_up():
    hold = threading.Event()
    with TestClient(create_app(predictor=FakeRuntime(gate=hold))) as client:
        assert client.get("/readyz").status_code == 503
        assert client.get("/readyz").json()["detail"] == "warming up"
        hold.set()
        deadline = time.monotonic() + 5
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)


class SlowRuntime:
    """Numpy only: the server runs in a forked child, where OpenMP pools must not be used."""

    runtime, input_size, classes = "slow", (16, 16), CLASSES
    HOLD_S = 2.0  # each request after warm-up takes this long

    def __init__(self) -> None:
        self.calls = 0

    def logits(self, batch) -> np.ndarray:
        self.calls += 1
        if self.calls > 2:  # after the two warm-up calls
            time.sleep(self.HOLD_S)
        return np.asarray(batch, dtype=np.float32).mean(axis=(2, 3))


def _serve_slow(port: int) -> None:
    run_app(create_app(predictor=SlowRuntime()), port=port, log_level="warning")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones():
    """A real SIGTERM to a real uvicorn process (forked: no second import of torch)."""
    port = _free_port()
    proc = multiprocessing.get_context("fork").Process(target=_serve_slow, args=(port,))
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.is_alive()
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{base}/v1/predict",
                                    files=files(("a.png", png())), timeout=10)
            deadline = time.monotonic() + 10
            while metric(httpx.get(f"{base}/metrics").text,
                         "leanvision_in_flight_requests") < 2:  # the POST and this GET
                assert time.monotonic() < deadline, "the POST never reached the server"
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGTERM)
            # Wait for the state, not a fixed time: the in-flight POST holds the server up for
            # SlowRuntime.HOLD_S, the window in which it must refuse new work.
            deadline = time.monotonic() + SlowRuntime.HOLD_S
            while httpx.get(f"{base}/readyz").status_code != 503:
                assert time.monotonic() < deadline, "readyz never turned 503 after SIGTERM"
                time.sleep(0.01)
            refused = httpx.post(f"{base}/v1/predict", files=files(("b.png", png())))
            assert refused.status_code == 503 and "shutting down" in refused.json()["detail"]
            assert httpx.get(f"{base}/healthz").status_code == 200
            finished = in_flight.result(timeout=30)
        assert finished.status_code == 200
        assert finished.json()["results"][0]["top"][0]["class"] == "red"
        proc.join(15)
        assert not proc.is_alive(), "the server did not exit within 15 s of SIGTERM"
        assert proc.exitcode == 0  # serve() returned: a clean exit, not death by signal
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="--queue-size 4 is below --max-batch 8"):
        create_app(predictor=FakeRuntime(), max_batch=8, queue_size=4)
    with pytest.raises(ConfigError, match="--max-batch 0"):
        create_app(predictor=FakeRuntime(), max_batch=0)
    with pytest.raises(ConfigError, match="no artifact"):
        create_app()


def test_the_server_asks_for_a_runtime_that_does_not_spin_between_batches(monkeypatch):
    # Between two batches the same cores parse and decode requests: the server's default.
    from leanvision.runtime.predictor import Predictor

    asked = []

    def fake_from_artifact(artifact, **kwargs):
        asked.append(kwargs)
        return FakeRuntime()

    monkeypatch.setattr(Predictor, "from_artifact", staticmethod(fake_from_artifact))
    create_app("some-artifact", explain=False)
    create_app("some-artifact", explain=False, spin=True)
    assert [kwargs["spin"] for kwargs in asked] == [False, True]
