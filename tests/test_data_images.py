import hashlib
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from leanvision.data import BadImageError, ImageChecks, load_rgb, to_tensor_resized
from leanvision.errors import DatasetError


def _noise(w=64, h=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _reason(path, checks=ImageChecks()):
    with pytest.raises(BadImageError) as info:
        load_rgb(path, checks)
    assert isinstance(info.value, DatasetError)
    return info.value.reason


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_bad_files_each_have_a_reason(tmp_path):
    assert _reason(tmp_path / "missing.png") == "file not found"

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert _reason(empty) == "empty file (0 bytes)"

    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n" * 10)
    assert _reason(text) == "not an image"

    small = tmp_path / "small.png"
    Image.new("RGB", (4, 4)).save(small)
    assert _reason(small) == "too small (4x4 px; minimum side 8)"

    for fmt in ("png", "jpeg"):
        whole = tmp_path / f"whole.{fmt}"
        _noise().save(whole, format=fmt)
        cut = tmp_path / f"cut.{fmt}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        assert _reason(cut) == "truncated image", fmt


def test_pixel_bomb_refused_from_header_fast(tmp_path):
    bomb = tmp_path / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 2501 * 16)  # a few rows; the header alone must be enough
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    start = time.perf_counter()
    reason = _reason(bomb)
    assert time.perf_counter() - start < 2.0
    assert reason == "too large (20000x20000 = 400 MP; cap 40 MP)"
    # Our own cap applies below PIL's global bomb limit too.
    mid = tmp_path / "mid.png"
    Image.new("1", (300, 200)).save(mid)
    assert _reason(mid, ImageChecks(max_pixels=50_000)) == (
        "too large (300x200 = 0.06 MP; cap 0.05 MP)")


def test_exif_orientation_applied_and_file_untouched(tmp_path):
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)  # left half red
    stored[:, 10:] = (0, 0, 255)  # right half blue
    img = Image.fromarray(stored, "RGB")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    img.save(path, exif=exif.tobytes())
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    out = np.asarray(load_rgb(path))
    assert out.shape == (20, 10, 3)  # width and height swapped
    assert (out[:10] == (255, 0, 0)).all()  # the left edge is now the top
    assert (out[10:] == (0, 0, 255)).all()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_grayscale_palette_alpha_cmyk(tmp_path):
    gray = tmp_path / "gray.png"
    Image.new("L", (8, 8), 100).save(gray)
    im = load_rgb(gray)
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (100, 100, 100)

    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal_path = tmp_path / "pal.png"
    pal.save(pal_path, transparency=0)
    im = load_rgb(pal_path)
    assert im.getpixel((0, 0)) == (255, 255, 255)  # transparent black shows as white
    assert im.getpixel((1, 0)) == (255, 0, 0)

    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 255, 128))
    rgba_path = tmp_path / "rgba.png"
    rgba.save(rgba_path)
    im = load_rgb(rgba_path)
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((1, 0)) == (255, 0, 0)
    r, g, b = im.getpixel((2, 0))
    assert abs(r - 127) <= 1 and abs(g - 127) <= 1 and b == 255

    la_path = tmp_path / "la.png"
    Image.new("LA", (8, 8), (0, 0)).save(la_path)
    assert load_rgb(la_path).getpixel((0, 0)) == (255, 255, 255)

    cmyk_path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk_path)
    assert load_rgb(cmyk_path).getpixel((0, 0)) == (255, 0, 0)


def test_high_bit_depth_scaled_not_clamped(tmp_path):
    values = np.zeros((8, 8), np.uint16)
    values[0, 0], values[0, 1], values[0, 2] = 65535, 32896, 257
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    out = np.asarray(load_rgb(path))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (128, 128, 128)  # clamping would give 255
    assert tuple(out[0, 2]) == (1, 1, 1)

    wide = tmp_path / "wide.tif"
    Image.fromarray(values.astype(np.int32)).save(wide)
    assert tuple(np.asarray(load_rgb(wide))[0, 1]) == (128, 128, 128)

    floats = np.zeros((8, 8), np.float32)
    floats[0, 0], floats[0, 1] = 1.0, 0.5
    fpath = tmp_path / "float.tif"
    Image.fromarray(floats).save(fpath)
    out = np.asarray(load_rgb(fpath))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (128, 128, 128)


def test_arrays_pass_through():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    im = load_rgb(gray)
    assert im.mode == "RGB" and im.getpixel((3, 1)) == (11, 11, 11)
    rgb = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_rgb(rgb)), rgb)
    with pytest.raises(BadImageError, match="too small"):
        load_rgb(np.zeros((4, 4), np.uint8))


def test_to_tensor_resized_fits_then_center_crops():
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20] = (255, 0, 0)
    wide[:, 20:40] = (0, 255, 0)
    wide[:, 40:] = (0, 0, 255)
    out = to_tensor_resized(Image.fromarray(wide), (10, 10))
    assert out.dtype == torch.uint8 and out.shape == (3, 10, 10)
    # Only the green middle survives; the filter may blend a little across the crop edge.
    assert (out[1, :, 1:-1] == 255).all() and out[1].min() >= 192
    assert (out[0, :, 1:-1] == 0).all() and (out[2, :, 1:-1] == 0).all()
    assert out[0].max() < 64 and out[2].max() < 64

    tall = to_tensor_resized(Image.fromarray(wide), (40, 30))
    assert tall.shape == (3, 40, 30)

    same = _noise(12, 10)
    out = to_tensor_resized(same, (10, 12))
    assert torch.equal(out, torch.from_numpy(np.array(same)).permute(2, 0, 1))
