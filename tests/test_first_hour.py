"""What a newcomer sees in the first hour (issue 27): counts after leaving out unreadable files,
eval reusing the card's choices from any folder, warnings on duplicate CSV rows and on an output
folder inside the data, a plain per-epoch log when output is not a terminal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_folder
from rich.console import Console

from leanvision import evaluate
from leanvision.data import load_data
from leanvision.errors import DatasetError
from leanvision.training import train

TINY = dict(model="resnet8", epochs=1, batch_size=8, progress=False)
GARBAGE = b"\xff\xd8\xff\xe0 this is not a JPEG " * 8

pytestmark = pytest.mark.usefixtures("one_thread")


def recording() -> Console:
    return Console(record=True, width=200, file=open("/dev/null", "w"))  # noqa: SIM115


@pytest.fixture(scope="module")
def skipped_run(tmp_path_factory) -> dict[str, Path]:
    """Data with one unreadable training image, trained with skip_bad_images=True."""
    root = tmp_path_factory.mktemp("first-hour")
    data = root / "data"
    make_image_folder(data / "train", per_class=6, size=8)
    make_image_folder(data / "val", per_class=2, size=8, seed=1)
    (data / "train" / "red" / "broken.jpg").write_bytes(GARBAGE)
    console = recording()
    here = os.getcwd()
    os.chdir(root)  # the card names the data as given: a path relative to this folder
    try:
        train("data", "run", console=console, skip_bad_images=True, **TINY)
    finally:
        os.chdir(here)
    return {"root": root, "data": data, "run": root / "run", "log": console.export_text()}


def test_counts_are_printed_after_unreadable_files_are_left_out(skipped_run):
    log = " ".join(skipped_run["log"].split())
    assert "images: 18 train, 6 val" in log, log
    assert "1 unreadable left out" in log
    assert "blue 6, green 6, red 6" in log


def test_eval_reuses_the_cards_skip_choice_from_another_folder(skipped_run, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)  # "data" as the card gives it does not exist here
    result = evaluate(skipped_run["run"], split="train")
    assert result["skipped_images"] == 1 and result["metrics"]["n"] == 18
    assert Path(result["data"]).resolve() == skipped_run["data"].resolve()
    assert evaluate(skipped_run["run"], split="val")["metrics"]["n"] == 6
    with pytest.raises(DatasetError, match="could not be decoded"):
        evaluate(skipped_run["run"], split="train", skip_bad_images=False)


def test_robustness_reuses_the_cards_skip_choice(skipped_run, tmp_path):
    from leanvision.shift import robustness

    record = robustness(skipped_run["run"], split="train", severities="1",
                        families="brightness", out=tmp_path, console=recording())
    assert record["n"] == 18


def test_eval_asks_for_data_when_the_training_data_moved(skipped_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(skipped_run["run"], run)  # the data is not beside the copy
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=r"'data'.* is not there.*data=PATH"):
        evaluate(run)
    moved = shutil.copytree(skipped_run["data"], tmp_path / "elsewhere")
    assert evaluate(run, moved, split="val")["metrics"]["n"] == 6


def test_repeated_csv_rows_are_used_once_and_said(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=4, size=8)
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(folder.rglob("*.png"))]
    (tmp_path / "items.csv").write_text("path,label\n" + "\n".join(rows + rows[:2]) + "\n")
    source = load_data(tmp_path / "items.csv")
    assert len(source.train) == 12
    assert source.warnings and "2 rows repeat an earlier row" in source.warnings[0]
    assert "line 14 repeats line 2" in source.warnings[0]


def test_an_output_folder_inside_the_data_is_warned_about(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4, size=8)
    console = recording()
    train(data, data / "run", console=console, val_fraction=0.25, **TINY)
    log = " ".join(console.export_text().split())
    assert f"the output folder {data / 'run'} is inside the data folder {data}" in log


def test_one_plain_line_per_epoch_when_output_is_not_a_terminal(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4, size=8)
    console = recording()  # a file, as under CI or nohup
    train(data, tmp_path / "run", console=console, val_fraction=0.25,
          **{**TINY, "epochs": 2, "progress": True})
    lines = [line for line in console.export_text().splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"], lines
    assert all("loss" in line and "val" in line for line in lines)


def test_the_chosen_weights_score_says_its_precision(skipped_run):
    card = json.loads((skipped_run["run"] / "model.json").read_text())
    epochs = [json.loads(line) for line in
              (skipped_run["run"] / "metrics.jsonl").read_text().splitlines()]
    chosen = card["training"]["chosen_on"]
    assert chosen["precision"] == card["training"]["precision"]
    assert all(e["val_precision"] == chosen["precision"] for e in epochs)
    prefix = "val" if chosen["weights"] == "model" else "ema_val"
    assert epochs[chosen["epoch"] - 1][f"{prefix}_top1"] == chosen["val_top1"]


def test_two_scores_of_one_weight_set_are_explained():
    import torch

    from leanvision.hardware import Hardware
    from leanvision.training.finish import chosen_on
    from leanvision.training.loop import FitResult

    result = FitResult(best_state={}, best_epoch=7, best_source="ema", best_val_top1=0.933,
                       history=[])
    hw = Hardware(torch.device("cpu"), torch.bfloat16, channels_last=False)
    chosen, note = chosen_on(result, hw, {"val": {"top1": 0.867, "n": 30}})
    assert chosen == {"epoch": 7, "weights": "ema", "val_top1": 0.933, "precision": "bf16"}
    assert "93.30% val in bf16" in note and "86.70% in fp32" in note
    assert chosen_on(result, hw, {"val": {"top1": 0.934, "n": 30}})[1] is None


def _cli_json(*args: str) -> tuple[int, dict, str]:
    from typer.testing import CliRunner

    from leanvision.cli import app

    result = CliRunner().invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1]), result.output


def test_the_cli_names_flags_and_verbs_where_the_api_names_arguments(skipped_run, tmp_path,
                                                                     monkeypatch):
    code, line, output = _cli_json("train", str(skipped_run["data"]), "--model", "no_such_net",
                                   "--out", str(tmp_path / "x"))
    assert code == 2 and "leanvision models" in line["error"] and "list_models" not in output
    run = shutil.copytree(skipped_run["run"], tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    code, line, _ = _cli_json("eval", str(run))
    assert code == 2 and "pass where it is now as --data PATH" in line["error"]


def test_the_whole_bad_file_list_in_json_and_in_a_named_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", per_class=6, size=8)
    for i in range(12):
        (data / "red" / f"broken{i:02d}.jpg").write_bytes(GARBAGE)
    code, line, _ = _cli_json("train", str(data), "--out", str(tmp_path / "run"), "--epochs", "1")
    assert code == 2 and line["kind"] == "DatasetError"
    assert sorted(Path(b["file"]).name for b in line["bad_images"]) == \
        [f"broken{i:02d}.jpg" for i in range(12)]
    listed = Path(line["bad_images_list"])
    assert f"all 12 are listed in {listed}" in line["error"]
    assert len(listed.read_text().splitlines()) == 12
    assert "Pass --skip-bad-images to train" in line["error"]


def test_a_parse_error_with_json_prints_a_json_line(tmp_path):
    for wrong in (["--no-such-flag"], ["--split"]):  # an unknown flag; a flag without its value
        proc = subprocess.run([sys.executable, "-m", "leanvision", "eval", str(tmp_path),
                               "--json", *wrong], capture_output=True, text=True, timeout=300,
                              check=False)
        assert proc.returncode == 2, proc.stderr
        line = json.loads(proc.stdout.strip().splitlines()[-1])
        assert line["ok"] is False and line["kind"] == "UsageError"
        assert wrong[0] in line["error"] and line["error"] in proc.stderr


def test_an_image_under_two_labels_or_splits_is_said(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=4, size=8)
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}," for p in sorted(folder.rglob("*.png"))]
    first = rows[0].split(",")[0]
    rows += [f"{first},green,", f"{rows[1].split(',')[0]},{rows[1].split(',')[1]},test"]
    (tmp_path / "items.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    warning = " ".join(load_data(tmp_path / "items.csv").warnings)
    assert "2 images are listed with two labels or splits" in warning
    assert "line 2: blue/train, line 14: green/train" in warning
