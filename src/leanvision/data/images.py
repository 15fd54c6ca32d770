"""One image file (or array) to a correct RGB picture, or a BadImageError that says why not."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DatasetError


@dataclass(frozen=True)
class ImageChecks:
    min_side: int = 8
    max_pixels: int = 40_000_000


class BadImageError(DatasetError):
    """One image that cannot be used; `.reason` is the short text the pre-training scan lists."""

    def __init__(self, reason: str, source: str = "") -> None:
        self.reason = reason
        super().__init__(f"{source}: {reason}" if source else reason)


def load_rgb(source: str | os.PathLike | np.ndarray, checks: ImageChecks = ImageChecks(),
             draft_to: tuple[int, int] | None = None) -> Image.Image:
    """Decode `source` to an upright 8-bit RGB PIL image; never modifies the file.

    draft_to = (H, W): the picture is only needed at that size, so a large JPEG may decode
    smaller (see `draft`); the size checks still see the file's full size."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, checks)
    path = os.fspath(source)
    name = str(path)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise BadImageError("file not found", name) from None
    except OSError as exc:
        raise BadImageError(f"cannot read file ({exc.strerror or exc})", name) from None
    if os.path.isdir(path):
        raise BadImageError("is a folder, not an image file", name)
    if size == 0:
        raise BadImageError("empty file (0 bytes)", name)

    try:
        with Image.open(path) as im:
            # Header only so far: refuse giant images before a single pixel is decoded.
            _check_size(im.size, checks, name)
            draft(im, draft_to)
            try:
                im.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise
            except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
                raise BadImageError(_decode_reason(exc), name) from None
            im = _upright(im)
            return _to_rgb(im, name)
    except UnidentifiedImageError:
        raise BadImageError("not an image", name) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL's own (global) bomb limit fired first; report our limit with the header's size.
        header = _header_size(path)
        if header is None:
            raise BadImageError(f"too large (cap {_mp(checks.max_pixels)} MP)", name) from None
        _check_size(header, checks, name)
        raise BadImageError("too large for PIL's decompression-bomb limit", name) from None
    except BadImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(_decode_reason(exc), name) from None


def pil_to_rgb(image: Image.Image, checks: ImageChecks = ImageChecks(),
               draft_to: tuple[int, int] | None = None) -> Image.Image:
    """The checks and colour handling `load_rgb` gives a file, for an image already in memory.
    draft_to as for `load_rgb`; it changes how a not-yet-loaded `image` will decode, so pass it
    only for an image the caller owns."""
    _check_size(image.size, checks, "")
    draft(image, draft_to)
    try:
        image.load()
    except (OSError, ValueError, EOFError) as exc:
        raise BadImageError(_decode_reason(exc)) from None
    return _to_rgb(_upright(image), "")


def decode_resized(source: str | os.PathLike | np.ndarray, size: tuple[int, int],
                   checks: ImageChecks = ImageChecks()) -> torch.Tensor:
    """uint8 [3, H, W] at `size` = (H, W), decoded as training does (draft, then the exact
    resize); any way the file fails to decode is a BadImageError."""
    try:
        return to_tensor_resized(load_rgb(source, checks, draft_to=size), size)
    except (BadImageError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad file must not cost the others' answers
        name = "" if isinstance(source, np.ndarray) else str(source)
        raise BadImageError(f"could not be decoded ({type(exc).__name__}: {exc})", name) from None


def to_tensor_resized(img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [3, H, W]: scale so the image covers (H, W), then center-crop to exactly that."""
    out_h, out_w = int(size[0]), int(size[1])
    try:
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img.size != (out_w, out_h):
            # Resizing straight from the crop box resamples once, with PIL's antialiasing
            # filter support scaled to the reduction, instead of resizing and then cropping.
            img = img.resize((out_w, out_h), Image.Resampling.BILINEAR,
                             box=crop_box(img.size, (out_h, out_w)))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # A lazily decoded picture can fail here; callers expect one error type per image.
        raise BadImageError(_decode_reason(exc)) from None
    # numpy makes the [H, W, 3] -> [3, H, W] copy: torch's would go through its intra-op
    # thread pool, which on a busy machine waits on descheduled threads for a tiny copy.
    array = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    return torch.from_numpy(array)


def crop_box(wh: tuple[int, int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The centred box of image size `wh` = (w, h) with the aspect of `size` = (H, W), as
    large as fits: (left, top, right, bottom), always inside [0, w] x [0, h]."""
    w, h = wh
    out_h, out_w = size
    # The side that binds is chosen in exact integer arithmetic and spans the image exactly;
    # float division there would leave an edge a rounding error outside (PIL then refuses it).
    if out_w * h >= out_h * w:
        crop_w, crop_h = float(w), min(float(h), w * out_h / out_w)
    else:
        crop_w, crop_h = min(float(w), h * out_w / out_h), float(h)
    left, top = max(0.0, (w - crop_w) / 2), max(0.0, (h - crop_h) / 2)
    return left, top, min(float(w), left + crop_w), min(float(h), top + crop_h)


def draft(im: Image.Image, draft_to: tuple[int, int] | None) -> None:
    """Ask a JPEG decoder for a 1/2, 1/4 or 1/8 scale (done in the DCT domain, several times
    faster than a full decode) that still leaves at least twice the target on each side, so the
    exact antialiased resize afterwards still has real detail to average. Both sides are held to
    twice the larger target side because EXIF rotation, applied after decoding, may swap them.
    Formats other than JPEG (and its MPO variant) ignore the request."""
    if not draft_to:
        return
    side = 2 * max(int(draft_to[0]), int(draft_to[1]))
    if side > 0:
        im.draft("RGB", (side, side))


def _mp(pixels: float) -> str:
    return f"{pixels / 1e6:.3g}"


def _check_size(wh: tuple[int, int], checks: ImageChecks, name: str) -> None:
    w, h = wh
    if w * h > checks.max_pixels:
        raise BadImageError(
            f"too large ({w}x{h} = {_mp(w * h)} MP; cap {_mp(checks.max_pixels)} MP)", name)
    if min(w, h) < checks.min_side:
        raise BadImageError(f"too small ({w}x{h} px; minimum side {checks.min_side})", name)


def _decode_reason(exc: BaseException) -> str:
    text = str(exc)
    low = text.lower()
    if "truncated" in low or isinstance(exc, EOFError) or "premature end" in low:
        return "truncated image"
    return f"could not be decoded ({text or type(exc).__name__})"


def _header_size(path: str) -> tuple[int, int] | None:
    """The size a file's header declares, read with PIL's format plugins directly so that the
    global MAX_IMAGE_PIXELS check (which fires in Image.open) is neither hit nor changed."""
    Image.init()
    try:
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                if accept is not None and not accept(prefix):
                    continue
                fp.seek(0)
                try:
                    return factory(fp, path).size
                except Exception:  # noqa: BLE001 - try the next plugin, as Image.open does
                    continue
    except OSError:
        return None
    return None


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the picture
        return im


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _gray_array_to_rgb(_scale_int(np.asarray(im)))
    if mode == "F":
        return _gray_array_to_rgb(_scale_float(np.asarray(im, dtype=np.float64)))
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        # Dropping alpha would expose whatever colour hides under transparent pixels (often
        # black or junk); compositing over white shows the picture as viewers and browsers do.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im.copy()
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise BadImageError(f"unsupported colour mode {mode} ({exc})", name) from None


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    # With an embedded ICC profile a colour-managed conversion is faithful; PIL's plain formula
    # (255 - C) * (255 - K) is the fallback when there is no profile or no littleCMS.
    profile = im.info.get("icc_profile")
    if profile:
        try:
            import io

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
        except Exception:  # noqa: BLE001 - broken profiles are common; fall back
            pass
    return im.convert("RGB")


def _scale_int(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    top = float(values.max()) if values.size else 0.0
    # 16-bit data spans 0..65535 whatever the picture; value/257 maps 65535 to exactly 255.
    # Wider integer data (32-bit TIFFs) is scaled by its own maximum instead.
    divisor = 257.0 if top <= 65535 else top / 255.0
    return np.clip(np.rint(values / divisor), 0, 255).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    values = np.where(finite, values, 0.0)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if lo >= 0.0 and hi <= 1.0:
        scaled = values * 255.0  # the usual [0, 1] float convention
    elif lo >= 0.0 and hi <= 255.0:
        scaled = values
    else:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _gray_array_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2)), "RGB")


def _array_to_rgb(array: np.ndarray, checks: ImageChecks) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    rgb_shaped = array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)
    if array.dtype != np.uint8 or not rgb_shaped:
        raise BadImageError(
            f"unsupported array (shape {tuple(array.shape)}, dtype {array.dtype}); "
            "expected HxW or HxWx3 uint8")
    h, w = array.shape[:2]
    _check_size((w, h), checks, "")
    if array.ndim == 2:
        return _gray_array_to_rgb(array)
    return Image.fromarray(np.ascontiguousarray(array), "RGB")
