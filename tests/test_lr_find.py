"""The learning-rate range test: the suggestion, the files it writes, the early stop, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import PNG_SIGNATURE, make_image_folder
from typer.testing import CliRunner

from leanvision.cli import app
from leanvision.errors import ConfigError
from leanvision.training.tuning.lr_find import lr_find, suggest_lr

TINY = dict(model="resnet8", batch_size=8, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("lrf") / "data")


def test_lr_find_writes_json_and_png_and_suggests_a_rate_in_range(data, tmp_path):
    out = tmp_path / "find"
    result = lr_find(data, out, steps=20, start_lr=1e-5, end_lr=1.0, **TINY)

    assert 1e-5 <= result["suggested_lr"] <= 1.0
    assert result["min_loss_lr"] == pytest.approx(result["lr_at_min_loss"] / 10)
    assert result["optimizer"] == "adamw" and result["model"] == "resnet8"  # the recipe default
    assert result["json"] == str(out / "lr_find.json")
    assert (out / "lr_find.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
    saved = json.loads((out / "lr_find.json").read_text())
    assert len(saved["lrs"]) == len(saved["losses"]) == result["steps_run"] <= 20
    assert all(math.isfinite(v) for v in saved["losses"])
    assert np.all(np.diff(saved["lrs"]) > 0), "the rate must grow every step"
    assert saved["lrs"][0] == pytest.approx(1e-5)
    assert saved["config"]["steps"] == 20 and saved["config"]["batch_size"] == 8
    assert saved["suggested_lr"] == result["suggested_lr"]


def test_lr_find_stops_early_when_the_loss_blows_up(data, tmp_path):
    # Plain SGD up to lr 1e6 cannot survive: the sweep must end before its last step.
    result = lr_find(data, tmp_path / "find", optimizer="sgd", steps=25, start_lr=1e-3,
                     end_lr=1e6, **TINY)
    assert result["stopped"] and result["steps_run"] < 25
    saved = json.loads((tmp_path / "find" / "lr_find.json").read_text())
    assert all(math.isfinite(v) for v in saved["losses"])
    assert max(saved["losses"]) <= 4 * min(saved["losses"])
    assert result["suggested_lr"] < saved["lrs"][-1]


def test_suggest_lr_finds_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-6, 1, 71)
    # Loss falls fastest at lr 1e-3 (the logistic's midpoint), bottoms out, then explodes.
    x = np.log10(lrs)
    losses = 2.0 - 1.5 / (1 + np.exp(-(x + 3) * 3)) + np.where(x > -0.5, (x + 0.5) ** 2 * 4, 0)
    found = suggest_lr(list(lrs), list(losses))
    assert found["suggested_lr"] == pytest.approx(1e-3, rel=0.2)
    assert found["lr_at_min_loss"] == pytest.approx(10 ** -0.5, rel=0.3)
    assert found["suggestion_method"] == "steepest descent"
    rising = suggest_lr([1e-3, 1e-2, 1e-1], [1.0, 1.5, 3.0])
    assert rising["suggested_lr"] == pytest.approx(1e-4)
    assert suggest_lr([1e-3, 1e-2], [float("nan"), float("inf")]) is None
    # A lucky first batch must not pass for the minimum: the real descent comes later.
    lucky = suggest_lr(list(np.logspace(-7, 0, 8)), [1.0, 2.0, 2.0, 1.9, 1.5, 1.2, 1.1, 3.0],
                       skip_start=1)
    assert lucky["lr_at_min_loss"] == pytest.approx(1e-1)
    assert lucky["suggested_lr"] == pytest.approx(1e-4)  # where the largest drop starts


@pytest.mark.parametrize("kwargs, flag", [(dict(start_lr=0.0), "--start-lr"),
                                          (dict(start_lr=1.0, end_lr=0.1), "--end-lr"),
                                          (dict(steps=2), "--steps")])
def test_lr_find_rejects_a_bad_range_naming_the_flag(data, tmp_path, kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        lr_find(data, tmp_path / "find", **TINY, **kwargs)


def test_cli_lr_find_json(data, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["lr-find", str(data), "--model", "resnet8",
                                      "--optimizer", "adam", "--batch-size", "8", "--steps",
                                      "12", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["optimizer"] == "adam"
    assert 1e-7 <= summary["suggested_lr"] <= 10.0
    assert summary["plot"] == str(out / "lr_find.png") and (out / "lr_find.png").is_file()

    bad = CliRunner().invoke(app, ["lr-find", str(data), "--optimizer", "adamm", "--json"])
    assert bad.exit_code == 2
    error = json.loads(bad.stdout.strip().splitlines()[-1])
    assert error["kind"] == "ConfigError" and "did you mean 'adam'" in error["error"]
