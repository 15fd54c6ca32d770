"""Decoding on a budget (serving/decoding.py): the per-request pixel budget, the serving cap per
image and its message, JPEG draft mode in the cost, the deadline between files, the heavy lane,
/readyz while ordinary work lags, and memory handed back after a large decode."""

from __future__ import annotations

import asyncio
import io
import platform
import struct
import threading
import time
import zlib

import pytest
from conftest import PNG_SIGNATURE
from fastapi.testclient import TestClient
from PIL import Image
from test_serve import FakeRuntime, files, png

from leanvision.errors import ConfigError
from leanvision.serving import create_app, decoding
from leanvision.serving.decoding import HEAVY_PIXELS, Decoder, decode_cost
from leanvision.serving.uploads import Upload, UploadError

SIZE = (16, 16)


def one_bit_png(side: int) -> bytes:
    """A valid all-black 1-bit PNG of side x side pixels: a few KB that decode to side^2 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = zlib.compress(row * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 20, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def decoder(max_image_mp: float = 16, max_request_mp: float = 64) -> Decoder:
    return Decoder(SIZE, int(max_image_mp * 1e6), int(max_request_mp * 1e6))


def test_the_cost_is_read_from_the_header_after_draft_mode():
    assert decode_cost(one_bit_png(3000), SIZE, 16_000_000) == 9_000_000
    # a JPEG decodes at 1/8 scale when the model needs 16 px: 4000x3000 costs 500x375
    assert decode_cost(jpeg(4000, 3000), SIZE, 16_000_000) == 500 * 375
    assert decode_cost(one_bit_png(5000), SIZE, 16_000_000) == 0  # refused, never decoded
    assert decode_cost(b"not an image", SIZE, 16_000_000) == 0


def test_a_request_over_the_pixel_budget_is_refused_before_any_decode(monkeypatch):
    decoded = []
    monkeypatch.setattr(decoding, "decode_upload", lambda *a: decoded.append(a))
    uploads = [Upload(f"{i}.png", one_bit_png(3000)) for i in range(3)]  # 27 MP in all
    with pytest.raises(UploadError) as caught:
        asyncio.run(decoder(max_image_mp=10, max_request_mp=20).decode(
            uploads, time.monotonic() + 10))
    assert caught.value.status == 413 and "27 MP in all" in caught.value.message
    assert "needs only 16x16 px" in caught.value.message and decoded == []


def test_a_request_past_its_deadline_decodes_nothing_more(monkeypatch):
    decoded = []
    monkeypatch.setattr(decoding, "decode_upload", lambda *a: decoded.append(a))
    uploads = [Upload("a.png", png()), Upload("b.png", png())]
    with pytest.raises(TimeoutError):
        asyncio.run(decoder().decode(uploads, time.monotonic() - 1))
    assert decoded == []


def test_a_timed_out_request_leaves_no_decodes_queued(monkeypatch):
    started = []

    def slow_decode(data, size, checks):
        started.append(1)
        time.sleep(0.2)
        raise decoding.BadImageError("not an image")

    monkeypatch.setattr(decoding, "decode_upload", slow_decode)
    dec = decoder()
    heavy = one_bit_png(2100)  # 4.4 MP: the heavy lane, one file at a time
    assert decode_cost(heavy, SIZE, dec.max_image_pixels) > HEAVY_PIXELS
    uploads = [Upload(f"{i}.png", heavy) for i in range(10)]

    async def give_up_early() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(dec.decode(uploads, time.monotonic() + 60), 0.1)

    asyncio.run(give_up_early())
    dec.heavy.submit(lambda: None).result(timeout=10)  # the lane has drained
    assert len(started) < len(uploads)  # the files still waiting were dropped
    dec.shutdown()


def test_heavy_files_wait_in_their_own_lane(monkeypatch):
    lanes = []
    monkeypatch.setattr(decoding, "decode_upload",
                        lambda data, size, checks: lanes.append(
                            threading.current_thread().name.rsplit("_", 1)[0]))
    dec = decoder()
    asyncio.run(dec.decode([Upload("big.png", one_bit_png(2100)), Upload("small.png", png())],
                           time.monotonic() + 10))
    assert sorted(lanes) == ["leanvision-decode", "leanvision-decode-heavy"]
    dec.shutdown()


def test_serving_caps_images_lower_than_training_and_says_why():
    with TestClient(create_app(predictor=FakeRuntime())) as client:
        answer = client.post("/v1/predict", files=files(("big.png", one_bit_png(4500))))
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "too large (4500x4500 = 20.2 MP; cap 16 MP)" in detail
    assert "the model needs only 16x16 px" in detail
    with pytest.raises(ConfigError, match="--max-request-mp 8.0 is below --max-image-mp 16"):
        create_app(predictor=FakeRuntime(), max_request_mp=8.0)


def test_readyz_turns_503_while_ordinary_work_lags(monkeypatch):
    with TestClient(create_app(predictor=FakeRuntime(), timeout_s=2)) as client:
        service = client.app.state.service
        assert service.batcher.ready.wait(timeout=60)  # warm-up runs in its own thread
        assert client.get("/readyz").status_code == 200
        monkeypatch.setattr(service.decoder.light, "oldest_wait", lambda: 1.5)
        lagging = client.get("/readyz")
        assert lagging.status_code == 503 and "overloaded" in lagging.json()["detail"]
        monkeypatch.setattr(service.decoder.light, "oldest_wait", lambda: 0.0)
        monkeypatch.setattr(service.batcher, "oldest_wait", lambda: 1.5)
        assert client.get("/readyz").status_code == 503
        monkeypatch.setattr(service.batcher, "oldest_wait", lambda: 0.0)
        monkeypatch.setattr(service.decoder.heavy, "oldest_wait", lambda: 100.0)
        assert client.get("/readyz").status_code == 200  # heavy files wait for themselves


def test_memory_is_trimmed_after_a_heavy_decode_only(monkeypatch):
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert decoding._malloc_trim() is not None
    decoding.release_memory()  # the real call works here (or does nothing off glibc)
    trims = []
    monkeypatch.setattr(decoding, "release_memory", lambda: trims.append(1))
    dec = decoder()
    asyncio.run(dec.decode([Upload("small.png", png())], time.monotonic() + 10))
    assert trims == []
    asyncio.run(dec.decode([Upload("big.png", one_bit_png(2100))], time.monotonic() + 10))
    assert trims == [1]
    dec.shutdown()
