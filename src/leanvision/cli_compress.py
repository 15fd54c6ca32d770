"""CLI skins of the compression stages (prune, distill, quantize); registered on cli.app."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from .cli import (
    JSON_OPT,
    OUT_OPT,
    TRACK_OPT,
    TRACK_URI_OPT,
    app,
    err_console,
    out_console,
    run_verb,
)

DATA_OPT = typer.Option(None, "--data", help="Data to fine-tune on (default: the data named "
                        "in the artifact's card).")
# Tri-state: unset, a stage reads the data as its parent artifact was trained (with or without
# the unreadable images); either flag given wins.
SKIP_BAD_OPT = typer.Option(None, "--skip-bad-images/--no-skip-bad-images", help="Leave out "
                            "images that cannot be decoded (default: as the parent artifact "
                            "was trained).")


def finetune_settings(**values: Any) -> dict[str, Any]:
    """The training settings a stage passes through to its fine-tuning (unset ones dropped, so
    the stage's and the recipe's defaults apply)."""
    settings = {k: v for k, v in values.items() if v is not None}
    settings["progress"] = sys.stderr.isatty()
    return settings


@app.command("prune")
def prune_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder to prune."),
    data: str | None = DATA_OPT,
    out: Path | None = OUT_OPT,
    ratio: float = typer.Option(0.5, help="Fraction removed: of the FLOPs, params, channels, "
                                "or (unstructured) of the weights."),
    target: str | None = typer.Option(None, help="flops, params or channels (default: flops; "
                                      "channels for soft, params for unstructured)."),
    method: str = typer.Option("structured", help="structured, unstructured or soft."),
    importance: str = typer.Option("l2", help="l1, l2, bn (batch-norm scale) or taylor."),
    scope: str = typer.Option("auto", help="global (rank channels across layers), layer, or "
                              "auto (try both, keep the one that loses less val accuracy)."),
    steps: int = typer.Option(1, help="Prune in this many steps, fine-tuning after each."),
    finetune_epochs: int = typer.Option(5, help="Fine-tuning epochs per step (0: none)."),
    max_layer_ratio: float = typer.Option(0.9, help="No layer loses more than this share."),
    round_to: int = typer.Option(8, help="Keep channel counts multiples of this (vector-friendly "
                                 "widths run faster; 1: any width)."),
    check: bool = typer.Option(True, help="Check forward, ONNX export and a fresh reload."),
    batch_size: int | None = typer.Option(None, help="Fine-tuning batch size."),
    lr: float | None = typer.Option(None, help="Fine-tuning rate (default 1e-3 AdamW)."),
    optimizer: str | None = typer.Option(None, help="Fine-tuning optimizer."),
    augment: str | None = typer.Option(None, help="none, light, strong."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16."),
    nproc: int = typer.Option(1, help="Data-parallel processes for the fine-tuning, as for train "
                              "(--batch-size is global)."),
    skip_bad_images: bool | None = SKIP_BAD_OPT,
    track: bool = TRACK_OPT,
    track_uri: str | None = TRACK_URI_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Remove channels (or weights) from ARTIFACT, fine-tune, and write a smaller artifact."""
    from .compress import prune

    settings = finetune_settings(batch_size=batch_size, lr=lr, optimizer=optimizer,
                                 augment=augment, device=device, precision=precision,
                                 skip_bad_images=skip_bad_images)
    run_verb(lambda: prune(artifact, data, out, ratio=ratio, target=target, method=method,
                           importance=importance, scope=scope, steps=steps,
                           finetune_epochs=finetune_epochs, max_layer_ratio=max_layer_ratio,
                           round_to=round_to, check=check, console=err_console, nproc=nproc,
                           track=track, track_uri=track_uri, **settings),
             as_json, lambda r: out_console.print(
                 f"artifact: {r['artifact']} ({r['pruning']['flops_fraction']:.0%} of the FLOPs, "
                 f"{r['pruning']['params_fraction']:.0%} of the parameters)"))


@app.command("distill")
def distill_cmd(
    data: str = typer.Argument(..., help="Folder, CSV file or builtin:digits to train on."),
    teacher: Path = typer.Option(..., help="Trained artifact whose logits teach the student."),
    student: str = typer.Option(..., help="Model name (leanvision models) or an artifact "
                                "folder, e.g. a pruned model."),
    out: Path | None = OUT_OPT,
    loss: str = typer.Option("kd", help="kd (Hinton) or dkd (decoupled KD)."),
    temperature: float = typer.Option(4.0, help="Softening temperature of both logits."),
    alpha: float = typer.Option(0.9, help="KD: weight of the teacher's soft targets."),
    dkd_alpha: float = typer.Option(1.0, help="DKD: weight of target-class KD."),
    dkd_beta: float = typer.Option(8.0, help="DKD: weight of non-target-class KD."),
    dkd_warmup_epochs: float | None = typer.Option(None, help="DKD: epochs to ramp it in."),
    cache_teacher: str = typer.Option("auto", help="auto, always or never: cache the "
                                      "teacher's logits (only without augmentation)."),
    epochs: int | None = typer.Option(None, help="Default: from the data's size."),
    batch_size: int | None = typer.Option(None, help="Default: from the data's size."),
    lr: float | None = typer.Option(None, help="Default: the recipe's rate."),
    optimizer: str | None = typer.Option(None, help="Default: the recipe's optimizer."),
    augment: str | None = typer.Option(None, help="none, light, strong."),
    val_fraction: float | None = typer.Option(None, help="Hold-out for data without a val "
                                              "split."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16."),
    seed: int | None = typer.Option(None),
    nproc: int = typer.Option(1, help="Data-parallel processes, as for train (--batch-size is "
                              "global)."),
    skip_bad_images: bool | None = SKIP_BAD_OPT,
    track: bool = TRACK_OPT,
    track_uri: str | None = TRACK_URI_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Train STUDENT on DATA with TEACHER's predictions as soft targets."""
    from .compress import distill

    settings = finetune_settings(epochs=epochs, batch_size=batch_size, lr=lr,
                                 optimizer=optimizer, augment=augment,
                                 val_fraction=val_fraction, device=device, precision=precision,
                                 seed=seed, skip_bad_images=skip_bad_images)
    run_verb(lambda: distill(data, teacher, student, out, loss=loss, temperature=temperature,
                             alpha=alpha, dkd_alpha=dkd_alpha, dkd_beta=dkd_beta,
                             dkd_warmup_epochs=dkd_warmup_epochs, cache_teacher=cache_teacher,
                             console=err_console, nproc=nproc, track=track,
                             track_uri=track_uri, **settings),
             as_json, lambda r: out_console.print(f"artifact: {r['artifact']}"))


@app.command("quantize")
def quantize_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder to quantize."),
    data: str | None = DATA_OPT,
    out: Path | None = OUT_OPT,
    method: str = typer.Option("ptq", help="ptq (static INT8 with an accuracy guard), dynamic, "
                               "or qat (quantization-aware fine-tuning first)."),
    max_drop: float | None = typer.Option(None, help="ptq: most top-1 points INT8 may lose on "
                                          "validation data before layers return to FP32 "
                                          "(default 0.5)."),
    calibration_images: int | None = typer.Option(None, help="Training images that calibrate "
                                                  "activation ranges (300 ptq, 512 qat)."),
    calibrate: str = typer.Option("minmax", help="minmax, entropy or percentile."),
    backend: str = typer.Option("onnxruntime", help="ptq: onnxruntime (model.int8.onnx) or "
                                "openvino (NNCF; model.openvino-int8.xml/.bin, needs "
                                "leanvision[openvino])."),
    epochs: int | None = typer.Option(None, help="qat: fine-tuning epochs (default 2)."),
    lr: float | None = typer.Option(None, help="qat: rate (default: the parent's / 20)."),
    batch_size: int | None = typer.Option(None, help="qat: fine-tuning batch size."),
    skip_bad_images: bool | None = SKIP_BAD_OPT,
    track: bool = TRACK_OPT,
    track_uri: str | None = TRACK_URI_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Quantize ARTIFACT to INT8 ONNX (QDQ: uint8 activations, int8 per-channel weights), or
    with --backend openvino to OpenVINO IR through NNCF."""
    from .compress import quantize

    settings = finetune_settings(batch_size=batch_size) if method == "qat" else {}
    if skip_bad_images is not None:
        settings["skip_bad_images"] = skip_bad_images
    run_verb(lambda: quantize(artifact, data, out, method=method, epochs=epochs, lr=lr,
                              calibration_images=calibration_images, calibrate=calibrate,
                              max_drop=max_drop, backend=backend, console=err_console,
                              track=track, track_uri=track_uri, **settings),
             as_json, lambda r: out_console.print(f"artifact: {r['artifact']}"))


@app.command("optimize")
def optimize_cmd(
    data: str = typer.Argument("builtin:digits", help="Folder, CSV file or builtin:digits."),
    base: Path | None = typer.Option(None, help="A model trained on DATA (default: train one "
                                     "with the default recipe)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: "
                                    "runs/optimize/<data>; the same folder resumes)."),
    max_drop: float = typer.Option(1.0, help="Most validation top-1 points the result may "
                                   "lose against the base."),
    max_latency_ms: float | None = typer.Option(None, help="Batch-1 latency limit, measured "
                                                "here."),
    max_size_mb: float | None = typer.Option(None, help="Model file size limit."),
    trials: int | None = typer.Option(None, help="Finished trials in the study (default 12; "
                                      "with --time-budget every pipeline, as time allows; "
                                      "resumed runs count earlier ones)."),
    timeout_s: float | None = typer.Option(None, help="Stop starting trials after this."),
    time_budget: float | None = typer.Option(None, help="Minutes for the whole run, the "
                                             "base's training included; it ends in time with "
                                             "the best front found and says what it skipped."),
    storage: str | None = typer.Option(None, help="Optuna storage URL (default: sqlite in "
                                       "--out); point several workers at one RDB URL."),
    study_name: str | None = typer.Option(None, help="Study to create or resume."),
    workers: int = typer.Option(1, help="Local worker processes sharing the storage."),
    runtime: list[str] | None = typer.Option(None, "--runtime", help="Runtimes to consider "
                                             "(repeatable; default onnx-fp32 and onnx-int8)."),
    threads: int | None = typer.Option(None, help="Threads for timing (default: physical "
                                       "cores)."),
    seed: int = typer.Option(0),
    quick: bool = typer.Option(False, help="Smaller budgets: a first look in minutes."),
    explain_images: int = typer.Option(0, help="Explanation gallery size in the report."),
    skip_bad_images: bool | None = typer.Option(None, "--skip-bad-images/--no-skip-bad-images",
                                                help="Leave out images that cannot be decoded, "
                                                "in the base's training and every trial "
                                                "(default: as --base was trained; no without)."),
    as_json: bool = JSON_OPT,
) -> None:
    """The smallest, fastest model that meets the constraints: search pruning, distillation
    and INT8 together, every candidate measured on this machine."""
    from .search import optimize

    extra = {"runtimes": tuple(runtime)} if runtime else {}
    run_verb(lambda: optimize(data, base=base, out=out, max_drop=max_drop,
                              max_latency_ms=max_latency_ms, max_size_mb=max_size_mb,
                              trials=trials, timeout_s=timeout_s, time_budget=time_budget,
                              storage=storage,
                              study_name=study_name, workers=workers, threads=threads,
                              seed=seed, quick=quick, explain_images=explain_images,
                              skip_bad_images=skip_bad_images, console=err_console, **extra),
             as_json, _show_optimize)


def _show_optimize(result: dict[str, Any]) -> None:
    out_console.print(f"report: {result['report']}")
    out_console.print(f"chosen: {result['chosen']}")
    out_console.print(result["statement"])
