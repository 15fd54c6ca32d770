"""CLI skins of the runtime verbs (export, bench); registered on cli.app."""

from __future__ import annotations

from pathlib import Path

import typer

from .cli import JSON_OPT, app, err_console, out_console, run_verb


@app.command("export")
def export_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder to export."),
    format: str = typer.Option("onnx", "--format", help="onnx."),
    out: Path | None = typer.Option(None, "--out", help="Copy the artifact here and export "
                                    "into the copy (default: export into ARTIFACT)."),
    batch: int = typer.Option(8, help="Batch size of the parity check beside batch 1."),
    opset: int | None = typer.Option(None, help="ONNX opset (default: the exporter's)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Export ARTIFACT to ONNX (dynamic batch), checked against PyTorch before it is kept."""
    from .runtime.stage import export

    run_verb(lambda: export(artifact, format, out, batch=batch, opset=opset), as_json,
             lambda r: out_console.print(f"{r['file']} (opset {r['opset']}, max difference "
                                         f"to PyTorch {r['max_abs_error']:.2g})"))




@app.command("bench")
def bench_cmd(
    artifacts: list[Path] = typer.Argument(..., help="Artifact folders to measure."),
    data: str | None = typer.Option(None, "--data", help="Also measure top-1 on this data "
                                    "(its val split, else test)."),
    runtimes: str | None = typer.Option(None, help="Comma-separated: torch, torch-compile, "
                                        "onnx-fp32, onnx-int8 (default: all but "
                                        "torch-compile)."),
    batch: int = typer.Option(32, help="Batch size of the throughput run."),
    threads: int | None = typer.Option(None, help="Threads per run (default: physical cores)."),
    warmup: int = typer.Option(10, help="Untimed runs before timing."),
    iterations: int = typer.Option(100, help="Timed runs per measurement."),
    split: str = typer.Option("auto", help="auto, val or test (with --data)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for bench.json (default: "
                                    "runs/bench/<time>)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Latency (batch 1: p50/p90/p99), throughput (batch N), accuracy, size and FLOPs of every
    runtime and precision of each artifact."""
    from .runtime.bench import bench

    names = [r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None
    run_verb(lambda: bench(artifacts, data, runtimes=names, batch=batch, threads=threads,
                           warmup=warmup, iterations=iterations, split=split, out=out,
                           console=err_console), as_json,
             lambda r: out_console.print(f"results: {r['path']}"))
