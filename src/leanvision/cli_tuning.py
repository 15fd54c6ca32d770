"""CLI skins of the training-study verbs (lr-find, compare); registered on cli.app."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .cli import JSON_OPT, OUT_OPT, app, err_console, out_console, run_verb


@app.command("lr-find")
def lr_find_cmd(
    data: str = typer.Argument("builtin:digits", help="Folder, CSV file or builtin:digits."),
    out: Path | None = OUT_OPT,
    model: str | None = typer.Option(None, help="Model name; default from the image size."),
    optimizer: str | None = typer.Option(None, help="sgd, momentum, nesterov, adagrad, "
                                         "rmsprop, adadelta, adam, adamw."),
    batch_size: int | None = typer.Option(None, help="Default: from the data's size."),
    start_lr: float = typer.Option(1e-7, help="Rate of the first step."),
    end_lr: float = typer.Option(10.0, help="Rate of the last step."),
    steps: int = typer.Option(100, help="Mini-batches in the sweep (it stops early on blow-up)."),
    skip_bad_images: bool = typer.Option(False, help="Leave out images that cannot be decoded."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0),
    as_json: bool = JSON_OPT,
) -> None:
    """Learning-rate range test: suggest a learning rate for training on DATA."""
    from .training.lr_find import lr_find

    run_verb(lambda: lr_find(data, out, model=model, optimizer=optimizer, batch_size=batch_size,
                             start_lr=start_lr, end_lr=end_lr, steps=steps, device=device,
                             seed=seed, skip_bad_images=skip_bad_images,
                             progress=sys.stderr.isatty(), console=err_console),
             as_json, lambda r: out_console.print(
                 f"suggested lr {r['suggested_lr']:.3g} for {r['optimizer']} "
                 f"(min-loss lr / 10: {r['min_loss_lr']:.3g}); plot {r['plot']}"))


@app.command("compare")
def compare_cmd(
    data: str = typer.Argument("builtin:digits", help="Folder, CSV file or builtin:digits."),
    optimizers: str = typer.Option("sgd,momentum,adagrad,rmsprop,adadelta,adam,adamw",
                                   help="Comma-separated optimizer names."),
    epochs: int | None = typer.Option(None, help="Default: from the data's size."),
    model: str | None = typer.Option(None, help="Model name; default from the image size."),
    batch_size: int | None = typer.Option(None, help="Default: from the data's size."),
    find_steps: int = typer.Option(100, help="Steps of each learning-rate range test."),
    val_fraction: float = typer.Option(0.1, help="Hold-out for data without a val split."),
    out: Path | None = OUT_OPT,
    skip_bad_images: bool = typer.Option(False, help="Leave out images that cannot be decoded."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0),
    as_json: bool = JSON_OPT,
) -> None:
    """Train once per optimizer, each at its lr-find rate; rank by validation top-1."""
    from .training.compare import compare

    run_verb(lambda: compare(data, optimizers, out, epochs=epochs, model=model,
                             batch_size=batch_size, find_steps=find_steps,
                             val_fraction=val_fraction, device=device, seed=seed,
                             skip_bad_images=skip_bad_images, progress=sys.stderr.isatty(),
                             console=err_console),
             as_json, lambda r: out_console.print(
                 f"best: {r['best']} ({' > '.join(r['ranking'])}); {r['json']}"))
