"""The README's commands run as written: every line of its code blocks that starts with
`leanvision` or `make` is either run here, in a folder holding a tiny `photos/` made on the fly,
or parsed by the CLI (flags and arguments checked) and skipped for a reason listed below."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from leanvision.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
# What is not run, and why; each entry must match a README line, so none outlives its command.
NOT_RUN = {
    "make demo": "installs the package and runs a search of minutes; CI and newcomers run it",
    "make test": "is the test suite itself (.ci/run calls it)",
    "leanvision serve": "serves until stopped; tests/test_serve.py covers it",
    "leanvision optimize": "a search of minutes; tests/test_optimize.py covers it on tiny data",
}
# Flags appended to a command that change only its cost on tiny data (a later flag wins), so a
# test of seconds checks the command as written: its verb, arguments and flags.
CHEAPER = {
    "leanvision train": ["--model", "resnet8", "--epochs", "1", "--batch-size", "8"],
    "leanvision quantize": ["--calibration-images", "16"],
    "leanvision bench": ["--warmup", "1", "--iterations", "3", "--batch", "4"],
    "leanvision report": ["--no-measure", "--explain-images", "1"],
}
COLOURS = {"cat": (200, 30, 30), "dog": (30, 180, 40), "bird": (40, 50, 210)}


def readme_commands(text: str) -> list[str]:
    """Lines of fenced code blocks that start with `leanvision` or `make`, comments removed."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.split(" ")[0] in ("leanvision", "make")]


def make_photos(root: Path, per_class: int = 8) -> None:
    """`photos/<class>/0001.jpg`, ...: the layout the README's quick start names."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(1, per_class + 1):
            noise = rng.integers(-40, 40, size=(20, 24, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:04d}.jpg", quality=90)


def skip_reason(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


def parse_only(command: str) -> None:
    """Check a command's verb, flags and arguments without running it."""
    group = typer.main.get_command(app)
    args = shlex.split(command)[1:]
    verb = group.get_command(None, args[0])  # type: ignore[arg-type]
    assert verb is not None, f"no verb {args[0]!r}: {command}"
    verb.make_context(args[0], args[1:])


def test_readme_commands_run_as_written(tmp_path, monkeypatch):
    commands = readme_commands(README.read_text())
    assert any(c.startswith("leanvision train") for c in commands), commands
    for start in NOT_RUN:
        assert any(c.startswith(start) for c in commands), f"NOT_RUN lists {start!r}, gone"
    make_photos(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for command in commands:
        if command.startswith("make"):
            continue
        if skip_reason(command) is not None:
            parse_only(command)
            continue
        cheaper = next((flags for start, flags in CHEAPER.items() if command.startswith(start)),
                       [])
        result = runner.invoke(app, shlex.split(command)[1:] + cheaper)
        assert result.exit_code == 0, f"{command}\n{result.output}"


def test_a_wrong_command_is_caught(tmp_path, monkeypatch):
    """The checks above fail on a flag that does not exist, run or only parsed."""
    make_photos(tmp_path / "photos", per_class=2)
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["info", "runs/pets", "--no-such-flag"]).exit_code != 0
    with pytest.raises(Exception, match="no-such-flag"):
        parse_only("leanvision serve runs/pets-int8 --no-such-flag")
