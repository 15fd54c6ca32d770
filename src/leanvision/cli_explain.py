"""CLI skins of the explanation and report verbs; registered on cli.app."""

from __future__ import annotations

from pathlib import Path

import typer

from .cli import JSON_OPT, OUT_OPT, app, err_console, out_console, run_verb


@app.command("explain")
def explain_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder to explain."),
    images: list[Path] = typer.Argument(..., help="Image files."),
    method: str = typer.Option("gradcam", help="gradcam, gradcam++, scorecam, lime or shap."),
    target: str | None = typer.Option(None, help="Class names (comma-separated) or 'all'; "
                                      "default: the predicted class."),
    parent: str | None = typer.Option(None, help="Also explain this artifact ('auto': the "
                                      "card's parent) and report how the maps drifted."),
    faithfulness: bool = typer.Option(True, help="Score each map by deletion/insertion."),
    samples: int = typer.Option(200, help="lime/shap: perturbed samples per image."),
    out: Path | None = OUT_OPT,
    text: list[str] | None = typer.Option(None, "--text", help="Image + text models: the "
                                          "text of each image, in order (repeat)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Overlay PNGs and raw maps (.npy) of what ARTIFACT looks at in each image."""
    from .explanations import explain

    run_verb(lambda: explain(artifact, images, method=method, target=target, out=out,
                             parent=parent, faithfulness=faithfulness, samples=samples,
                             console=err_console, texts=text or None), as_json,
             lambda r: out_console.print(f"explanations: {r['out']}"))


@app.command("report")
def report_cmd(
    paths: list[Path] = typer.Argument(..., help="Run or artifact folders (parents named in "
                                       "their cards are added when on disk)."),
    out: Path | None = typer.Option(None, "--out", help="report.html path or folder (default: "
                                    "runs/report/<time>/report.html)."),
    data: str | None = typer.Option(None, "--data", help="Data for calibration and the "
                                    "gallery (default: the data in each card)."),
    bench: Path | None = typer.Option(None, "--bench", help="A bench.json from `leanvision "
                                      "bench` with the variants' speed."),
    measure: bool = typer.Option(True, help="Time variants with no bench figures."),
    explain_images: int = typer.Option(4, help="Images in the explanation gallery (0: none)."),
    explain_method: str = typer.Option("gradcam", help="Method of the gallery's maps."),
    as_json: bool = JSON_OPT,
) -> None:
    """One self-contained HTML page: curves, confusion, calibration, variants with Pareto
    charts, and an explanation gallery with drift between variants."""
    from .reports import report

    run_verb(lambda: report(paths, out, data=data, bench=bench, measure=measure,
                            explain_images=explain_images, explain_method=explain_method,
                            console=err_console), as_json,
             lambda r: out_console.print(f"report: {r['path']}"))
