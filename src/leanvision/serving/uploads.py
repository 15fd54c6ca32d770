"""Uploaded images: the multipart body parsed as it streams (in memory, no temporary files; the
body cap bounds it), and each file decoded exactly as training decodes a file on disk.

Decoding goes through `pil_to_rgb`, the in-memory twin of `load_rgb`: the same size checks on
the header before a pixel is decoded, EXIF orientation, CMYK, 16-bit, palette and alpha
handling. So a served answer equals `Predictor.predict_images` on the same file."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from ..data import BadImageError, ImageChecks, to_tensor_resized
from ..data.images import pil_to_rgb

FIELD = "file"
TEXT_FIELD = "text"  # image + text models: the text of the n-th file, in order
MAX_TEXT_BYTES = 16_384


class UploadError(Exception):
    """A request that cannot be read as images; `.status` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    name: str
    data: bytes
    text: str | None = None  # the matching `text` field, when the client sent one


async def read_uploads(request: Request, max_files: int,
                       accept_text: bool = False) -> list[Upload]:
    """The parts named `file` of a multipart/form-data body, in order; with `accept_text`,
    `text` parts too, the n-th text going with the n-th file."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise UploadError(415, "send images as multipart/form-data in the field 'file', e.g. "
                               "curl -F file=@cat.jpg http://127.0.0.1:8000/v1/predict")
    uploads: list[Upload] = []
    texts: list[str] = []
    part: dict = {}

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, field=b"", value=b"", chunks=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][part["field"].lower()] = part["value"]
        part["field"], part["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        part["is_text"] = accept_text and name == TEXT_FIELD
        if part["is_text"]:
            return
        if name != FIELD:
            raise UploadError(400, f"unexpected form field {name[:40]!r}; send each image in a "
                                   f"field named '{FIELD}'")
        if len(uploads) >= max_files:
            raise UploadError(413, f"more than {max_files} images in one request; split it")
        part["name"] = disposition.get(b"filename", b"").decode("utf-8", "replace")[:200]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part["chunks"].append(data[start:end])

    def on_part_end() -> None:
        if part.get("is_text"):
            data = b"".join(part["chunks"])
            if len(data) > MAX_TEXT_BYTES:
                raise UploadError(413, f"a text field is over {MAX_TEXT_BYTES} bytes; shorten "
                                       "it (the model reads only its first tokens)")
            texts.append(data.decode("utf-8", "replace"))
            return
        name = part.get("name") or f"image-{len(uploads)}"
        uploads.append(Upload(name=name, data=b"".join(part["chunks"])))

    parser = MultipartParser(options[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart body ({exc})") from None
    except ClientDisconnect:
        raise UploadError(400, "the client went away before the body was complete") from None
    if not uploads:
        raise UploadError(400, f"no image in the request; send one or more in the field "
                               f"'{FIELD}'")
    if len(texts) > len(uploads):
        raise UploadError(400, f"{len(texts)} '{TEXT_FIELD}' fields for {len(uploads)} images; "
                               "send at most one text per image, in the images' order")
    for upload, text in zip(uploads, texts, strict=False):
        upload.text = text
    return uploads


def decode_upload(data: bytes, size: tuple[int, int],
                  checks: ImageChecks = ImageChecks()) -> torch.Tensor:
    """uint8 [3, H, W] at the model's input size, or BadImageError saying why not."""
    try:
        return _decode(data, size, checks)
    except BadImageError as exc:
        if not exc.reason.startswith("too large"):
            raise
        raise BadImageError(f"{exc.reason}: the model needs only {size[0]}x{size[1]} px, so "
                            "downscale it before sending") from None


def _decode(data: bytes, size: tuple[int, int], checks: ImageChecks) -> torch.Tensor:
    if not data:
        raise BadImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Past PIL's warning threshold our own (lower) cap refuses the image anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return to_tensor_resized(pil_to_rgb(image, checks, draft_to=size), size)
    except UnidentifiedImageError:
        raise BadImageError("not an image") from None
    except Image.DecompressionBombError as exc:
        # Raised by Image.open from the header alone, before any pixel is decoded.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)) / 1e6:.3g} MP; " if found else ""
        raise BadImageError(f"too large ({pixels}cap {checks.max_pixels / 1e6:.3g} MP)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        text = str(exc)
        truncated = "truncated" in text.lower() or isinstance(exc, EOFError)
        raise BadImageError("truncated image" if truncated
                            else f"could not be decoded ({text or type(exc).__name__})") from None
