"""A folder of unlabelled images (`adapt --target`, `train --unlabeled`): every image file under
it (any layout, flat or in subfolders), decoded like training data (upright RGB, shorter side
scaled and center-cropped to the model's input size), and a plain account of how its sizes and
colour modes differ."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DatasetError
from .cache import decode_images
from .images import ImageChecks
from .sources import IMAGE_EXTENSIONS, ImageRecords, _image_files

# Headers read to describe sizes and modes; enough to see what a folder holds.
DESCRIBE_FILES = 500


@dataclass
class UnlabeledImages:
    folder: Path
    images: torch.Tensor  # uint8 [N, 3, H, W] at the model's input size
    files: int  # image files found (N plus the unreadable ones skipped)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the images were made to fit
    sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> count, of the files read
    modes: dict[str, int] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)  # the file of each decoded image, in order

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_unlabeled(folder: str | Path, input_size: tuple[int, int], *, min_images: int,
                   role: str = "target", need: str = "", skip_bad_images: bool = False,
                   progress: bool = False) -> UnlabeledImages:
    """Decode the folder for a model of `input_size` (H, W); refuse a missing, empty or too
    small folder with one message that says how many images are needed (`need`: why)."""
    path, files, need = find_unlabeled(folder, min_images=min_images, role=role, need=need)
    records = ImageRecords(list(files), np.zeros(len(files), dtype=np.int64), str(path))
    decoded = decode_images(records, input_size, ImageChecks(), skip_bad=skip_bad_images,
                            progress=progress)
    if len(decoded) < min_images:
        raise DatasetError(f"only {len(decoded)} of the {len(files)} images in '{folder}' "
                           f"could be decoded; {need}")
    sizes, modes = _describe([files[int(i)] for i in decoded.kept[:DESCRIBE_FILES]])
    return UnlabeledImages(path, decoded.images, len(files), decoded.bad,
                           _notes(sizes, modes, input_size), sizes, modes,
                           [str(files[int(i)]) for i in decoded.kept])


def find_unlabeled(folder: str | Path, *, min_images: int, role: str = "target",
                   need: str = "") -> tuple[Path, list, str]:
    """The folder's image files, none decoded yet: the checks a run makes before it spends
    time (a missing, empty or too small folder is refused with the count needed), and the
    `need` sentence for later messages."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise DatasetError(f"{role} folder '{folder}' does not exist; pass a folder of "
                           "unlabelled images")
    if not path.is_dir():
        raise DatasetError(f"{role} '{folder}' is a file; pass the folder that holds the "
                           "unlabelled images (flat or in subfolders)")
    files = _image_files(path)
    need = f"at least {min_images} unlabelled images are needed" + (f" ({need})" if need else "")
    if not files:
        raise DatasetError(f"{role} folder '{folder}' holds no images (looked for "
                           f"{', '.join(sorted(IMAGE_EXTENSIONS))}, in subfolders too); {need}")
    if len(files) < min_images:
        raise DatasetError(f"{role} folder '{folder}' holds only {len(files)} image(s); {need}")
    return path, files, need


def _describe(files: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    for name in files:
        try:
            with Image.open(name) as im:  # header only: no pixels are decoded here
                sizes[f"{im.size[0]}x{im.size[1]}"] += 1
                modes[im.mode] += 1
        except OSError:
            continue
    return dict(sizes.most_common()), dict(modes.most_common())


def _notes(sizes: dict[str, int], modes: dict[str, int], input_size: tuple[int, int]) -> list[str]:
    h, w = input_size
    notes = []
    other = {s: n for s, n in sizes.items() if s != f"{w}x{h}"}
    if other:
        shown = ", ".join(f"{s} ({n})" for s, n in list(other.items())[:3])
        notes.append(f"{sum(other.values())} image(s) of other sizes ({shown}"
                     f"{', ...' if len(other) > 3 else ''}) were scaled and center-cropped to "
                     f"{w}x{h}, as training images are")
        sides = [min(int(v) for v in s.split("x")) for s in sizes]
        if sides and float(np.median(sides)) < min(h, w) / 2:
            notes.append(f"most target images are under half the model's input side ({h}x{w}); "
                         "upscaled images are blurrier than the source, which is a shift of its "
                         "own")
    non_rgb = {m: n for m, n in modes.items() if m != "RGB"}
    if non_rgb:
        notes.append("colour modes " + ", ".join(f"{m} ({n})" for m, n in non_rgb.items())
                     + " were converted to RGB (grey replicated, transparency over white), "
                     "as training images are")
    return notes
