"""CMYK images with an embedded ICC profile convert through the profile (littleCMS), not PIL's
plain (255 - C) * (255 - K) formula, and a profile littleCMS cannot use falls back to the formula.

No CMYK profile ships with Pillow or this machine, so the test writes the smallest one littleCMS
accepts: an ICC v2 printer profile whose CMYK -> Lab table maps every ink mix to one Lab colour.
Whatever the pixels, a colour-managed conversion then gives that one colour everywhere, which the
formula never does."""

from __future__ import annotations

import struct

import pytest
from PIL import Image

from leanvision.data import load_rgb
from leanvision.data.images import pil_to_rgb

INKS = [(0, 200, 30, 10), (90, 0, 0, 0), (0, 0, 0, 255), (10, 20, 30, 40)]
LAB_WHITE = (255, 128, 128)  # lut8 Lab encoding: L 100, a 0, b 0
LAB_GREY = (200, 128, 128)  # L about 78


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def cmyk_profile(lab: tuple[int, int, int]) -> bytes:
    """ICC v2 'prtr' profile, CMYK -> Lab through one lut8 (A2B0) whose 2x2x2x2 grid holds `lab`
    at every node: desc, wtpt and A2B0 tags, nothing else."""
    ramp = bytes(range(256))
    identity = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a2b0 = (b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + identity + ramp * 4 + bytes(lab) * 16
            + ramp * 3)
    d50 = _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    wtpt = b"XYZ " + bytes(4) + d50
    text = b"leanvision test CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(12 + 67)
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + bytes(4) + bytes([2, 0x10, 0, 0])
              + b"prtrCMYKLab " + bytes(12) + b"acsp" + bytes(28) + d50)
    return header + bytes(128 - len(header)) + table + body


def _cmyk_image() -> Image.Image:
    """8x8 (the smallest side leanvision accepts), column x inked with INKS[x % 4]."""
    im = Image.new("CMYK", (8, 8))
    for x in range(8):
        for y in range(8):
            im.putpixel((x, y), INKS[x % len(INKS)])
    return im


def _pixels(im: Image.Image) -> list[tuple[int, int, int]]:
    return [im.getpixel((x, 0)) for x in range(im.width)]


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_a_cmyk_file_with_a_profile_converts_through_the_profile(tmp_path, fmt):
    formula = _pixels(_cmyk_image().convert("RGB"))
    assert len(set(formula)) == len(INKS) and (255, 255, 255) not in formula
    path = tmp_path / f"cmyk.{fmt.lower()}"
    _cmyk_image().save(path, fmt, icc_profile=cmyk_profile(LAB_WHITE), quality=100)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK" and raw.info.get("icc_profile")
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and _pixels(rgb) == [(255, 255, 255)] * rgb.width


def test_the_profile_decides_the_colour_for_an_in_memory_image_too():
    im = _cmyk_image()
    im.info["icc_profile"] = cmyk_profile(LAB_GREY)
    grey = _pixels(pil_to_rgb(im))
    assert len(set(grey)) == 1
    r, g, b = grey[0]
    assert r == g == b and 150 < r < 200  # neutral, lighter than mid grey: L about 78
    assert im.mode == "CMYK"  # the caller's image is left as it was


@pytest.mark.parametrize("profile", [b"not an ICC profile", b""], ids=["broken", "empty"])
def test_a_profile_littlecms_cannot_use_falls_back_to_the_formula(profile):
    im = _cmyk_image()
    im.info["icc_profile"] = profile
    assert _pixels(pil_to_rgb(im)) == _pixels(_cmyk_image().convert("RGB"))


def test_an_rgb_profile_on_a_cmyk_image_falls_back_to_the_formula():
    from PIL import ImageCms

    im = _cmyk_image()
    im.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert _pixels(pil_to_rgb(im)) == _pixels(_cmyk_image().convert("RGB"))
