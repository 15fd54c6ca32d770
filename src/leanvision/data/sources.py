"""What a DATA argument means: a built-in dataset, a folder of class folders, or a CSV."""

from __future__ import annotations

import csv
import difflib
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
VAL_NAMES = ("val", "valid", "validation")
SPLIT_NAMES = ("train", *VAL_NAMES, "test")
BUILTINS = ("builtin:digits", "builtin:cifar10")
ACCEPTED_FORMS = (
    "a folder of class folders (cat/, dog/, ...), a folder with train/ (and optional val/, "
    "test/) each holding class folders, a CSV file with columns path,label[,split], or "
    + " / ".join(BUILTINS))


@dataclass
class ImageRecords:
    items: list[str | np.ndarray]  # file paths, or HxWx3 uint8 arrays for built-in data
    labels: np.ndarray  # int64 [N]
    root: str | None = None  # folder that describe() shows paths relative to
    # CSV text columns (multimodal data): one tuple per row, one string per column, "" = empty
    texts: list[tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.items) != len(self.labels):
            raise ValueError(f"{len(self.items)} items but {len(self.labels)} labels")
        if self.texts is not None and len(self.texts) != len(self.items):
            raise ValueError(f"{len(self.items)} items but {len(self.texts)} text rows")

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageRecords:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        texts = [self.texts[i] for i in idx] if self.texts is not None else None
        return ImageRecords([self.items[i] for i in idx], self.labels[idx].copy(), self.root,
                            texts)

    def class_counts(self, num_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=num_classes).tolist()

    def describe(self, i: int) -> str:
        item = self.items[i]
        if isinstance(item, np.ndarray):
            return f"builtin[#{i}]"
        if self.root is not None:
            try:
                return Path(item).relative_to(self.root).as_posix()
            except ValueError:
                pass
        return str(item)


@dataclass
class DataSource:
    spec: str
    classes: list[str]
    train: ImageRecords
    val: ImageRecords | None = None
    test: ImageRecords | None = None
    text_columns: list[str] | None = None  # the CSV columns in ImageRecords.texts, in order
    warnings: list[str] = field(default_factory=list)  # said once by the verb that reads it


def load_data(spec: str | os.PathLike,
              text_columns: Sequence[str] | None = None) -> DataSource:
    """The data at `spec`; `text_columns` (CSV only) also reads those columns' text per row."""
    text = os.fspath(spec)
    if text_columns:
        path = Path(text).expanduser()
        if text.startswith("builtin:") or path.is_dir():
            raise DatasetError(f"text columns ({', '.join(text_columns)}) need a CSV file with "
                               f"path,label and those columns; {text!r} is not a CSV")
        if path.exists() and path.suffix.lower() == ".csv":
            return _load_csv(path, text, list(text_columns))
    if isinstance(text, str) and text.startswith("builtin:"):
        if text == "builtin:digits":
            return _load_digits()
        if text == "builtin:cifar10":
            return _load_cifar10()
        raise DatasetError(f"unknown built-in dataset {text!r}; the built-ins are "
                           f"{', '.join(BUILTINS)}")
    path = Path(text).expanduser()
    if not path.exists():
        raise DatasetError(f"data path {text!r} does not exist; pass {ACCEPTED_FORMS}")
    if path.is_dir():
        return _load_folder(path, text)
    if path.suffix.lower() == ".csv":
        return _load_csv(path, text)
    raise DatasetError(f"data path {text!r} is a file but not a .csv; pass {ACCEPTED_FORMS}")


def sort_classes(names: set[str] | list[str]) -> list[str]:
    # Numeric class names sort as numbers so "10" follows "9", not "1".
    names = list(set(names))
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


# ---- built-in datasets ------------------------------------------------------------------------


def _load_digits() -> DataSource:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16 (counts of set bits in 4x4 blocks); 16 must map to 255 exactly.
    gray = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # [N, 8, 8]
    rgb = np.repeat(gray[..., None], 3, axis=3)
    items: list[str | np.ndarray] = list(rgb)
    labels = digits.target.astype(np.int64)
    return DataSource("builtin:digits", [str(i) for i in range(10)], ImageRecords(items, labels))


_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
_CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                  "ship", "truck"]


def cifar10_root() -> Path:
    return Path.home() / ".cache" / "leanvision" / "cifar10"


def _load_cifar10() -> DataSource:
    # The binary release is read with numpy; the "python" release torchvision.datasets.CIFAR10
    # reads is a set of pickles, and this project never unpickles.
    root = cifar10_root()
    folder = root / "cifar-10-batches-bin"
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    if not all((folder / n).is_file() for n in names):
        _download_cifar10(root)
    train = [_read_cifar_batch(folder / n) for n in names[:5]]
    test_x, test_y = _read_cifar_batch(folder / names[5])
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return DataSource("builtin:cifar10", list(_CIFAR_CLASSES),
                      ImageRecords(list(train_x), train_y), test=ImageRecords(list(test_x), test_y))


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(_CIFAR_URL, download_root=str(root), md5=_CIFAR_MD5)
    except (OSError, RuntimeError, ValueError, tarfile.TarError) as exc:
        raise DatasetError(
            f"builtin:cifar10 needs internet to download CIFAR-10 once into {root} "
            f"({type(exc).__name__}: {exc}). Connect and retry, or pass a local folder of "
            "class folders (e.g. cifar10/train/airplane/*.png) instead.") from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = 1 + 3 * 32 * 32  # one label byte, then the R, G and B planes
    if raw.size % record:
        raise DatasetError(f"{path} is not a complete CIFAR-10 batch; delete {path.parent} "
                           "and run again to download it afresh")
    raw = raw.reshape(-1, record)
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    return np.ascontiguousarray(images), raw[:, 0].astype(np.int64)


# ---- folders ----------------------------------------------------------------------------------


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                files.append(os.path.join(dirpath, name))
    return sorted(files)


def _load_folder(path: Path, spec: str) -> DataSource:
    subdirs = _visible_dirs(path)
    by_lower = {d.name.lower(): d for d in subdirs}
    if "train" in by_lower:
        others = [d.name for d in subdirs if d.name.lower() not in SPLIT_NAMES]
        if others:
            raise DatasetError(
                f"{spec} mixes a train/ split folder with other folders ({', '.join(others)}); "
                "put class folders either all inside train/ (and val/, test/) or all directly "
                f"in {spec}")
        vals = [by_lower[n] for n in VAL_NAMES if n in by_lower]
        if len(vals) > 1:
            raise DatasetError(f"{spec} has more than one validation folder "
                               f"({', '.join(d.name for d in vals)}); keep one")
        train_classes = _class_folders(by_lower["train"], f"{spec}/train")
        classes = sort_classes(list(train_classes))
        train = _folder_records(train_classes, classes, path)
        val = _split_records(vals[0], classes, path, spec) if vals else None
        test = _split_records(by_lower["test"], classes, path, spec) if "test" in by_lower else None
        return DataSource(spec, classes, train, val, test)
    if subdirs and all(d.name.lower() in SPLIT_NAMES for d in subdirs):
        raise DatasetError(f"{spec} has split folders ({', '.join(d.name for d in subdirs)}) "
                           "but no train/; add a train/ folder with class folders")
    class_dirs = _class_folders(path, spec)
    classes = sort_classes(list(class_dirs))
    return DataSource(spec, classes, _folder_records(class_dirs, classes, path))


def _class_folders(folder: Path, shown: str) -> dict[str, list[str]]:
    dirs = _visible_dirs(folder)
    if not dirs:
        loose = _image_files(folder)
        hint = f" (found {len(loose)} loose images)" if loose else ""
        raise DatasetError(
            f"{shown} has no class folders{hint}; put each class's images in its own "
            f"sub-folder, e.g. {shown}/cat/*.jpg and {shown}/dog/*.jpg")
    found = {}
    for d in dirs:
        files = _image_files(d)
        if not files:
            raise DatasetError(
                f"class folder {shown}/{d.name} holds no images (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder")
        found[d.name] = files
    _need_two_classes(list(found), shown)
    return found


def _need_two_classes(names: list[str], shown: str) -> None:
    if len(names) < 2:
        listed = ", ".join(repr(n) for n in sort_classes(names))
        raise DatasetError(f"a classifier needs at least 2 classes; found {len(names)}: "
                           f"{listed} in {shown}")


def _folder_records(found: dict[str, list[str]], classes: list[str], root: Path) -> ImageRecords:
    index = {name: i for i, name in enumerate(classes)}
    items: list[str | np.ndarray] = []
    labels: list[int] = []
    for name in classes:
        if name in found:
            items.extend(found[name])
            labels.extend([index[name]] * len(found[name]))
    return ImageRecords(items, np.asarray(labels, dtype=np.int64), str(root))


def _split_records(folder: Path, classes: list[str], root: Path, spec: str) -> ImageRecords:
    shown = f"{spec}/{folder.name}"
    dirs = _visible_dirs(folder)
    if not dirs:
        raise DatasetError(f"{shown} has no class folders; put images in {shown}/<class>/ "
                           "using the class names of train/")
    found = {}
    for d in dirs:
        if d.name not in classes:
            raise DatasetError(f"{shown} has class {d.name!r}, which train/ does not have; "
                               "add it to train/ or remove it")
        files = _image_files(d)
        if not files:
            raise DatasetError(f"class folder {shown}/{d.name} holds no images; add images "
                               "or remove the folder")
        found[d.name] = files
    return _folder_records(found, classes, root)


# ---- CSV --------------------------------------------------------------------------------------

_PATH_COLUMNS = ("path", "image", "filename")
_LABEL_COLUMNS = ("label", "class", "target")


def _load_csv(path: Path, spec: str, text_columns: list[str] | None = None) -> DataSource:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise DatasetError(f"{spec} is not a UTF-8 text CSV; save it as UTF-8 CSV") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DatasetError(f"{spec} is empty; it needs a header row (path,label[,split]) and "
                           "one row per image")
    header = [h.strip().lower() for h in rows[0]]
    path_col = _column(header, _PATH_COLUMNS)
    label_col = _column(header, _LABEL_COLUMNS)
    if path_col is None or label_col is None:
        missing = "path" if path_col is None else "label"
        raise DatasetError(
            f"{spec} has no {missing!r} column (header: {','.join(rows[0])}); the header needs "
            "path (or image, filename) and label (or class, target), and optionally split")
    split_col = _column(header, ("split",))
    text_cols = _text_columns(header, rows[0], text_columns or [], spec)
    body = rows[1:]
    if not body:
        raise DatasetError(f"{spec} has a header but no rows; add one row per image")

    base = path.absolute().parent
    per_split: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    split_texts: dict[str, list[tuple[str, ...]]] = {"train": [], "val": [], "test": []}
    seen: dict[tuple[str, str, str], int] = {}  # (file, label, split) -> its first line
    repeats: list[tuple[int, int]] = []
    for line, row in enumerate(body, start=2):
        cells = row + [""] * (len(header) - len(row))
        file, label = cells[path_col].strip(), cells[label_col].strip()
        if not file or not label:
            raise DatasetError(f"{spec} line {line} has an empty path or label; fill it in or "
                               "delete the line")
        split = cells[split_col].strip().lower() if split_col is not None else ""
        split = "train" if split == "" else ("val" if split in VAL_NAMES else split)
        if split not in per_split:
            raise DatasetError(f"{spec} line {line} has split {cells[split_col].strip()!r}; "
                               "use train, val or test (or leave it empty for train)")
        full = str(base / Path(file).expanduser())
        if (full, label, split) in seen:  # a repeated row would weigh its image twice
            repeats.append((line, seen[(full, label, split)]))
            continue
        seen[(full, label, split)] = line
        per_split[split].append((full, label))
        split_texts[split].append(tuple(cells[c].strip() for c in text_cols))

    if not per_split["train"]:
        raise DatasetError(f"{spec} has no training rows; give some rows the split "
                           "train (or leave split empty)")
    classes = sort_classes({label for _, label in per_split["train"]})
    _need_two_classes(classes, spec)
    index = {name: i for i, name in enumerate(classes)}
    records = {}
    for split, pairs in per_split.items():
        for _, label in pairs:
            if label not in index:
                raise DatasetError(f"{spec} has {split} label {label!r}, which no train row has; "
                                   "add training images of it or drop those rows")
        if pairs or split == "train":
            records[split] = ImageRecords([p for p, _ in pairs],
                                          np.asarray([index[lb] for _, lb in pairs], np.int64),
                                          str(base), split_texts[split] if text_cols else None)
    return DataSource(spec, classes, records["train"], records.get("val"), records.get("test"),
                      [h.strip() for h in (rows[0][c] for c in text_cols)] or None,
                      _csv_warnings(spec, repeats, seen))


def _csv_warnings(spec: str, repeats: list[tuple[int, int]],
                  seen: dict[tuple[str, str, str], int]) -> list[str]:
    """What a CSV's rows say twice: the same row (used once), or the same image under two
    labels or splits (kept as written: the user has to choose)."""
    warnings = [] if not repeats else [
        f"{spec}: {len(repeats)} rows repeat an earlier row and are used once (line "
        f"{repeats[0][0]} repeats line {repeats[0][1]}); delete them to silence this"]
    lines: dict[str, list[tuple[int, str, str]]] = {}
    for (file, label, split), line in seen.items():
        lines.setdefault(file, []).append((line, label, split))
    twice = [sorted(rows) for rows in lines.values() if len(rows) > 1]
    if twice:
        (a, la, sa), (b, lb, sb) = twice[0][:2]
        warnings.append(f"{spec}: {len(twice)} images are listed with two labels or splits "
                        f"(line {a}: {la}/{sa}, line {b}: {lb}/{sb}); an image in two classes "
                        "teaches both, one in two splits is scored on what it trained on")
    return warnings


def _text_columns(header: list[str], raw: list[str], wanted: list[str],
                  spec: str) -> list[int]:
    """Indices of the requested text columns (matched case-insensitively), or a DatasetError
    naming each missing one with the closest header name."""
    found = []
    for name in wanted:
        key = name.strip().lower()
        if key in header:
            found.append(header.index(key))
            continue
        close = difflib.get_close_matches(key, header, n=1)
        hint = f"; did you mean {raw[header.index(close[0])].strip()!r}?" if close else ""
        raise DatasetError(f"{spec} has no text column {name!r} (header: {','.join(raw)}){hint} "
                           "Pass --text-columns with names from the header")
    return found


def _column(header: list[str], names: Sequence[str]) -> int | None:
    for name in names:
        if name in header:
            return header.index(name)
    return None
