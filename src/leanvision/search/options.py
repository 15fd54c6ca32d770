"""optimize's settings with their help: `leanvision optimize` draws its options from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..paired import DEFAULT_ACCEPT
from ..setting import setting

DEFAULT_RUNTIMES = ("onnx-fp32", "onnx-int8")


@dataclass
class OptimizeOptions:
    data: str = setting("builtin:digits", "Folder, CSV file or builtin:digits.")
    base: Path | None = setting(None, "A model trained on DATA (default: train one with the "
                                "default recipe).")
    out: Path | None = setting(None, "Output folder (default: runs/optimize/<data>; the same "
                               "folder resumes).")
    max_drop: float = setting(1.0, "Most validation top-1 points the result may lose against "
                              "the base.")
    accept: str = setting(DEFAULT_ACCEPT, "How sure 'within --max-drop' must be, on the paired "
                          "comparison with the base: point (the estimate), likely (80% "
                          "interval's upper bound) or sure (95%'s).")
    max_class_drop: float | None = setting(None, "Most validation top-1 points any one class "
                                           "may lose against the base (judged per class "
                                           "under --accept; the worst class is always "
                                           "reported).")
    confirm_folds: int = setting(0, "Re-run the shortlisted pipelines (the chosen, the faster "
                                 "ones the split could not rule out, then the next that meet "
                                 "the constraints; 3 at most) on K stratified folds of the "
                                 "non-test images, training a base per fold (default recipe), "
                                 "and judge --max-drop on all K folds' images pooled: for a "
                                 "validation split too small to decide. Costs about K more "
                                 "base trainings plus K runs of each shortlisted pipeline; "
                                 "the shipped model stays the one built here (0: off).")
    max_latency_ms: float | None = setting(None, "Batch-1 latency limit, measured here.")
    max_size_mb: float | None = setting(None, "Model file size limit.")
    trials: int | None = setting(None, "Finished trials in the study, each a pipeline not "
                                 "measured before (default 12; a space no larger is measured "
                                 "whole; with --time-budget every pipeline, as time allows; "
                                 "resumed runs count earlier ones).")
    timeout_s: float | None = setting(None, "Stop starting trials after this.")
    time_budget: float | None = setting(None, "Minutes for the whole run, the base's training "
                                        "included; it ends in time with the best front found "
                                        "and says what it skipped.")
    storage: str | None = setting(None, "Optuna storage URL (default: sqlite in --out); point "
                                  "several workers at one RDB URL.")
    study_name: str | None = setting(None, "Study to create or resume.")
    workers: int = setting(1, "Local worker processes sharing the storage.")
    runtimes: tuple[str, ...] | list[str] = setting(DEFAULT_RUNTIMES, "Runtimes to consider "
                                                    "(repeatable; default onnx-fp32 and "
                                                    "onnx-int8).")
    threads: int | None = setting(None, "Threads for timing (default: physical cores).")
    seed: int = setting(0, "Seed of the study's sampler.")
    quick: bool = setting(False, "Smaller budgets: a first look in minutes.")
    explain_images: int = setting(0, "Explanation gallery size in the report.")
    skip_bad_images: bool | None = setting(None, "Leave out images that cannot be decoded, in the "
                                           "base's training and every trial (default: as --base "
                                           "was trained; no without).")


def check_run_settings(trials: int | None, timeout_s: float | None, workers: int,
                       threads: int | None, explain_images: int,
                       time_budget: float | None = None, confirm_folds: int = 0) -> None:
    """Refuse a run setting no search can honour, in words, before any work."""
    if time_budget is not None and not time_budget > 0:
        raise ConfigError(f"--time-budget {time_budget} must be a positive number of minutes")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials} must be at least 1")
    if timeout_s is not None and not timeout_s > 0:
        raise ConfigError(f"--timeout-s {timeout_s} must be a positive number of seconds")
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads} must be at least 1")
    if explain_images < 0:
        raise ConfigError(f"--explain-images {explain_images} must be 0 or more")
    if confirm_folds < 0 or confirm_folds == 1:
        raise ConfigError(f"--confirm-folds {confirm_folds} is too few: each fold holds out a "
                          "1/K share of the images, so K must be 2 or more (5 is usual), or 0 "
                          "for none")
