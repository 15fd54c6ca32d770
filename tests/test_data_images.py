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


# --- the helpers behind load_rgb, one by one (issue 24's mutation check) ---------------------

def test_bad_image_error_carries_the_reason_and_the_source():
    err = BadImageError("truncated image", "a.jpg")
    assert err.reason == "truncated image" and str(err) == "a.jpg: truncated image"
    assert str(BadImageError("truncated image")) == "truncated image"


def test_decode_resized_drafts_like_training_and_names_the_file(tmp_path, monkeypatch):
    from leanvision.data import images

    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)).save(path)
    drafted = images.decode_resized(path, (64, 64))
    assert torch.equal(drafted, to_tensor_resized(load_rgb(path, draft_to=(64, 64)), (64, 64)))
    assert not torch.equal(drafted, to_tensor_resized(load_rgb(path), (64, 64)))

    def fails(img, size):
        raise RuntimeError("boom")

    monkeypatch.setattr(images, "to_tensor_resized", fails)
    with pytest.raises(BadImageError) as err:
        images.decode_resized(path, (64, 64))
    assert str(err.value) == f"{path}: could not be decoded (RuntimeError: boom)"
    with pytest.raises(BadImageError) as err:
        images.decode_resized(np.zeros((9, 9), np.uint8), (64, 64))
    assert str(err.value) == "could not be decoded (RuntimeError: boom)"


def test_draft_keeps_twice_the_larger_target_side(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000), (90, 120, 200)).save(path)
    assert load_rgb(path, draft_to=(300, 50)).size == (1500, 1000)  # 600 px: a scale of 1/2
    assert load_rgb(path, draft_to=(50, 300)).size == (1500, 1000)
    assert load_rgb(path, draft_to=(0, 0)).size == (3000, 2000)  # no side: a full decode
    assert load_rgb(path, draft_to=None).size == (3000, 2000)


def test_decode_reasons():
    from leanvision.data.images import _decode_reason

    assert _decode_reason(OSError("image file is truncated")) == "truncated image"
    assert _decode_reason(OSError("Premature end of JPEG file")) == "truncated image"
    assert _decode_reason(EOFError()) == "truncated image"
    assert _decode_reason(OSError("broken data stream")) == ("could not be decoded (broken "
                                                             "data stream)")
    assert _decode_reason(ValueError()) == "could not be decoded (ValueError)"


def test_header_size_reads_the_declared_size_only(tmp_path):
    from leanvision.data.images import _header_size

    png = tmp_path / "a.png"
    Image.new("RGB", (30, 20)).save(png)
    assert _header_size(str(png)) == (30, 20)
    text = tmp_path / "a.txt"
    text.write_text("not an image at all")
    assert _header_size(str(text)) is None
    assert _header_size(str(tmp_path / "missing.png")) is None


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N"])
def test_every_16_bit_mode_is_scaled(mode):
    from leanvision.data.images import _to_rgb

    big_endian = mode == "I;16B" or (mode == "I;16N" and np.little_endian is False)
    values = np.full((8, 8), 32896, dtype=">u2" if big_endian else "<u2")
    im = Image.frombytes(mode, (8, 8), values.tobytes())
    assert _to_rgb(im, "x").getpixel((0, 0)) == (128, 128, 128)


# "La" is listed in images.py too, but this Pillow cannot convert it to RGBA (nor to L)
@pytest.mark.parametrize("mode", ["PA", "RGBa", "LA", "RGBA"])
def test_every_mode_with_alpha_composites_over_white(mode):
    from leanvision.data.images import _to_rgb

    transparent = Image.new(mode, (8, 8))  # all channels 0: black and fully transparent
    assert _to_rgb(transparent, "x").getpixel((0, 0)) == (255, 255, 255)


class Exotic:
    """An image in a mode with no RGB conversion: every mode this Pillow can create converts."""

    mode, info, size = "XYZ", {}, (8, 8)

    def load(self):
        return None

    def convert(self, mode):
        raise ValueError(f"conversion from XYZ to {mode} not supported")


def test_a_colour_mode_without_rgb_conversion_is_refused():
    from leanvision.data.images import _to_rgb, pil_to_rgb

    with pytest.raises(BadImageError) as err:
        pil_to_rgb(Exotic())
    assert str(err.value) == ("unsupported colour mode XYZ (conversion from XYZ to RGB not "
                              "supported)")
    with pytest.raises(BadImageError) as err:
        _to_rgb(Exotic(), "x.tif")
    assert err.value.reason == ("unsupported colour mode XYZ (conversion from XYZ to RGB not "
                                "supported)")
    assert str(err.value) == f"x.tif: {err.value.reason}"


def test_scale_int():
    from leanvision.data.images import _scale_int

    assert _scale_int(np.array([0, 257, 32896, 65535], np.uint16)).tolist() == [0, 1, 128, 255]
    # wider data is scaled by its own maximum; negative values clip to black
    assert _scale_int(np.array([-514, 0, 65535, 70000, 131070], np.int32)).tolist() == [
        0, 0, 128, 136, 255]
    # just past 16 bits the divisor is top / 255, not 257: 65407 lands below the half-level
    assert _scale_int(np.array([0, 65407, 65536], np.int32)).tolist() == [0, 254, 255]
    empty = _scale_int(np.zeros((0, 3), np.int32))
    assert empty.shape == (0, 3) and empty.dtype == np.uint8


def test_scale_float():
    from leanvision.data.images import _scale_float

    def scaled(*values):
        return _scale_float(np.array(values, np.float64)).tolist()

    assert scaled(0.0, 0.5, 0.75, 1.0) == [0, 128, 191, 255]  # [0, 1] floats
    assert scaled(0.0, 2.0, 200.0) == [0, 2, 200]  # already 0..255
    assert scaled(0.0, 1.5, 2.0) == [0, 2, 2]
    assert scaled(0.0, 1.5, 256.0) == [0, 1, 255]  # wider: stretched to 0..255
    assert scaled(-1.0, 0.0, 1.0) == [0, 128, 255]
    assert scaled(-1.0, 0.5) == [0, 255]
    assert scaled(-3.0, -3.0) == [0, 0]  # flat, outside both ranges
    assert scaled(np.nan, 0.0, 0.5) == [0, 0, 128]  # non-finite values count as 0
    none = _scale_float(np.array([[np.nan, np.inf]]))
    assert none.shape == (1, 2) and none.dtype == np.uint8 and none.max() == 0


def test_arrays_of_other_shapes():
    one_channel = np.full((8, 8, 1), 7, np.uint8)
    assert load_rgb(one_channel).getpixel((0, 0)) == (7, 7, 7)
    for bad in (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8), np.float32)):
        with pytest.raises(BadImageError) as err:
            load_rgb(bad)
        assert str(err.value) == (f"unsupported array (shape {bad.shape}, dtype {bad.dtype}); "
                                  "expected HxW or HxWx3 uint8")
    with pytest.raises(BadImageError) as err:
        load_rgb(np.zeros((4, 4), np.uint8))
    assert str(err.value) == "too small (4x4 px; minimum side 8)"


def test_pil_to_rgb_gives_an_in_memory_image_the_same_treatment(tmp_path):
    from leanvision.data.images import pil_to_rgb

    assert pil_to_rgb(Image.new("L", (8, 8), 5)).getpixel((0, 0)) == (5, 5, 5)
    with pytest.raises(BadImageError) as err:
        pil_to_rgb(Image.new("RGB", (4, 9)))
    assert str(err.value) == "too small (4x9 px; minimum side 8)"
    path = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000), (90, 120, 200)).save(path)
    with Image.open(path) as im:  # not decoded yet: the draft applies
        assert pil_to_rgb(im, draft_to=(300, 50)).size == (1500, 1000)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown rotated 90 degrees
    Image.new("RGB", (40, 20), (200, 30, 30)).save(rotated, exif=exif)
    with Image.open(rotated) as im:
        assert pil_to_rgb(im).size == (20, 40)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[:5000])
    with Image.open(cut) as im, pytest.raises(BadImageError) as err:
        pil_to_rgb(im)
    assert err.value.reason == "truncated image" and str(err.value) == "truncated image"


def test_every_refusal_names_the_file(tmp_path, monkeypatch):
    from leanvision.data import images

    def message(path, checks=ImageChecks()):
        with pytest.raises(BadImageError) as err:
            load_rgb(path, checks)
        assert str(err.value) == f"{path}: {err.value.reason}"
        return err.value.reason

    assert message(tmp_path / "missing.png") == "file not found"
    assert message(tmp_path) == "is a folder, not an image file"
    (tmp_path / "file").write_text("x")
    assert message(tmp_path / "file" / "below.png") == "cannot read file (Not a directory)"
    (tmp_path / "empty.png").write_bytes(b"")
    assert message(tmp_path / "empty.png") == "empty file (0 bytes)"
    (tmp_path / "text.png").write_text("not pixels")
    assert message(tmp_path / "text.png") == "not an image"
    Image.new("RGB", (9, 8)).save(tmp_path / "ok.png")
    assert message(tmp_path / "ok.png", ImageChecks(min_side=9)) == (
        "too small (9x8 px; minimum side 9)")
    assert message(tmp_path / "ok.png", ImageChecks(max_pixels=71)) == (
        "too large (9x8 = 7.2e-05 MP; cap 7.1e-05 MP)")
    assert load_rgb(tmp_path / "ok.png", ImageChecks(max_pixels=72)).size == (9, 8)  # at the cap
    big = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000)).save(big)
    full = big.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[:3000])
    assert message(tmp_path / "cut.jpg") == "truncated image"

    def broken(im):
        raise OSError("disk gone")

    monkeypatch.setattr(images, "_upright", lambda im: Exotic())
    assert message(tmp_path / "ok.png") == ("unsupported colour mode XYZ (conversion from XYZ "
                                            "to RGB not supported)")
    monkeypatch.setattr(images, "_upright", broken)
    assert message(tmp_path / "ok.png") == "could not be decoded (disk gone)"


def test_pils_own_bomb_limit_is_reported_with_our_cap(tmp_path, monkeypatch):
    from leanvision.data import images

    path = tmp_path / "mid.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above 2x this
    with pytest.raises(BadImageError) as err:
        load_rgb(path)  # within our cap: PIL's limit is the reason
    assert str(err.value) == f"{path}: too large for PIL's decompression-bomb limit"
    with pytest.raises(BadImageError) as err:
        load_rgb(path, ImageChecks(max_pixels=5000))  # our cap, from the header's size
    assert str(err.value) == f"{path}: too large (100x100 = 0.01 MP; cap 0.005 MP)"
    monkeypatch.setattr(images, "_header_size", lambda p: None)
    with pytest.raises(BadImageError) as err:
        load_rgb(path)
    assert str(err.value) == f"{path}: too large (cap 40 MP)"


def test_to_tensor_resized_converts_resamples_bilinearly_and_reports_lazy_failures(tmp_path):
    from leanvision.data.images import crop_box

    assert crop_box((10, 30), (10, 10)) == (0.0, 10.0, 10.0, 20.0)  # centred vertically
    assert crop_box((30, 10), (10, 10)) == (10.0, 0.0, 20.0, 10.0)  # and horizontally
    gray = to_tensor_resized(Image.new("L", (8, 8), 100), (8, 8))
    assert gray.shape == (3, 8, 8) and (gray == 100).all()
    noise = _noise(64, 48, seed=4)
    want = noise.resize((16, 16), Image.Resampling.BILINEAR, box=crop_box((64, 48), (16, 16)))
    assert torch.equal(to_tensor_resized(noise, (16, 16)),
                       torch.from_numpy(np.array(want)).permute(2, 0, 1))
    path = tmp_path / "big.jpg"
    _noise(400, 300).save(path)
    (tmp_path / "cut.jpg").write_bytes(path.read_bytes()[:2000])
    with Image.open(tmp_path / "cut.jpg") as lazy, pytest.raises(BadImageError) as err:
        to_tensor_resized(lazy, (16, 16))  # decoding happens inside, at the resize
    assert err.value.reason == "truncated image"
