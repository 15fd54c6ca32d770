"""The optimizer study: one lr-find and one training run per optimizer, ranked, with a plot."""

from __future__ import annotations

import json

import pytest
from conftest import PNG_SIGNATURE, make_image_folder
from typer.testing import CliRunner

from leanvision.cli import app
from leanvision.errors import ConfigError
from leanvision.training.tuning.compare import compare

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_compare_trains_each_optimizer_at_its_found_rate_and_ranks(tmp_path):
    data = make_image_folder(tmp_path / "data")
    out = tmp_path / "study"
    result = CliRunner().invoke(app, [
        "compare", str(data), "--optimizers", "sgd,adam", "--epochs", "1", "--model", "resnet8",
        "--batch-size", "8", "--find-steps", "12", "--val-fraction", "0.25", "--out", str(out),
        "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] and sorted(summary["ranking"]) == ["adam", "sgd"]

    saved = json.loads((out / "compare.json").read_text())
    assert (out / "compare.png").read_bytes()[:8] == PNG_SIGNATURE
    runs = saved["runs"]
    tops = [runs[name]["best_val_top1"] for name in saved["ranking"]]
    assert tops == sorted(tops, reverse=True) and saved["best"] == saved["ranking"][0]
    for name in ("sgd", "adam"):
        run = runs[name]
        folder = out / name
        found = json.loads((folder / "lr_find.json").read_text())
        assert run["lr"] == found["suggested_lr"] == run["lr_find"]["suggested_lr"]
        card = json.loads((folder / "model.json").read_text())
        # The artifact really trained with this optimizer at the found rate.
        assert card["config"]["optimizer"] == name
        assert card["config"]["lr"] == pytest.approx(run["lr"])
        assert len(run["history"]) == 1 and "train_loss" in run["history"][0]
        assert 0.0 <= run["best_val_top1"] <= 1.0
        assert run["artifact_val_top1"] == pytest.approx(card["metrics"]["val"]["top1"])
        assert run["seconds"] >= run["find_seconds"] > 0


def test_compare_refuses_an_unknown_optimizer_with_the_list(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'adam'.*choose from: sgd, momentum"):
        compare(tmp_path / "no-data", ["sgd", "adamx"])


def test_compare_refuses_a_fixed_lr(tiny_folder, tmp_path):
    with pytest.raises(ConfigError, match="drop --lr"):
        compare(tiny_folder, ["sgd"], tmp_path / "out", lr=0.1)


def test_compare_needs_validation_data(tiny_folder, tmp_path):
    with pytest.raises(ConfigError, match="--val-fraction"):
        compare(tiny_folder, ["sgd"], tmp_path / "out", val_fraction=0.0, progress=False)


def test_cli_compare_bad_optimizer_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["compare", str(tmp_path), "--optimizers", "sgd,lion",
                                      "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout.strip().splitlines()[-1])
    assert error["kind"] == "ConfigError" and "'lion'" in error["error"]
    assert "adadelta" in error["error"]
