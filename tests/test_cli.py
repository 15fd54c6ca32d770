"""The CLI: every verb's --json summary, fresh-process parity, one clear message on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_folder
from PIL import Image
from typer.testing import CliRunner

from leanvision.cli import app

runner = CliRunner()
FAST_FLAGS = ["--model", "resnet8", "--epochs", "2", "--batch-size", "8", "--val-fraction", "0.25"]


def run_json(*args: str, code: int = 0) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = make_image_folder(root / "data")
    out = root / "run"
    summary = run_json("train", str(data), "--out", str(out), *FAST_FLAGS)
    assert summary["ok"] and summary["artifact"] == str(out)
    return data, out


def test_train_json_summary(trained):
    _, out = trained
    card = json.loads((out / "model.json").read_text())
    assert card["config"]["batch_size"] == 8
    assert card["metrics"]["val"]["n"] == 9


def test_eval_in_a_fresh_process_matches_training(trained):
    data, out = trained
    card = json.loads((out / "model.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "leanvision", "eval", str(out), "--split", "val",
                           "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["split"] == "val" and result["data"] == str(data)
    for key in ("top1", "loss", "ece", "n"):
        assert result["metrics"][key] == pytest.approx(card["metrics"]["val"][key], abs=1e-6)
    assert result["cost"]["params"] == card["metrics"]["params"]


def test_eval_on_other_data_with_a_subset_of_classes(trained, tmp_path):
    _, out = trained
    other = make_image_folder(tmp_path / "other", per_class=3,
                              classes={"red": (200, 30, 30), "blue": (40, 50, 210)})
    result = run_json("eval", str(out), "--data", str(other))
    assert result["split"] == "all" and result["metrics"]["n"] == 6
    assert result["metrics"]["per_class"]["green"]["support"] == 0


def test_predict_top_k_and_bad_file(trained, tmp_path):
    data, out = trained
    good = sorted((data / "red").glob("*.png"))[0]
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    result = run_json("predict", str(out), str(good), str(bad), "--top-k", "2", code=1)
    first, second = result["results"]
    assert len(first["top"]) == 2 and first["top"][0]["prob"] >= first["top"][1]["prob"]
    assert {t["class"] for t in first["top"]} <= {"red", "green", "blue"}
    assert second["error"] == "not an image"


def test_predict_agrees_with_eval(trained, tmp_path):
    _, out = trained
    data = make_image_folder(tmp_path / "fresh", per_class=4, seed=7)
    files = sorted(data.glob("*/*.png"))
    result = run_json("predict", str(out), *map(str, files), "--top-k", "1")
    hits = sum(r["top"][0]["class"] == Path(r["image"]).parent.name for r in result["results"])
    evaluated = run_json("eval", str(out), "--data", str(data), "--split", "all")
    assert evaluated["metrics"]["top1"] == pytest.approx(hits / len(files))
    assert all(0.0 < r["top"][0]["prob"] <= 1.0 for r in result["results"])


def test_info(trained):
    _, out = trained
    result = run_json("info", str(out))
    assert result["arch"] == "resnet8" and result["num_classes"] == 3
    assert result["files"]["model.safetensors"] > 0
    assert result["input"]["mean"] and result["input"]["std"]


def test_cv(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6)
    result = run_json("cv", str(data), "--folds", "3", "--out", str(tmp_path / "cv"),
                      "--model", "resnet8", "--epochs", "1", "--batch-size", "4")
    assert len(result["per_fold"]) == 3
    assert sum(1 for _ in (tmp_path / "cv").glob("fold-*/model.json")) == 3
    assert 0.0 <= result["mean"]["top1"] <= 1.0
    saved = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert saved["per_fold"] == result["per_fold"]
    card = json.loads((tmp_path / "cv" / "fold-2" / "model.json").read_text())
    assert card["cv"] == {"fold": 2, "folds": 3, "seed": 0}
    again = run_json("eval", str(tmp_path / "cv" / "fold-2"))
    assert again["split"] == "val" and again["metrics"]["n"] == card["metrics"]["val"]["n"]
    assert again["metrics"]["top1"] == card["metrics"]["val"]["top1"]


def test_resume_takes_only_what_the_user_typed(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    refused = run_json("train", "--resume", str(run), "--lr", "0.5", code=2)
    assert "only --epochs may change (got --lr)" in refused["error"]
    run_json("train", "--resume", str(run), "--epochs", "3")  # untyped options stay unsaid
    card = json.loads((run / "model.json").read_text())
    assert card["config"]["epochs"] == 3 and card["config"]["lr"] != 0.5


@pytest.mark.parametrize("typed,kept", [("no", False), ("yes", True), ("auto", None),
                                        ("weights.safetensors", "weights.safetensors")])
def test_pretrained_is_spelled_as_text(typed, kept):
    from leanvision.training.config import TrainConfig

    assert TrainConfig(pretrained=typed).pretrained == kept


def test_cv_with_too_many_folds(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3)
    result = run_json("cv", str(data), "--folds", "5", code=2)
    assert "fold" in result["error"] and result["kind"] == "ConfigError"


@pytest.mark.parametrize("args,message", [
    (["train", "/no/such/folder"], "does not exist"),
    (["train", "builtin:nope"], "unknown built-in dataset"),
    (["train", "builtin:digits", "--model", "resnet21"], "did you mean"),
    (["train", "builtin:digits", "--lr", "-0.1"], "--lr -0.1 is out of range"),
    (["train", "builtin:digits", "--optimizer", "adamm"], "did you mean 'adam'"),
    (["train", "builtin:digits", "--augment", "wild"], "wild"),
    (["eval", "/no/such/artifact"], "does not exist"),
    (["info", "/no/such/artifact"], "does not exist"),
])
def test_bad_input_is_one_clear_message(args, message, tmp_path):
    if args[0] == "train":
        args = [*args, "--out", str(tmp_path / "run")]
    result = run_json(*args, code=2)
    assert result["ok"] is False and message in result["error"]
    assert not (tmp_path / "run" / "model.json").exists()


def test_single_class_and_empty_class(tmp_path):
    one = make_image_folder(tmp_path / "one", per_class=3, classes={"red": (200, 30, 30)})
    result = run_json("train", str(one), "--out", str(tmp_path / "r1"), code=2)
    assert "at least 2 classes" in result["error"]
    two = make_image_folder(tmp_path / "two", per_class=3)
    (two / "empty").mkdir()
    result = run_json("train", str(two), "--out", str(tmp_path / "r2"), code=2)
    assert "empty" in result["error"]


def test_unreadable_images_stop_training_until_skipped(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6)
    (data / "red" / "zero.png").write_bytes(b"")
    (data / "green" / "text.png").write_text("hello")
    Image.new("RGB", (2, 2)).save(data / "blue" / "tiny.png")
    result = run_json("train", str(data), "--out", str(tmp_path / "r"), *FAST_FLAGS, code=2)
    assert "3 of" in result["error"] and "--skip-bad-images" in result["error"]
    assert not (tmp_path / "r").exists() or not (tmp_path / "r" / "model.json").exists()
    ok = run_json("train", str(data), "--out", str(tmp_path / "r2"), *FAST_FLAGS,
                  "--skip-bad-images")
    assert len(ok["training"]["skipped_images"]) == 3


def test_artifact_for_another_class_count_is_refused(trained, tmp_path):
    _, out = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    card = json.loads((out / "model.json").read_text())
    card["classes"] = ["a", "b"]
    card["num_classes"] = 2
    (broken / "model.json").write_text(json.dumps(card))
    (broken / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    result = run_json("info", str(broken))  # info reads the card only
    assert result["num_classes"] == 2
    result = run_json("eval", str(broken), code=2)
    assert "another architecture or class count" in result["error"]
