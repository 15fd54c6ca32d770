"""optimize: constraints and the choice among candidates, the search space and the sampler (no
pipeline measured twice), the stage cache (an identical pipeline trains nothing), resuming an
interrupted study, two workers on one SQLite file, and bad input (a base from other data,
impossible or zero budgets) answered in words."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from conftest import FAST, make_image_folder
from optuna.trial import TrialState
from rich.console import Console

from leanvision.errors import ConfigError
from leanvision.search import (
    Budget,
    Candidate,
    Constraints,
    Pipeline,
    SearchSpace,
    choose,
    optimize,
    pareto_front,
)
from leanvision.search import objective as objective_module
from leanvision.search.objective import (
    Objective,
    SearchContext,
    counted_trials,
    is_wasted_repeat,
)
from leanvision.search.sampler import PipelineSampler, tpe_sampler
from leanvision.search.schedule import training_stages
from leanvision.search.space import default_students
from leanvision.search.stages import MARKER, host_id, worker_id
from leanvision.training import train

QUIET = Console(quiet=True)
BUDGET = Budget.quick(train_settings=dict(batch_size=8), finetune_epochs=1, kd_epochs=1,
                      student_epochs=1, qat_epochs=1, calibration_images=24,
                      ptq_timing_runs=3, bench_warmup=2, bench_iterations=10)
# One pipeline only (prune half the FLOPs, INT8 PTQ).
ONE_PIPELINE = SearchSpace(prune_ratios=(0.5,), recoveries=("none",), quantizations=("ptq",),
                           runtimes=("onnx-int8",))
# Three pipelines on one pruned network: INT8 PTQ (the anchor, searched first), and FP32 in
# PyTorch and in ONNX Runtime, which only measure the cached pruned network.
SHARED_PRUNE = SearchSpace(prune_ratios=(0.5,), recoveries=("none",),
                           quantizations=("none", "ptq"),
                           runtimes=("torch", "onnx-fp32", "onnx-int8"))
RUN = dict(budget=BUDGET, threads=1, console=QUIET)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> dict:
    """A tiny base and a one-trial search of SHARED_PRUNE, shared (copied) by the tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("optimize")
        data = make_image_folder(root / "data")
        train(data, root / "base", console=QUIET, **FAST)
        with _counting_prunes() as prunes:
            summary = optimize(data, base=root / "base", out=root / "out", trials=1,
                               space=SHARED_PRUNE, **RUN)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "data": data, "base": root / "base", "out": root / "out",
            "summary": summary, "prunes": prunes["n"]}


class _counting_prunes:
    """Counts real runs of the prune stage (the stage still runs)."""

    def __enter__(self) -> dict:
        self.count = {"n": 0}
        self.real = objective_module.prune_stage

        def counted(*args, **kwargs):
            self.count["n"] += 1
            return self.real(*args, **kwargs)

        objective_module.prune_stage = counted
        return self.count

    def __exit__(self, *exc: object) -> None:
        objective_module.prune_stage = self.real


def _copy(searched: dict, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(searched["out"], out)
    return out


def _trials(out: Path) -> list[dict]:
    return json.loads((out / "search.json").read_text())["trials"]


# ---- constraints and choice (unit) -------------------------------------------------------------

def test_zero_or_negative_budgets_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--max-drop 0 is a budget of zero"):
        Constraints(max_drop=0)
    with pytest.raises(ConfigError, match="--max-latency-ms -1 is a budget of below zero"):
        Constraints(max_latency_ms=-1)
    with pytest.raises(ConfigError, match="--max-size-mb 0 is a budget of zero"):
        Constraints(max_size_mb=0)
    with pytest.raises(ConfigError, match="not a number"):
        Constraints(max_latency_ms=math.nan)
    Constraints(max_drop=0.5, max_latency_ms=2, max_size_mb=5)
    with pytest.raises(ConfigError, match="--max-size-mb 0"):
        optimize("builtin:digits", out=tmp_path / "out", max_size_mb=0, console=QUIET)
    assert not (tmp_path / "out").exists()


def _c(trial: int, acc: float, ms: float, mb: float) -> Candidate:
    return Candidate(trial=trial, label=f"c{trial}", artifact=f"a{trial}", runtime="onnx-int8",
                     val_top1=acc, latency_ms=ms, size_mb=mb)


def test_choice_is_the_fastest_candidate_meeting_every_constraint() -> None:
    pool = [_c(0, 0.95, 1.0, 4.0), _c(1, 0.945, 0.5, 1.0), _c(2, 0.90, 0.2, 0.5),
            _c(3, 0.944, 0.5, 0.9), _c(4, 0.95, 0.3, 6.0)]
    choice = choose(pool, base_val=0.95, cons=Constraints(max_drop=1.0, max_size_mb=5))
    # c2 drops 5 points, c4 is too large; c1 and c3 tie on latency, c3 is smaller.
    assert choice.met and choice.chosen.trial == 3
    assert "meets every constraint" in choice.statement and "c3" in choice.statement
    # A drop of exactly the budget is within it.
    assert choose([_c(5, 0.94, 1.0, 1.0)], 0.95, Constraints(max_drop=1.0)).met


def test_impossible_constraint_is_named_with_the_best_value_and_closest_candidate() -> None:
    pool = [_c(0, 0.95, 1.0, 4.0), _c(1, 0.94, 0.4, 1.0), _c(2, 0.80, 0.2, 0.5)]
    choice = choose(pool, 0.95, Constraints(max_drop=1.0, max_latency_ms=0.1))
    assert not choice.met and choice.chosen.trial == 1  # misses latency by the least
    assert ("--max-latency-ms 0.1 cannot be met on this machine: the fastest candidate "
            "takes 0.200 ms (c2)") in choice.statement
    assert "Closest: c1" in choice.statement and "max-latency-ms by 0.3 ms" in choice.statement
    # Each constraint alone is met by someone, but not together.
    together = choose(pool, 0.95, Constraints(max_drop=1.0, max_latency_ms=0.3))
    assert not together.met and "no candidate meets them together" in together.statement
    assert choose([], 0.95, Constraints()).chosen is None


def test_pareto_front_keeps_non_dominated_candidates_once() -> None:
    a, b, c = _c(0, 0.95, 1.0, 4.0), _c(1, 0.94, 0.5, 1.0), _c(2, 0.93, 0.6, 1.5)
    duplicate = Candidate(**{**a.__dict__, "trial": 7})
    front = pareto_front([a, b, c, duplicate])
    assert [x.trial for x in front] == [1, 0]  # c is beaten by b on all three; fastest first


# ---- search space (unit) -----------------------------------------------------------------------

def test_space_samples_only_valid_pipelines_and_anchors_lie_inside() -> None:
    space = SearchSpace(students=("resnet8",), runtimes=("torch", "onnx-fp32", "onnx-int8"))
    study = optuna.create_study(directions=["maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(300):
        trial = study.ask()
        p = space.suggest(trial)
        assert space.contains(p)
        assert (p.runtime == "onnx-int8") == (p.quant != "none")
        assert p.recovery == "none" or p.prune_ratio > 0
        seen.add(p)
        study.tell(trial, 0.0)
    assert len(seen) == space.size() == (1 + 3 * 2 + 1) * (2 + 2)
    anchors = space.anchors()
    assert anchors[0] == Pipeline(runtime="onnx-fp32")
    assert all(space.contains(p) for p in anchors) and len(anchors) == 4
    with pytest.raises(ConfigError, match="'tensorrt' is not one of"):
        SearchSpace(runtimes=("tensorrt",))
    assert ONE_PIPELINE.anchors() == [Pipeline(prune_ratio=0.5, quant="ptq",
                                               runtime="onnx-int8")]


# ---- the search (integration, tiny data) ------------------------------------------------------

def test_students_are_smaller_nets_that_could_come_near_the_base() -> None:
    assert default_students("airnet_m", 32) == ("airnet_s",)  # resnet20: 14% of its params
    assert default_students("resnet20", 32) == ("resnet8",)
    assert default_students("resnet20", 224) == ()
    assert SearchSpace(students=("airnet_s",)).anchors()[-1].source == "airnet_s"


def test_a_repeat_never_counts() -> None:
    space = SearchSpace(prune_ratios=(0.0, 0.5), recoveries=("none",), quantizations=("ptq",),
                        runtimes=("onnx-int8",))
    base, pruned = space.pipelines()
    assert (base.prune_ratio, pruned.prune_ratio) == (0.0, 0.5) and space.size() == 2
    study = optuna.create_study(directions=["maximize"])

    def finish(p: Pipeline, repeat: bool) -> None:
        trial = study.ask()
        trial.set_user_attr("pipeline", p.to_dict())
        if repeat:
            trial.set_user_attr("repeat", True)
        study.tell(trial, 0.5)

    assert not is_wasted_repeat(study, base)  # nothing tried yet
    finish(base, repeat=False)
    assert is_wasted_repeat(study, base) and not is_wasted_repeat(study, pruned)
    finish(base, repeat=True)
    assert counted_trials(study) == 1
    finish(pruned, repeat=False)
    assert is_wasted_repeat(study, base)  # all tried: a repeat still tells nothing new
    assert counted_trials(study) == 2


def _fake_search(sampler, space: SearchSpace, n_trials: int) -> list[Pipeline]:
    """The pipelines a sampler has trials measure, with made-up figures (no stage is built)
    that favour a few pipelines, as a real search's do."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    for p in space.anchors():
        study.enqueue_trial(space.params(p))
    measured = []

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        p = space.suggest(trial)
        measured.append(p)
        return (1.0 - 0.1 * p.prune_ratio - 0.05 * (p.source != "base"),
                2.0 - p.prune_ratio - (p.quant != "none"), 2.0 - (p.quant != "none"))

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=n_trials)
    return measured


def test_the_sampler_never_plans_a_measured_pipeline_again() -> None:
    space = SearchSpace(students=("resnet8",))  # the demo's: 8 networks x FP32, PTQ, QAT
    assert space.size() == 24
    # A space no larger than the trials: each pipeline once, the anchors, then the cheapest.
    measured = _fake_search(PipelineSampler(space, seed=0, trials=24), space, 24)
    assert sorted(map(str, measured)) == sorted(map(str, space.pipelines()))
    rest = measured[len(space.anchors()):]
    assert [training_stages(p) for p in rest] == sorted(training_stages(p) for p in rest)
    # A larger space: TPE samples it, and a measured pipeline is never a trial again (TPE
    # alone proposes the favoured ones again within these 12 trials).
    for seed in (0, 1):
        sampled = _fake_search(PipelineSampler(space, seed=seed, trials=12), space, 12)
        assert len(set(sampled)) == 12
    alone = _fake_search(tpe_sampler(0, 12), space, 12)
    assert len(set(alone)) < 12


def test_search_writes_results(searched) -> None:
    out, summary = searched["out"], searched["summary"]
    assert searched["prunes"] == 1
    (first,) = _trials(out)
    assert first["state"] == "COMPLETE"
    assert [s["cached"] for s in first["stages"]] == [False, False]
    assert first["artifact"].startswith("stages/prune50-ptq-")

    assert summary["met"] and summary["trials"]["complete"] == 1
    assert summary["storage"] == f"sqlite:///{out.resolve()}/optuna.db"
    assert Path(summary["report"]) == out / "report.html"
    page = (out / "report.html").read_text()
    assert "prune50-ptq-" in page and "Bars: the 95% interval" in page  # paired, from pareto.json
    chosen = Path(summary["chosen"])
    assert sorted(p.name for p in chosen.iterdir()) == [
        "model.int8.onnx", "model.json", "model.onnx", "model.safetensors"]
    card = json.loads((chosen / "model.json").read_text())
    assert card["recommended_runtime"] == "onnx-int8"
    assert card["optimize"]["pipeline"]["prune_ratio"] == 0.5 and card["optimize"]["met"]
    pareto = json.loads((out / "pareto.json").read_text())
    assert len(pareto["front"]) == 1 and pareto["front"][0]["chosen"]
    front = pareto["front"][0]
    # the front reports the accuracy the chosen INT8 file scored on validation, as its card says
    assert 0.0 <= front["val_top1"] <= 1.0
    assert front["val_top1"] == pytest.approx(card["metrics"]["int8"]["val"]["top1"])
    assert front["latency_ms"] > 0 and front["size_mb"] > 0
    # The drop comes with its paired comparison against the base on the same images; a split
    # this small cannot resolve 1 point under the default rule, and the statement says so.
    paired, base_card = front["paired"], json.loads((out / "base" / "model.json").read_text())
    assert paired["images"] == base_card["metrics"]["val"]["n"] and paired["lost"] >= 0
    assert paired["drop_points"] == pytest.approx(front["drop_points"], abs=1e-3)
    assert 0 <= paired["agreement"] <= 1 and len(paired["interval95_points"]) == 2
    assert first["paired"] == paired and paired["rule"] == "point"
    worst = paired["worst_class"]  # the worst class's drop, next to the mean
    assert worst["class"] in base_card["classes"] and 0 < worst["images"] < paired["images"]
    assert "validation images cannot resolve 1 point at --accept likely" in summary["statement"]
    decision = pareto["decision"]
    assert (decision["accept"], decision["rule_applied"]) == ("likely", "point")
    assert decision["validation_images"] == paired["images"]
    assert decision["compared"] == decision["candidates"] == 1  # the one trial, compared
    assert pareto["base"]["runtime"] == "torch" and front["vs_base_torch"]["speedup_b1"] > 0
    bench_rows = json.loads((out / "bench.json").read_text())["results"]
    assert {r["runtime"] for r in bench_rows} == {"onnx-int8", "torch"}


def test_rerun_measures_each_pipeline_once_and_reuses_every_stage(searched,
                                                                  tmp_path: Path) -> None:
    out = _copy(searched, tmp_path)
    printed = io.StringIO()
    loud = {**RUN, "console": Console(file=printed, width=300)}
    with _counting_prunes() as prunes:
        summary = optimize(searched["data"], base=searched["base"], out=out, trials=5,
                           space=SHARED_PRUNE, **loud)
        again = optimize(searched["data"], base=searched["base"], out=out, trials=5,
                         space=SHARED_PRUNE, **RUN)
        trials = _trials(out)
        # An identical pipeline in another study trains nothing and measures nothing again.
        other = optimize(searched["data"], base=searched["base"], out=out, trials=1,
                         space=SHARED_PRUNE, study_name="another", **RUN)
    assert prunes["n"] == 0
    # --trials 5 on a space of 3: each pipeline once, then nothing is left to run
    assert summary["trials"]["complete"] == again["trials"]["complete"] == 3
    assert len({t["label"] for t in trials}) == 3
    assert all(s["cached"] for t in trials[1:] for s in t["stages"])
    # One accuracy per line, saying what scored it: the FP32 trials score the pruned network
    # in PyTorch, its stage line too.
    scored = [line for line in printed.getvalue().splitlines()
              if re.match(r"  \S.*val top-1 [0-9.]+%", line)]  # a trial's lines
    assert len(scored) == 4 and all(line.count("%") == 1 for line in scored), scored
    assert all("(torch fp32, no TTA" in line for line in scored), scored
    assert other["trials"]["complete"] == 1
    (copy,) = _trials(out)
    assert [s["cached"] for s in copy["stages"]] == [True, True] and copy["figures"]["cached"]
    # Optuna cannot change a parameter's choices within a study: another space is refused.
    with pytest.raises(ConfigError, match="was searched over another space"):
        optimize(searched["data"], base=searched["base"], out=out, study_name=summary["study"],
                 space=SearchSpace(prune_ratios=(0.0, 0.5)), **RUN)


def test_resume_fails_a_trial_left_running_and_rebuilds_its_unfinished_stage(
        searched, tmp_path: Path) -> None:
    out = _copy(searched, tmp_path)
    study_name = searched["summary"]["study"]
    storage = f"sqlite:///{out}/optuna.db"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # A killed worker: its trial stays RUNNING and its prune stage has no marker, only a lock.
    study = optuna.load_study(study_name=study_name, storage=storage)
    interrupted = study.ask()
    interrupted.set_user_attr("worker", f"{host_id()}:{dead.pid}")
    prune_dir = next(p for p in (out / "stages").iterdir()
                     if p.is_dir() and p.name.startswith("prune50-") and "-ptq-" not in p.name)
    (prune_dir / MARKER).unlink()
    (prune_dir.parent / (prune_dir.name + ".lock")).write_text(
        json.dumps({"host": host_id(), "pid": dead.pid, "time": 0}))

    with _counting_prunes() as prunes:
        summary = optimize(searched["data"], base=searched["base"], out=out, trials=2,
                           space=SHARED_PRUNE, **RUN)
    assert prunes["n"] == 1  # the unfinished stage was rebuilt, once
    states = {t.number: t.state for t in optuna.load_study(study_name=study_name,
                                                         storage=storage).trials}
    assert states[interrupted.number] == TrialState.FAIL
    assert TrialState.RUNNING not in states.values()
    assert summary["trials"]["complete"] == 2 and summary["trials"]["fail"] == 1
    record = next(t for t in _trials(out) if t["number"] == interrupted.number)
    assert record["state"] == "FAIL" and record["error"].startswith("interrupted")
    rebuilt = [t for t in _trials(out) if t["number"] > interrupted.number][0]
    assert [s["cached"] for s in rebuilt["stages"]] == [False]  # an FP32 pipeline


def test_two_workers_share_one_sqlite_study(searched, tmp_path: Path) -> None:
    out = _copy(searched, tmp_path)
    summary = optimize(searched["data"], base=searched["base"], out=out, trials=3, workers=2,
                       space=SHARED_PRUNE, **RUN)
    storage = f"sqlite:///{out}/optuna.db"
    trials = optuna.load_study(study_name=summary["study"], storage=storage).trials
    assert sorted(t.number for t in trials) == list(range(len(trials))) == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs["worker"] for t in trials[1:]}  # one new trial each
    assert len(workers) == 2 and worker_id() in workers
    assert len({t.user_attrs["label"] for t in trials}) == 3  # started together, no repeat
    assert all(s["cached"] for t in trials[1:] for s in t.user_attrs["stages"])
    assert [t["number"] for t in _trials(out)] == [0, 1, 2]


def test_impossible_latency_is_a_statement_not_a_traceback(searched, tmp_path: Path) -> None:
    out = _copy(searched, tmp_path)
    summary = optimize(searched["data"], base=searched["base"], out=out, trials=1,
                       max_latency_ms=1e-6, space=SHARED_PRUNE, **RUN)
    assert not summary["met"]
    assert "--max-latency-ms 1e-06 cannot be met on this machine" in summary["statement"]
    assert "Closest: base · prune 50% · int8 ptq @ onnx-int8" in summary["statement"]
    assert summary["candidate"]["misses"]["max_latency_ms"] > 0
    card = json.loads((Path(summary["chosen"]) / "model.json").read_text())
    assert card["optimize"]["met"] is False


def test_hopeless_trial_is_abandoned_before_quantization(searched, tmp_path: Path) -> None:
    out = _copy(searched, tmp_path)
    ctx = SearchContext(data=str(searched["data"]), data_id="x", out=out, base=out / "base",
                        base_id="b", base_val=2.0, n_train=27,
                        split={"val_fraction": 0.25, "seed": 0}, constraints=Constraints(),
                        space=ONE_PIPELINE, budget=BUDGET, threads=1)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.optimize(Objective(ctx, QUIET), n_trials=2)
    trial, again = study.trials
    assert trial.state == TrialState.PRUNED
    assert "abandoned before the costlier stages" in trial.user_attrs["pruned_reason"]
    assert [s["name"] for s in trial.user_attrs["stages"]] == ["prune50"]
    # The same pruning again cannot do better: skipped before any stage is built.
    assert again.state == TrialState.PRUNED and "stages" not in again.user_attrs
    assert "skipped unbuilt" in again.user_attrs["pruned_reason"]


def test_base_from_other_data_is_refused_before_anything_is_written(searched,
                                                                    tmp_path: Path) -> None:
    other = make_image_folder(tmp_path / "other", per_class=2,
                              classes={"cat": (9, 9, 9), "dog": (200, 200, 200)})
    with pytest.raises(ConfigError, match="is a base artifact from other data: its classes "
                                          r"\(blue, green, red\) are not those of"):
        optimize(other, base=searched["base"], out=tmp_path / "out", **RUN)
    assert not (tmp_path / "out").exists()


def test_enqueued_trials_still_wait_when_every_pipeline_is_planned() -> None:
    space = SearchSpace(prune_ratios=(0.0,), recoveries=("none",), quantizations=("none",),
                        runtimes=("onnx-fp32",), resolutions=(48,))
    sampler = PipelineSampler(space, seed=0, trials=2)
    study = optuna.create_study(directions=["maximize"], sampler=sampler)
    for p in space.anchors():
        study.enqueue_trial(space.params(p))
    assert len(space.anchors()) == 2 and not sampler.untried(study)
    assert not sampler.exhausted(study)  # the anchors are still to run
