"""The test split is sealed: every verb that chooses makes exactly the same choices when the test
labels are permuted (issue 37). The same images are read through two CSVs that differ only in the
labels of their test rows (each test image labelled with the next class), so any decision that
reads the test split (a checkpoint, a node kept FP32, a fusion, a pipeline) shows as a
difference; the test figures themselves must differ, or the check would prove nothing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CLASS_COLOURS, FAST
from PIL import Image
from rich.console import Console

import leanvision as lv
from leanvision.compress.guard_split import HOLDOUT_SPLIT, guard_split
from leanvision.compress.quantize import quantize
from leanvision.data import load_data
from leanvision.data.partition import partition

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = Console(quiet=True)
LABELLINGS = ("true", "permuted")
NAMES = list(CLASS_COLOURS)
# The permutation of the test labels: each test image is labelled with the next class, and its
# caption names that class too, so a text model is right where an image model is wrong.
NEXT = {name: NAMES[(i + 1) % len(NAMES)] for i, name in enumerate(NAMES)}
FAST_PTQ = dict(calibration_images=24, threads=1, timing_runs=3, console=QUIET)


def _make_data(root: Path, train_per_class: int, test_per_class: int = 6) -> dict[str, Path]:
    """Images under `root`, and one CSV per labelling: {"true": ..., "permuted": ...}."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []  # path, split, colour class, caption class
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name, colour in CLASS_COLOURS.items():
            for i in range(count):
                pixels = np.clip(np.array(colour)[None, None] + rng.integers(-40, 40, (16, 16, 3)),
                                 0, 255).astype(np.uint8)
                file = f"{split}-{name}-{i:02d}.png"
                Image.fromarray(pixels).save(root / file)
                rows.append((file, split, name, name if split == "train" else NEXT[name]))
    csvs = {}
    for labelling in LABELLINGS:
        lines = ["path,label,split,caption"]
        for file, split, colour, said in rows:
            label = NEXT[colour] if labelling == "permuted" and split == "test" else colour
            lines.append(f"{file},{label},{split},a photo of a {said} thing")
        csvs[labelling] = root / f"{labelling}.csv"
        csvs[labelling].write_text("\n".join(lines) + "\n")
    return csvs


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _card(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "model.json").read_text())


def _both(run: Callable[[str], Any]) -> dict[str, Any]:
    return {labelling: run(labelling) for labelling in LABELLINGS}


def _same(got: dict[str, Any], what: str) -> None:
    true, permuted = got["true"], got["permuted"]
    assert true == permuted, f"{what} changed with the test labels: {_diff(true, permuted)}"


def _diff(a: Any, b: Any, at: str = "") -> str:
    """Where two records part: the first differing leaves, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return "; ".join(_diff(a.get(k), b.get(k), f"{at}.{k}") for k in sorted(set(a) | set(b))
                         if a.get(k) != b.get(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return "; ".join(_diff(x, y, f"{at}[{i}]") for i, (x, y) in pairs if x != y)
    return f"{at or 'value'}: {a!r} (true labels) vs {b!r} (permuted)"


def _training_choice(folder: str | Path) -> dict[str, Any]:
    """What a training run chose: its weights, the epoch and source they came from, the
    validation figures they were chosen on."""
    card = _card(folder)
    training = card.get("training", {})
    return {"weights": _sha(Path(folder) / "model.safetensors"),
            "best_epoch": training.get("best_epoch"), "source": training.get("weights"),
            "val": {k: card["metrics"].get("val", {}).get(k) for k in ("n", "top1", "loss")}}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    """The data twice over, and a base trained on each (with a validation hold-out, and
    without one for PTQ's held-out check)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("sealed")
        csvs = _make_data(root / "data", train_per_class=16)
        bases = _both(lambda lb: lv.train(csvs[lb], root / f"base-{lb}", console=QUIET,
                                          **FAST)["artifact"])
        no_val = _both(lambda lb: lv.train(csvs[lb], root / f"noval-{lb}", console=QUIET,
                                           **{**FAST, "val_fraction": 0.0})["artifact"])
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "csvs": csvs, "bases": bases, "no_val": no_val}


def test_the_permutation_changes_every_test_figure(world):
    # Without this the other tests could pass because the test labels changed nothing.
    tests = _both(lambda lb: _card(world["bases"][lb])["metrics"]["test"]["top1"])
    assert tests["true"] >= 0.8 and tests["permuted"] <= 0.2


def test_train_chooses_the_same_checkpoint(world):
    _same(_both(lambda lb: _training_choice(world["bases"][lb])), "train's checkpoint")
    _same(_both(lambda lb: _training_choice(world["no_val"][lb])),
          "train's weights without validation")


def _guard(folder: str | Path) -> dict[str, Any]:
    card = _card(folder)
    q = card["quantization"]
    return {"guard": q["guard"], "fp32_nodes": q["fp32_nodes"],
            "int8": _sha(Path(folder) / "model.int8.onnx"),
            "calibration": q["calibration"]}


def test_ptq_guard_decides_on_validation(world):
    root = world["root"]
    got = _both(lambda lb: quantize(world["bases"][lb], out=root / f"ptq-{lb}", **FAST_PTQ))
    _same(_both(lambda lb: _guard(root / f"ptq-{lb}")), "PTQ's guard (val)")
    guard = got["true"]["quantization"]["guard"]
    assert guard["split"] == "val" and guard["images"]["split"] == "val"
    # test is still reported, after the decisions, and differs as the labels do
    assert got["true"]["metrics"]["int8"]["test"] != got["permuted"]["metrics"]["int8"]["test"]


def test_ptq_without_validation_checks_a_held_out_slice_of_train(world):
    root = world["root"]
    got = _both(lambda lb: quantize(world["no_val"][lb], out=root / f"ptq-noval-{lb}",
                                    **FAST_PTQ))
    _same(_both(lambda lb: _guard(root / f"ptq-noval-{lb}")), "PTQ's guard (no val)")
    q = got["true"]["quantization"]
    assert q["guard"]["split"] == HOLDOUT_SPLIT and q["guard"]["rounds"]
    held = q["guard"]["images"]["images"]
    assert held == 20 and "left out of calibration" in q["guard"]["images"]["origin"]
    assert got["true"]["metrics"]["int8"][HOLDOUT_SPLIT]["n"] == held
    assert set(got["true"]["metrics"]["int8"]) >= {"test", HOLDOUT_SPLIT}
    # the held-out images are not calibration images
    parts = partition(load_data(world["csvs"]["true"]), 0.0, 0)
    checked = guard_split(parts, 0)
    assert not set(checked.check.items) & set(checked.calibration_pool.items)
    assert len(checked.check) + len(checked.calibration_pool) == len(parts.train) == 48


def test_openvino_ptq_without_validation_checks_a_held_out_slice_of_train(world):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    root = world["root"]
    got = _both(lambda lb: quantize(world["no_val"][lb], out=root / f"ov-noval-{lb}",
                                    backend="openvino", **FAST_PTQ))

    def guard(labelling: str) -> dict[str, Any]:
        q = _card(root / f"ov-noval-{labelling}")["quantization"]
        return {"guard": q["guard"], "fp32_nodes": q["fp32_nodes"],
                "int8": _sha(root / f"ov-noval-{labelling}" / "model.openvino-int8.bin")}

    _same(_both(guard), "OpenVINO PTQ's guard (no val)")
    assert got["true"]["quantization"]["guard"]["split"] == HOLDOUT_SPLIT
    assert set(got["true"]["metrics"]["openvino_int8"]) >= {"test", HOLDOUT_SPLIT}


def test_ptq_with_too_little_train_says_it_checks_nothing(world, tmp_path):
    csvs = _make_data(tmp_path / "small", train_per_class=10, test_per_class=4)
    got = _both(lambda lb: quantize(world["no_val"]["true"], csvs[lb],
                                    out=tmp_path / f"ptq-{lb}", **FAST_PTQ))
    _same(_both(lambda lb: _guard(tmp_path / f"ptq-{lb}")), "PTQ's guard (too small)")
    guard = got["true"]["quantization"]["guard"]
    assert guard["split"] is None and guard["rounds"] == [] and not guard["met"]
    assert guard["status"].startswith("skipped: the data has no validation split and its 30 "
                                      "training images are too few")
    assert "INT8 accuracy is unchecked" in guard["status"]


def test_compare_fusions_ranks_on_validation_only(world):
    pytest.importorskip("tokenizers")
    root = world["root"]
    settings = dict(model="resnet8", epochs=3, batch_size=8, progress=False, val_fraction=0.25,
                    console=QUIET)
    got = _both(lambda lb: lv.compare_fusions(world["csvs"][lb], "caption", fusions="late",
                                              out=root / f"fusions-{lb}", **settings))
    _same(_both(lambda lb: (got[lb]["best"], got[lb]["ranking"], got[lb]["split"])),
          "compare-fusions' choice")
    _same(_both(lambda lb: [r["val_top1"] for r in got[lb]["runs"]]), "fusions' val figures")
    assert got["true"]["split"] == "val" and got["true"]["best"] is not None
    # test is reported beside each run: image-only is right on the true labels, text-only on
    # the permuted ones, so ranking on test would have chosen differently
    test = _both(lambda lb: {r["name"]: r["test_top1"] for r in got[lb]["runs"]})
    assert test["true"]["image-only"] > test["true"]["text-only"]
    assert test["permuted"]["text-only"] > test["permuted"]["image-only"]


def _stage_choice(folder: str | Path, block: str) -> dict[str, Any]:
    """A training stage's choice, and its own record of what it decided."""
    return {**_training_choice(folder), block: _decisions(_card(folder).get(block))}


def _decisions(record: Any) -> Any:
    """A record without what varies from run to run whatever the labels: times and paths."""
    if isinstance(record, dict):
        return {k: _decisions(v) for k, v in record.items()
                if not any(w in k for w in ("second", "time", "path", "artifact", "teacher",
                                            "student", "parent", "_ms", "speed"))}
    if isinstance(record, list):
        return [_decisions(v) for v in record]
    return record


def test_prune_makes_the_same_cuts_and_fine_tune(world):
    # check=False: the fresh-process reload check decides nothing and costs seconds
    root = world["root"]
    _both(lambda lb: lv.prune(world["bases"][lb], out=root / f"prune-{lb}", ratio=0.5,
                              finetune_epochs=1, check=False, batch_size=8, progress=False,
                              console=QUIET))
    _same(_both(lambda lb: _stage_choice(root / f"prune-{lb}", "pruning")), "prune's choices")


def test_distill_trains_the_same_student(world):
    root = world["root"]
    _both(lambda lb: lv.distill(world["csvs"][lb], world["bases"][lb], "resnet8",
                                root / f"distill-{lb}", augment="none", console=QUIET,
                                **{k: v for k, v in FAST.items() if k != "model"}))
    _same(_both(lambda lb: _stage_choice(root / f"distill-{lb}", "distill")),
          "distill's choices")


def test_compare_ranks_the_optimizers_alike(world):
    root = world["root"]
    got = _both(lambda lb: lv.compare(world["csvs"][lb], ["sgd", "adam"], root / f"cmp-{lb}",
                                      epochs=1, model="resnet8", batch_size=8, find_steps=12,
                                      val_fraction=0.25, progress=False, console=QUIET))
    _same(_both(lambda lb: {"best": got[lb]["best"], "ranking": got[lb]["ranking"],
                            "runs": {n: (r["lr"], r["best_val_top1"],
                                         _sha(Path(r["artifact"]) / "model.safetensors"))
                                     for n, r in got[lb]["runs"].items()}}),
          "compare's ranking")


def test_cv_trains_the_same_folds(world):
    root = world["root"]
    got = _both(lambda lb: lv.cross_validate(world["csvs"][lb], folds=2, out=root / f"cv-{lb}",
                                             model="resnet8", epochs=1, batch_size=8,
                                             progress=False, console=QUIET))
    _same(_both(lambda lb: [_training_choice(f["artifact"]) for f in got[lb]["per_fold"]]),
          "cv's folds")


def test_adapt_fine_tunes_alike(world, tmp_path):
    # DANN fine-tunes on the source labels and keeps the checkpoint validation chooses.
    rng = np.random.default_rng(3)
    target = tmp_path / "target"
    target.mkdir()
    for i, colour in enumerate(list(CLASS_COLOURS.values()) * 4):
        pixels = np.clip(np.array(colour) * 0.3 + 140 + rng.integers(-20, 20, (16, 16, 3)), 0,
                         255).astype(np.uint8)
        Image.fromarray(pixels).save(target / f"{i:02d}.png")
    root = world["root"]

    def run(labelling: str) -> None:
        # DANN's domain head is initialised from torch's global RNG before training seeds it
        # (shift/dann.py), so what ran before in this process changes it: start both alike.
        torch.manual_seed(0)
        lv.adapt(world["bases"][labelling], target, root / f"adapt-{labelling}", method="dann",
                 epochs=1, batch_size=8, min_target_images=8, console=QUIET)

    _both(run)
    _same(_both(lambda lb: _stage_choice(root / f"adapt-{lb}", "adapt")), "adapt's choices")


def test_optimize_chooses_the_same_pipeline(world):
    from leanvision.search import Budget, SearchSpace

    budget = Budget.quick(train_settings=dict(batch_size=8), finetune_epochs=1, kd_epochs=1,
                          student_epochs=1, qat_epochs=1, calibration_images=24,
                          ptq_timing_runs=3, bench_warmup=2, bench_iterations=10)
    # One pipeline (prune half the FLOPs, INT8 PTQ): whether it is chosen is an accuracy
    # decision; among several, re-timing noise would decide too.
    space = SearchSpace(prune_ratios=(0.5,), recoveries=("none",), quantizations=("ptq",),
                        runtimes=("onnx-int8",))
    root = world["root"]
    got = _both(lambda lb: lv.optimize(world["csvs"][lb], base=world["bases"][lb],
                                       out=root / f"opt-{lb}", trials=1, space=space,
                                       budget=budget, threads=1, console=QUIET))

    def choice(summary: dict[str, Any]) -> dict[str, Any]:
        candidate = summary["candidate"] or {}
        chosen = Path(summary["chosen"]) if summary["chosen"] else None
        return {"met": summary["met"], "trials": summary["trials"],
                "candidate": {k: v for k, v in candidate.items()
                              if k in ("label", "pipeline", "runtime", "val_top1", "drop_points",
                                       "paired", "misses", "meets", "chosen")},
                "int8": _sha(chosen / "model.int8.onnx") if chosen else None,
                "guard": _decisions(_card(chosen)["quantization"]["guard"]) if chosen else None}

    _same(_both(lambda lb: choice(got[lb])), "optimize's choice")
    assert got["true"]["candidate"] is not None


def test_compare_fusions_refuses_data_without_validation(world, tmp_path):
    # With no validation split there is nothing to rank on but test: refused before training.
    from leanvision.errors import ConfigError

    with pytest.raises(ConfigError, match="ranks on validation accuracy \\(never on test\\)"):
        lv.compare_fusions(world["csvs"]["true"], "caption", out=tmp_path / "f",
                           val_fraction=0.0, console=QUIET)
    assert not (tmp_path / "f").exists()
