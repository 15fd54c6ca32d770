"""The Optuna objective: build a trial's pipeline through the stage cache, measure it with
`leanvision.bench` on this machine, and return (val top-1, batch-1 latency ms, size MB).

A trial whose trained network is already far below the accuracy budget is abandoned
(optuna.TrialPruned) before its costlier stages: below base - max_drop - hopeless_margin points
on validation, later stages (KD, quantisation) rarely win back enough to be worth their time."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console

from ..artifact import read_card
from ..errors import ArtifactError, BudgetError, LeanvisionError
from ..hardware import physical_cores
from ..io import write_json
from ..paired import DEFAULT_ACCEPT
from .base import skip_bad_setting
from .constraints import Constraints
from .evidence import ValSplit, metrics_group, val_predictions
from .schedule import StageClock, pruned_alike, training_stages
from .space import Budget, Pipeline, SearchSpace
from .stages import (
    QUIET,
    StageCache,
    distill_stage,
    ensure_onnx,
    is_finished,
    prune_stage,
    ptq_stage,
    qat_stage,
    resize_stage,
    stage_key,
    worker_id,
)


@dataclass
class SearchContext:
    """Everything a worker needs to run trials; plain values, so it pickles to a process."""

    data: str
    data_id: str  # what the data is (spec, classes, image count), part of every stage key
    out: Path
    base: Path
    base_id: str
    base_val: float
    n_train: int
    split: dict[str, Any]  # the base's val_fraction and seed: every stage holds out the same
    constraints: Constraints
    space: SearchSpace
    budget: Budget
    threads: int | None  # benchmark threads; None: the physical cores
    # The base's test-time augmentation, given to every stage: candidates are then scored the
    # way the base is (a fast-recipe student would otherwise pick flip + shifts for itself and
    # look better than a base scored on one view).
    base_tta: str = "none"
    # Leave out unreadable images in every stage, as the base did (see base.skip_bad_choice).
    skip_bad_images: bool = False
    # --time-budget: the wall-clock time (time.time()) by which trials must be done, the
    # report and the chosen artifact still to come (see schedule.py); None: no budget.
    deadline: float | None = None

    def val_split(self) -> ValSplit:
        """The base's validation hold-out, which every candidate is compared on."""
        return ValSplit(self.data, float(self.split["val_fraction"]), int(self.split["seed"]),
                        self.skip_bad_images)


def shipped_top1(card: dict[str, Any], runtime: str, split: str) -> float | None:
    """Top-1 of what runs under `runtime` (metrics_group)."""
    metrics = card.get("metrics", {})
    group = metrics_group(runtime)
    scored = metrics if group is None else metrics.get(group, {})
    entry = scored.get(split)
    return float(entry["top1"]) if isinstance(entry, dict) and "top1" in entry else None


def scored_with(runtime: str, tta: str) -> str:
    """What a shipped_top1 figure was scored with: an INT8 model in its own runtime; an FP32
    network in PyTorch (its ONNX and OpenVINO exports are parity-checked against it)."""
    engine = runtime if metrics_group(runtime) else "torch fp32"
    return f"{engine}, " + ("no TTA" if tta in ("", "none") else f"TTA {tta}")


def stage_top1(card: dict[str, Any]) -> tuple[float | None, str]:
    """A stage's one validation top-1 and what it was scored with: a quantizing stage's INT8
    model (what ships; the float network it started from scored otherwise, and a QAT stage's
    card also keeps the fake-quant figure), else the network in PyTorch FP32."""
    tta = (card.get("inference") or {}).get("tta") or "none"
    for runtime in ("openvino-int8", "onnx-int8"):
        val = shipped_top1(card, runtime, "val")
        if val is not None:
            return val, scored_with(runtime, tta)
    return shipped_top1(card, "torch", "val"), scored_with("torch", tta)


def measure(folder: Path, runtime: str, budget: Budget, threads: int | None) -> dict[str, Any]:
    """Batch-1 latency, size and accuracy of `folder` under `runtime`, measured once per
    benchmark setting (a duplicate trial reads the figures back)."""
    from ..runtime.bench import bench

    settings = {"batch": budget.bench_batch, "warmup": budget.bench_warmup,
                "iterations": budget.bench_iterations, "threads": threads or physical_cores()}
    path = folder / f"measure-{runtime}-{stage_key('', 'bench', settings)[:8]}.json"
    if path.is_file():
        return {**json.loads(path.read_text(encoding="utf-8")), "cached": True}
    if runtime in ("onnx-fp32", "openvino-fp32"):
        ensure_onnx(folder)
    with tempfile.TemporaryDirectory(prefix="leanvision-measure-") as scratch:
        result = bench([folder], runtimes=[runtime], out=scratch, console=QUIET, **settings)
    row = result["results"][0]
    if "latency_ms" not in row:
        raise ArtifactError(f"{folder} holds no model file for {runtime}; rebuild the stage")
    _, card = read_card(folder)
    figures = {"val_top1": shipped_top1(card, runtime, "val"),
               "test_top1": shipped_top1(card, runtime, "test"),
               "latency_ms": row["latency_ms"]["p50"], "size_mb": row["size_bytes"] / 1e6,
               "bench": row, "settings": settings, "load_average": result["load_average"]}
    if figures["val_top1"] is None:
        raise ArtifactError(f"{folder} has no validation top-1 in its card; optimize decides on "
                            "validation accuracy, so the base must hold out a validation split")
    write_json(path, figures)
    return {**figures, "cached": False}


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def is_wasted_repeat(study: optuna.Study, pipeline: Pipeline) -> bool:
    """Whether `pipeline` was measured by a finished trial before (the sampler plans none, but
    two workers can plan one pipeline at the same moment)."""
    return any(_pipeline_of(t) == pipeline
               for t in study.get_trials(deepcopy=False, states=FINISHED))


def counted_trials(study: optuna.Study) -> int:
    """Finished trials that count toward --trials (repeats do not)."""
    return sum(not t.user_attrs.get("repeat")
               for t in study.get_trials(deepcopy=False, states=FINISHED))


def _pipeline_of(trial: optuna.trial.FrozenTrial) -> Pipeline | None:
    given = trial.user_attrs.get("pipeline")
    return Pipeline(**given) if isinstance(given, dict) else None


class Objective:
    """objective(trial) -> (val top-1, latency ms, size MB) for study.optimize."""

    def __init__(self, ctx: SearchContext, console: Console,
                 on_stage_run: Callable[[str], None] | None = None) -> None:
        self.ctx, self.console = ctx, console
        self.repeats = 0  # wasted repeats run since the caller last reset it
        self.cache = StageCache(ctx.out / "stages", on_run=on_stage_run)
        self.clock = StageClock(ctx.deadline)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        started = time.perf_counter()
        pipeline = self.ctx.space.suggest(trial)
        if is_wasted_repeat(trial.study, pipeline):
            # It costs seconds (every stage is cached) and does not count toward --trials.
            trial.set_user_attr("repeat", True)
            self.repeats += 1
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("pipeline", pipeline.to_dict())
        trial.set_user_attr("label", pipeline.label())
        self.console.print(f"trial {trial.number}: {pipeline.label()}")
        self._skip_if_pruned_alike(trial, pipeline)
        stages: list[dict[str, Any]] = []
        try:
            folder = self._build(trial, pipeline, stages)
            figures = measure(folder, pipeline.runtime, self.ctx.budget, self.ctx.threads)
            # Scored now, in this worker, so that the choice compares them with the base's.
            val_predictions(folder, pipeline.runtime, self.ctx.val_split(),
                            self.ctx.threads or physical_cores())
        except LeanvisionError as exc:
            message = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", message)
            self.console.print(f"  [red]failed[/red]: {message}")
            raise
        figures = {k: v for k, v in figures.items() if k != "bench"} | {
            "flops": figures["bench"].get("flops")}
        trial.set_user_attr("artifact", self._relative(folder))
        trial.set_user_attr("figures", figures)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        drop = (self.ctx.base_val - figures["val_top1"]) * 100
        self.console.print(
            f"  → {pipeline.runtime}: val top-1 {100 * figures['val_top1']:.2f}% "
            f"({scored_with(pipeline.runtime, self.ctx.base_tta)}; drop {drop:.2f} points), "
            f"{figures['latency_ms']:.3f} ms, {figures['size_mb']:.3f} MB"
            f"{' (measured before)' if figures['cached'] else ''} · "
            f"{time.perf_counter() - started:.0f} s")
        return figures["val_top1"], figures["latency_ms"], figures["size_mb"]

    def _build(self, trial: optuna.Trial, p: Pipeline, stages: list[dict[str, Any]]) -> Path:
        ctx, budget = self.ctx, self.ctx.budget
        # Every fine-tune gets the choice explicitly (a stage would otherwise take its parent's,
        # and an explicit --no-skip-bad-images must win); the keys hold it only when set.
        keyed = {"tta": ctx.base_tta, **budget.train_settings,
                 **skip_bad_setting(ctx.skip_bad_images)}
        settings = {**keyed, "skip_bad_images": ctx.skip_bad_images}
        common = {"data": ctx.data_id, "settings": keyed}
        state: dict[str, Any] = {"folder": ctx.base, "id": ctx.base_id, "chain": [],
                                 "training_left": training_stages(p)}

        def step(name: str, config: dict[str, Any], build: Callable[[Path, Path, dict], None],
                 trains: bool = False) -> None:
            parent = state["folder"]
            config = {**common, **config}
            # Folder names spell the chain (prune50-kd-ptq-<key>), so the report reads well.
            chain = [*state["chain"], name]
            folder = self.cache.folder("-".join(chain), stage_key(state["id"], name, config))
            # The time budget is not part of the key: a stage cut short by it is reused as is.
            timed = {}
            if not is_finished(folder):
                timed = self.clock.allow(trial, name, parent, state["training_left"] if trains
                                         else 0, ptq_after=p.quant == "ptq")
            try:
                run = self.cache.run(name, state["id"], config,
                                     lambda f: build(parent, f, timed), folder=folder)
            except BudgetError as exc:
                self.clock.out_of_time(trial, name, str(exc))
            if trains:
                state["training_left"] -= 1
            self.clock.record(name, run, parent)
            stages.append({**run.to_dict(), "folder": self._relative(run.folder)})
            trial.set_user_attr("stages", stages)
            val, measured_in = stage_top1(read_card(run.folder)[1])
            self.console.print(f"  {name}: {'cached' if run.cached else f'{run.seconds:.0f} s'}"
                               + (f", val top-1 {100 * val:.2f}% ({measured_in})"
                                  if val is not None else ""))
            state.update(folder=run.folder, id=run.key, chain=chain)

        if p.resolution:
            epochs = budget.epochs("finetune", ctx.n_train)
            step(f"res{p.resolution}", {"size": p.resolution, "epochs": epochs,
                                         "split": ctx.split},
                 lambda parent, f, timed: resize_stage(parent, ctx.data, f, size=p.resolution,
                                                       epochs=epochs,
                                                       settings={**settings, **timed}),
                 trains=True)
            self._check_hopeless(trial, state["folder"], f"the base at {p.resolution} px",
                                 later=p.source != "base" or bool(p.prune_ratio)
                                 or p.quant != "none")
        # The teacher sees what the student sees: the base at the pipeline's resolution.
        teacher, teacher_id = state["folder"], state["id"]
        if p.source != "base":
            epochs = budget.epochs("student", ctx.n_train)
            step(f"student-{p.source}", {"student": p.source, "epochs": epochs,
                                         "split": ctx.split},
                 lambda _, f, timed: distill_stage(teacher, p.source, ctx.data, f,
                                                   epochs=epochs, split=ctx.split,
                                                   settings={**settings, **timed},
                                                   gentle=False),
                 trains=True)
            self._check_hopeless(trial, state["folder"], f"the {p.source} student",
                                 later=p.quant != "none")
        elif p.prune_ratio:
            epochs = budget.epochs("finetune", ctx.n_train)
            step(f"prune{round(100 * p.prune_ratio)}", {"ratio": p.prune_ratio, "epochs": epochs},
                 lambda parent, f, timed: prune_stage(parent, ctx.data, f, ratio=p.prune_ratio,
                                                      epochs=epochs,
                                                      settings={**settings, **timed}),
                 trains=True)
            self._check_hopeless(trial, state["folder"], "the pruned, fine-tuned network",
                                 later=p.recovery != "none" or p.quant != "none",
                                 pruning={"ratio": p.prune_ratio, "resolution": p.resolution})
            if p.recovery == "kd":
                kd_epochs = budget.epochs("kd", ctx.n_train)
                step("kd", {"teacher": teacher_id, "epochs": kd_epochs, "split": ctx.split},
                     lambda parent, f, timed: distill_stage(teacher, parent, ctx.data, f,
                                                            epochs=kd_epochs, split=ctx.split,
                                                            settings={**settings, **timed},
                                                            gentle=True),
                     trains=True)
                self._check_hopeless(trial, state["folder"], "the distilled pruned network",
                                     later=p.quant != "none")
        if p.quant == "ptq":
            # The guard gets what the earlier stages left of the budget (at least 0.1 point).
            parent_val = shipped_top1(read_card(state["folder"])[1], "torch", "val") or 0.0
            spent = (ctx.base_val - parent_val) * 100
            max_drop = round(max(0.1, ctx.constraints.max_drop - spent), 2)
            # ONNX Runtime's keys stay those made before OpenVINO existed (resumable caches).
            backend = "openvino" if p.runtime == "openvino-int8" else "onnxruntime"
            keyed_backend = {"backend": backend} if backend != "onnxruntime" else {}
            # The guard judges by the search's --accept; keyed only when not the default.
            accept = ctx.constraints.accept
            keyed_accept = {"accept": accept} if accept != DEFAULT_ACCEPT else {}
            step("ptq" if not keyed_backend else "ptq-openvino",
                 {"max_drop": max_drop, "calibration_images": budget.calibration_images,
                  **keyed_backend, **keyed_accept},
                 lambda parent, f, _: ptq_stage(parent, ctx.data, f, max_drop=max_drop,
                                                calibration_images=budget.calibration_images,
                                                timing_runs=budget.ptq_timing_runs,
                                                threads=ctx.threads,
                                                skip_bad_images=ctx.skip_bad_images,
                                                backend=backend, accept=accept))
        elif p.quant == "qat":
            step("qat", {"epochs": budget.qat_epochs,
                         "calibration_images": budget.calibration_images},
                 lambda parent, f, timed: qat_stage(parent, ctx.data, f,
                                                    epochs=budget.qat_epochs,
                                                    calibration_images=budget.calibration_images,
                                                    settings={**settings, **timed}),
                 trains=True)
        return state["folder"]

    def _relative(self, folder: Path) -> str:
        return os.path.relpath(folder, self.ctx.out)

    def _skip_if_pruned_alike(self, trial: optuna.Trial, p: Pipeline) -> None:
        hopeless = [t.user_attrs["hopeless_pruning"] for t in trial.study.get_trials(
            deepcopy=False, states=FINISHED) if "hopeless_pruning" in t.user_attrs]
        like = pruned_alike(p, hopeless)
        if like is None:
            return
        side = f"{like['resolution']} px" if like["resolution"] else "the base's input size"
        reason = (f"pruning {like['ratio']:.0%} at {side} left a network below the accuracy "
                  "budget before; this trial prunes as much or more at the same or a smaller "
                  "side, so it is skipped unbuilt")
        trial.set_user_attr("pruned_reason", reason)
        self.console.print(f"  [yellow]skipped[/yellow]: {reason}")
        raise optuna.TrialPruned(reason)

    def _check_hopeless(self, trial: optuna.Trial, folder: Path, what: str,
                        later: bool, pruning: dict[str, Any] | None = None) -> None:
        ctx = self.ctx
        val = shipped_top1(read_card(folder)[1], "torch", "val")
        margin = ctx.constraints.max_drop + ctx.budget.hopeless_margin
        if val is None or val >= ctx.base_val - margin / 100:
            return
        if pruning is not None:  # later trials that prune as much or more are skipped
            trial.set_user_attr("hopeless_pruning", pruning)
        if not later:
            return  # nothing costly follows; the measurement itself is cheap
        reason = (f"{what} reaches val top-1 {100 * val:.2f}%, more than max-drop "
                  f"{ctx.constraints.max_drop:g} + a margin of {ctx.budget.hopeless_margin:g} "
                  f"points below the base's {100 * ctx.base_val:.2f}%; abandoned before the "
                  "costlier stages")
        trial.set_user_attr("pruned_reason", reason)
        self.console.print(f"  [yellow]abandoned[/yellow]: {reason}")
        raise optuna.TrialPruned(reason)
