"""Every image size decodes: the crop box always lies inside the picture, the output has exactly
the asked shape, and large JPEGs decoded in draft mode stay close to a full decode."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from leanvision.data import BadImageError, ImageChecks, load_rgb, to_tensor_resized
from leanvision.data import images as images_module
from leanvision.data.images import crop_box, decode_resized

# Square, small, non-square and very flat targets, each as (H, W).
TARGETS = [(224, 224), (32, 32), (192, 160), (7, 300), (300, 7)]
SIDE = 700
EXTREMES = [(1, 4000), (4000, 1), (3, 2000), (2000, 3), (1, 1), (1, 2), (2, 1)]


def _pictures() -> list[tuple[int, int]]:
    """Every width 1..SIDE against a few heights and the reverse, a seeded sample of other pairs
    and the extreme aspect ratios, as (w, h). 193x240 is the size of the reported failure."""
    sizes = {(w, h) for w in range(1, SIDE + 1) for h in (1, 240, SIDE)}
    sizes |= {(w, h) for h in range(1, SIDE + 1) for w in (1, 193, SIDE)}
    rng = random.Random(0)
    sizes |= {(rng.randint(1, SIDE), rng.randint(1, SIDE)) for _ in range(300)}
    return sorted(sizes | set(EXTREMES))


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t[0]}x{t[1]}")
def test_every_size_resizes_to_the_exact_shape(target):
    # Image.new is cheap, so the sweep costs only the resizes.
    for w, h in _pictures():
        try:
            out = to_tensor_resized(Image.new("RGB", (w, h), (10, 200, 30)), target)
        except Exception as exc:  # noqa: BLE001 - name the size that failed
            raise AssertionError(f"{w}x{h} -> {target}: {type(exc).__name__}: {exc}") from None
        assert out.shape == (3, *target) and out.dtype == torch.uint8, (w, h)
        # A flat picture stays flat: nothing from outside the image was sampled. (numpy: a
        # torch reduction this size would go through its thread pool, slow on a busy machine.)
        assert out.numpy()[1].min() == 200, (w, h)


def test_crop_box_lies_inside_every_image_and_keeps_the_aspect():
    # Every pair of sides 1..SIDE: only the box depends on the size, so this covers what the
    # resize sweep above samples.
    pairs = [(w, h) for w in range(1, SIDE + 1) for h in range(1, SIDE + 1)]
    wh = np.array(pairs, np.float64)
    w, h = wh[:, 0], wh[:, 1]
    for target in TARGETS:
        out_h, out_w = target
        box = np.array([crop_box(pair, target) for pair in pairs])
        left, top, right, bottom = box.T
        inside = (left >= 0) & (top >= 0) & (left <= right) & (right <= w) \
            & (top <= bottom) & (bottom <= h)
        assert inside.all(), wh[~inside][:5]
        # One side spans the image; the other has the target's aspect.
        spans = (right - left == w) | (bottom - top == h)
        assert spans.all(), wh[~spans][:5]
        aspect = np.abs((right - left) * out_h - (bottom - top) * out_w)
        assert (aspect <= 1e-9 * w * h * out_h * out_w).all()


def test_extreme_aspect_ratios_from_files(tmp_path):
    for w, h in [(1, 4000), (4000, 1), (3, 2000), (2000, 3)]:
        path = tmp_path / f"{w}x{h}.png"
        Image.new("RGB", (w, h), (90, 90, 90)).save(path)
        out = decode_resized(path, (224, 224), ImageChecks(min_side=1))
        assert out.shape == (3, 224, 224) and int(out.float().mean().round()) == 90


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth gradients, a few edges and mild noise: closer to a photo than flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(x / w * 6.0) * np.cos(y / h * 4.0)
    g = 255 * x / w
    b = np.where((x // 400 + y // 300) % 2 == 0, 60.0, 190.0)
    pixels = np.stack([r, g, b], axis=2) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_draft_decode_of_a_large_jpeg_is_close_to_the_full_decode(tmp_path):
    path = tmp_path / "big.jpg"
    _photo(3000, 2000).save(path, quality=90)
    drafted = load_rgb(path, draft_to=(224, 224))
    # 2000 // 448 = 4: the DCT scale of 1/4 still leaves at least twice the target.
    assert drafted.size == (750, 500)
    fast = decode_resized(path, (224, 224))
    full = to_tensor_resized(load_rgb(path), (224, 224))
    assert fast.shape == full.shape == (3, 224, 224) and fast.dtype == torch.uint8
    assert (fast.float() - full.float()).abs().mean() < 3


def test_draft_keeps_exif_orientation_and_checks_the_full_size(tmp_path):
    path = tmp_path / "rotated.jpg"
    picture = _photo(3000, 2000, seed=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees to upright
    picture.save(path, quality=90, exif=exif)
    drafted = load_rgb(path, draft_to=(160, 192))
    assert drafted.size == (500, 750)  # upright: portrait
    full = load_rgb(path)
    assert full.size == (2000, 3000)
    fast, slow = to_tensor_resized(drafted, (160, 192)), to_tensor_resized(full, (160, 192))
    assert (fast.float() - slow.float()).abs().mean() < 3
    # The pixel cap is checked against the header's 6 MP, not the smaller draft decode.
    with pytest.raises(BadImageError, match="too large"):
        load_rgb(path, ImageChecks(max_pixels=5_000_000), draft_to=(32, 32))


def test_small_and_non_jpeg_files_ignore_the_draft(tmp_path):
    small, png = tmp_path / "small.jpg", tmp_path / "big.png"
    _photo(300, 200).save(small, quality=90)
    _photo(1200, 900).save(png)
    assert load_rgb(small, draft_to=(224, 224)).size == (300, 200)
    assert load_rgb(png, draft_to=(32, 32)).size == (1200, 900)


def test_undecodable_images_raise_the_leanvision_error(tmp_path, monkeypatch):
    truncated = tmp_path / "cut.jpg"
    _photo(400, 300).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(BadImageError, match="truncated"):
        decode_resized(truncated, (32, 32))
    # Opened lazily, the same file fails only when resized: still a BadImageError.
    with Image.open(truncated) as lazy, pytest.raises(BadImageError):
        to_tensor_resized(lazy, (32, 32))

    def broken(img, size):
        raise ValueError("something PIL did not expect")

    good = tmp_path / "good.png"
    _photo(50, 40).save(good)
    monkeypatch.setattr(images_module, "to_tensor_resized", broken)
    with pytest.raises(BadImageError, match="ValueError: something PIL did not expect"):
        decode_resized(good, (32, 32))
