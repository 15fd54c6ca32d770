"""`leanvision.optimize`: the smallest, fastest model that meets the user's constraints.

    data (+ base) ─ trials: pipeline from the space ─ stages (cached) ─ bench on this CPU
                 ─ Optuna study (accuracy ↑, latency ↓, size ↓) ─ Pareto front ─ choice
                 ─ OUT/chosen (ONNX exported), report.html, pareto.json, search.json

Resuming. The study lives in an Optuna storage (default sqlite:///OUT/optuna.db, study name
from the data and the base). Running the same command again loads it and runs only the trials
still missing; a trial left RUNNING by a process that died on this host is marked failed, and
its finished stages are reused (an unfinished stage folder is rebuilt).

Several machines. Every worker runs the same command against one RDB storage URL that all can
reach, e.g. PostgreSQL (`pip install psycopg2-binary`):

    leanvision optimize DATA --base BASE --storage postgresql://user@db-host/optuna \\
        --study-name my-search --out /shared/search --trials 40

on each machine. Pass the same --base (a copy is fine: it is identified by the hash of its
weights) and the same --study-name; `--trials` is the total for the whole study, so workers
stop together. With --out on a shared file system, workers also share the stage cache
(a stage is built once; a lock file says who builds it). Each machine measures latency on its
own CPU, so use machines of the kind the model will run on. The last worker to finish (or any
later run of the same command with nothing left to do) writes the report and chosen artifact
from the whole study. `workers=N` on one machine starts N local processes on one storage
(SQLite is fine there); they share the cores, so their timings are noisier than one worker's."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from rich.console import Console

from ..artifact import read_card
from ..data import decoding_for, load_data
from ..data.partition import partition
from ..errors import ConfigError, LeanvisionError
from ..paired import DEFAULT_ACCEPT
from .base import check_base, data_identity, make_base, skip_bad_choice
from .confirm import confirm_run
from .constraints import Constraints
from .objective import Objective, SearchContext, counted_trials, shipped_top1
from .options import DEFAULT_RUNTIMES, check_run_settings
from .output import finish
from .sampler import PipelineSampler
from .schedule import finish_reserve_s
from .space import Budget, SearchSpace, default_resolutions, default_students
from .stages import host_id, pid_alive, stage_key

DIRECTIONS = ("maximize", "minimize", "minimize")  # val top-1, latency ms, size MB
HEARTBEAT_S = 60  # an RDB worker that stops beating this long (x2) has its trial failed
SQLITE_WAIT_S = 60  # workers on one SQLite file wait this long for each other's writes
DEFAULT_TRIALS = 12


@decoding_for("optimize")
def optimize(data: str | Path, *, base: str | Path | None = None, out: str | Path | None = None,
             max_drop: float = 1.0, max_latency_ms: float | None = None,
             max_size_mb: float | None = None, accept: str = DEFAULT_ACCEPT,
             max_class_drop: float | None = None, trials: int | None = None,
             timeout_s: float | None = None, time_budget: float | None = None,
             storage: str | None = None,
             study_name: str | None = None, workers: int = 1,
             runtimes: tuple[str, ...] | list[str] = DEFAULT_RUNTIMES,
             threads: int | None = None, seed: int = 0, console: Console | None = None,
             quick: bool = False, budget: Budget | None = None,
             space: SearchSpace | None = None, explain_images: int = 0,
             skip_bad_images: bool | None = None, confirm_folds: int = 0) -> dict[str, Any]:
    """Search pruning, distillation and INT8 pipelines from a base model on DATA for the
    fastest model within the constraints, measured on this machine.

    `base`: an artifact trained on DATA (default: one is trained with the default recipe into
    OUT/base). Constraints: `max_drop` validation top-1 points against the base,
    `max_latency_ms` batch-1 median latency, `max_size_mb` model file size; `accept`: how sure
    "within max_drop" must be on the paired comparison with the base (point, likely, sure:
    leanvision.paired), as in quantize's guard; `max_class_drop`: the most any one class may
    lose (judged per class the same way; off by default). `trials`: total
    finished trials the study should hold (a rerun continues up to it; default 12, or every
    pipeline of the space under a time budget); no pipeline is measured twice, so a space of
    no more pipelines than `trials` is enumerated (see sampler.py); `timeout_s` stops starting
    trials after that long.
    `time_budget`: minutes for the whole run, the base's training included (see schedule.py):
    trials run cheapest information first and the run ends in time with the best front found,
    listing what it did not get to. `storage`/`study_name`: the Optuna study (default sqlite:///OUT/optuna.db).
    `workers`: local worker processes. `runtimes`: those candidates may use (torch, onnx-fp32,
    onnx-int8). `threads`: benchmark threads (default: the physical cores). `quick` (or an
    explicit `budget`): stage budgets; `space`: the search space (default: see space.py).
    `skip_bad_images`: leave out unreadable images in the base's training and every stage
    (default: what `base` was trained with; no when training the base here). `confirm_folds`
    K: re-run the shortlist on K folds, a base per fold (search/confirm.py).
    Returns {"report", "chosen", "pareto", "met", "statement", "trials", "seconds",
    "storage", ...}."""
    started = time.perf_counter()
    console = console or Console(stderr=True)
    constraints = Constraints(max_drop, max_latency_ms, max_size_mb, accept, max_class_drop)
    check_run_settings(trials, timeout_s, workers, threads, explain_images, time_budget,
                       confirm_folds)
    deadline = None if time_budget is None else time.time() + time_budget * 60
    if quick and budget is not None:
        raise ConfigError("pass either quick=True or a budget, not both (quick is a budget)")
    budget = budget or (Budget.quick() if quick else Budget())
    if space is not None and tuple(runtimes) not in (DEFAULT_RUNTIMES, space.runtimes):
        raise ConfigError("pass the runtimes inside the search space when giving one "
                          f"(space.runtimes={space.runtimes}, runtimes={tuple(runtimes)})")
    data_spec = str(data)
    source = load_data(data_spec)
    data_id = data_identity(data_spec, source)
    if base is not None:
        check_base(Path(base), source.classes, data_spec)
    skip_bad = skip_bad_choice(skip_bad_images, base)
    out_dir = Path(out) if out is not None else Path("runs") / "optimize" / _slug(data_spec)
    out_dir.mkdir(parents=True, exist_ok=True)

    base_folder, base_id = make_base(base, data_spec, data_id, out_dir, budget, console,
                                     skip_bad, time_budget)
    _, base_card = read_card(base_folder)
    base_val = shipped_top1(base_card, "torch", "val")
    if base_val is None:
        raise ConfigError(f"the base {base_folder} has no validation top-1 in its card; optimize "
                          "decides on validation accuracy: train the base with --val-fraction "
                          "above 0 (or data with a val/ split)")
    config = base_card.get("config", {})
    split = {"val_fraction": float(config.get("val_fraction", 0.1)),
             "seed": int(config.get("seed", 0))}
    n_train = len(partition(source, split["val_fraction"], split["seed"]).train)
    side = min(base_card["input"]["size"])
    space = space or SearchSpace(runtimes=tuple(runtimes),
                                 students=default_students(base_card["arch"], side),
                                 resolutions=default_resolutions(side))
    if trials is None:
        trials = space.size() if time_budget is not None else DEFAULT_TRIALS
    trials_deadline = None if deadline is None else deadline - finish_reserve_s(time_budget)
    if trials_deadline is not None:
        left = trials_deadline - time.time()
        timeout_s = left if timeout_s is None else min(timeout_s, left)
    ctx = SearchContext(data=data_spec, data_id=data_id, out=out_dir, base=base_folder,
                        base_id=base_id, base_val=base_val, n_train=n_train, split=split,
                        constraints=constraints, space=space, budget=budget, threads=threads,
                        base_tta=base_card.get("inference", {}).get("tta") or "none",
                        skip_bad_images=skip_bad, deadline=trials_deadline)

    storage_url = storage or f"sqlite:///{(out_dir / 'optuna.db').resolve()}"
    study_name = study_name or default_study_name(data_spec, base_id, space)
    sampler = PipelineSampler(space, seed, trials)
    # No pipeline is measured twice, so a study never holds more trials than the space.
    total = min(trials, space.size())
    console.print(f"optimize {data_spec}: study '{study_name}' in {_masked(storage_url)}; "
                  f"{space.size()} pipelines in the space, "
                  + ("each measured once" if sampler.grid else f"{trials} sampled, none twice")
                  + f"; base val top-1 {100 * base_val:.2f}%; {_limits_line(constraints)}")
    with _quiet_optuna():
        study = optuna.create_study(storage=_storage(storage_url), study_name=study_name,
                                    directions=list(DIRECTIONS), load_if_exists=True,
                                    sampler=sampler)
        _check_space(study, space)
        recovered = recover_interrupted(study)
        for number in recovered:
            console.print(f"trial {number} was left running by a stopped worker: marked failed "
                          "(its finished stages are reused)")
        if not study.get_trials(deepcopy=False):
            for pipeline in space.anchors():
                study.enqueue_trial(space.params(pipeline), skip_if_exists=True)
        done = counted_trials(study)
        remaining = max(0, total - done)
        if remaining and timeout_s is not None and timeout_s <= 0:
            console.print("[yellow]the time budget is spent: no trial is started[/yellow]")
        elif remaining:
            console.print(f"{done} trial(s) finished before; running {remaining} more"
                          + (f" on {workers} workers" if workers > 1 else ""))
            job = WorkerJob(ctx, storage_url, study_name, seed, remaining, total, timeout_s,
                            torch.get_num_threads())
            waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            run_workers(job, workers, console, queued=waiting)
        else:
            console.print(f"the study already holds {done} finished trial(s) (--trials "
                          f"{trials}, {space.size()} pipelines); writing the results")
    summary = finish(study, ctx, storage_url=_masked(storage_url), data=data_spec,
                     explain_images=explain_images, console=console)
    if confirm_folds:
        confirm_run(summary, ctx, source, confirm_folds, seed, console)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["study"] = study_name
    summary["time_budget_minutes"] = time_budget
    return summary


# ---- workers ---------------------------------------------------------------------------------

@dataclass
class WorkerJob:
    """One local worker's instructions; plain values, so it pickles to a spawned process."""

    ctx: SearchContext
    storage: str
    study_name: str
    seed: int
    n_trials: int  # this worker's share
    total: int  # finished trials the whole study should reach
    timeout_s: float | None
    torch_threads: int
    worker: int = 0  # index among the local workers


def run_workers(job: WorkerJob, workers: int, console: Console, queued: int = 0) -> None:
    """This process plus `workers - 1` spawned ones, each with its share of the trials, all on
    one storage. They start together (a barrier), so every one of them contributes.

    The `queued` (enqueued) trials run here first, alone: SQLite has no row locks, so two
    workers popping the same waiting trial would both run it."""
    if workers > 1 and queued:
        first = min(queued, job.n_trials)
        run_worker(replace(job, n_trials=first), console)
        job = replace(job, n_trials=job.n_trials - first)
    shares = [job.n_trials // workers + (1 if i < job.n_trials % workers else 0)
              for i in range(workers)]
    shares = [s for s in shares if s]
    if not shares:
        return
    threads = max(1, job.torch_threads // len(shares))
    if len(shares) == 1:
        run_worker(replace(job, torch_threads=threads), console)
        return
    spawn = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    barrier = spawn.Barrier(len(shares))
    procs = [spawn.Process(target=_worker_process, args=(
        replace(job, n_trials=share, seed=job.seed + i, torch_threads=threads, worker=i),
        barrier),
        name=f"leanvision-optimize-{i}", daemon=False) for i, share in enumerate(shares[1:], 1)]
    for p in procs:
        p.start()
    try:
        run_worker(replace(job, n_trials=shares[0], torch_threads=threads), console, barrier)
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    for p in procs:
        if p.exitcode:
            console.print(f"[red]worker {p.name} stopped with exit code {p.exitcode}[/red]; "
                          "its unfinished trial is failed on the next run")


def run_worker(job: WorkerJob, console: Console, barrier: Any = None) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(job.torch_threads)
    try:
        with _quiet_optuna():
            sampler = PipelineSampler(job.ctx.space, job.seed, job.total, job.worker)
            study = optuna.load_study(study_name=job.study_name, storage=_storage(job.storage),
                                      sampler=sampler)
            if barrier is not None:
                # A worker that never comes breaks the barrier; the others go on without it.
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=300)
            objective = Objective(job.ctx, console)
            deadline = None if job.timeout_s is None else time.monotonic() + job.timeout_s
            share = job.n_trials
            # The sampler plans no repeat, but two workers can plan one pipeline at the same
            # moment: such a repeat does not count, and the worker runs one more trial for it.
            for _ in range(job.ctx.space.size() + 1):
                objective.repeats = 0
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                study.optimize(objective, n_trials=share, timeout=timeout,
                               catch=(LeanvisionError,),
                               callbacks=[_stop_at(job.total, sampler)])
                share = objective.repeats
                if (not share or counted_trials(study) >= job.total or timeout == 0.0
                        or sampler.exhausted(study)):
                    break
    finally:
        torch.set_num_threads(before)


def _stop_at(total: int, sampler: PipelineSampler,
             ) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Stop the study once `total` counted trials finished (any worker's) or no pipeline is
    left to measure."""
    def callback(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if counted_trials(study) >= total or sampler.exhausted(study):
            study.stop()
    return callback


def _worker_process(job: WorkerJob, barrier: Any) -> None:
    with decoding_for("optimize"):  # a spawned process starts without the caller's context
        run_worker(job, Console(stderr=True), barrier)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose worker process on this host is gone (a killed run); trials
    of live workers, here or elsewhere, are left alone (the RDB heartbeat covers other hosts)."""
    host = host_id()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if owner_host == host and pid.isdigit() and not pid_alive(int(pid)):
            study._storage.set_trial_user_attr(  # noqa: SLF001 - no public setter on a frozen trial
                t._trial_id, "error", f"interrupted: worker {owner_host}:{pid} stopped "  # noqa: SLF001
                "before the trial finished; marked failed when the search resumed")
            study.tell(t.number, state=TrialState.FAIL)
            failed.append(t.number)
    return failed


def default_study_name(data_spec: str, base_id: str, space: SearchSpace) -> str:
    """From the data, the base and the space: Optuna cannot change a parameter's choices
    within a study, so another space is another study (its stages still come from the cache)."""
    space_id = stage_key("", "space", space.to_dict())[:6]
    return f"leanvision-{_slug(data_spec)}-{base_id.split(':')[-1][:8]}-{space_id}"


def _check_space(study: optuna.Study, space: SearchSpace) -> None:
    """A study remembers its space; a named study reused with another one is refused in words
    (Optuna would fail mid-trial on the changed choices)."""
    wanted = json.loads(json.dumps(space.to_dict()))
    found = study.user_attrs.get("space")
    if found is None:
        study.set_user_attr("space", wanted)
    elif found != wanted:
        raise ConfigError(f"study '{study.study_name}' was searched over another space "
                          f"({found}); pass another --study-name, or the same runtimes and "
                          "space as before")


# ---- settings ----------------------------------------------------------------------------------

def _storage(url: str) -> optuna.storages.RDBStorage:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": SQLITE_WAIT_S}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs,
                                          heartbeat_interval=HEARTBEAT_S)


class _quiet_optuna:
    """Optuna's per-trial INFO lines would repeat what the search prints itself."""

    def __enter__(self) -> None:
        self.before = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        optuna.logging.set_verbosity(self.before)


def _masked(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given, minus credentials
        return re.sub(r"//[^@/]*@", "//***@", url)


def _slug(spec: str) -> str:
    name = Path(spec.replace("builtin:", "")).name or "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)



def _limits_line(c: Constraints) -> str:
    parts = [f"max drop {c.max_drop:g} points (--accept {c.accept})"]
    if c.max_latency_ms is not None:
        parts.append(f"max latency {c.max_latency_ms:g} ms")
    if c.max_size_mb is not None:
        parts.append(f"max size {c.max_size_mb:g} MB")
    return ", ".join(parts)
