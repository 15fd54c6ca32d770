"""The command line: one thin command per API function. It parses flags, calls the function,
prints a summary and, with --json, one JSON object as the last line of stdout."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import LeanvisionError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and inspect image classifiers on the hardware at hand.")
out_console = Console()
err_console = Console(stderr=True)

JSON_OPT = typer.Option(False, "--json", help="Print one JSON summary as the last stdout line.")
OUT_OPT = typer.Option(None, "--out", help="Output folder (default: runs/<verb>/<name>).")
TRACK_OPT = typer.Option(False, "--track", help="Record the run in MLflow (default store: "
                         "runs/mlflow.db; see --track-uri).")
TRACK_URI_OPT = typer.Option(None, "--track-uri", help="MLflow tracking URI (http://host:5000, "
                             "sqlite:///file.db, ...); implies --track. Default: "
                             "$MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db.")
TTA_OPT = typer.Option(None, "--tta", help="Test-time augmentation: none, flip, flip-translate "
                       "or multi-crop (default: the one the card stores).")


def run_verb(call: Callable[[], Any], as_json: bool, show: Callable[[Any], None]) -> None:
    """Run an API call; turn user errors into one clear line and a non-zero exit."""
    try:
        result = call()
    except LeanvisionError as exc:
        err_console.print(f"[bold red]{type(exc).__name__}:[/bold red] {exc}", highlight=False)
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc), "kind": type(exc).__name__}))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted; a training run continues with --resume RUN_FOLDER")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug: say so plainly, keep the traceback one variable away
        if os.environ.get("LEANVISION_DEBUG"):
            traceback.print_exc()
        err_console.print(f"[bold red]internal error[/bold red] {type(exc).__name__}: {exc}\n"
                          "This is a leanvision bug; set LEANVISION_DEBUG=1 for the traceback.",
                          highlight=False)
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc), "kind": "InternalError"}))
        raise typer.Exit(1) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the job
        return
    if as_json:
        print(json.dumps({"ok": True, **_as_dict(result)}, default=str))
    else:
        show(result)


def _as_dict(result: Any) -> dict:
    return result if isinstance(result, dict) else {"results": result}


def _pretrained(value: str | None) -> bool | str | None:
    if value is None or value == "auto":
        return None
    if value.lower() in ("yes", "true", "1"):
        return True
    if value.lower() in ("no", "false", "0"):
        return False
    return value


@app.command("train")
def train_cmd(
    data: str = typer.Argument("builtin:digits", help="Folder, CSV file or builtin:digits."),
    out: Path | None = OUT_OPT,
    model: str | None = typer.Option(None, help="Model name (leanvision models); default "
                                     "from the image size."),
    pretrained: str | None = typer.Option(None, help="auto, yes, no, or a weights file."),
    finetune: str = typer.Option("auto", help="auto, full, probe, lp-ft, freeze, lower-lr."),
    freeze_stages: int = typer.Option(2, help="Stages kept frozen by --finetune freeze."),
    epochs: int | None = typer.Option(None, help="Default: from the data's size."),
    batch_size: int | None = typer.Option(None, help="Default: from the data's size."),
    lr: float | None = typer.Option(None, help="Default: the optimizer's usual rate."),
    optimizer: str | None = typer.Option(None, help="sgd, momentum, nesterov, adagrad, "
                                         "rmsprop, adadelta, adam, adamw."),
    recipe: str = typer.Option("auto", help="auto, standard, or fast (airbench-style, for "
                               "CIFAR-sized data)."),
    schedule: str | None = typer.Option(None, help="cosine, step, onecycle, triangle, plateau, "
                                        "constant."),
    momentum: float | None = typer.Option(None),
    weight_decay: float | None = typer.Option(None),
    l1: float = typer.Option(0.0, help="L1 penalty on weights."),
    warmup_epochs: float | None = typer.Option(None),
    label_smoothing: float | None = typer.Option(None),
    norm_lr_scale: float | None = typer.Option(None, help="LR multiplier for biases and norms."),
    dropout: float | None = typer.Option(None, help="Dropout before the classifier."),
    grad_clip: float | None = typer.Option(None, help="Clip the gradient norm to this."),
    ema: bool | None = typer.Option(None, help="Keep an exponential moving average of the "
                                    "weights."),
    lookahead: bool | None = typer.Option(None, help="Average weights every 5 steps and copy "
                                          "back (airbench)."),
    early_stop: int | None = typer.Option(None, help="Stop after N epochs without val gain."),
    time_budget: float | None = typer.Option(None, help="Minutes for the whole run (probe, "
                                             "lp-ft): epochs are sized to fit."),
    augment: str = typer.Option("light", help="none, light (crop+flip), strong."),
    mixup: float = typer.Option(0.0, help="MixUp alpha (0: off)."),
    cutmix: float = typer.Option(0.0, help="CutMix alpha (0: off)."),
    translate: int | None = typer.Option(None, help="Random shift in pixels (default 1/8)."),
    tta: str | None = typer.Option(None, help="Test-time augmentation: none, flip, "
                                   "flip-translate, multi-crop."),
    unlabeled: str | None = typer.Option(None, "--unlabeled", help="Folder of unlabelled "
                                         "images of the same classes: semi-supervised training "
                                         "(self-training with a teacher, or FixMatch)."),
    mu: int = typer.Option(7, help="FixMatch: unlabelled images per labelled one per step."),
    threshold: float | None = typer.Option(None, help="--unlabeled: pseudo-label confidence "
                                           "needed (default 0.95; none with a teacher)."),
    lambda_u: float = typer.Option(1.0, help="FixMatch: weight of the unlabelled loss."),
    pseudo_labels: str = typer.Option("teacher", help="--unlabeled: teacher (self-training: "
                                      "a teacher trained on the labels labels every image "
                                      "once, a student learns from both), epoch (FixMatch, "
                                      "labelled once per epoch, only confident images trained) "
                                      "or step (FixMatch's per-step labels)."),
    rounds: int = typer.Option(1, help="--pseudo-labels teacher: students trained, each the "
                               "next round's teacher."),
    teacher_epochs: int | None = typer.Option(None, help="--pseudo-labels teacher: the "
                                              "teacher's epochs (default: the recipe's)."),
    teacher: str | None = typer.Option(None, help="--pseudo-labels teacher: an artifact to use "
                                       "as the first teacher instead of training one."),
    pseudo_share: float = typer.Option(0.5, help="--pseudo-labels teacher: the most confident "
                                       "share of each class's images that gets a label."),
    thresholds: str = typer.Option("fixed", help="FixMatch: flex (FlexMatch's class-wise "
                                   "thresholds, low while a class is little learnt) or fixed "
                                   "(--threshold for all)."),
    img_size: int | None = typer.Option(None, help="Input size; default: the model's."),
    val_fraction: float = typer.Option(0.1, help="Hold-out for data without a val split."),
    balance: str = typer.Option("none", help="none, loss (class weights) or sampler."),
    skip_bad_images: bool = typer.Option(False, help="Train without unreadable images."),
    resume: Path | None = typer.Option(None, help="Continue the run in this folder."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16."),
    seed: int = typer.Option(0),
    nproc: int = typer.Option(1, help="Data-parallel processes on this machine (one per GPU, "
                              "or per CPU core); --batch-size stays the global batch. Several "
                              "machines: torchrun (docs/scaling.md)."),
    port: int | None = typer.Option(None, help="--nproc: rendezvous port (default: a free one)."),
    track: bool = TRACK_OPT,
    track_uri: str | None = TRACK_URI_OPT,
    text_columns: str | None = typer.Option(None, help="CSV text columns read with each image "
                                            "(comma-separated): an image + text model."),
    fusion: str | None = typer.Option(None, help="--text-columns: early (default), late, "
                                      "attention or text-only."),
    text_encoder: str | None = typer.Option(None, help="--text-columns: hashed (default; "
                                            "trained here) or minilm (pretrained, offline)."),
    text_finetune: bool | None = typer.Option(None, help="--text-columns: train the text "
                                              "encoder (default: hashed yes, minilm no)."),
    max_tokens: int | None = typer.Option(None, help="--text-columns: tokens per text (32)."),
    empty_text: str | None = typer.Option(None, help="--text-columns: rows without text: "
                                          "keep (image branch), drop or error."),
    as_json: bool = JSON_OPT,
) -> None:
    """Train a classifier on DATA and write an artifact folder."""
    from .training import train

    if resume is not None:
        settings = {"epochs": epochs}
    else:
        settings = dict(
            model=model, pretrained=_pretrained(pretrained), finetune=finetune,
            freeze_stages=freeze_stages, epochs=epochs,
            batch_size=batch_size, lr=lr, optimizer=optimizer, recipe=recipe,
            schedule=schedule, momentum=momentum, weight_decay=weight_decay, l1=l1,
            warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
            norm_lr_scale=norm_lr_scale, dropout=dropout, grad_clip=grad_clip, ema=ema,
            lookahead=lookahead, early_stop=early_stop, time_budget=time_budget,
            augment=augment, mixup=mixup,
            cutmix=cutmix, translate=translate, tta=tta, unlabeled=unlabeled, mu=mu,
            threshold=threshold, lambda_u=lambda_u, pseudo_labels=pseudo_labels,
            thresholds=thresholds, rounds=rounds, teacher_epochs=teacher_epochs,
            teacher=teacher, pseudo_share=pseudo_share,
            img_size=img_size, val_fraction=val_fraction, balance=balance,
            skip_bad_images=skip_bad_images, device=device, precision=precision, seed=seed)
    settings["progress"] = sys.stderr.isatty()
    if text_columns is not None or fusion or text_encoder:  # see leanvision.multimodal
        settings.update(text_columns=text_columns, fusion=fusion, text_encoder=text_encoder,
                        text_finetune=text_finetune, max_tokens=max_tokens,
                        empty_text=empty_text)
    run_verb(lambda: train(data, out, resume=resume, console=err_console, nproc=nproc,
                           port=port, track=track, track_uri=track_uri, **settings),
             as_json, lambda r: out_console.print(f"artifact: {r['artifact']}"))


@app.command("eval")
def eval_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder."),
    data: str | None = typer.Option(None, help="Data to score (default: the training data)."),
    split: str = typer.Option("auto", help="auto, train, val, test or all."),
    skip_bad_images: bool = typer.Option(False),
    device: str = typer.Option("auto"),
    tta: str | None = TTA_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Measure accuracy, per-class metrics, calibration and cost on DATA."""
    from .evaluate import evaluate

    run_verb(lambda: evaluate(artifact, data, split=split, skip_bad_images=skip_bad_images,
                              device=device, tta=tta), as_json, _show_eval)


def _show_eval(result: dict) -> None:
    m, cost = result["metrics"], result["cost"]
    out_console.print(f"{result['artifact']} on {result['data']} ({result['split']}, "
                      f"{m['n']} images, TTA {result.get('tta', 'none')})")
    topk = next((k for k in m if k.startswith("top") and k != "top1"), None)
    out_console.print(f"top-1 {m['top1']:.4f}" + (f"  {topk} {m[topk]:.4f}" if topk else "")
                      + f"  macro-F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}  "
                      f"loss {m['loss']:.4f}")
    table = Table("class", "precision", "recall", "F1", "support")
    for name, row in m["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                      f"{row['f1']:.3f}", str(row["support"]))
    out_console.print(table)
    out_console.print(f"{cost['params']:,} params, {cost['flops'] / 1e6:.1f} MFLOPs, "
                      f"{cost.get('size_bytes', 0) / 1e6:.2f} MB on disk")


@app.command("predict")
def predict_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder."),
    images: list[Path] = typer.Argument(..., help="Image files."),
    top_k: int = typer.Option(5, help="Classes to show per image."),
    device: str = typer.Option("auto"),
    runtime: str = typer.Option("torch", help="torch, auto (the card's recommendation), "
                                "onnx-fp32 or onnx-int8."),
    tta: str | None = TTA_OPT,
    text: list[str] | None = typer.Option(None, "--text", help="Image + text models: the "
                                          "text of each image, in order (repeat; '' for none)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Top-k classes for each image."""
    from .predict import predict

    failed: list[dict] = []

    def call() -> list[dict]:
        results = predict(artifact, images, top_k=top_k, device=device, runtime=runtime,
                          tta=tta, texts=text or None)
        failed.extend(r for r in results if "error" in r)
        return results

    run_verb(call, as_json, _show_predictions)
    if failed:
        answered = len(images) - len(failed)
        rest = (f"the other {answered} were answered" if answered
                else "so there are no answers")
        err_console.print(f"{len(failed)} of {len(images)} images could not be used (each is "
                          f"listed with its reason); {rest}", highlight=False)
        raise typer.Exit(1)


def _show_predictions(results: list[dict]) -> None:
    for r in results:
        if "error" in r:
            out_console.print(f"{r['image']}: [red]{r['error']}[/red]", highlight=False)
            continue
        top = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
        out_console.print(f"{r['image']}: {top}", highlight=False)


@app.command("cv")
def cv_cmd(
    data: str = typer.Argument("builtin:digits"),
    folds: int = typer.Option(5, help="Number of stratified folds."),
    out: Path | None = OUT_OPT,
    model: str | None = typer.Option(None),
    epochs: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None),
    lr: float | None = typer.Option(None),
    optimizer: str | None = typer.Option(None),
    augment: str = typer.Option("light"),
    skip_bad_images: bool = typer.Option(False),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
    as_json: bool = JSON_OPT,
) -> None:
    """Stratified k-fold cross-validation: one model per fold, mean and spread of metrics."""
    from .cv import cross_validate

    settings = dict(model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                    optimizer=optimizer, augment=augment, skip_bad_images=skip_bad_images,
                    device=device, seed=seed, progress=sys.stderr.isatty())
    run_verb(lambda: cross_validate(data, folds, out, console=err_console, **settings),
             as_json, lambda r: out_console.print(
                 f"top-1 {r['mean']['top1']:.4f} ± {r['std']['top1']:.4f} over {folds} folds; "
                 f"{r['out']}/cv.json"))


@app.command("info")
def info_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder."),
    as_json: bool = JSON_OPT,
) -> None:
    """Describe an artifact: architecture, classes, preprocessing, lineage, metrics."""
    from .info import info

    run_verb(lambda: info(artifact), as_json, _show_info)


def _show_info(card: dict) -> None:
    out_console.print(f"[bold]{card['path']}[/bold]: {card['arch']} "
                      f"({card['num_classes']} classes), stage {card.get('stage')}, "
                      f"parent {card.get('parent')}")
    inp = card["input"]
    out_console.print(f"input {inp['size'][0]}x{inp['size'][1]}, mean {inp['mean']}, "
                      f"std {inp['std']}")
    metrics = card.get("metrics", {})
    for split in ("train", "val", "test"):
        if split in metrics:
            out_console.print(f"{split}: top-1 {metrics[split]['top1']:.4f}, "
                              f"ECE {metrics[split]['ece']:.4f}")
    if "params" in metrics:
        out_console.print(f"{metrics['params']:,} params, {metrics['flops'] / 1e6:.1f} MFLOPs")
    for name, size in card["files"].items():
        out_console.print(f"  {name}  {size:,} B")


@app.command("models")
def models_cmd(
    pattern: str = typer.Argument("*", help="A glob such as 'resnet*'."),
    as_json: bool = JSON_OPT,
) -> None:
    """List model names that create_model accepts."""
    from .models import list_models

    run_verb(lambda: list_models(pattern), as_json,
             lambda names: out_console.print("\n".join(names)))


def main() -> None:
    app()


# The stage and runtime verbs live in modules of their own, registered on `app` at import.
from . import (  # noqa: E402, F401
    cli_compress,
    cli_explain,
    cli_multimodal,
    cli_runtime,
    cli_shift,
    cli_tuning,
)
