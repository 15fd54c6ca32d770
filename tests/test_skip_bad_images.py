"""--skip-bad-images on every verb that reads a dataset: without it, one unreadable file stops the
verb with one message that names the flag for that verb; with it, the verb runs without the file.
Stages on an artifact (prune, distill, quantize, optimize --base) read the data the way their
parent was trained unless the user says otherwise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import make_image_folder
from optuna.trial import TrialState
from rich.console import Console
from typer.testing import CliRunner

from leanvision.cli import app
from leanvision.search import Budget, SearchSpace, optimize
from leanvision.search.base import skip_bad_choice
from leanvision.search.stages import MARKER
from leanvision.training import train

runner = CliRunner()
QUIET = Console(quiet=True)
TINY = dict(model="resnet8", epochs=1, batch_size=8, progress=False)
TINY_FLAGS = ["--model", "resnet8", "--epochs", "1", "--batch-size", "8"]
GARBAGE = b"\xff\xd8\xff\xe0 this is not a JPEG " * 8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """`clean` and `bad` (the same images plus val/red/broken.jpg: in val, so that every verb,
    PTQ's accuracy guard included, reads it); a base trained on `clean` without the flag and
    one trained on `bad` with it."""
    root = tmp_path_factory.mktemp("skip-bad")
    clean = root / "clean"
    make_image_folder(clean / "train", per_class=8, size=8)
    make_image_folder(clean / "val", per_class=3, size=8, seed=1)
    bad = root / "bad"
    shutil.copytree(clean, bad)
    (bad / "val" / "red" / "broken.jpg").write_bytes(GARBAGE)
    train(clean, root / "clean-base", console=QUIET, **TINY)
    train(bad, root / "skip-base", console=QUIET, skip_bad_images=True, **TINY)
    return {"root": root, "clean": clean, "bad": bad, "clean_base": root / "clean-base",
            "skip_base": root / "skip-base"}


def _args(world: dict[str, Path], tmp: Path, *args: str) -> list[str]:
    """Arguments with {name} replaced by the world's paths and {out} by a fresh folder."""
    names = {k: str(v) for k, v in world.items()} | {"out": str(tmp / "out")}
    return [a.format(**names) for a in args]


@pytest.mark.parametrize(("args", "doing"), [
    (["eval", "{clean_base}", "--data", "{bad}", "--split", "val"], "evaluate"),
    (["quantize", "{clean_base}", "--data", "{bad}", "--out", "{out}"], "quantize"),
    # An explicit --no-skip-bad-images wins over the parent's choice.
    (["quantize", "{skip_base}", "--no-skip-bad-images", "--out", "{out}"], "quantize"),
    (["prune", "{clean_base}", "--data", "{bad}", "--finetune-epochs", "1", "--out", "{out}"],
     "prune"),
    (["distill", "{bad}", "--teacher", "{clean_base}", "--student", "resnet8", "--epochs", "1",
      "--out", "{out}"], "distill"),
    (["cv", "{bad}", "--folds", "2", *TINY_FLAGS, "--out", "{out}"], "cross-validate"),
    (["lr-find", "{bad}", "--model", "resnet8", "--steps", "5", "--out", "{out}"],
     "find a learning rate"),
    (["compare", "{bad}", "--optimizers", "sgd", "--epochs", "1", "--model", "resnet8",
      "--find-steps", "5", "--out", "{out}"], "compare optimizers"),
    (["robustness", "{clean_base}", "--data", "{bad}", "--split", "val", "--out", "{out}"],
     "measure robustness"),
    (["adapt", "{clean_base}", "--target", "{bad}/val", "--min-target-images", "2", "--out",
      "{out}"], "adapt"),
    (["optimize", "{bad}", "--quick", "--trials", "1", "--out", "{out}"], "optimize"),
])
def test_an_unreadable_image_stops_each_verb_with_its_own_flag(world, tmp_path, args, doing):
    result = runner.invoke(app, _args(world, tmp_path, *args))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # the console wraps long lines
    assert text.count(f"Pass --skip-bad-images to {doing} without them") == 1, text
    assert "broken.jpg" in text
    assert "Traceback" not in text and "internal error" not in text


def _ok(world: dict[str, Path], tmp: Path, *args: str) -> dict:
    result = runner.invoke(app, [*_args(world, tmp, *args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _config(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "model.json").read_text())["config"]


def test_eval_cv_and_lr_find_run_without_the_file_when_asked(world, tmp_path):
    scored = _ok(world, tmp_path, "eval", "{clean_base}", "--data", "{bad}", "--split", "val",
                 "--skip-bad-images")
    assert scored["skipped_images"] == 1 and scored["metrics"]["n"] == 9
    cv = _ok(world, tmp_path, "cv", "{bad}", "--folds", "2", *TINY_FLAGS, "--skip-bad-images",
             "--out", "{out}")
    assert len(cv["per_fold"]) == 2
    found = _ok(world, tmp_path, "lr-find", "{bad}", "--model", "resnet8", "--steps", "5",
                "--skip-bad-images", "--out", "{out}-lr")
    assert found["suggested_lr"] > 0


def test_quantize_follows_the_flag_then_the_parent(world, tmp_path):
    given = _ok(world, tmp_path, "quantize", "{clean_base}", "--data", "{bad}",
                "--skip-bad-images", "--out", "{out}")
    assert given["metrics"]["int8"]["val"]["n"] == 9
    # No flag: the parent was trained without its unreadable image, so PTQ reads it so too.
    inherited = _ok(world, tmp_path, "quantize", "{skip_base}", "--out", "{out}-inherited")
    assert inherited["metrics"]["int8"]["val"]["n"] == 9


def test_prune_and_distill_carry_the_parents_choice(world, tmp_path):
    # --no-check: the export and fresh-process reload checks cost seconds and test nothing here.
    pruned = _ok(world, tmp_path, "prune", "{skip_base}", "--finetune-epochs", "1", "--no-check",
                 "--out", "{out}")
    assert _config(pruned["artifact"])["skip_bad_images"] is True
    given = _ok(world, tmp_path, "prune", "{clean_base}", "--data", "{bad}", "--finetune-epochs",
                "1", "--no-check", "--skip-bad-images", "--out", "{out}-given")
    assert _config(given["artifact"])["skip_bad_images"] is True
    distilled = _ok(world, tmp_path, "distill", "{bad}", "--teacher", "{skip_base}",
                    "--student", "resnet8", "--epochs", "1", "--out", "{out}-kd")
    assert _config(distilled["artifact"])["skip_bad_images"] is True


def test_optimize_choice_is_the_flag_else_the_bases(world):
    assert skip_bad_choice(None, world["skip_base"]) is True
    assert skip_bad_choice(None, world["clean_base"]) is False
    assert skip_bad_choice(False, world["skip_base"]) is False
    assert skip_bad_choice(True, None) is True and skip_bad_choice(None, None) is False


PTQ_ONLY = SearchSpace(prune_ratios=(0.0,), recoveries=("none",), quantizations=("ptq",),
                       runtimes=("onnx-int8",))
BUDGET = Budget.quick(base_settings=dict(TINY), train_settings=dict(batch_size=8),
                      calibration_images=16, ptq_timing_runs=2, bench_warmup=1,
                      bench_iterations=5)


def _stage_configs(out: Path) -> dict[str, dict]:
    markers = [json.loads(m.read_text()) for m in (out / "stages").glob(f"*/{MARKER}")]
    return {m["stage"]: m["config"] for m in markers}


@pytest.mark.parametrize("with_base", [True, False])
def test_optimize_trials_read_the_data_as_the_base_did(world, tmp_path, with_base):
    """The first INT8 trial on a base trained with --skip-bad-images used to fail with
    "1 of N images could not be decoded"; without --base, the flag reaches the base's training.
    Either way the stage keys hold the choice, so a stage made without it is not reused."""
    extra = {"base": world["skip_base"]} if with_base else {"skip_bad_images": True}
    summary = optimize(world["bad"], out=tmp_path / "out", trials=1, space=PTQ_ONLY,
                       budget=BUDGET, threads=1, console=QUIET, **extra)
    assert summary["trials"]["complete"] == 1, summary["trials"]
    configs = _stage_configs(tmp_path / "out")
    assert configs["ptq"]["settings"]["skip_bad_images"] is True
    if not with_base:
        base_marker = json.loads((tmp_path / "out" / "base" / MARKER).read_text())
        assert base_marker["config"]["settings"]["skip_bad_images"] is True
        assert _config(tmp_path / "out" / "base")["skip_bad_images"] is True


def test_optimize_refuses_an_explicit_no_on_a_skipping_base(world, tmp_path):
    summary = optimize(world["bad"], base=world["skip_base"], out=tmp_path / "out", trials=1,
                       space=PTQ_ONLY, budget=BUDGET, threads=1, console=QUIET,
                       skip_bad_images=False)
    assert summary["trials"].get("complete", 0) == 0
    study = optuna.load_study(study_name=summary["study"], storage=summary["storage"])
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and "skip_bad_images=True to optimize" in failed[0].user_attrs["error"]
