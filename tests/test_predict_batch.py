"""predict on a mixed batch: one corrupt file never costs the other images their answers, in the
Python API, the Predictor and the CLI (which lists each bad file and exits non-zero)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, make_image_folder
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

import leanvision
from leanvision.cli import app
from leanvision.runtime.predictor import Predictor
from leanvision.training.api import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict_batch")
    data = make_image_folder(root / "data", per_class=8)
    train(data, root / "art", console=Console(quiet=True), **FAST)
    return root / "art"


@pytest.fixture
def batch(tmp_path) -> list[Path]:
    """A good PNG, a corrupt JPEG, a good JPEG. The good sizes are ones whose float crop box
    fell a rounding error outside the image at 16, 32 and 224 px before the fix."""
    rng = np.random.default_rng(0)
    first, corrupt, last = tmp_path / "wide.png", tmp_path / "corrupt.jpg", tmp_path / "tall.jpg"
    Image.fromarray(rng.integers(0, 256, (251, 214, 3), np.uint8)).save(first)
    Image.fromarray(rng.integers(0, 256, (214, 263, 3), np.uint8)).save(last, quality=90)
    corrupt.write_bytes(last.read_bytes()[:600])
    return [first, corrupt, last]


def _check(results: list[dict], batch: list[Path]) -> None:
    assert [r["image"] for r in results] == [str(p) for p in batch]
    good = [results[0], results[2]]
    assert all(len(r["top"]) == 2 and "error" not in r for r in good)
    assert "top" not in results[1] and results[1]["error"] == "truncated image"


def test_api_answers_every_decodable_image(artifact, batch):
    _check(leanvision.predict(artifact, batch, top_k=2), batch)


def test_predictor_answers_every_decodable_image(artifact, batch):
    predictor = Predictor.from_artifact(artifact, runtime="torch")
    _check(predictor.predict_images(batch, top_k=2), batch)


def test_cli_lists_the_bad_file_and_exits_non_zero(artifact, batch):
    result = CliRunner().invoke(app, ["predict", str(artifact), *map(str, batch),
                                      "--top-k", "2", "--json"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "internal error" not in said
    assert "1 of 3 images could not be used" in said and "the other 2 were answered" in said
    summary = json.loads(next(line for line in result.stdout.splitlines()
                              if line.startswith("{")))
    _check(summary["results"], batch)
