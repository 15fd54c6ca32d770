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
                                        "onnx-fp32, onnx-int8, openvino-fp32, openvino-int8 "
                                        "(default: all but torch-compile)."),
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


@app.command("serve")
def serve_cmd(
    artifact: Path = typer.Argument(..., help="Artifact folder to serve (the only model the "
                                    "service ever loads)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs "
                             "an API key."),
    port: int = typer.Option(8000),
    api_key: str | None = typer.Option(None, help="Required key (or LEANVISION_API_KEY); sent "
                                       "as 'Authorization: Bearer KEY' or 'X-API-Key'."),
    runtime: str = typer.Option("auto", help="auto (the card's recommendation), onnx-int8, "
                                "onnx-fp32 or torch."),
    threads: int | None = typer.Option(None, help="Inference threads (default: physical "
                                       "cores)."),
    max_batch: int = typer.Option(32, help="Largest dynamic batch."),
    max_wait_ms: float = typer.Option(5.0, help="Longest wait to fill a batch."),
    queue_size: int = typer.Option(256, help="Images waiting beyond this get 503."),
    timeout_s: float = typer.Option(10.0, help="Per-request timeout (504)."),
    max_body_mb: float = typer.Option(20.0, help="Request bodies above this get 413."),
    top_k: int = typer.Option(5, help="Default classes per image."),
    explain: bool = typer.Option(True, help="Serve /v1/explain (Grad-CAM) too."),
    log_level: str = typer.Option("info"),
    spin: bool = typer.Option(False, help="Let ONNX Runtime's threads spin-wait between "
                              "batches (off: the cores parse and decode requests meanwhile; "
                              "bench/serve_load.py --spin off,on measures both)."),
) -> None:
    """An HTTP service and a web page for ARTIFACT (FastAPI on uvicorn, dynamic batching)."""
    from .serving import serve

    run_verb(lambda: serve(artifact, host=host, port=port, api_key=api_key, runtime=runtime,
                           max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                           timeout_s=timeout_s, max_body_mb=max_body_mb, threads=threads,
                           top_k=top_k, explain=explain, log_level=log_level, spin=spin),
             False,
             lambda r: None)
