"""CIFAR-10-C-style corruptions of uint8 image batches [N, 3, H, W], in torch, seeded.

Parameters follow Hendrycks & Dietterich's CIFAR-10-C tables (make_cifar_c.py), one value per
severity 1..5. Two adaptations to tensors of any size:
- brightness adds c to every channel (CIFAR-10-C adds c to HSV value, the largest channel; the
  same shift on all three keeps the hue and raises V by exactly c);
- the blur sigma is in units of a 32-pixel side, so a 224-pixel image loses as much of its
  content as a CIFAR image does.
Every corruption is a pure function of (images, severity, seed): the random noise is drawn per
fixed-size chunk from a generator seeded by (seed, family, severity, chunk), so the corrupted
copy is the same whatever batch size evaluates it."""

from __future__ import annotations

import difflib
import io
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
CHUNK = 256  # images per seeded noise draw; part of what makes a corrupted copy reproducible

# family -> parameter per severity 1..5 (CIFAR-10-C)
PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std, on [0, 1] pixels
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma, pixels of a 32-pixel side
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to [0, 1] pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # blend factor towards the mean grey
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # side kept before blowing back up
}
FAMILIES = tuple(PARAMETERS)
ALIASES = {"noise": "gaussian_noise", "blur": "gaussian_blur", "jpeg": "jpeg_compression",
           "pixelation": "pixelate"}


def check_families(families: Sequence[str] | str | None) -> tuple[str, ...]:
    """Family names in table order; None or "all": every family. Unknown names are refused
    with the closest match."""
    if families is None or families == "all":
        return FAMILIES
    if isinstance(families, str):
        families = [f for f in families.split(",") if f.strip()]
    wanted = []
    for name in families:
        key = name.strip().lower().replace("-", "_")
        key = ALIASES.get(key, key)
        if key not in PARAMETERS:
            close = difflib.get_close_matches(key, FAMILIES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"--families: unknown corruption {name!r}{hint}; choose from "
                              f"{', '.join(FAMILIES)}")
        wanted.append(key)
    if not wanted:
        raise ConfigError(f"--families is empty; choose from {', '.join(FAMILIES)}")
    return tuple(f for f in FAMILIES if f in wanted)


def check_severities(severities: Sequence[int] | str) -> tuple[int, ...]:
    if isinstance(severities, str):
        try:
            severities = [int(s) for s in severities.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--severities {severities!r} must be comma-separated integers "
                              "such as 1,3,5") from None
    values = sorted(set(int(s) for s in severities))
    if not values or any(s not in SEVERITIES for s in values):
        raise ConfigError(f"--severities {list(severities)} must be among 1..5 (CIFAR-10-C's "
                          "levels), e.g. 1,3,5")
    return tuple(values)


def parameter(family: str, severity: int, size: tuple[int, int]) -> float:
    """The value the corruption uses at `severity` for images of `size` (H, W)."""
    value = PARAMETERS[family][severity - 1]
    if family == "gaussian_blur":
        return value * min(size) / 32
    return value


def corrupt(images: torch.Tensor, family: str, severity: int, seed: int = 0) -> torch.Tensor:
    """A corrupted copy (uint8 [N, 3, H, W]) of `images` at `severity` 1..5."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 [N, 3, H, W] images, got {images.dtype} "
                         f"{tuple(images.shape)}")
    if family not in PARAMETERS:
        check_families([family])
    if severity not in SEVERITIES:
        check_severities([severity])
    value = parameter(family, severity, tuple(images.shape[-2:]))
    fn = _FUNCTIONS[family]
    chunks = []
    for i, start in enumerate(range(0, len(images), CHUNK)):
        g = torch.Generator().manual_seed(_chunk_seed(seed, family, severity, i))
        chunks.append(fn(images[start:start + CHUNK].cpu(), value, g))
    if not chunks:
        return images.clone()
    return torch.cat(chunks)


def _chunk_seed(seed: int, family: str, severity: int, chunk: int) -> int:
    # crc32, not hash(): str hashes change between processes
    return (seed * 1_000_003 + zlib.crc32(family.encode()) * 7 + severity * 101 + chunk) % 2**63


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def gaussian_noise(x: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=g) * std
    return _to_uint8(x.float() / 255 + noise)


def gaussian_blur(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    # kernel covering +-3 sigma, odd, and no wider than the image allows for reflect padding
    side = min(x.shape[-2:])
    kernel = 2 * min(int(3 * sigma + 0.5), (side - 1) // 2) + 1
    if kernel < 3:
        return x.clone()
    return TF.gaussian_blur(x, kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def jpeg_compression(x: torch.Tensor, quality: float, g: torch.Generator) -> torch.Tensor:
    # PIL's encoder, as CIFAR-10-C used (torchvision's JPEG functions are deprecated)
    out = []
    for img in x.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(img).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            out.append(torch.from_numpy(np.array(decoded.convert("RGB"))).permute(2, 0, 1))
    return torch.stack(out)


def brightness(x: torch.Tensor, shift: float, g: torch.Generator) -> torch.Tensor:
    return _to_uint8(x.float() / 255 + shift)


def contrast(x: torch.Tensor, factor: float, g: torch.Generator) -> torch.Tensor:
    # torchvision blends with the mean of the greyscale image, per image
    return TF.adjust_contrast(x, contrast_factor=factor)


def pixelate(x: torch.Tensor, keep: float, g: torch.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = (max(1, int(h * keep)), max(1, int(w * keep)))
    # box down (area) and nearest up, as PIL's BOX resize in CIFAR-10-C
    down = F.interpolate(x.float(), size=small, mode="area")
    return F.interpolate(down, size=(h, w), mode="nearest").round_().clamp_(0, 255).to(
        torch.uint8)


_FUNCTIONS: dict[str, Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "jpeg_compression": jpeg_compression,
    "brightness": brightness,
    "contrast": contrast,
    "pixelate": pixelate,
}
