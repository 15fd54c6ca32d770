"""The photo path under both precisions on every machine: bf16 autocast forced where the CPU
would choose fp32 (AVX2 only), fp32 forced where it would choose bf16 (AVX-512 bf16, AMX), so
that neither path is left to the machines that happen to pick it. One optimize run per
precision covers them all: its base is trained by LP-FT under the budget's share, a trial
resizes it and another quantizes it (INT8 PTQ with its guard)."""

from __future__ import annotations

import json

import pytest
from conftest import make_image_folder
from rich.console import Console

from leanvision.hardware import choose_hardware
from leanvision.search import Budget, SearchSpace, optimize

QUIET = Console(quiet=True)
PHOTO_SIDE = 72

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("photos") / "data", per_class=10,
                             size=PHOTO_SIDE)


def card(folder) -> dict:
    return json.loads((folder / "model.json").read_text())


def test_forcing_a_precision_overrides_what_the_cpu_would_choose():
    assert choose_hardware("cpu", "bf16").precision == "bf16"
    assert choose_hardware("cpu", "fp32").precision == "fp32"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_optimize_sizes_its_base_to_the_budget_under_each_precision(photos, tmp_path,
                                                                     precision):
    settings = dict(batch_size=8, precision=precision)
    budget = Budget.quick(base_settings=dict(model="efficientnet_lite0", img_size=64, epochs=2,
                                             **settings),
                          train_settings=settings, finetune_epochs=1, kd_epochs=1,
                          qat_epochs=1, calibration_images=24, ptq_timing_runs=3,
                          bench_warmup=2, bench_iterations=10)
    space = SearchSpace(prune_ratios=(0.0,), recoveries=("none",), quantizations=("ptq",),
                        runtimes=("onnx-int8",), resolutions=(48,))
    summary = optimize(photos, out=tmp_path / "out", trials=2, space=space, budget=budget,
                       threads=1, console=QUIET, max_drop=100.0, time_budget=6)
    base = card(tmp_path / "out" / "base")
    assert base["training"]["precision"] == precision
    assert base["config"]["time_budget"] == pytest.approx(6 * 0.4)
    assert summary["seconds"] < 6 * 60
    assert base["training"]["finetune"] == "lp-ft"
    assert base["training"]["transfer"]["frozen_pass_images_per_second"] > 0
    trials = json.loads((tmp_path / "out" / "search.json").read_text())["trials"]
    assert {t["state"] for t in trials} == {"COMPLETE"}
    # the resized candidate was trained under the same forced precision, then quantized
    resized = next(t for t in trials if "48 px" in t["label"])
    stages = sorted((tmp_path / "out" / "stages").glob("res48-[0-9a-f]*/model.json"))
    assert len(stages) == 1 and resized["label"].endswith("int8 ptq @ onnx-int8")
    assert json.loads(stages[0].read_text())["training"]["precision"] == precision
    assert (tmp_path / "out" / resized["artifact"] / "model.int8.onnx").is_file()
