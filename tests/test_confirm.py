"""optimize --confirm-folds: fold data over the non-test images, the folds' paired counts
pooled into one comparison, the shortlist, and one end-to-end run on tiny data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import FAST, make_image_folder
from rich.console import Console

from leanvision.data import load_data
from leanvision.data.sources import DataSource, ImageRecords
from leanvision.errors import ConfigError
from leanvision.paired import compare, from_counts
from leanvision.search import Budget, Constraints, SearchSpace, optimize
from leanvision.search.confirm import (
    fold_counts,
    pool,
    shortlist,
    statement,
    write_folds,
)
from leanvision.search.options import check_run_settings
from leanvision.training import train

QUIET = Console(quiet=True)


def _in_memory(n_per_class: int = 6) -> DataSource:
    rng = np.random.default_rng(0)
    items = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(3 * n_per_class)]
    labels = np.repeat(np.arange(3), n_per_class)
    return DataSource("builtin:test", ["a", "b", "c"], ImageRecords(items, labels))


def test_folds_hold_every_image_out_once_and_keep_the_classes(tmp_path):
    source = _in_memory()
    csvs = write_folds(source, 3, seed=0, folder=tmp_path)
    held_out: list[str] = []
    for path in csvs:
        rows = list(csv.DictReader(path.open()))
        assert len(rows) == 18 and {r["split"] for r in rows} == {"train", "val"}
        val = [r for r in rows if r["split"] == "val"]
        assert sorted(r["label"] for r in val) == ["a", "a", "b", "b", "c", "c"]  # stratified
        held_out += [r["path"] for r in val]
        loaded = load_data(str(path))
        assert loaded.classes == ["a", "b", "c"] and len(loaded.val) == 6
    assert sorted(held_out) == sorted({p for p in held_out}) and len(held_out) == 18
    # the in-memory pixels are written as they are (PNG is lossless)
    first = json.dumps(sorted(held_out)[0])
    assert first.endswith('.png"')
    from PIL import Image

    index = int(sorted(held_out)[0].rsplit("/", 1)[1][:6])
    assert np.array_equal(np.asarray(Image.open(sorted(held_out)[0])), source.train.items[index])


def test_pooled_folds_equal_one_comparison_on_all_their_images():
    rng = np.random.default_rng(1)
    before = rng.random(600) < 0.9
    after = before.copy()
    after[rng.choice(600, 9, replace=False)] ^= True
    per_fold = []
    for part in np.array_split(np.arange(600), 3):
        c = compare(before[part], after[part])
        per_fold.append({"lost": c.lost, "gained": c.gained, "images": c.images,
                         "agreement": None})
    pooled = pool("x", {}, per_fold).comparison
    whole = compare(before, after)
    assert (pooled.lost, pooled.gained, pooled.images) == (whole.lost, whole.gained, 600)
    assert pooled.interval95 == pytest.approx(whole.interval95)
    assert pooled.p_value == pytest.approx(whole.p_value)
    assert pool("x", {}, [per_fold[0], None]).comparison is None


def test_from_counts_refuses_impossible_counts():
    with pytest.raises(ValueError, match="lost \\+ gained <= images"):
        from_counts(5, 6, 10)


def test_the_shortlist_is_the_chosen_then_the_undecided_then_the_meeting_pipelines():
    def entry(name, ms, misses=None, low=None):
        return {"label": name, "pipeline": {"name": name}, "latency_ms": ms, "size_mb": 1.0,
                "meets": not misses, "misses": misses or {},
                "paired": None if low is None else {"interval95_points": [low, low + 3]}}
    front = [entry("surely-over", 0.3, {"max_drop": 9.0}, low=4.0),
             entry("one-image", 0.5, {"max_drop": 0.8}, low=-1.5),
             entry("too-slow-too", 0.4, {"max_drop": 0.8, "max_latency_ms": 0.1}, low=-1.5),
             entry("b", 2.0), entry("a", 1.0), entry("c", 3.0), entry("d", 4.0)]
    picked = shortlist(front, entry("c", 3.0), max_drop=1.0)
    # the split could not rule out one-image; surely-over and a latency miss are not asked
    assert [e["label"] for e in picked] == ["c", "one-image", "a"]
    assert [e["label"] for e in shortlist(front, entry("c", 3.0), 1.0, limit=4)] == [
        "c", "one-image", "a", "b"]


def test_statement_says_which_pipeline_the_folds_support():
    cons = Constraints(max_drop=1.0, accept="likely")
    good = pool("good", {}, [{"lost": 2, "gained": 1, "images": 400, "agreement": 0.99}] * 2,
                latency_ms=2.0)
    faster = pool("faster", {}, [{"lost": 1, "gained": 1, "images": 400,
                                  "agreement": 0.99}] * 2, latency_ms=1.0)
    bad = pool("bad", {}, [{"lost": 12, "gained": 0, "images": 400, "agreement": 0.97}] * 2)
    said = statement([bad, good], 2, cons)
    assert said.startswith("Confirmed on 2 folds (800 images, each held out once")
    assert "bad: drop 3.0 points" in said and "within 1 point: no" in said
    assert said.endswith("The folds support good.")
    # of two supported, the faster (as measured on the original split) is named
    assert statement([good, faster], 2, cons).endswith("The folds support faster.")
    assert statement([bad], 2, cons).endswith("No shortlisted pipeline stays within the "
                                               "budget on the folds.")


def test_fold_counts_read_a_fold_search():
    search = {"trials": [{"pipeline": {"q": 1}, "state": "COMPLETE",
                          "paired": {"lost": 1, "gained": 2, "images": 9, "agreement": 0.7}},
                         {"pipeline": {"q": 2}, "state": "FAIL", "paired": None}]}
    assert fold_counts(search, {"q": 1}) == {"lost": 1, "gained": 2, "images": 9,
                                             "agreement": 0.7}
    assert fold_counts(search, {"q": 2}) is None


def test_one_fold_is_refused_before_any_work(tmp_path):
    check_run_settings(None, None, 1, None, 0, confirm_folds=0)
    with pytest.raises(ConfigError, match="--confirm-folds 1 is too few"):
        optimize(make_image_folder(tmp_path / "data"), out=tmp_path / "out", confirm_folds=1,
                 console=QUIET)
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("one_thread")
def test_optimize_confirms_the_choice_on_folds(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=8)
    train(data, tmp_path / "base", console=QUIET, **FAST)
    budget = Budget.quick(base_settings={k: v for k, v in FAST.items()
                                         if k not in ("progress", "val_fraction")},
                          calibration_images=16, ptq_timing_runs=2, bench_warmup=1,
                          bench_iterations=5)
    space = SearchSpace(prune_ratios=(0.0,), quantizations=("ptq",), runtimes=("onnx-int8",))
    threads = torch.get_num_threads()
    try:
        summary = optimize(data, base=tmp_path / "base", out=tmp_path / "out", trials=1,
                           space=space, budget=budget, threads=1, console=QUIET,
                           max_drop=50.0, confirm_folds=2)
    finally:
        torch.set_num_threads(threads)
    pareto = json.loads((tmp_path / "out" / "pareto.json").read_text())
    block = pareto["confirm"]
    assert block["folds"] == 2 and len(block["shortlist"]) == 1
    pooled = block["shortlist"][0]["pooled"]
    assert pooled["images"] == 24  # every image of the data, each held out once
    folds = block["shortlist"][0]["folds"]
    assert sum(f["images"] for f in folds) == 24 and len(folds) == 2
    assert sum(f["lost"] for f in folds) == pooled["lost"]
    assert "Confirmed on 2 folds (24 images" in pareto["statement"]
    assert pareto["statement"].split(" Confirmed on")[0][-1] in ".)"  # one sentence each
    assert summary["statement"] == pareto["statement"] and summary["confirm"] == block
    for k in (1, 2):  # each fold trained its own base on its own split
        base_card = json.loads((tmp_path / "out" / "confirm" / f"fold-{k}" / "base" /
                                "model.json").read_text())
        assert base_card["config"]["data"].endswith(f"fold-{k}.csv")
