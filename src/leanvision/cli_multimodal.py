"""CLI skin of the image + text verb `compare-fusions`; registered on cli.app. Training, eval,
predict (--text), export, serve and explain (--text) of fused models go through the usual
verbs (`leanvision train DATA.csv --text-columns ...`)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .cli import JSON_OPT, OUT_OPT, app, err_console, out_console, run_verb


@app.command("compare-fusions")
def compare_fusions_cmd(
    data: str = typer.Argument(..., help="CSV with path, label and text columns."),
    text_columns: str = typer.Option(..., help="Text columns (comma-separated)."),
    fusions: str = typer.Option("early,late,attention", help="Fusion strategies to compare."),
    baselines: bool = typer.Option(True, help="Also train image-only and text-only models."),
    text_encoder: str = typer.Option("hashed", help="hashed or minilm."),
    model: str | None = typer.Option(None, help="Image network (default: from the recipe)."),
    epochs: int | None = typer.Option(None, help="The same for every run."),
    batch_size: int | None = typer.Option(None),
    lr: float | None = typer.Option(None),
    img_size: int | None = typer.Option(None),
    max_tokens: int = typer.Option(32),
    val_fraction: float = typer.Option(0.1),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
    out: Path | None = OUT_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Image-only, text-only and each fusion trained alike; ranked by test (else val) top-1."""
    from .multimodal import compare_fusions

    settings = {k: v for k, v in dict(model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                                      img_size=img_size).items() if v is not None}
    run_verb(lambda: compare_fusions(data, text_columns, fusions=fusions, baselines=baselines,
                                     out=out, console=err_console, text_encoder=text_encoder,
                                     max_tokens=max_tokens, val_fraction=val_fraction,
                                     device=device, seed=seed, progress=sys.stderr.isatty(),
                                     **settings),
             as_json, lambda r: out_console.print(f"best: {r['best']} "
                                                  f"({' > '.join(r['ranking'])}); {r['json']}"))
