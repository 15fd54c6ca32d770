import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leanvision.data import ImageRecords, cache, clear_decode_cache, decode_images, load_data
from leanvision.errors import DatasetError


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_decode_cache()
    yield
    clear_decode_cache()


def _dataset(root, bad=0):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(3):
            pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    for i in range(bad):
        (root / "b" / f"zz{i}.jpg").write_bytes(b"")
    return load_data(root).train


def _count_loads(monkeypatch):
    calls = []
    real = cache.decode_resized

    def counting(source, size, checks):
        calls.append(source)
        return real(source, size, checks)

    monkeypatch.setattr(cache, "decode_resized", counting)
    return calls


def test_decodes_in_order_at_size(tmp_path):
    records = _dataset(tmp_path)
    out = decode_images(records, (8, 10), workers=2)
    assert out.images.shape == (6, 3, 8, 10) and out.images.dtype == torch.uint8
    assert out.labels.tolist() == [0, 0, 0, 1, 1, 1] and out.labels.dtype == torch.int64
    assert out.kept.tolist() == list(range(6)) and out.bad == []
    from leanvision.data import load_rgb, to_tensor_resized

    assert torch.equal(out.images[4], to_tensor_resized(load_rgb(records.items[4]), (8, 10)))


def test_bad_images_error_or_skip(tmp_path):
    records = _dataset(tmp_path, bad=2)
    with pytest.raises(DatasetError) as info:
        decode_images(records, (8, 8))
    text = str(info.value)
    assert text.startswith("2 of 8 images could not be decoded")
    assert "Pass skip_bad_images=True to train without them" in text  # the Python argument
    assert "b/zz0.jpg: empty file (0 bytes)" in text and "b/zz1.jpg" in text

    out = decode_images(records, (8, 8), skip_bad=True)
    assert len(out) == 6 and out.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert out.kept.tolist() == [0, 1, 2, 3, 4, 5]
    assert out.bad == [("b/zz0.jpg", "empty file (0 bytes)"), ("b/zz1.jpg", "empty file (0 bytes)")]


def test_bad_rows_are_packed_and_first_ten_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    items = [np.full((8, 8, 3), v, np.uint8) if v % 3 else np.zeros((2, 2), np.uint8)
             for v in range(1, 40)]
    records = ImageRecords(items, np.arange(39) % 2)
    out = decode_images(records, (8, 8), skip_bad=True)
    assert len(out.bad) == 13
    assert out.images[:, 0, 0, 0].tolist() == [v for v in range(1, 40) if v % 3]
    assert out.labels.tolist() == [v % 2 for v in range(39) if (v + 1) % 3]
    with pytest.raises(DatasetError) as info:
        decode_images(records, (8, 8))
    assert "builtin[#2]: too small (2x2 px; minimum side 8)" in str(info.value)
    assert "... and 3 more; all 13 are listed in " in str(info.value)
    # The whole list: in a file the message names, and in the error's details (--json).
    listed = Path(str(info.value).rsplit("listed in ", 1)[1])
    assert listed.parent == tmp_path / "cache" / "leanvision" / "bad-images"
    rows = [line.split("\t") for line in listed.read_text().splitlines()]
    assert len(rows) == 13 and rows[-1][0] == "builtin[#38]" and "too small" in rows[-1][1]
    assert info.value.details["bad_images_list"] == str(listed)
    assert [b["file"] for b in info.value.details["bad_images"]] == [r[0] for r in rows]


def test_all_bad_fails_even_with_skip(tmp_path):
    records = ImageRecords([str(tmp_path / "x.png"), str(tmp_path / "y.png")], [0, 1])
    with pytest.raises(DatasetError, match="none of the 2 images could be decoded") as info:
        decode_images(records, (8, 8), skip_bad=True)
    assert "x.png: file not found" in str(info.value)


def test_in_process_cache_reuses_tensor(tmp_path, monkeypatch):
    records = _dataset(tmp_path)
    calls = _count_loads(monkeypatch)
    first = decode_images(records, (8, 8))
    assert len(calls) == 6
    second = decode_images(records.subset(np.arange(6)), (8, 8))
    assert len(calls) == 6  # no re-decoding
    assert second.images.data_ptr() == first.images.data_ptr()
    decode_images(records, (9, 9))
    assert len(calls) == 12  # another size is another entry

    # A changed file is a different key.
    path = records.items[0]
    os.utime(path, ns=(1, 1))
    decode_images(records, (8, 8))
    assert len(calls) == 18


def test_memmap_file_written_once_and_reused(tmp_path, monkeypatch):
    records = _dataset(tmp_path / "data", bad=1)
    store = tmp_path / "cache"
    first = decode_images(records, (8, 8), skip_bad=True, cache_dir=store)
    files = sorted(p.suffix for p in store.iterdir())
    assert files == [".json", ".npy"]  # no temp file left behind
    expected = first.images.clone()

    clear_decode_cache()
    calls = _count_loads(monkeypatch)
    again = decode_images(records, (8, 8), skip_bad=True, cache_dir=store)
    assert calls == []  # read back from the file
    assert torch.equal(again.images, expected)
    assert again.bad == first.bad and again.kept.tolist() == first.kept.tolist()
    with pytest.raises(DatasetError, match="skip_bad_images=True"):
        decode_images(records, (8, 8), cache_dir=store)


def test_over_budget_goes_to_disk(tmp_path, monkeypatch):
    records = _dataset(tmp_path / "data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = decode_images(records, (8, 8), memory_budget=100)
    assert len(list((tmp_path / "xdg" / "leanvision" / "decoded").glob("*.npy"))) == 1
    assert out.images.shape == (6, 3, 8, 8)


def test_empty_records_error():
    with pytest.raises(DatasetError, match="no images"):
        decode_images(ImageRecords([], np.zeros(0, np.int64)), (8, 8))
