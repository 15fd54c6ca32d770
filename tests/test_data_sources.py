import numpy as np
import pytest
from PIL import Image

from leanvision.data import ImageRecords, load_data, stratified_holdout, stratified_kfold
from leanvision.errors import ConfigError, DatasetError


def _img(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)


def _folder(root, counts, ext=".png"):
    for name, n in counts.items():
        for i in range(n):
            _img(root / name / f"{i:03d}{ext}", i)


def test_class_folders(tmp_path):
    _folder(tmp_path, {"dog": 2, "cat": 3})
    _img(tmp_path / "cat" / "nested" / "deep.JPG")  # recursive, extension case-insensitive
    _img(tmp_path / "cat" / ".hidden.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    _img(tmp_path / ".thumbs" / "x.png")
    src = load_data(tmp_path)
    assert src.classes == ["cat", "dog"]
    assert len(src.train) == 6 and src.val is None and src.test is None
    assert src.train.class_counts(2) == [4, 2]
    assert src.train.labels.dtype == np.int64
    assert src.train.describe(0) == "cat/000.png"
    assert src.train.describe(3) == "cat/nested/deep.JPG"
    assert [src.train.describe(i) for i in range(6)] == sorted(
        src.train.describe(i) for i in range(6))


def test_split_folders(tmp_path):
    _folder(tmp_path / "train", {"a": 2, "b": 2, "c": 1})
    _folder(tmp_path / "valid", {"b": 1})
    _folder(tmp_path / "test", {"a": 1, "c": 2})
    src = load_data(str(tmp_path))
    assert src.classes == ["a", "b", "c"]
    assert len(src.train) == 5
    assert src.val.labels.tolist() == [1]
    assert src.test.labels.tolist() == [0, 2, 2]
    assert src.val.describe(0) == "valid/b/000.png"

    _folder(tmp_path / "test", {"zebra": 1})
    with pytest.raises(DatasetError, match="class 'zebra', which train/ does not have"):
        load_data(tmp_path)


def test_numeric_class_names_sort_as_numbers(tmp_path):
    _folder(tmp_path, {"2": 1, "10": 1, "1": 1})
    assert load_data(tmp_path).classes == ["1", "2", "10"]


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_data(tmp_path / "nope")
    text = tmp_path / "data.txt"
    text.write_text("x")
    with pytest.raises(DatasetError, match=r"is a file but not a \.csv"):
        load_data(text)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="has no class folders"):
        load_data(empty)
    one = tmp_path / "one"
    _folder(one, {"cat": 2})
    with pytest.raises(DatasetError) as info:
        load_data(one)
    assert "a classifier needs at least 2 classes; found 1: 'cat'" in str(info.value)
    hollow = tmp_path / "hollow"
    _folder(hollow, {"cat": 2})
    (hollow / "dog").mkdir()
    (hollow / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"class folder .*hollow/dog holds no images"):
        load_data(hollow)
    with pytest.raises(DatasetError, match="builtin:digits"):
        load_data("builtin:mnist")


def test_csv(tmp_path):
    for i in range(4):
        _img(tmp_path / "imgs" / f"{i}.png", i)
    (tmp_path / "labels.csv").write_text(
        "Image,Class,split\nimgs/0.png,cat,train\nimgs/1.png,dog,\nimgs/2.png,dog,val\n"
        f"{tmp_path / 'imgs' / '3.png'},cat,test\nimgs/missing.png,cat,train\n")
    src = load_data(tmp_path / "labels.csv")
    assert src.classes == ["cat", "dog"]
    assert src.train.labels.tolist() == [0, 1, 0]
    assert src.train.items[0] == str(tmp_path / "imgs" / "0.png")
    assert src.train.describe(2) == "imgs/missing.png"  # reported later by the decode scan
    assert src.val.labels.tolist() == [1] and src.test.labels.tolist() == [0]


def test_csv_errors(tmp_path):
    def write(text):
        path = tmp_path / "d.csv"
        path.write_text(text)
        return path

    with pytest.raises(DatasetError, match="is empty"):
        load_data(write(""))
    with pytest.raises(DatasetError, match="has no 'label' column"):
        load_data(write("path,name\na.png,cat\n"))
    with pytest.raises(DatasetError, match="has no 'path' column"):
        load_data(write("file,label\na.png,cat\n"))
    with pytest.raises(DatasetError, match="header but no rows"):
        load_data(write("path,label\n"))
    with pytest.raises(DatasetError, match="at least 2 classes; found 1: 'cat'"):
        load_data(write("path,label\na.png,cat\nb.png,cat\n"))
    with pytest.raises(DatasetError, match="val label 'fox', which no train row has"):
        load_data(write("path,label,split\na.png,cat,train\nb.png,dog,train\nc.png,fox,val\n"))
    with pytest.raises(DatasetError, match="split 'dev'"):
        load_data(write("path,label,split\na.png,cat,dev\n"))


def test_builtin_digits():
    src = load_data("builtin:digits")
    assert len(src.train) == 1797 and src.classes == [str(i) for i in range(10)]
    assert src.val is None and src.test is None
    first = src.train.items[0]
    assert first.shape == (8, 8, 3) and first.dtype == np.uint8
    pixels = np.stack(src.train.items)
    assert pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels)) == 17  # all 17 source levels kept, spread over 0..255
    assert sorted(set(src.train.labels.tolist())) == list(range(10))
    assert src.train.describe(5) == "builtin[#5]"


def test_cifar10_without_internet_says_so(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    from leanvision.data import sources

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources, "cifar10_root", lambda: tmp_path / "cifar10")
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(DatasetError, match="needs internet.*local folder"):
        load_data("builtin:cifar10")


def test_cifar10_reads_binary_batches(tmp_path, monkeypatch):
    from leanvision.data import sources

    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for k, name in enumerate(names):
        record = np.zeros((2, 3073), np.uint8)
        record[:, 0] = [k, 9 - k]
        record[:, 1:1025] = 200  # red plane
        (folder / name).write_bytes(record.tobytes())
    monkeypatch.setattr(sources, "cifar10_root", lambda: tmp_path / "cifar10")
    src = load_data("builtin:cifar10")
    assert len(src.train) == 10 and len(src.test) == 2 and src.classes[0] == "airplane"
    assert src.test.labels.tolist() == [5, 4]
    assert src.train.items[0].shape == (32, 32, 3)
    assert (src.train.items[0][..., 0] == 200).all() and (src.train.items[0][..., 1] == 0).all()


def _records(counts):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return ImageRecords([f"img{i}.png" for i in range(len(labels))], labels)


def test_holdout_is_stratified_seeded_and_tolerates_tiny_classes():
    records = _records([40, 20, 10, 1])
    train, val = stratified_holdout(records, 0.2, seed=3)
    assert val.class_counts(4) == [8, 4, 2, 0]  # the singleton class stays in train
    assert train.class_counts(4) == [32, 16, 8, 1]
    assert not set(train.items) & set(val.items)
    again = stratified_holdout(records, 0.2, seed=3)[1]
    assert again.items == val.items
    assert stratified_holdout(records, 0.2, seed=4)[1].items != val.items

    many = _records([2] * 30)  # sklearn alone refuses: 10% of 60 < 30 classes
    train, val = stratified_holdout(many, 0.1, seed=0)
    assert len(train) + len(val) == 60 and len(val) >= 1
    with pytest.raises(ConfigError, match="--val-fraction"):
        stratified_holdout(records, 1.5, seed=0)


def test_kfold():
    records = _records([9, 6, 3])
    folds = stratified_kfold(records, 3, seed=0)
    assert len(folds) == 3
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen.tolist()) == list(range(18))
    for tr, va in folds:
        assert np.bincount(records.labels[va], minlength=3).tolist() == [3, 2, 1]
        assert not set(tr) & set(va)
    again = stratified_kfold(records, 3, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    with pytest.raises(ConfigError, match="at least 2 folds"):
        stratified_kfold(records, 1, seed=0)
    with pytest.raises(ConfigError, match=r"class 'bird' has images \(3\).*--folds 3 or fewer"):
        stratified_kfold(records, 4, seed=0, classes=["cat", "dog", "bird"])
