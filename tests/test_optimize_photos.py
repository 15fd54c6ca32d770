"""optimize on photo-sized networks: input resolution as a search dimension (the resize stage),
and --time-budget (stages that do not fit are "not reached", training stages get a share)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
from conftest import FAST, make_image_folder
from optuna.trial import TrialState
from rich.console import Console

import leanvision as lv
from leanvision.search import Budget, Constraints, Pipeline, SearchSpace, optimize
from leanvision.search.objective import Objective, SearchContext
from leanvision.search.schedule import StageClock, kind_of, training_stages
from leanvision.search.space import default_resolutions
from leanvision.training import train

QUIET = Console(quiet=True)
BUDGET = Budget.quick(train_settings=dict(batch_size=8), finetune_epochs=1, kd_epochs=1,
                      qat_epochs=1, calibration_images=24, ptq_timing_runs=3, bench_warmup=2,
                      bench_iterations=10)
PHOTO_SIDE = 72

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the space ----------------------------------------------------------------------------------

def test_resolutions_are_searched_below_a_photo_base_only():
    assert default_resolutions(224) == (192, 160, 128)
    assert default_resolutions(160) == (128,)
    assert default_resolutions(32) == ()


def test_resolution_multiplies_the_space_and_its_anchors_come_cheapest_first():
    plain = SearchSpace(runtimes=("onnx-fp32", "onnx-int8"))
    sized = SearchSpace(runtimes=("onnx-fp32", "onnx-int8"), resolutions=(192, 128))
    assert sized.size() == 3 * plain.size()
    anchors = sized.anchors()
    assert anchors[:2] == plain.anchors()[:2]  # the base, then its INT8 twin
    assert [p.resolution for p in anchors[2:4]] == [128, 192]
    assert all(p.quant == "ptq" for p in anchors[1:4])
    assert all(sized.contains(p) for p in anchors)
    assert not plain.contains(Pipeline(resolution=160))
    assert "resolution" not in plain.params(Pipeline())
    assert sized.params(Pipeline(resolution=128))["resolution"] == 128
    assert "at 128 px" in Pipeline(resolution=128).label()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(400):
        trial = study.ask()
        p = sized.suggest(trial)
        assert sized.contains(p)
        seen.add(p.resolution)
        study.tell(trial, 0.0)
    assert seen == {0, 192, 128}


# ---- the schedule -------------------------------------------------------------------------------

def test_training_stages_are_counted_per_pipeline():
    assert training_stages(Pipeline()) == 0
    assert training_stages(Pipeline(quant="ptq", runtime="onnx-int8")) == 0
    assert training_stages(Pipeline(resolution=160, prune_ratio=0.5, recovery="kd",
                                    quant="qat", runtime="onnx-int8")) == 4
    assert kind_of("prune50") == "prune" and kind_of("res160") == "res"
    assert kind_of("student-resnet8") == "student"


def _trial() -> optuna.Trial:
    return optuna.create_study().ask()


def test_the_clock_shares_time_and_stops_what_cannot_fit(tmp_path, monkeypatch):
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "model.json").write_text(json.dumps({"input": {"size": [100, 100]}}))
    monkeypatch.setattr("leanvision.search.schedule.read_card",
                        lambda f: (f, json.loads((Path(f) / "model.json").read_text())))
    assert StageClock(None).allow(_trial(), "prune50", parent, 2) == {}
    clock = StageClock(time.time() + 600)
    share = clock.allow(_trial(), "prune50", parent, 2)["time_budget"]
    assert 4.9 < share <= 5.0  # half of the ten minutes left, in minutes
    assert clock.allow(_trial(), "ptq", parent, 0) == {}  # never measured: it may try

    class Run:
        cached, seconds = False, 900.0

    clock.record("ptq", Run(), parent)  # PTQ took 15 minutes here before
    trial = _trial()
    with pytest.raises(optuna.TrialPruned, match="not reached: the ptq stage"):
        clock.allow(trial, "ptq", parent, 0)
    assert trial.user_attrs["not_reached"] is True
    with pytest.raises(optuna.TrialPruned, match="time budget"):
        StageClock(time.time() + 5).allow(_trial(), "res160", parent, 1)


# ---- resize -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_base(tmp_path_factory) -> dict:
    """A pretrained EfficientNet-Lite0 trained by the cached transfer path on tiny photos."""
    root = tmp_path_factory.mktemp("photos")
    data = make_image_folder(root / "data", per_class=10, size=PHOTO_SIDE)
    train(data, root / "base", model="efficientnet_lite0", img_size=64, epochs=2,
          batch_size=8, progress=False, console=QUIET)
    return {"data": data, "base": root / "base"}


def test_resize_continues_a_transfer_base_at_the_new_size(photo_base, tmp_path):
    out = tmp_path / "r48"
    lv.resize(photo_base["base"], out=out, size=48, progress=False, console=QUIET)
    card = json.loads((out / "model.json").read_text())
    assert card["input"]["size"] == [48, 48]
    assert card["stage"] == "resize" and card["parent"] == str(photo_base["base"])
    transfer = card["training"]["transfer"]
    assert "start_val_top1" in transfer and "probe_val_top1" not in transfer
    base = json.loads((photo_base["base"] / "model.json").read_text())
    assert card["config"]["epochs"] == base["config"]["epochs"]
    # the top is one stage deeper than the parent's, so the new size's inputs are adapted to
    assert "last 2 of" in base["training"]["transfer"]["cut"]
    assert "last 3 of" in transfer["cut"]
    result = lv.predict(out, [str(next((photo_base["data"] / "red").iterdir()))])
    assert result[0]["top"][0]["class"] in card["classes"]


def test_resize_fine_tunes_any_other_network_from_its_weights(tmp_path):
    data = make_image_folder(tmp_path / "data")
    train(data, tmp_path / "base", console=QUIET, **FAST)
    lv.resize(tmp_path / "base", out=tmp_path / "r24", size=24, epochs=1, progress=False,
              console=QUIET)
    card = json.loads((tmp_path / "r24" / "model.json").read_text())
    assert card["input"]["size"] == [24, 24] and card["training"]["epochs_run"] == 1
    assert "transfer" not in card["training"]


def test_resize_refuses_a_silly_size(photo_base):
    with pytest.raises(lv.ConfigError, match="--size 4 must lie between"):
        lv.resize(photo_base["base"], size=4, console=QUIET)
    with pytest.raises(lv.ConfigError, match="--top-stages 0 must be at least 1"):
        lv.resize(photo_base["base"], size=48, top_stages=0, console=QUIET)


# ---- the search ---------------------------------------------------------------------------------

def test_search_measures_the_base_at_a_smaller_resolution(photo_base, tmp_path):
    space = SearchSpace(prune_ratios=(0.0,), recoveries=("none",), quantizations=("none",),
                        runtimes=("onnx-fp32",), resolutions=(48,))
    summary = optimize(photo_base["data"], base=photo_base["base"], out=tmp_path / "out",
                       trials=2, space=space, budget=BUDGET, threads=1, console=QUIET,
                       max_drop=100.0, time_budget=60)
    trials = json.loads((tmp_path / "out" / "search.json").read_text())["trials"]
    labels = {t["label"] for t in trials if t["state"] == "COMPLETE"}
    assert labels == {"base · fp32 @ onnx-fp32", "base at 48 px · fp32 @ onnx-fp32"}
    sized = next(t for t in trials if "48 px" in t["label"])
    card = json.loads((tmp_path / "out" / sized["artifact"] / "model.json").read_text())
    assert card["input"]["size"] == [48, 48]
    assert summary["left_out"]["stopped_by_budget"] == []


def test_a_spent_budget_ends_trials_as_not_reached(photo_base, tmp_path):
    base_card = json.loads((photo_base["base"] / "model.json").read_text())
    ctx = SearchContext(data=str(photo_base["data"]), data_id="x", out=tmp_path,
                        base=photo_base["base"], base_id="b",
                        base_val=base_card["metrics"]["val"]["top1"], n_train=24,
                        split={"val_fraction": 0.1, "seed": 0}, constraints=Constraints(),
                        space=SearchSpace(prune_ratios=(0.0,), recoveries=("none",),
                                          quantizations=("none",), runtimes=("onnx-fp32",),
                                          resolutions=(48,)),
                        budget=BUDGET, threads=1, deadline=time.time() + 1)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.enqueue_trial({"resolution": 48, "source": "base", "prune_ratio": 0.0,
                         "quant": "none", "runtime": "onnx-fp32"})
    study.optimize(Objective(ctx, QUIET), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["not_reached"]
    assert not list((tmp_path / "stages").glob("res48-*/model.json"))


def test_a_hopeless_pruning_skips_those_that_prune_more_at_a_smaller_side():
    from leanvision.search.schedule import pruned_alike

    seen = [{"ratio": 0.5, "resolution": 192}]
    assert pruned_alike(Pipeline(prune_ratio=0.7, resolution=160), seen) == seen[0]
    assert pruned_alike(Pipeline(prune_ratio=0.5, resolution=192), seen) == seen[0]
    assert pruned_alike(Pipeline(prune_ratio=0.3, resolution=160), seen) is None  # less pruning
    assert pruned_alike(Pipeline(prune_ratio=0.7), seen) is None  # the base's larger side
    assert pruned_alike(Pipeline(resolution=128), seen) is None  # no pruning at all
    at_base = [{"ratio": 0.5, "resolution": 0}]
    assert pruned_alike(Pipeline(prune_ratio=0.5, resolution=128), at_base) == at_base[0]


# ---- OpenVINO as a measured runtime -------------------------------------------------------------

def test_ptq_can_target_either_int8_runtime_and_qat_stays_on_onnx_runtime():
    space = SearchSpace(prune_ratios=(0.0,), runtimes=("onnx-fp32", "onnx-int8",
                                                       "openvino-fp32", "openvino-int8"))
    assert space.runtimes_for("ptq") == ("onnx-int8", "openvino-int8")
    assert space.runtimes_for("qat") == ("onnx-int8",)
    assert space.size() == 2 + 2 + 1  # FP32 x2, PTQ x2, QAT
    anchors = space.anchors()
    assert {p.runtime for p in anchors if p.quant == "ptq"} == {"onnx-int8", "openvino-int8"}
    assert space.params(Pipeline(quant="ptq", runtime="openvino-int8"))["int8_runtime"] == \
        "openvino-int8"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(200):
        trial = study.ask()
        p = space.suggest(trial)
        assert space.contains(p)
        seen.add((p.quant, p.runtime))
        study.tell(trial, 0.0)
    assert seen == {(p.quant, p.runtime) for p in space.pipelines()}
    only_ov = SearchSpace(runtimes=("openvino-int8",))
    assert only_ov.quantizations == ("ptq",)


def test_search_builds_and_scores_an_openvino_int8_candidate(photo_base, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    space = SearchSpace(prune_ratios=(0.0,), quantizations=("ptq",),
                        runtimes=("openvino-int8",))
    optimize(photo_base["data"], base=photo_base["base"], out=tmp_path / "out", trials=1,
             space=space, budget=BUDGET, threads=1, console=QUIET, max_drop=100.0)
    trial = json.loads((tmp_path / "out" / "search.json").read_text())["trials"][0]
    assert trial["state"] == "COMPLETE" and trial["label"].endswith("@ openvino-int8")
    folder = tmp_path / "out" / trial["artifact"]
    assert (folder / "model.openvino-int8.xml").is_file()
    card = json.loads((folder / "model.json").read_text())
    assert trial["figures"]["val_top1"] == card["metrics"]["openvino_int8"]["val"]["top1"]
